//! Maps keyed by call id, with a cheap hash.
//!
//! The default `HashMap` hasher (SipHash, keyed per map) cost more per call than the map's other
//! work: it showed up among the top entries of a callgrind profile of the unary path. Call ids are
//! u64 counters, so one multiplication (Fibonacci hashing) spreads them well. A peer could pick
//! ids that collide, but a session holds at most `max_concurrent_calls` of them, which bounds
//! the damage to probe chains of that length.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` from call id to `V`.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

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
}
