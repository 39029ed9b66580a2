//! [`FrameBuf`]: the read side of the raw TCP baselines. Messages are a big-endian `u32` length
//! and that many bytes; one read takes whatever the socket holds (many messages at once when
//! they are pipelined), as rdma-rpc's own receiver does, so the baselines pay one `recv` per
//! batch, not two per message.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// How long the busy-polling raw echo spins after each message before it sleeps in epoll: the
/// same window as rdma-rpc's default (`TcpConfig::DEFAULT_SPIN`).
pub const BUSY_POLL_WINDOW: Duration = Duration::from_micros(50);

/// Bytes read ahead of a read, at least.
const READ_AHEAD: usize = 64 * 1024;

/// Length prefix of every message.
const PREFIX: usize = 4;

/// A read buffer of length-prefixed messages: `data[start..filled]` holds what was read and not
/// yet consumed. Its allocation is reused, so steady-state reads allocate nothing.
#[derive(Debug, Default)]
pub struct FrameBuf {
    data: Vec<u8>,
    start: usize,
    filled: usize,
}

/// Something a [`FrameBuf`] reads from: a whole stream or its read half.
pub trait ReadSocket: AsyncRead + Unpin + Send {
    /// A non-blocking read (`WouldBlock` when nothing is there).
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadSocket for TcpStream {
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

impl ReadSocket for OwnedReadHalf {
    fn try_read_now(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.try_read(buf)
    }
}

impl FrameBuf {
    /// The length of the next message's body, once its prefix is in.
    fn next_len(&self) -> Option<usize> {
        let prefix = self.data.get(self.start..self.start + PREFIX)?;
        let prefix: [u8; PREFIX] = prefix.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(prefix)).ok()
    }

    /// Whether a complete message is buffered.
    pub fn has_message(&self) -> bool {
        self.next_len().is_some_and(|len| self.start + PREFIX + len <= self.filled)
    }

    /// The body of the next message if it is complete, consuming it.
    pub fn pop(&mut self) -> Option<&[u8]> {
        let body = self.start + PREFIX;
        let end = body + self.next_len()?;
        if end > self.filled {
            return None;
        }
        self.start = end;
        self.data.get(body..end)
    }

    /// The bytes of every complete message at the front (prefixes included), consumed: what an
    /// echo writes back in one write.
    pub fn pop_all(&mut self) -> &[u8] {
        let from = self.start;
        while self.pop().is_some() {}
        self.data.get(from..self.start).unwrap_or_default()
    }

    /// Reads once, waiting for data (with `busy_poll`, by non-blocking reads between yields to the
    /// runtime for [`BUSY_POLL_WINDOW`] first). Returns the bytes read, 0 at end of stream.
    pub async fn read_from<S: ReadSocket>(&mut self, socket: &mut S, busy_poll: bool) -> io::Result<usize> {
        self.make_room();
        let until = Instant::now() + BUSY_POLL_WINDOW;
        let read = loop {
            let spare = self.data.get_mut(self.filled..).unwrap_or_default();
            if !busy_poll {
                break socket.read(spare).await?;
            }
            match socket.try_read_now(spare) {
                Ok(read) => break read,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock && Instant::now() < until => {
                    tokio::task::yield_now().await;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break socket.read(spare).await?,
                Err(err) => return Err(err),
            }
        };
        self.filled += read;
        Ok(read)
    }

    /// Moves unconsumed bytes to the front and makes room for the rest of the next message and
    /// [`READ_AHEAD`] more.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.data.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let needed = self.next_len().map_or(0, |len| PREFIX + len);
        let want = self.filled.max(needed) + READ_AHEAD;
        if self.data.len() < want {
            self.data.resize(want, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn fill(buf: &mut FrameBuf, bytes: &[u8]) {
        buf.make_room();
        buf.data[buf.filled..buf.filled + bytes.len()].copy_from_slice(bytes);
        buf.filled += bytes.len();
    }

    #[test]
    fn complete_messages_pop_and_a_partial_one_waits() {
        let mut buf = FrameBuf::default();
        let mut bytes = [message(b"ab"), message(b""), message(b"cde")].concat();
        let partial = message(b"fghij");
        bytes.extend_from_slice(&partial[..6]);
        fill(&mut buf, &bytes);
        assert_eq!(buf.pop_all(), &bytes[..bytes.len() - 6]);
        assert_eq!(buf.pop(), None);
        fill(&mut buf, &partial[6..]);
        assert_eq!(buf.pop(), Some(&b"fghij"[..]));
        assert_eq!(buf.pop(), None);
    }
}
