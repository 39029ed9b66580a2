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

/// Reads from the socket itself per yield to the runtime while busy-polling, as rdma-rpc's TCP
/// receiver does (`LOOKS_PER_YIELD` there).
const LOOKS_PER_YIELD: u32 = 8;

/// Something a [`FrameBuf`] reads from: a whole stream or its read half.
pub trait ReadSocket: AsyncRead + Unpin + Send {
    /// The stream.
    fn stream(&self) -> &TcpStream;
}

impl ReadSocket for TcpStream {
    fn stream(&self) -> &TcpStream {
        self
    }
}

impl ReadSocket for OwnedReadHalf {
    fn stream(&self) -> &TcpStream {
        self.as_ref()
    }
}

/// A non-blocking read from the socket itself, past tokio's readiness cache: what rdma-rpc's TCP
/// receiver spins on.
fn read_socket(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    io::Read::read(&mut &*socket2::SockRef::from(stream), buf)
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

    /// Reads once, waiting for data. With `busy_poll`, for [`BUSY_POLL_WINDOW`] first, it spins
    /// as rdma-rpc's TCP receiver does: tokio's non-blocking read, then [`LOOKS_PER_YIELD`] reads
    /// from the socket itself, then a yield to the runtime. Its buffer is initialised already, so
    /// each read takes all the spare room with no zero-fill, and it does not count spinners: if
    /// anything, the cheaper side of the comparison. Returns the bytes read, 0 at end of stream.
    pub async fn read_from<S: ReadSocket>(&mut self, socket: &mut S, busy_poll: bool) -> io::Result<usize> {
        self.make_room();
        let until = Instant::now() + BUSY_POLL_WINDOW;
        let read = 'read: loop {
            let spare = self.data.get_mut(self.filled..).unwrap_or_default();
            if !busy_poll || Instant::now() >= until {
                break socket.read(spare).await?;
            }
            match socket.stream().try_read(spare) {
                Ok(read) => break read,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err),
            }
            for _ in 0..LOOKS_PER_YIELD {
                match read_socket(socket.stream(), spare) {
                    Ok(read) => break 'read read,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
            tokio::task::yield_now().await;
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
