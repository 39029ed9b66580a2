//! [`BufPool`]: send buffers that come back once the kernel has them.
//!
//! Every message sent over TCP is first encoded into a heap buffer. Allocating one per message
//! showed up as one of the few allocations left per RPC (and as malloc/free time). A connection's
//! [`TcpSender`](crate::TcpSender) instead hands each fully written body buffer back to the
//! connection's pool, and the next message is encoded into it. Buffers the application still
//! shares (frozen into `Bytes` and cloned) are never reused: only bodies the sender owns outright
//! come back. The pool is bounded in count and in the size of the buffers it keeps, so an idle
//! connection holds at most [`POOLED_BUFFERS`] × [`MAX_POOLED_CAPACITY`].

use std::sync::Arc;

use bytes::BytesMut;
use crossbeam::queue::ArrayQueue;

use crate::deframer::LENGTH_PREFIX_LEN;
use crate::send_buf::SendBuf;

/// Buffers kept per connection.
pub const POOLED_BUFFERS: usize = 64;

/// Larger buffers are freed, not kept: a rare large message must not pin its memory.
pub const MAX_POOLED_CAPACITY: usize = 64 * 1024;

/// A connection's free send buffers; clones share them.
#[derive(Debug, Clone)]
pub struct BufPool {
    free: Arc<ArrayQueue<BytesMut>>,
}

impl Default for BufPool {
    fn default() -> Self {
        BufPool { free: Arc::new(ArrayQueue::new(POOLED_BUFFERS)) }
    }
}

impl BufPool {
    /// An empty buffer with room for at least `capacity` bytes: a returned one when the next
    /// free buffer is large enough, else a new allocation.
    pub fn take(&self, capacity: usize) -> BytesMut {
        match self.free.pop() {
            Some(buf) if buf.capacity() >= capacity => buf,
            // Too small for this message: it would have to grow anyway. Freed, not put back, so
            // a stream of large messages does not cycle through small buffers.
            _ => BytesMut::with_capacity(capacity),
        }
    }

    /// An empty [`SendBuf`] with room for at least `capacity` body bytes (and its length prefix),
    /// in a returned allocation when one is large enough.
    pub fn take_send_buf(&self, capacity: usize) -> SendBuf {
        SendBuf::from_empty(self.take(LENGTH_PREFIX_LEN + capacity))
    }

    /// Returns a buffer nobody else refers to; it is cleared. Dropped when the pool is full or the
    /// buffer is larger than [`MAX_POOLED_CAPACITY`].
    pub fn give(&self, mut buf: BytesMut) {
        // A buffer with room for a length prefix only (an empty message's) holds no body.
        if buf.capacity() > MAX_POOLED_CAPACITY || buf.capacity() <= LENGTH_PREFIX_LEN {
            return;
        }
        buf.clear();
        let _ = self.free.push(buf);
    }

    /// Buffers waiting to be reused.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether no buffer waits to be reused.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_when_large_enough() {
        let pool = BufPool::default();
        let mut buf = pool.take(100);
        buf.extend_from_slice(b"hello");
        let ptr = buf.as_ptr();
        pool.give(buf);
        assert_eq!(pool.len(), 1);
        let again = pool.take(50);
        assert_eq!(again.as_ptr(), ptr, "the same allocation");
        assert!(again.is_empty(), "cleared");
        pool.give(again);
        let bigger = pool.take(10_000);
        assert!(bigger.capacity() >= 10_000);
        assert!(pool.is_empty(), "the small one was freed, not kept");
    }

    #[test]
    fn large_buffers_and_overflow_are_not_kept() {
        let pool = BufPool::default();
        pool.give(BytesMut::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(pool.is_empty());
        for _ in 0..POOLED_BUFFERS + 10 {
            pool.give(BytesMut::with_capacity(64));
        }
        assert_eq!(pool.len(), POOLED_BUFFERS);
    }
}
