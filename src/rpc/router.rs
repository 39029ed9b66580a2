//! The [`Router`]: which service serves a method path.
//!
//! A server looks a path up once per call, so the lookup is on the hot path: the table hashes
//! the received bytes 8 at a time with a multiply-rotate step (no UTF-8 check, no SipHash). The
//! table's keys are the services' own paths, fixed before the server starts, so a peer choosing
//! what it sends cannot lengthen its probe chains: an unkeyed hash is safe here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::server::Service;

/// Method paths to services.
#[derive(Default)]
pub struct Router {
    services: Vec<Arc<dyn Service>>,
    /// Path bytes → the path and the index of its service.
    methods: HashMap<&'static [u8], (&'static str, usize), BuildHasherDefault<PathHasher>>,
}

impl Router {
    /// Adds a service; its methods replace any of the same path.
    pub fn add(&mut self, service: impl Service) {
        let index = self.services.len();
        for &method in service.methods() {
            self.methods.insert(method.as_bytes(), (method, index));
        }
        self.services.push(Arc::new(service));
    }

    /// The router's own copy of the method `path` and the service that serves it. The driver
    /// names the call by that copy from then on: a view of the received frame would keep its
    /// whole receive buffer (a registered slot, over RDMA) for as long as the handler holds its
    /// context.
    pub(crate) fn find(&self, path: &[u8]) -> Option<(&'static str, &dyn Service)> {
        let &(name, index) = self.methods.get(path)?;
        Some((name, self.services.get(index)?.as_ref()))
    }

    /// The services served, for error messages.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name()).collect();
        names.join(", ")
    }
}

/// A multiply-rotate hash over 8 bytes at a time (FxHash's step), 64 bits: a method path of 20
/// to 40 bytes takes 3 to 5 steps, where FNV-1a took one per byte (and 8 more for the length).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl PathHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for PathHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            self.add(u64::from_le_bytes(le));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut le = [0u8; 8];
            le[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(le));
        }
    }

    fn write_usize(&mut self, len: usize) {
        self.add(len as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn paths_that_differ_in_one_byte_hash_apart() {
        let hash = |path: &[u8]| BuildHasherDefault::<PathHasher>::default().hash_one(path);
        assert_ne!(hash(b"/echo.Echo/Echo"), hash(b"/echo.Echo/Echp"));
        assert_ne!(hash(b"/a/b"), hash(b"/a/bb"));
        assert_ne!(hash(b"/a/b"), hash(b"/a/b\0"), "the length counts, not only the zero-padded bytes");
        // A difference in a full word, and in the tail after the words.
        assert_ne!(hash(b"/rdmarpc.echo.Echo/Echo"), hash(b"/rdmarpc.echo.Echx/Echo"));
        assert_ne!(hash(b"/rdmarpc.echo.Echo/Echo"), hash(b"/rdmarpc.echo.Echo/Pipe"));
        assert_eq!(hash(b"/echo.Echo/Echo"), hash(b"/echo.Echo/Echo"));
    }
}
