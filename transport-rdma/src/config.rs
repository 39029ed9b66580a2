//! Settings of the RDMA transport.

use std::time::Duration;

use crate::RdmaError;

/// How the completion poller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollMode {
    /// Spin on the completion queue for up to this long after the last completion, then arm
    /// notification and sleep on the completion channel (through tokio). The default.
    Adaptive(Duration),
    /// Never sleep: lowest latency, one core busy per connection for as long as it lives, idle
    /// or not, and taking turns with every other task on its runtime worker (as perftest's
    /// loop). For a server with many connections, or connections that go idle, prefer
    /// `Adaptive` with a budget longer than the gaps between its messages (say 1–10 ms): it
    /// spins as long while traffic flows and sleeps once a connection falls silent.
    BusyPoll,
}

/// One size class of large buffers: messages larger than a send slot (`RdmaConfig::buffer_size`)
/// go by RDMA WRITE with immediate into a buffer of the smallest class they fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LargeClass {
    /// Bytes per buffer: the largest message of this class.
    pub size: usize,
    /// Buffers per connection and direction: how many messages of this class can be in flight
    /// (and held by the receiving application) at once. With a single buffer, received messages
    /// of the class are always copied out, so the peer can always send the next one.
    pub count: u32,
}

/// Settings of one RDMA connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Device to use (e.g. "mlx5_0", "rxe0"); by default, the device that has a RoCE v2 GID for the
    /// local address of the TCP control connection, or else the InfiniBand port whose IPoIB
    /// interface has that address.
    pub device: Option<String>,
    /// Size of each registered slot: messages up to this size go as one two-sided SEND.
    pub buffer_size: usize,
    /// Registered send buffers per connection (and the send queue depth).
    pub send_buffers: u32,
    /// Registered receive buffers posted per connection: the peer's credit. One is kept for
    /// credit-only messages, so a receiver-not-ready never happens.
    pub recv_buffers: u32,
    /// Large-buffer classes, smallest first (a message uses the first class it fits); the
    /// largest is the largest message. Each class is
    /// registered once per connection for sending and once (with remote write access, its address
    /// and key sent to the peer in the handshake) for receiving. Both sides must use the same list.
    pub large_classes: Vec<LargeClass>,
    /// Completion polling.
    pub poll: PollMode,
    /// Messages up to this size are sent inline where the device supports it: the provider
    /// copies them into the work request at post time, and the device reads no send buffer
    /// for them (0: never). The default, 236 bytes, is perftest's for RC sends; it carries a
    /// small unary call's request and reply (108 and 82 bytes for a 64-byte echo). On rxe it
    /// took about 3 % off that round trip (BENCHMARKING.md, finding 24). A device that grants
    /// less gets what it grants; one that refuses gets a QP without inline sends.
    pub max_inline: u32,
}

/// Most large classes a connection can have (the class travels in 6 bits of the immediate).
pub const MAX_LARGE_CLASSES: usize = 64;

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            buffer_size: 128 * 1024,
            send_buffers: 64,
            recv_buffers: 64,
            // The session's default frame limit is 16 MiB + its 16-byte header: the last class
            // covers it with a page to spare.
            large_classes: vec![
                LargeClass { size: 1024 * 1024, count: 4 },
                LargeClass { size: 16 * 1024 * 1024 + 4096, count: 2 },
            ],
            poll: PollMode::Adaptive(Duration::from_micros(50)),
            max_inline: 236,
        }
    }
}

impl RdmaConfig {
    /// Registered bytes one connection needs: slots and large buffers, both directions.
    pub fn registered_bytes(&self) -> usize {
        let slots = self.buffer_size * (self.send_buffers as usize + self.recv_buffers as usize);
        let large: usize = self.large_classes.iter().map(|class| class.size * class.count as usize).sum();
        slots + 2 * large
    }

    /// The largest message a connection with these settings carries.
    pub fn max_message_size(&self) -> usize {
        self.large_classes.iter().map(|class| class.size).fold(self.buffer_size, usize::max)
    }

    /// Checks what the immediate value can name: at most [`MAX_LARGE_CLASSES`] classes of at most
    /// 2^24 buffers each, and fewer than 2^24 receive buffers (credit counts share its bits).
    pub(crate) fn check_limits(&self) -> Result<(), RdmaError> {
        const INDEXES: u32 = 1 << 24;
        if self.large_classes.len() > MAX_LARGE_CLASSES {
            let count = self.large_classes.len();
            return Err(RdmaError::Handshake(format!(
                "{count} large classes, at most {MAX_LARGE_CLASSES} are supported"
            )));
        }
        if let Some(class) = self.large_classes.iter().find(|c| c.count > INDEXES || c.count == 0 || c.size == 0) {
            return Err(RdmaError::Handshake(format!(
                "large class {class:?}: size and count must be non-zero, count ≤ 2^24"
            )));
        }
        if self.recv_buffers >= INDEXES {
            return Err(RdmaError::Handshake(format!(
                "{} receive buffers, fewer than 2^24 are supported",
                self.recv_buffers
            )));
        }
        Ok(())
    }

    /// Large buffers of all classes (per direction).
    pub(crate) fn large_buffers(&self) -> u32 {
        self.large_classes.iter().map(|class| class.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_the_session_frame_limit_and_limits_are_checked() {
        let config = RdmaConfig::default();
        assert!(config.max_message_size() >= 16 * 1024 * 1024 + 16, "a 16 MiB frame and its header fit");
        assert_eq!(config.registered_bytes(), 88 * 1024 * 1024 + 2 * 2 * 4096);
        assert!(config.check_limits().is_ok());
        let no_large = RdmaConfig { large_classes: Vec::new(), ..RdmaConfig::default() };
        assert_eq!(no_large.max_message_size(), no_large.buffer_size);
        let empty_class = RdmaConfig { large_classes: vec![LargeClass { size: 1 << 20, count: 0 }], ..config.clone() };
        assert!(empty_class.check_limits().is_err());
        let too_many = RdmaConfig { large_classes: vec![LargeClass { size: 4096, count: 1 }; 65], ..config };
        assert!(too_many.check_limits().is_err());
    }
}
