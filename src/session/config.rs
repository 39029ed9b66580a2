//! Session limits and timers, with defaults sized for bulk replication streams.

use std::time::Duration;

use crate::pb::rpc as pb;
use crate::wire::HEADER_LEN;

/// Limits and timers of one connection's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Largest frame this side accepts (header included). Also bounds one message.
    pub max_frame_size: usize,
    /// Bytes of call data the peer may send on one call before this side grants more.
    pub initial_call_window: u64,
    /// Bytes of call data the peer may have in flight on the whole connection. This side returns
    /// connection credit as frames arrive; what a slow application makes it buffer is bounded by
    /// the per-call windows: at most `max_concurrent_calls * initial_call_window` bytes.
    pub connection_window: u64,
    /// Calls the peer may have open towards this side at once; more are refused with
    /// `ResourceExhausted`.
    pub max_concurrent_calls: u32,
    /// Send a PING after this long without hearing from the peer.
    pub keepalive_interval: Duration,
    /// Declare the peer dead when a PING is unanswered (and nothing else arrives) for this long.
    pub keepalive_timeout: Duration,
    /// Free text sent in SETTINGS, for the peer's logs.
    pub agent: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame_size: 16 * 1024 * 1024 + HEADER_LEN,
            initial_call_window: 32 * 1024 * 1024,
            connection_window: 128 * 1024 * 1024,
            max_concurrent_calls: 16_384,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            agent: concat!("rdma-rpc/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A window smaller than one frame would let a large frame wait for credit forever.
    #[error(
        "initial_call_window ({window}) and connection_window must be at least max_frame_size ({frame}): raise the windows or lower max_frame_size"
    )]
    WindowBelowFrame {
        /// The smaller window.
        window: u64,
        /// The frame size.
        frame: usize,
    },
    /// A frame must hold at least its header.
    #[error("max_frame_size ({0}) must be at least {HEADER_LEN} and fit in 32 bits")]
    FrameSize(usize),
    /// Keepalive timers that cannot work.
    #[error("keepalive_interval and keepalive_timeout must be non-zero")]
    Keepalive,
}

impl SessionConfig {
    /// Checks that the limits are consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size < HEADER_LEN || u32::try_from(self.max_frame_size).is_err() {
            return Err(ConfigError::FrameSize(self.max_frame_size));
        }
        let frame = self.max_frame_size as u64;
        let window = self.initial_call_window.min(self.connection_window);
        if window < frame {
            return Err(ConfigError::WindowBelowFrame { window, frame: self.max_frame_size });
        }
        if self.keepalive_interval.is_zero() || self.keepalive_timeout.is_zero() {
            return Err(ConfigError::Keepalive);
        }
        Ok(())
    }

    /// The SETTINGS frame body announcing this configuration.
    pub fn to_settings(&self) -> pb::Settings {
        pb::Settings {
            max_frame_size: u32::try_from(self.max_frame_size).unwrap_or(u32::MAX),
            initial_call_window: self.initial_call_window,
            connection_window: self.connection_window,
            max_concurrent_calls: self.max_concurrent_calls,
            features: 0,
            agent: self.agent.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(SessionConfig::default().validate(), Ok(()));
    }

    #[test]
    fn window_below_frame_is_refused_with_the_fix() {
        let config = SessionConfig { initial_call_window: 1024, ..SessionConfig::default() };
        let err = config.validate().expect_err("window below frame");
        assert!(err.to_string().contains("raise the windows"), "{err}");
    }
}
