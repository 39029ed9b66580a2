//! [`TcpReceiver`]: reads the socket into one buffer and splits messages off
//! it without copying.
//!
//! When the buffer runs out of room while messages handed out still point
//! into it, the receiver moves on to another allocation. It keeps earlier
//! allocations, up to [`SPARE_BYTES`] in all, and moves back into one as soon
//! as every message in it was dropped: fresh allocations of the size of large
//! messages come from `mmap` or trimmed heap, so each would be page-faulted
//! and zeroed by the kernel again (measured: a third of the throughput of a
//! 1 MiB chunk stream went there).
//!
//! How it spins on the socket after a message, before it sleeps: [`spin`].

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::config::TcpConfig;
use crate::deframer::Deframer;
use crate::error::TcpError;

mod spin;

use spin::Spin;

/// Bytes of earlier receive allocations kept for reuse once their messages are
/// dropped, per connection. A consumer lagging a few messages behind the
/// socket (the driver reads on while the application is still busy) needs
/// several; 8 MiB covers seven 1 MiB messages and bounds what an idle
/// connection keeps.
const SPARE_BYTES: usize = 8 * 1024 * 1024;

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
    /// Empty handles on earlier allocations with their sizes, oldest first, reusable once all
    /// their messages are dropped.
    spares: Vec<(BytesMut, usize)>,
    /// Size of the allocation `buf` is in (capacity as reserved).
    buf_size: usize,
    /// With [`TcpConfig::busy_poll`]: whether to spin on non-blocking reads before sleeping in
    /// the reactor.
    spin: Spin,
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
            spares: Vec::new(),
            buf_size: read_reserve,
            spin: Spin::Off,
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
            // Only a complete message is decoded here: room for the rest of a partial one is
            // made below, where an earlier allocation can be reused (`decode` would reserve a
            // fresh one).
            if self.deframer.bytes_needed(&self.buf) == 0
                && let Some(message) = self.deframer.decode(&mut self.buf)?
            {
                return Ok(Some(message));
            }
            self.ensure_spare_capacity();
            let read = match self.spin {
                Spin::Off => self.reader.read_buf(&mut self.buf).await?,
                Spin::Armed | Spin::Until(_) => self.spin_read().await?,
            };
            if read == 0 {
                return self.at_eof();
            }
            if self.config.busy_poll.is_some() {
                self.spin = Spin::Armed;
            }
        }
    }

    /// The next message if it is already complete in the read buffer, without
    /// any IO: lets a caller drain a batch that arrived in one read before
    /// awaiting [`recv`](Self::recv) again.
    pub fn try_recv(&mut self) -> Result<Option<Bytes>, TcpError> {
        // Nothing is reserved for a partial message here: `recv` makes that room (see there).
        if self.deframer.bytes_needed(&self.buf) > 0 {
            return Ok(None);
        }
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
        // Below a quarter of the reserve, the buffer is topped up before a read.
        if spare < self.read_reserve / 4 || spare < needed {
            self.grow(self.read_reserve.max(needed));
        }
    }

    /// Makes room for `additional` more bytes: in place when no message still
    /// points into the buffer, else in a spare allocation all of whose
    /// messages were dropped, else in a new one. The buffered part of the next
    /// message moves along (it is small unless a large message is half read).
    fn grow(&mut self, additional: usize) {
        if self.buf.try_reclaim(additional) {
            return;
        }
        let len = self.buf.len();
        // An empty handle on the current allocation, to come back to later.
        let current = (self.buf.split_off(len), self.buf_size);
        match self.spares.iter_mut().position(|(spare, _)| spare.try_reclaim(len + additional)) {
            Some(index) => {
                let (mut next, size) = self.spares.remove(index);
                next.extend_from_slice(&self.buf);
                self.buf = next;
                self.buf_size = size;
            }
            None => {
                self.buf.reserve(additional);
                self.buf_size = self.buf.capacity();
            }
        }
        self.spares.push(current);
        let mut kept: usize = self.spares.iter().map(|(_, size)| size).sum();
        while kept > SPARE_BYTES && !self.spares.is_empty() {
            let (_, size) = self.spares.remove(0);
            kept -= size;
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
pub(super) mod tests {
    use super::*;
    use bytes::BufMut;

    /// A receiver whose peer sends nothing (fine for tests that do no IO).
    pub(super) async fn receiver() -> (TcpReceiver, tokio::net::TcpStream) {
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
    async fn an_allocation_is_reused_once_its_messages_are_dropped() {
        let (mut rx, _peer) = receiver().await;
        let big = 256 * 1024;
        rx.buf = BytesMut::with_capacity(4 + big);
        rx.buf.put_u32(big as u32);
        rx.buf.put_bytes(7, big);
        let first = rx.try_recv().expect("valid").expect("complete");
        let first_ptr = first.as_ptr();
        // The message still holds the allocation: the next one goes elsewhere.
        rx.buf.put_slice(&[0, 0]);
        rx.grow(4 + big);
        assert_ne!(rx.buf.as_ptr(), first_ptr.wrapping_sub(4));
        assert_eq!(&rx.buf[..], &[0, 0], "the partial prefix moved along");
        drop(first);
        // Full again, with a message out: the first allocation is free now and comes back.
        rx.buf.put_slice(&[0, 4]);
        rx.buf.put_bytes(1, 4);
        let second = rx.try_recv().expect("valid").expect("complete");
        rx.buf.put_u8(9);
        rx.grow(4 + big);
        assert_eq!(rx.buf.as_ptr(), first_ptr.wrapping_sub(4), "the first allocation is reused");
        assert_eq!(&rx.buf[..], &[9]);
        assert!(rx.buf.capacity() >= 4 + big);
        assert_eq!(&second[..], &[1, 1, 1, 1]);
    }

    #[tokio::test]
    async fn eof_outcome_depends_on_what_is_buffered() {
        let (mut rx, _peer) = receiver().await;
        assert_eq!(rx.at_eof().expect("clean"), None);
        rx.buf.put_slice(&[0, 0, 0, 8, 1, 2]);
        assert!(matches!(rx.at_eof(), Err(TcpError::Truncated { needed: 12, got: 6 })));
    }
}
