//! [`TcpReceiver`]: reads the socket into one buffer and splits messages off
//! it without copying.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::config::TcpConfig;
use crate::deframer::Deframer;
use crate::error::TcpError;

/// The receiving half of a [`TcpConnection`](crate::TcpConnection).
///
/// Received bytes accumulate in a [`BytesMut`]; each complete message is split
/// off it and handed out as a [`Bytes`] sharing that allocation (no copy).
/// [`recv`](Self::recv) is cancel-safe: everything read stays buffered.
#[derive(Debug)]
pub struct TcpReceiver {
    reader: OwnedReadHalf,
    buf: BytesMut,
    deframer: Deframer,
    config: TcpConfig,
    /// How much to reserve when the buffer runs low.
    read_reserve: usize,
    /// Below this much spare capacity the buffer is topped up before a read.
    min_spare: usize,
}

impl TcpReceiver {
    pub(crate) fn new(reader: OwnedReadHalf, config: TcpConfig) -> Self {
        let read_reserve = config.read_reserve();
        Self {
            reader,
            buf: BytesMut::with_capacity(read_reserve),
            deframer: Deframer::new(config.effective_max_message_size()),
            config,
            read_reserve,
            min_spare: read_reserve / 4,
        }
    }

    /// The configuration of this connection.
    pub fn config(&self) -> &TcpConfig {
        &self.config
    }

    /// The next message, as a [`Bytes`] owning its part of the read buffer.
    ///
    /// Returns `Ok(None)` when the peer closed the connection cleanly, at a
    /// message boundary (and keeps doing so). Errors:
    /// [`TcpError::Truncated`] if it closed in the middle of a message,
    /// [`TcpError::MessageTooLarge`] if it announced a message over the
    /// maximum (nothing is allocated for it; the stream cannot be
    /// resynchronised, drop the connection), [`TcpError::Io`] if reading failed.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TcpError> {
        loop {
            if let Some(message) = self.deframer.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            self.ensure_spare_capacity();
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                return self.at_eof();
            }
        }
    }

    /// The next message if it is already complete in the read buffer, without
    /// any IO: lets a caller drain a batch that arrived in one read before
    /// awaiting [`recv`](Self::recv) again.
    pub fn try_recv(&mut self) -> Result<Option<Bytes>, TcpError> {
        self.deframer.decode(&mut self.buf)
    }

    /// Bytes received and not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Makes sure the next read has room to land.
    fn ensure_spare_capacity(&mut self) {
        let spare = self.buf.capacity() - self.buf.len();
        let needed = self.deframer.bytes_needed(&self.buf);
        // Inside a large frame whose rest fits (the deframer reserved it):
        // finish it in place rather than reallocating, and copying, what is
        // already there just to make a bigger read.
        if spare >= needed && self.buf.len() >= self.read_reserve {
            return;
        }
        if spare < self.min_spare || spare < needed {
            self.buf.reserve(self.read_reserve.max(needed));
        }
    }

    /// The outcome of an end of stream, given what is still buffered.
    fn at_eof(&self) -> Result<Option<Bytes>, TcpError> {
        if self.buf.is_empty() {
            tracing::trace!("TCP peer closed the connection cleanly");
            return Ok(None);
        }
        let needed = self.deframer.pending_frame_len(&self.buf);
        let got = self.buf.len();
        tracing::debug!(needed, got, "TCP peer closed the connection mid-message");
        Err(TcpError::Truncated { needed, got })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// A receiver whose peer sends nothing (fine for tests that do no IO).
    async fn receiver() -> (TcpReceiver, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, server) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (reader, _) = client.expect("connect").into_split();
        let (server, _) = server.expect("accept");
        (TcpReceiver::new(reader, TcpConfig::default()), server)
    }

    #[tokio::test]
    async fn a_large_partial_frame_is_finished_in_place() {
        let (mut rx, _peer) = receiver().await;
        let frame_len = 4 + (1 << 20);
        rx.buf = BytesMut::with_capacity(frame_len);
        rx.buf.put_u32(1 << 20);
        rx.buf.put_bytes(0, (1 << 20) - 100);
        assert_eq!(rx.try_recv().expect("partial frame"), None);
        let (ptr, capacity) = (rx.buf.as_ptr(), rx.buf.capacity());
        rx.ensure_spare_capacity();
        assert_eq!(rx.buf.as_ptr(), ptr, "not reallocated");
        assert_eq!(rx.buf.capacity(), capacity);
    }

    #[tokio::test]
    async fn a_full_buffer_is_topped_up_before_reading() {
        let (mut rx, _peer) = receiver().await;
        rx.buf = BytesMut::with_capacity(8);
        rx.buf.put_slice(&[0, 0, 0, 2, b'h', b'i', 0, 0]);
        assert_eq!(rx.try_recv().expect("valid").as_deref(), Some(&b"hi"[..]));
        assert_eq!(rx.try_recv().expect("partial prefix"), None);
        rx.ensure_spare_capacity();
        assert!(rx.buf.capacity() - rx.buf.len() >= rx.read_reserve);
        assert_eq!(rx.buffered_bytes(), 2);
    }

    #[tokio::test]
    async fn eof_outcome_depends_on_what_is_buffered() {
        let (mut rx, _peer) = receiver().await;
        assert_eq!(rx.at_eof().expect("clean"), None);
        rx.buf.put_slice(&[0, 0, 0, 8, 1, 2]);
        assert!(matches!(rx.at_eof(), Err(TcpError::Truncated { needed: 12, got: 6 })));
    }
}
