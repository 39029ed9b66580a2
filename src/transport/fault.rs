//! A fault injector for tests: wraps any [`Transport`] and flips one bit of one received frame,
//! the way a bad NIC, cable or memory would, so that tests can prove corruption is caught where
//! it should be (replication's per-chunk CRC32C) and never applied. Not for production use.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};

use super::{Capabilities, FrameReceiver, Transport, TransportError};

/// Which frame to damage.
#[derive(Debug, Clone)]
pub struct FlipPlan {
    /// Only frames at least this long count (so small control frames are left alone).
    pub min_len: usize,
    /// Damage the `nth` counted frame (1-based) of a connection.
    pub nth: usize,
    /// Flip no more than this many bits in all, over every connection sharing `flipped`.
    pub times: usize,
    /// Incremented for every bit flipped, for the test to check.
    pub flipped: Arc<AtomicUsize>,
}

/// A transport whose receiver flips one bit as planned.
#[derive(Debug)]
pub struct FaultyTransport<T> {
    inner: T,
    plan: FlipPlan,
}

impl<T> FaultyTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, plan: FlipPlan) -> Self {
        FaultyTransport { inner, plan }
    }
}

/// The receiving half of a [`FaultyTransport`].
#[derive(Debug)]
pub struct FaultyReceiver<R> {
    inner: R,
    plan: FlipPlan,
    seen: usize,
}

impl<R: FrameReceiver> FrameReceiver for FaultyReceiver<R> {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        let frame = self.inner.recv().await?;
        Ok(frame.map(|frame| {
            if frame.len() < self.plan.min_len {
                return frame;
            }
            self.seen += 1;
            if self.seen != self.plan.nth || self.plan.flipped.load(Ordering::SeqCst) >= self.plan.times {
                return frame;
            }
            let mut damaged = BytesMut::from(&frame[..]);
            let at = damaged.len() * 3 / 4;
            damaged[at] ^= 0x10;
            self.plan.flipped.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(len = frame.len(), at, "fault injector: flipped a bit of a received frame");
            damaged.freeze()
        }))
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    type Buf = T::Buf;
    type Alloc = T::Alloc;
    type Sender = T::Sender;
    type Receiver = FaultyReceiver<T::Receiver>;

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn peer(&self) -> String {
        self.inner.peer()
    }

    fn split(self) -> (Self::Alloc, Self::Sender, Self::Receiver) {
        let (alloc, sender, receiver) = self.inner.split();
        (alloc, sender, FaultyReceiver { inner: receiver, plan: self.plan, seen: 0 })
    }
}
