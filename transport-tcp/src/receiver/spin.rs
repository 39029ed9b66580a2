//! Busy-polling of a [`TcpReceiver`]: after a message, it spins on non-blocking reads for
//! [`TcpConfig::busy_poll`](crate::TcpConfig::busy_poll) before it sleeps in the reactor, so a reply
//! or the next request that comes within the window costs no wake-up.
//!
//! Tokio's own non-blocking read answers from its readiness cache once a read found nothing, and
//! only the runtime's next `epoll_wait` refreshes that cache: spinning on it costs a yield, a
//! scheduler turn and an `epoll_wait` per look, and data waits that long to be found. So the
//! spin reads the socket itself, [`LOOKS_PER_YIELD`] times between yields to the runtime
//! (measured on loopback, 64 B, one call in flight: 11.1 → 9.5 µs per round trip; the raw echo
//! that spins the same way, 9.3 → 8.0 µs). No wake-up can be lost by reading past the cache: data
//! that arrives after tokio last found nothing raises an epoll event, so the cache says readable
//! again, and the plain read it may then try just finds nothing and waits.
//!
//! A look that finds nothing is a system call, where a look at tokio's cache was not: with more
//! receivers spinning in the process than it has cores, they only take turns on each other's
//! cores, and the spin looks at the cache alone, as before (see [`Spinners`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::TcpReceiver;
use crate::error::TcpError;

/// Reads from the socket per yield to the runtime while busy-polling: a read that finds nothing
/// is one system call (a fraction of a microsecond), so other tasks on the worker wait at most a
/// few microseconds.
const LOOKS_PER_YIELD: u32 = 8;

/// Room a busy-polling read from the socket looks with (see [`TcpReceiver::look`]): the whole
/// frame of a 4 KiB message.
const LOOK_BYTES: usize = 8192;

/// Receivers of this process inside their spin now.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// The busy-polling window after the last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Spin {
    /// Sleep in the reactor.
    Off,
    /// Data was read; the window starts at the first read that finds nothing (so a read that
    /// returns data costs no clock read: that is the round trip's path).
    Armed,
    /// Spin until then.
    Until(Instant),
}

/// One receiver counted in [`SPINNING`] while it spins: dropped when its window ends, or with
/// the future of its read, which a `select!` may drop.
struct Spinners;

impl Spinners {
    fn enter() -> Self {
        SPINNING.fetch_add(1, Ordering::Relaxed);
        Spinners
    }

    /// Whether the socket itself is worth looking at: no more receivers spin than there are
    /// cores.
    fn few() -> bool {
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from));
        SPINNING.load(Ordering::Relaxed) <= cores
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TcpReceiver {
    /// Busy-polling, until data arrives or the window (which starts at the first look that finds
    /// nothing) passes; then a plain read. Cancel-safe like `recv`: what was read stays in the
    /// buffer, and nothing else is in it across an `.await`.
    ///
    /// First tokio's own non-blocking read, which reads all that is there; then, while few
    /// receivers spin, [`look`](Self::look)s at the socket itself; then a yield to the runtime.
    pub(super) async fn spin_read(&mut self) -> Result<usize, TcpError> {
        let spinning = Spinners::enter();
        loop {
            match self.reader.try_read_buf(&mut self.buf) {
                Ok(read) => return Ok(read),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) => return Err(err.into()),
            }
            if Spinners::few()
                && let Some(read) = self.look()?
            {
                return Ok(read);
            }
            let now = Instant::now();
            let until = match self.spin {
                Spin::Until(until) => until,
                Spin::Armed | Spin::Off => {
                    let until = now.checked_add(self.config.busy_poll.unwrap_or_default()).unwrap_or(now);
                    self.spin = Spin::Until(until);
                    until
                }
            };
            if now >= until {
                self.spin = Spin::Off;
                // Sleeping now: no longer one of the spinners.
                drop(spinning);
                return Ok(tokio::io::AsyncReadExt::read_buf(&mut self.reader, &mut self.buf).await?);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Up to [`LOOKS_PER_YIELD`] non-blocking reads from the socket itself, past tokio's
    /// readiness cache, into the buffer's spare room: `Some(bytes read)` once one returns (0 at
    /// the end of the stream), `None` if none found anything. Safe code reads only into
    /// initialised memory, so the room is zero-filled first, [`LOOK_BYTES`] of it, once for all
    /// the looks. A read that fills its room is followed at once by another, sized to the rest of
    /// the frame it began (or twice the room), so a large message takes two reads, not a read and
    /// another trip through the spin. The buffer is cut back to what was read before returning.
    fn look(&mut self) -> Result<Option<usize>, TcpError> {
        let room = self.spare_room(LOOK_BYTES);
        if room == 0 {
            return Ok(None);
        }
        let len = self.buf.len();
        self.buf.resize(len + room, 0);
        let mut outcome = Ok(None);
        for _ in 0..LOOKS_PER_YIELD {
            match read_socket(&self.reader, &mut self.buf[len..]) {
                Ok(read) => {
                    outcome = Ok(Some(read));
                    break;
                }
                Err(err) if is_retry(&err) => {}
                Err(err) => {
                    outcome = Err(TcpError::from(err));
                    break;
                }
            }
        }
        let Ok(Some(mut read)) = outcome else {
            self.buf.truncate(len);
            return outcome;
        };
        self.buf.truncate(len + read);
        let mut total = read;
        let mut last_room = room;
        while read == last_room {
            let needed = self.deframer.bytes_needed(&self.buf);
            last_room = self.spare_room(needed.max(2 * last_room));
            if last_room == 0 {
                break;
            }
            let len = self.buf.len();
            self.buf.resize(len + last_room, 0);
            let more = read_socket(&self.reader, &mut self.buf[len..]);
            read = *more.as_ref().unwrap_or(&0);
            self.buf.truncate(len + read);
            match more {
                Ok(_) => total += read,
                Err(err) if is_retry(&err) => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(Some(total))
    }

    /// Up to `want` bytes of the buffer's spare capacity, within the read reserve.
    fn spare_room(&self, want: usize) -> usize {
        (self.buf.capacity() - self.buf.len()).min(want).min(self.read_reserve)
    }
}

/// A non-blocking read from the socket itself, past tokio's readiness cache.
fn read_socket(reader: &tokio::net::tcp::OwnedReadHalf, buf: &mut [u8]) -> std::io::Result<usize> {
    let stream: &tokio::net::TcpStream = reader.as_ref();
    std::io::Read::read(&mut &*socket2::SockRef::from(stream), buf)
}

/// Whether a read that failed so should be tried again: nothing there yet, or a signal.
fn is_retry(err: &std::io::Error) -> bool {
    matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::receiver::tests::receiver;

    /// Looks until one returns.
    async fn look_until_read(rx: &mut TcpReceiver) -> usize {
        loop {
            if let Some(read) = rx.look().expect("look") {
                return read;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_look_reads_what_is_there_and_leaves_nothing_else_in_the_buffer() {
        let (mut rx, mut peer) = receiver().await;
        assert_eq!(rx.look().expect("nothing yet"), None);
        assert_eq!(rx.buffered_bytes(), 0, "the zero-filled room is cut back");
        peer.write_all(&[0, 0, 0, 2, b'h', b'i']).await.expect("write");
        assert_eq!(look_until_read(&mut rx).await, 6);
        assert_eq!(rx.try_recv().expect("valid").as_deref(), Some(&b"hi"[..]));
        drop(peer);
        assert_eq!(look_until_read(&mut rx).await, 0, "the peer's end reads as 0");
    }

    #[tokio::test]
    async fn a_look_reads_a_large_message_whole() {
        let (mut rx, mut peer) = receiver().await;
        // A frame of three times the look's room: its prefix, then the rest.
        let body = 3 * LOOK_BYTES - 4;
        let mut frame = (body as u32).to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(7u8, body));
        peer.write_all(&frame).await.expect("write");
        // All of it arrived (loopback may deliver it in parts).
        let mut arrived = vec![0; frame.len()];
        while rx.reader.peek(&mut arrived).await.expect("peek") < frame.len() {
            tokio::task::yield_now().await;
        }
        assert_eq!(look_until_read(&mut rx).await, frame.len(), "one look takes it all");
        let message = rx.try_recv().expect("valid").expect("complete");
        assert_eq!(message.len(), body);
        assert!(message.iter().all(|&byte| byte == 7));
        assert_eq!(rx.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn a_receiver_that_sleeps_after_its_window_is_not_a_spinner() {
        const RECEIVERS: usize = 32;
        let mut pairs = Vec::new();
        for _ in 0..RECEIVERS {
            let (mut rx, peer) = receiver().await;
            rx.config.busy_poll = Some(std::time::Duration::ZERO);
            rx.spin = Spin::Armed;
            pairs.push((rx, peer));
        }
        let before = SPINNING.load(Ordering::Relaxed);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut reads: Vec<_> = pairs.iter_mut().map(|(rx, _)| Box::pin(rx.recv())).collect();
        for read in &mut reads {
            // The window is zero: each spins once, then waits in the reactor.
            assert!(read.as_mut().poll(&mut cx).is_pending());
        }
        // Other tests' receivers come and go, but not this many.
        assert!(SPINNING.load(Ordering::Relaxed) < before + RECEIVERS / 2, "sleeping receivers counted as spinners");
    }

    #[test]
    fn spinners_are_counted_while_they_live() {
        // Other tests' receivers may spin meanwhile: compare against a count taken with ours in.
        let ours = Spinners::enter();
        let with_ours = SPINNING.load(Ordering::Relaxed);
        let many: Vec<Spinners> = (0..1024).map(|_| Spinners::enter()).collect();
        assert!(!Spinners::few(), "more spinners than cores");
        drop(many);
        // Other tests' receivers come and go, but not a thousand of them.
        assert!(SPINNING.load(Ordering::Relaxed) < with_ours + 16, "dropping a spinner uncounts it");
        drop(ours);
    }
}
