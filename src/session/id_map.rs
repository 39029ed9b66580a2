//! Maps keyed by call id: a short list while few calls are open, a hash map past that.
//!
//! A unary round trip has one call open per side, and the session looks its call up four or five
//! times (opened, queued, answered, ended). A hash map pays a hash and a probe of a control group
//! for each; a list of a few ids pays one comparison per open call. The criterion bench of a
//! unary call through both sessions went from about 395 to 375 ns natively and from 6.6 to 6.4
//! µs under QEMU, where the RDMA benchmarks run (BENCHMARKING.md, finding 26).
//!
//! Past [`FEW`] open calls the map moves them into a `HashMap` with a cheap hash: the default
//! hasher (SipHash, keyed per map) once showed among the top entries of a callgrind profile of
//! the unary path. Call ids are u64 counters, so one multiplication (Fibonacci hashing) spreads
//! them well. A peer could pick ids that collide, but a session holds at most
//! `max_concurrent_calls` of them, which bounds the damage to probe chains of that length. The
//! map goes back to the list once it is empty.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Open calls kept in the list; more move to the hash map.
const FEW: usize = 8;

/// A map from call id to `V`.
#[derive(Debug)]
pub(crate) struct IdMap<V> {
    /// While `many` is empty: the ids, and their values at the same index.
    ids: Vec<u64>,
    values: Vec<V>,
    /// Past `FEW` entries, all of them (`ids` and `values` are then empty).
    many: HashMap<u64, V, BuildHasherDefault<IdHasher>>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap { ids: Vec::new(), values: Vec::new(), many: HashMap::default() }
    }
}

impl<V> IdMap<V> {
    fn position(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&known| known == id)
    }

    /// The value of `id`.
    pub(crate) fn get(&self, id: &u64) -> Option<&V> {
        match self.position(*id) {
            Some(index) => self.values.get(index),
            None if self.many.is_empty() => None,
            None => self.many.get(id),
        }
    }

    /// The value of `id`, to change.
    pub(crate) fn get_mut(&mut self, id: &u64) -> Option<&mut V> {
        match self.position(*id) {
            Some(index) => self.values.get_mut(index),
            None if self.many.is_empty() => None,
            None => self.many.get_mut(id),
        }
    }

    /// Whether `id` has a value.
    pub(crate) fn contains_key(&self, id: &u64) -> bool {
        self.get(id).is_some()
    }

    /// Sets the value of `id`; returns the one it replaced.
    pub(crate) fn insert(&mut self, id: u64, value: V) -> Option<V> {
        if let Some(index) = self.position(id) {
            return Some(std::mem::replace(&mut self.values[index], value));
        }
        if self.many.is_empty() && self.ids.len() < FEW {
            if self.ids.capacity() == 0 {
                // Once: the list keeps its room, so a call opened and ended allocates nothing.
                self.ids.reserve_exact(FEW);
                self.values.reserve_exact(FEW);
            }
            self.ids.push(id);
            self.values.push(value);
            return None;
        }
        if self.many.is_empty() {
            self.many.reserve(FEW * 2);
            self.many.extend(self.ids.drain(..).zip(self.values.drain(..)));
        }
        self.many.insert(id, value)
    }

    /// Takes the value of `id` out.
    pub(crate) fn remove(&mut self, id: &u64) -> Option<V> {
        match self.position(*id) {
            Some(index) => {
                self.ids.swap_remove(index);
                Some(self.values.swap_remove(index))
            }
            None if self.many.is_empty() => None,
            None => self.many.remove(id),
        }
    }

    /// Entries.
    pub(crate) fn len(&self) -> usize {
        self.ids.len() + self.many.len()
    }

    /// Whether there is none.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids, in no particular order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.ids.iter().chain(self.many.keys())
    }

    /// The entries, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.ids.iter().zip(self.values.iter()).chain(self.many.iter())
    }

    /// The values, to change, in no particular order.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.values.iter_mut().chain(self.many.values_mut())
    }
}

/// Hashes one u64 by multiplying it with 2^64 / φ.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; a fallback that still mixes every byte.
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_top_bits() {
        // hashbrown takes its 7-bit tag from the top of the hash: consecutive ids must not share it.
        let tags: std::collections::HashSet<u64> = (1..=128u64)
            .map(|id| {
                let mut hasher = IdHasher::default();
                hasher.write_u64(id);
                hasher.finish() >> 57
            })
            .collect();
        assert!(tags.len() > 64, "only {} distinct tags", tags.len());
        let mut map: IdMap<u64> = IdMap::default();
        for id in 0..10_000 {
            map.insert(id, id * 2);
        }
        assert!((0..10_000).all(|id| map.get(&id) == Some(&(id * 2))));
    }

    /// Every operation against a `BTreeMap`, through the list, the move to the hash map, and
    /// back to the list once empty.
    #[test]
    fn behaves_as_a_map_across_the_switch() {
        let mut map: IdMap<u64> = IdMap::default();
        let mut model = BTreeMap::new();
        // A fixed pseudo-random walk (xorshift) over 40 ids: open calls rise and fall past FEW.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for step in 0..20_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let id = state % 40;
            // Mostly inserts in the first half of each 2000 steps, mostly removes in the second.
            let inserting = ((state >> 8) % 4 != 0) == ((step / 1000) % 2 == 0);
            if inserting {
                assert_eq!(map.insert(id, step), model.insert(id, step), "insert {id}");
            } else {
                assert_eq!(map.remove(&id), model.remove(&id), "remove {id}");
            }
            if let Some(value) = map.get_mut(&(id ^ 1)) {
                *value += 1;
                *model.get_mut(&(id ^ 1)).expect("the model has it too") += 1;
            }
            assert_eq!(map.len(), model.len());
            assert_eq!(map.is_empty(), model.is_empty());
            assert_eq!(map.contains_key(&id), model.contains_key(&id));
        }
        let mut entries: Vec<(u64, u64)> = map.iter().map(|(id, value)| (*id, *value)).collect();
        entries.sort_unstable();
        assert_eq!(entries, model.into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn the_list_comes_back_once_empty_and_keeps_its_room() {
        let mut map: IdMap<u64> = IdMap::default();
        for id in 0..=FEW as u64 {
            map.insert(id, id);
        }
        assert!(!map.many.is_empty(), "past FEW entries, the hash map holds them");
        assert!(map.ids.is_empty());
        for id in 0..=FEW as u64 {
            assert_eq!(map.remove(&id), Some(id));
        }
        map.insert(7, 7);
        assert_eq!(map.ids, vec![7]);
        assert!(map.many.is_empty());
        assert!(map.ids.capacity() >= FEW);
        for value in map.values_mut() {
            *value = 8;
        }
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(map.get(&7), Some(&8));
    }
}
