//! The error type of the TCP transport.

use std::io;

/// Everything that can go wrong while carrying messages over TCP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// A socket operation (read, write, shutdown, socket option) failed.
    #[error("TCP socket I/O failed: {0}")]
    Io(#[from] io::Error),

    /// Establishing the connection failed (refused, unreachable, timed out...).
    #[error(
        "cannot connect to {addr} over TCP: {source}; is a server listening? \
         start one with `rdma-rpc serve --listen tcp://{addr}`"
    )]
    Connect {
        /// The address that was tried (the last one, if the name resolved to several).
        addr: String,
        /// The underlying error reported by the operating system.
        source: io::Error,
    },

    /// A message is larger than [`TcpConfig::max_message_size`](crate::TcpConfig::max_message_size):
    /// either the peer announced one (the connection cannot be resynchronised
    /// and should be dropped), or the caller tried to send one (nothing was queued).
    #[error(
        "message of {len} bytes exceeds the maximum of {max} bytes \
         (raise `max_message_size` in the TCP config on both peers if this is intended)"
    )]
    MessageTooLarge {
        /// Length of the offending message, in bytes (without the length prefix).
        len: usize,
        /// The configured maximum, in bytes.
        max: usize,
    },

    /// The peer closed the connection in the middle of a frame.
    #[error(
        "peer closed the TCP connection in the middle of a message: \
         frame needed {needed} bytes, only {got} arrived"
    )]
    Truncated {
        /// Bytes the incomplete frame needed, length prefix included (4 while
        /// the prefix itself is incomplete).
        needed: usize,
        /// Bytes of that frame that were received.
        got: usize,
    },

    /// The connection is closed: it was shut down locally, or an earlier write
    /// failed and the sender refuses further use.
    #[error("TCP connection is closed")]
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_message_names_the_fix() {
        let err = TcpError::Connect {
            addr: "127.0.0.1:7000".to_owned(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let text = err.to_string();
        assert!(text.contains("is a server listening?"), "{text}");
        assert!(text.contains("`rdma-rpc serve --listen tcp://127.0.0.1:7000`"), "{text}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn io_errors_convert_and_keep_their_source() {
        let err: TcpError = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(matches!(err, TcpError::Io(_)));
        assert!(err.to_string().starts_with("TCP socket I/O failed"));
    }

    #[test]
    fn size_errors_report_both_numbers() {
        let text = TcpError::MessageTooLarge { len: 10, max: 5 }.to_string();
        assert!(text.contains("10") && text.contains('5'), "{text}");
        let text = TcpError::Truncated { needed: 8, got: 3 }.to_string();
        assert!(text.contains('8') && text.contains('3'), "{text}");
    }
}
