//! Tunables of the TCP transport.

/// Smallest read reservation the receiver uses, whatever
/// [`TcpConfig::read_buffer`] says, so a tiny setting cannot degrade into
/// byte-sized reads.
pub(crate) const MIN_READ_RESERVE: usize = 1024;

/// Configuration of a TCP connection; both peers should agree on
/// [`max_message_size`](Self::max_message_size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// Largest message accepted or sent, in bytes, excluding the 4-byte length
    /// prefix. Incoming length prefixes above it are rejected before any
    /// allocation. Values above `u32::MAX` are capped at `u32::MAX`, the most
    /// the prefix can express. Default: 16 MiB + 4096 (a 16 MiB payload plus
    /// room for the RPC header).
    pub max_message_size: usize,
    /// Set `TCP_NODELAY` on the socket (disable Nagle's algorithm). The sender
    /// batches on its own, so this is on by default.
    pub nodelay: bool,
    /// Initial capacity of the receive buffer, and the amount reserved when it
    /// runs low, in bytes. Default: 64 KiB.
    pub read_buffer: usize,
    /// Once this many bytes are queued in a batch,
    /// [`TcpSender::send_batched`](crate::TcpSender::send_batched) flushes
    /// (see also [`TcpSender::batch_full`](crate::TcpSender::batch_full)).
    /// Default: 256 KiB.
    pub max_batch_bytes: usize,
    /// Busy-poll the socket for up to this long after each message received (counted from the
    /// first read that finds nothing) before sleeping in the reactor (epoll): a reply or request
    /// that comes within the window is read without a wake-up from the kernel, which is most of a
    /// loopback or LAN round trip. The spin reads the socket itself, 8 times between yields to the
    /// runtime's other tasks (a few microseconds), while no more receivers spin than there are
    /// cores. It costs CPU only while a connection that just received waits for more, at most the
    /// window per message. `None` sleeps at once (the least CPU, a wake-up per message). Default:
    /// [`DEFAULT_SPIN`](Self::DEFAULT_SPIN), as the RDMA transport's adaptive polling.
    pub busy_poll: Option<std::time::Duration>,
}

impl TcpConfig {
    /// Default [`max_message_size`](Self::max_message_size): 16 MiB + 4096.
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024 + 4096;
    /// Default [`read_buffer`](Self::read_buffer): 64 KiB.
    pub const DEFAULT_READ_BUFFER: usize = 64 * 1024;
    /// Default [`max_batch_bytes`](Self::max_batch_bytes): 256 KiB.
    pub const DEFAULT_MAX_BATCH_BYTES: usize = 256 * 1024;
    /// Default [`busy_poll`](Self::busy_poll): 50 µs, longer than a request-reply turn on
    /// loopback or a LAN, so back-to-back calls never sleep between messages.
    pub const DEFAULT_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

    /// The maximum message size actually enforced:
    /// [`max_message_size`](Self::max_message_size) capped at `u32::MAX`.
    pub fn effective_max_message_size(&self) -> usize {
        self.max_message_size.min(u32_max_as_usize())
    }

    /// How many bytes the receiver reserves when its buffer runs low.
    pub(crate) fn read_reserve(&self) -> usize {
        self.read_buffer.max(MIN_READ_RESERVE)
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            max_message_size: Self::DEFAULT_MAX_MESSAGE_SIZE,
            nodelay: true,
            read_buffer: Self::DEFAULT_READ_BUFFER,
            max_batch_bytes: Self::DEFAULT_MAX_BATCH_BYTES,
            busy_poll: Some(Self::DEFAULT_SPIN),
        }
    }
}

/// `u32::MAX` as a `usize`, saturating on (hypothetical) 16-bit targets.
pub(crate) fn u32_max_as_usize() -> usize {
    usize::try_from(u32::MAX).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = TcpConfig::default();
        assert_eq!(config.max_message_size, 16 * 1024 * 1024 + 4096);
        assert!(config.nodelay);
        assert_eq!(config.read_buffer, 64 * 1024);
        assert_eq!(config.max_batch_bytes, 256 * 1024);
        assert_eq!(config.busy_poll, Some(std::time::Duration::from_micros(50)));
    }

    #[test]
    fn effective_maximum_is_capped_by_the_prefix_width() {
        let mut config = TcpConfig { max_message_size: usize::MAX, ..TcpConfig::default() };
        assert_eq!(config.effective_max_message_size(), u32_max_as_usize());
        config.max_message_size = 100;
        assert_eq!(config.effective_max_message_size(), 100);
    }

    #[test]
    fn read_reserve_has_a_floor() {
        let config = TcpConfig { read_buffer: 0, ..TcpConfig::default() };
        assert_eq!(config.read_reserve(), MIN_READ_RESERVE);
        assert_eq!(TcpConfig::default().read_reserve(), 64 * 1024);
    }
}
