//! The TCP transport: the `Transport` trait over the `transport-tcp` crate (tokio, TCP_NODELAY,
//! a 4-byte length prefix per message, vectored writes that never copy a payload).

use bytes::{Bytes, BytesMut};
pub use rdma_rpc_transport_tcp::{BufPool, SendBuf};
pub use rdma_rpc_transport_tcp::{TcpConfig, TcpConnection, TcpListener, TcpReceiver, TcpSender};

use super::{BufferAlloc, Capabilities, FrameReceiver, FrameSender, SendBuffer, Transport, TransportError};

impl SendBuffer for SendBuf {
    type Writer = BytesMut;
    fn writer(&mut self) -> &mut BytesMut {
        self.body_mut()
    }
    fn len(&self) -> usize {
        SendBuf::len(self)
    }
    fn written_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
    fn truncate(&mut self, len: usize) {
        SendBuf::truncate(self, len);
    }
    fn from_reply(body: super::ReplyBody) -> Result<Self, super::ReplyBody> {
        match body {
            super::ReplyBody::Pooled(buf) => Ok(buf),
            other => Err(other),
        }
    }
}

/// Allocates TCP send buffers: heap memory (the prefix lives beside the body) from the
/// connection's pool, to which the sender returns every buffer it wrote.
#[derive(Debug, Clone, Default)]
pub struct TcpAlloc {
    pool: BufPool,
}

impl BufferAlloc for TcpAlloc {
    type Buf = SendBuf;
    async fn alloc(&self, capacity: usize) -> Result<SendBuf, TransportError> {
        Ok(self.pool.take_send_buf(capacity))
    }

    fn try_alloc(&self, capacity: usize) -> Option<Result<SendBuf, TransportError>> {
        Some(Ok(self.pool.take_send_buf(capacity)))
    }

    fn reply_alloc(&self) -> super::ReplyAlloc {
        super::ReplyAlloc::Pooled(self.pool.clone())
    }
}

impl FrameSender for TcpSender {
    type Buf = SendBuf;

    fn feed(&mut self, buf: SendBuf) -> Result<(), TransportError> {
        Ok(TcpSender::feed(self, buf)?)
    }

    fn feed_with_payload(&mut self, head: SendBuf, payload: Bytes) -> Result<(), TransportError> {
        Ok(TcpSender::feed_with_payload(self, head, payload)?)
    }

    fn feed_owned(&mut self, head: SendBuf, payload: BytesMut) -> Result<(), TransportError> {
        Ok(TcpSender::feed_with_owned_payload(self, head, payload)?)
    }

    async fn flush(&mut self) -> Result<(), TransportError> {
        Ok(TcpSender::flush(self).await?)
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        Ok(TcpSender::shutdown(self).await?)
    }
}

impl FrameReceiver for TcpReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        Ok(TcpReceiver::recv(self).await?)
    }

    fn try_recv_now(&mut self, may_read: bool) -> Option<Result<Option<Bytes>, TransportError>> {
        // A message complete in the read buffer first: no read from the socket.
        match TcpReceiver::try_recv(self).map_err(TransportError::from).transpose() {
            Some(msg) => Some(msg.map(Some)),
            None if may_read => futures_util::FutureExt::now_or_never(FrameReceiver::recv(self)),
            None => None,
        }
    }
}

/// What TCP offers: messages up to the configured maximum; sends are heap buffers written with
/// `writev` (not memory a device reads), receives are views of the read buffer.
fn tcp_capabilities(config: &TcpConfig) -> Capabilities {
    Capabilities {
        name: "tcp",
        max_message_size: config.max_message_size,
        max_inline_size: 0,
        zero_copy_send: false,
        zero_copy_recv: true,
    }
}

impl Transport for TcpConnection {
    type Buf = SendBuf;
    type Alloc = TcpAlloc;
    type Sender = TcpSender;
    type Receiver = TcpReceiver;

    fn capabilities(&self) -> Capabilities {
        tcp_capabilities(self.config())
    }

    fn peer(&self) -> String {
        format!("tcp://{}", self.peer_addr())
    }

    fn split(self) -> (TcpAlloc, TcpSender, TcpReceiver) {
        let (sender, receiver) = TcpConnection::split(self);
        (TcpAlloc { pool: sender.pool().clone() }, sender, receiver)
    }
}

/// A TCP connection already split in two: what the RDMA handshake hands back when the connection
/// stays on TCP. `first` is a message the server already read while looking for an RDMA offer; it
/// is delivered before anything else.
#[derive(Debug)]
pub struct TcpHalves {
    /// Sending half.
    pub sender: TcpSender,
    /// Receiving half.
    pub receiver: TcpReceiver,
    /// A message already read, delivered first.
    pub first: Option<Bytes>,
    /// The peer, as a URL.
    pub peer: String,
}

/// A receiving half that first yields a message read earlier.
#[derive(Debug)]
pub struct PrefixedReceiver {
    first: Option<Bytes>,
    inner: TcpReceiver,
}

impl FrameReceiver for PrefixedReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        Ok(self.inner.recv().await?)
    }

    fn try_recv_now(&mut self, may_read: bool) -> Option<Result<Option<Bytes>, TransportError>> {
        match self.first.take() {
            Some(first) => Some(Ok(Some(first))),
            None => self.inner.try_recv_now(may_read),
        }
    }
}

impl Transport for TcpHalves {
    type Buf = SendBuf;
    type Alloc = TcpAlloc;
    type Sender = TcpSender;
    type Receiver = PrefixedReceiver;

    fn capabilities(&self) -> Capabilities {
        tcp_capabilities(self.receiver.config())
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn split(self) -> (TcpAlloc, TcpSender, PrefixedReceiver) {
        (
            TcpAlloc { pool: self.sender.pool().clone() },
            self.sender,
            PrefixedReceiver { first: self.first, inner: self.receiver },
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    #[tokio::test]
    async fn try_recv_now_reads_the_socket_only_when_allowed() {
        let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, server) = tokio::join!(TcpConnection::connect(addr, TcpConfig::default()), listener.accept());
        let (mut tx, _rx) = client.expect("connect").split();
        let (_server_tx, mut rx) = server.expect("accept").split();
        let send = |tx: &mut TcpSender, body: &[u8]| {
            let mut buf = tx.buffer(body.len());
            buf.body_mut().put_slice(body);
            tx.feed(buf).expect("feed");
        };
        send(&mut tx, b"one");
        send(&mut tx, b"two");
        tx.flush().await.expect("flush");
        // Both are in the socket before the first read, so one read takes both.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(FrameReceiver::recv(&mut rx).await.expect("recv").as_deref(), Some(&b"one"[..]));
        // "two" came in the same read: taken from the buffer, with or without leave to read.
        let two = rx.try_recv_now(false).expect("buffered").expect("no error");
        assert_eq!(two.as_deref(), Some(&b"two"[..]));
        send(&mut tx, b"three");
        tx.flush().await.expect("flush");
        // Give loopback time to deliver: then only a read finds it.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(rx.try_recv_now(false).is_none(), "nothing buffered and no leave to read");
        let three = rx.try_recv_now(true).expect("read").expect("no error");
        assert_eq!(three.as_deref(), Some(&b"three"[..]));
    }
}
