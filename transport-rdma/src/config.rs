//! Settings of the RDMA transport.

use std::time::Duration;

/// How the completion poller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PollMode {
    /// Spin on the completion queue for up to this long after the last completion, then arm
    /// notification and sleep on the completion channel (through tokio). The default.
    Adaptive(Duration),
    /// Never sleep: lowest latency, one core busy per connection for as long as it lives.
    BusyPoll,
}

/// Settings of one RDMA connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaConfig {
    /// Device to use (e.g. "mlx5_0", "rxe0"); by default, the device that has a RoCE v2 (or IB) GID
    /// for the local address of the TCP control connection.
    pub device: Option<String>,
    /// Size of each registered buffer: the largest message the transport carries.
    pub buffer_size: usize,
    /// Registered send buffers per connection (and the send queue depth).
    pub send_buffers: u32,
    /// Registered receive buffers posted per connection: the peer's credit. One is kept for
    /// credit-only messages, so a receiver-not-ready never happens.
    pub recv_buffers: u32,
    /// Completion polling.
    pub poll: PollMode,
    /// Messages up to this size are sent inline where the device supports it (0: never; rxe
    /// gains nothing from it).
    pub max_inline: u32,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            buffer_size: 128 * 1024,
            send_buffers: 64,
            recv_buffers: 64,
            poll: PollMode::Adaptive(Duration::from_micros(50)),
            max_inline: 0,
        }
    }
}

impl RdmaConfig {
    /// Registered bytes one connection needs.
    pub fn registered_bytes(&self) -> usize {
        self.buffer_size * (self.send_buffers as usize + self.recv_buffers as usize)
    }
}
