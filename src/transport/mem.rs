//! An in-memory transport pair, for protocol tests of the session and RPC layers (with tokio's
//! paused clock, deadlines and keepalive run in virtual time). It is never evidence that TCP or
//! RDMA work: those have their own tests over real sockets and real rxe devices.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::{BufferAlloc, Capabilities, FrameReceiver, FrameSender, SendBuffer, Transport, TransportError};

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemTransport {
    name: String,
    tx: mpsc::Sender<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    writes: Arc<WriteCounts>,
}

/// What one end's sender wrote: flushes that sent something (each would be one `writev` or one
/// doorbell on a real transport), and the messages they sent. For tests of batching.
#[derive(Debug, Default)]
pub struct WriteCounts {
    flushes: AtomicU64,
    messages: AtomicU64,
}

impl WriteCounts {
    /// Flushes that found messages queued.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Messages sent.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }
}

/// A connected pair; `depth` messages may be in flight each way.
pub fn pair(depth: usize) -> (MemTransport, MemTransport) {
    let (a_tx, b_rx) = mpsc::channel(depth.max(1));
    let (b_tx, a_rx) = mpsc::channel(depth.max(1));
    (
        MemTransport { name: "mem:a".into(), tx: a_tx, rx: a_rx, writes: Arc::default() },
        MemTransport { name: "mem:b".into(), tx: b_tx, rx: b_rx, writes: Arc::default() },
    )
}

impl MemTransport {
    /// Sends raw bytes as one message, bypassing framing: for tests that feed garbage.
    pub async fn send_raw(&self, message: Bytes) -> Result<(), TransportError> {
        self.tx.send(message).await.map_err(|_| TransportError::Closed)
    }

    /// What this end's sender writes, counted (shared: read it after the transport was split).
    pub fn write_counts(&self) -> Arc<WriteCounts> {
        self.writes.clone()
    }

    /// Receives one raw message, bypassing framing.
    pub async fn recv_raw(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

/// A heap send buffer.
#[derive(Debug, Default)]
pub struct MemBuf(BytesMut);

impl SendBuffer for MemBuf {
    type Writer = BytesMut;
    fn writer(&mut self) -> &mut BytesMut {
        &mut self.0
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn written_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

/// Allocates heap buffers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemAlloc;

impl BufferAlloc for MemAlloc {
    type Buf = MemBuf;
    async fn alloc(&self, capacity: usize) -> Result<MemBuf, TransportError> {
        Ok(MemBuf(BytesMut::with_capacity(capacity)))
    }

    fn try_alloc(&self, capacity: usize) -> Option<Result<MemBuf, TransportError>> {
        Some(Ok(MemBuf(BytesMut::with_capacity(capacity))))
    }
}

/// Sending half.
#[derive(Debug)]
pub struct MemSender {
    tx: Option<mpsc::Sender<Bytes>>,
    queue: std::collections::VecDeque<Bytes>,
    writes: Arc<WriteCounts>,
}

impl FrameSender for MemSender {
    type Buf = MemBuf;

    fn feed(&mut self, buf: MemBuf) -> Result<(), TransportError> {
        self.queue.push_back(buf.0.freeze());
        Ok(())
    }

    fn feed_with_payload(&mut self, head: MemBuf, payload: Bytes) -> Result<(), TransportError> {
        let mut message = head.0;
        message.extend_from_slice(&payload);
        self.queue.push_back(message.freeze());
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        // Cancel-safe: a message leaves the queue only with the permit to send it.
        let tx = self.tx.as_ref().ok_or(TransportError::Closed)?;
        if !self.queue.is_empty() {
            self.writes.flushes.fetch_add(1, Ordering::Relaxed);
        }
        while !self.queue.is_empty() {
            let permit = tx.reserve().await.map_err(|_| TransportError::Closed)?;
            permit.send(self.queue.pop_front().unwrap_or_default());
            self.writes.messages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        let flushed = self.flush().await;
        self.tx = None;
        flushed
    }
}

/// Receiving half.
#[derive(Debug)]
pub struct MemReceiver {
    rx: mpsc::Receiver<Bytes>,
}

impl FrameReceiver for MemReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        Ok(self.rx.recv().await)
    }
}

impl Transport for MemTransport {
    type Buf = MemBuf;
    type Alloc = MemAlloc;
    type Sender = MemSender;
    type Receiver = MemReceiver;

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "mem",
            max_message_size: usize::MAX,
            max_inline_size: 0,
            zero_copy_send: true,
            zero_copy_recv: true,
        }
    }

    fn peer(&self) -> String {
        self.name.clone()
    }

    fn split(self) -> (MemAlloc, MemSender, MemReceiver) {
        let sender = MemSender { tx: Some(self.tx), queue: Default::default(), writes: self.writes };
        (MemAlloc, sender, MemReceiver { rx: self.rx })
    }
}
