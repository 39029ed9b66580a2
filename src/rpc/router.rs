//! The [`Router`]: which service serves a method path.
//!
//! A server looks a path up once per call, so the lookup is on the hot path: the table hashes
//! the received bytes with FNV-1a (no UTF-8 check, no SipHash). The table's keys are the
//! services' own paths, fixed before the server starts, so a peer choosing what it sends cannot
//! lengthen its probe chains: an unkeyed hash is safe here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::handler::{SlotPool, Started};
use super::server::{ServerCall, Service};

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

    /// Starts the handler of `call`'s method, in a slot of `pool` when the service has them; also
    /// returns the router's own copy of the method's path (so the driver can name the call without
    /// allocating). Gives the call back if no service serves the method.
    #[allow(clippy::result_large_err)] // see Service::call
    pub(crate) fn route(
        &self,
        mut call: ServerCall,
        pool: &mut SlotPool,
    ) -> Result<(&'static str, Started), ServerCall> {
        match self.find(call.context().method.as_bytes()) {
            Some((name, service)) => {
                // The router's own copy from here on: a view of the received frame would keep its
                // whole receive buffer (a registered slot, over RDMA) for as long as the handler
                // holds its context.
                call.set_method(name);
                pool.start(name, service, call).map(|started| (name, started))
            }
            None => Err(call),
        }
    }

    /// The router's own copy of the method `path` and the service that serves it.
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

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathHasher(u64);

impl Default for PathHasher {
    fn default() -> Self {
        PathHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for PathHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
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
        assert_eq!(hash(b"/echo.Echo/Echo"), hash(b"/echo.Echo/Echo"));
    }
}
