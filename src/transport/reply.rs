//! Where a server encodes its unary replies: [`ReplyAlloc`], handed by the transport to every
//! server call of a connection.
//!
//! Handlers are not generic over the transport, so they cannot hold its buffer type; this names
//! the memories a reply can be built in. Over RDMA it is a registered send buffer, so the reply
//! reaches the NIC without a copy (the driver sends that very buffer); over TCP a send buffer from
//! the connection's pool (room for the length prefix included), which the driver also sends as it
//! is and the sender takes back once written.

use bytes::{BufMut, BytesMut};
use prost::Message;

use super::rdma::{RdmaAlloc, SlotWriter};
use super::tcp::{BufPool, SendBuf};
use crate::wire::HEADER_LEN;

/// The memory a connection's server replies are encoded into.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ReplyAlloc {
    /// Heap memory, from a pool when the transport keeps one.
    #[default]
    Heap,
    /// Heap memory from (and back to) a TCP connection's pool.
    Pooled(BufPool),
    /// Registered memory of an RDMA connection (heap when none is free at that moment).
    Registered(RdmaAlloc),
}

impl std::fmt::Debug for ReplyAlloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReplyAlloc::Heap => "ReplyAlloc::Heap",
            ReplyAlloc::Pooled(_) => "ReplyAlloc::Pooled",
            ReplyAlloc::Registered(_) => "ReplyAlloc::Registered",
        })
    }
}

/// An encoded reply: `HEADER_LEN` bytes of room for the frame header, then the message.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReplyBody {
    /// In heap memory.
    Heap(BytesMut),
    /// In a TCP send buffer from the connection's pool, sent as it is.
    Pooled(SendBuf),
    /// In a registered RDMA send buffer.
    Registered(SlotWriter),
}

impl ReplyBody {
    /// Bytes of the message (without the room for the header).
    pub fn message_len(&self) -> usize {
        let len = match self {
            ReplyBody::Heap(buf) => buf.len(),
            ReplyBody::Pooled(buf) => buf.len(),
            ReplyBody::Registered(slot) => slot.len(),
        };
        len.saturating_sub(HEADER_LEN)
    }
}

impl ReplyAlloc {
    /// Encodes `message` behind room for the frame header.
    pub(crate) fn encode<M: Message>(&self, message: &M) -> ReplyBody {
        let capacity = HEADER_LEN + message.encoded_len();
        let mut heap = match self {
            ReplyAlloc::Registered(alloc) => match alloc.try_alloc_data(capacity) {
                Some(mut slot) => {
                    slot.put_bytes(0, HEADER_LEN);
                    // Cannot fail: the slot was chosen for `encoded_len`.
                    if message.encode(&mut slot).is_ok() {
                        return ReplyBody::Registered(slot);
                    }
                    BytesMut::with_capacity(capacity)
                }
                None => BytesMut::with_capacity(capacity),
            },
            ReplyAlloc::Pooled(pool) => {
                let mut buf = pool.take_send_buf(capacity);
                buf.body_mut().put_bytes(0, HEADER_LEN);
                // Cannot fail: BytesMut grows.
                let _ = message.encode(buf.body_mut());
                return ReplyBody::Pooled(buf);
            }
            ReplyAlloc::Heap => BytesMut::with_capacity(capacity),
        };
        heap.put_bytes(0, HEADER_LEN);
        // Cannot fail: the buffer was sized by `encoded_len` and BytesMut grows anyway.
        let _ = message.encode(&mut heap);
        ReplyBody::Heap(heap)
    }
}
