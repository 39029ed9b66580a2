//! The `Transport` trait: how the RPC layer moves whole frames, whatever carries them.
//!
//! A transport is message-oriented (each frame is one message; the transport delimits it) and
//! async. It is built for zero copy in both directions:
//! - **send**: the transport hands out [`SendBuffer`]s through a cloneable [`BufferAlloc`], and prost
//!   encodes the frame straight into them. For RDMA these are slices of registered memory, so the
//!   NIC reads what prost wrote; for TCP they are heap buffers written with `writev`. A payload the
//!   application already holds as `Bytes` rides behind a small header buffer
//!   ([`FrameSender::feed_with_payload`]) without being copied where the transport can avoid it.
//! - **receive**: each message arrives as `Bytes` that owns its buffer (for RDMA a registered
//!   receive buffer, re-posted when the last `Bytes` view drops).
//!
//! Implementations: TCP ([`tcp`], over the `transport-tcp` crate), RDMA ([`rdma`], over the
//! `transport-rdma` crate), and [`mem`], an in-memory pair for protocol tests only.

pub mod fault;
pub mod mem;
pub mod rdma;
mod reply;
pub mod tcp;

pub use reply::{ReplyAlloc, ReplyBody};

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};

/// What a transport can do, for the layers above to adapt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Transport name for logs and errors: "tcp", "rdma", "mem".
    pub name: &'static str,
    /// Largest message the transport carries.
    pub max_message_size: usize,
    /// Messages up to this size go inline in the work request (RDMA), 0 if not applicable.
    pub max_inline_size: usize,
    /// Whether send buffers are the memory the device reads (no copy between encode and wire).
    pub zero_copy_send: bool,
    /// Whether received `Bytes` are the memory the device wrote.
    pub zero_copy_recv: bool,
}

/// A transport failure. The connection it happened on is over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The TCP transport failed.
    #[error(transparent)]
    Tcp(#[from] rdma_rpc_transport_tcp::TcpError),
    /// The RDMA transport failed.
    #[error(transparent)]
    Rdma(#[from] rdma_rpc_transport_rdma::RdmaError),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// A message over the transport's limit.
    #[error("message of {len} bytes exceeds the transport limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Any other failure, described.
    #[error("{0}")]
    Other(String),
}

/// A buffer a frame is encoded into before it is sent.
pub trait SendBuffer: Send + 'static {
    /// What prost encodes into.
    type Writer: BufMut;
    /// The writer, positioned after what was written so far.
    fn writer(&mut self) -> &mut Self::Writer;
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes written so far, to back-patch a header.
    fn written_mut(&mut self) -> &mut [u8];
    /// Keeps only the first `len` bytes written.
    fn truncate(&mut self, len: usize);
    /// The buffer of a reply encoded in this transport's own memory (RDMA: a registered
    /// buffer), or the reply back when it is not.
    fn from_reply(body: ReplyBody) -> Result<Self, ReplyBody>
    where
        Self: Sized,
    {
        Err(body)
    }
}

/// Hands out send buffers. Cheap to clone; shared by every handle of a connection.
pub trait BufferAlloc: Clone + Send + Sync + 'static {
    /// The buffer type.
    type Buf: SendBuffer;
    /// A buffer with room for at least `capacity` bytes, for application data. May wait for a
    /// free buffer (RDMA pools keep a few back for control frames).
    /// Cancel-safe (the driver polls it inside `select!`).
    fn alloc(&self, capacity: usize) -> impl Future<Output = Result<Self::Buf, TransportError>> + Send;
    /// A buffer for a control frame or header once `try_alloc` found none: waits for any buffer,
    /// including those kept back from application data. Cancel-safe.
    fn alloc_control(&self, capacity: usize) -> impl Future<Output = Result<Self::Buf, TransportError>> + Send {
        self.alloc(capacity)
    }
    /// A buffer now, for control frames and headers, or `None` when every buffer is in use (then
    /// the driver flushes, which frees buffers, and waits with `alloc`).
    fn try_alloc(&self, capacity: usize) -> Option<Result<Self::Buf, TransportError>>;
    /// Where a server encodes its unary replies on this connection: the transport's own send
    /// memory where it has a sync way to get it (RDMA), its heap pool (TCP), or the heap.
    fn reply_alloc(&self) -> ReplyAlloc {
        ReplyAlloc::Heap
    }
}

/// The sending half of a connection.
pub trait FrameSender: Send + 'static {
    /// The buffer type it sends.
    type Buf: SendBuffer;
    /// Queues one message; no IO until `flush`.
    fn feed(&mut self, buf: Self::Buf) -> Result<(), TransportError>;
    /// Queues one message made of `head` followed by `payload`.
    fn feed_with_payload(&mut self, head: Self::Buf, payload: Bytes) -> Result<(), TransportError>;
    /// Queues one message made of `head` followed by `payload`, a heap buffer the transport may
    /// reuse once written (see [`BufferAlloc::reply_alloc`]).
    fn feed_owned(&mut self, head: Self::Buf, payload: BytesMut) -> Result<(), TransportError> {
        self.feed_with_payload(head, payload.freeze())
    }
    /// Writes everything queued. Must be cancel-safe: the driver polls it inside `select!`, so a
    /// dropped flush must lose nothing, and the next `feed` and `flush` go on where it stopped.
    fn flush(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Flushes and closes the sending direction.
    fn close(&mut self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// The receiving half of a connection.
pub trait FrameReceiver: Send + 'static {
    /// The next message, or `None` when the peer closed cleanly. Must be cancel-safe: dropping the
    /// future loses no message (the driver polls it inside `select!`).
    fn recv(&mut self) -> impl Future<Output = Result<Option<Bytes>, TransportError>> + Send;

    /// The next message if one can be had without waiting (`None` otherwise): what the driver
    /// takes to batch the frames of one pass. Without `may_read` (a peer in lockstep, which
    /// waits for the answer), a transport answers only from what it already has: TCP from what
    /// it read (a read is a system call), RDMA from completions already reaped (a reaping step
    /// re-posts the buffer of the message just taken, work that can wait until the reply is
    /// posted). The default polls `recv` once, which suits transports whose receive is a queue
    /// or a completion-queue poll in user space.
    fn try_recv_now(&mut self, may_read: bool) -> Option<Result<Option<Bytes>, TransportError>> {
        let _ = may_read;
        futures_util::FutureExt::now_or_never(self.recv())
    }
}

/// One established connection of some transport.
pub trait Transport: Send + 'static {
    /// Send buffer type.
    type Buf: SendBuffer;
    /// Its allocator.
    type Alloc: BufferAlloc<Buf = Self::Buf>;
    /// Sending half.
    type Sender: FrameSender<Buf = Self::Buf>;
    /// Receiving half.
    type Receiver: FrameReceiver;
    /// What it can do.
    fn capabilities(&self) -> Capabilities;
    /// The peer, for logs.
    fn peer(&self) -> String;
    /// Splits into the parts the driver runs.
    fn split(self) -> (Self::Alloc, Self::Sender, Self::Receiver);
}
