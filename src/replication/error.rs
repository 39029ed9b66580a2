//! [`ReplicationError`]: what can go wrong while replicating, typed, with whether a retry can help.
//!
//! Errors cross the wire as a [`Status`]: the code says retryable or permanent (see
//! [`Code::is_retryable`]; `DataLoss`, a checksum or truncation, is retryable too because the
//! stream is sent again), and the message carries the detail, including the tail of a failed child
//! command's stderr.

use crate::status::{Code, Status};

/// A replication failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// A filesystem, snapshot or path name that is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An endpoint URL or spec that cannot work.
    #[error("invalid endpoint {spec:?}: {reason}")]
    InvalidEndpoint {
        /// The spec as given.
        spec: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The two sides cannot be reconciled without an operator.
    #[error("{0}")]
    Conflict(String),
    /// A chunk whose checksum does not match its bytes.
    #[error(
        "chunk at stream offset {offset} ({len} bytes) is corrupt: CRC32C {actual:#010x}, sender said {expected:#010x}"
    )]
    Checksum {
        /// Stream offset of the chunk.
        offset: u64,
        /// Its length.
        len: usize,
        /// The checksum the sender computed.
        expected: u32,
        /// The checksum of the bytes received.
        actual: u32,
    },
    /// Chunks out of order, missing, or a stream that ended early.
    #[error("stream broken at offset {offset}: {reason}")]
    Stream {
        /// Where.
        offset: u64,
        /// What.
        reason: String,
    },
    /// The peer broke the replication protocol (a bug or a version mismatch, not line noise):
    /// retrying would fail the same way.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A child command (`btrfs`, `zfs`) failed.
    #[error("`{command}` failed ({status}){}", stderr_suffix(.stderr_tail))]
    Command {
        /// The command line, for the operator.
        command: String,
        /// Its exit status, or why it could not run.
        status: String,
        /// The last lines of its stderr.
        stderr_tail: String,
    },
    /// A local file or pipe failed.
    #[error("{context}: {source}{}", io_hint(.source))]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer or the connection failed; the status says whether a retry can help.
    #[error("{0}")]
    Remote(Status),
}

fn io_hint(err: &std::io::Error) -> &'static str {
    match err.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            " (free space on the target, then run replicate again: it resumes)"
        }
        std::io::ErrorKind::PermissionDenied => " (run as a user that may write there, e.g. root for btrfs/zfs)",
        _ => "",
    }
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() { String::new() } else { format!(": {}", tail.trim_end()) }
}

impl ReplicationError {
    /// An IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ReplicationError::Io { context: context.into(), source }
    }

    /// A protocol violation.
    pub fn protocol(reason: impl Into<String>) -> Self {
        ReplicationError::Protocol(reason.into())
    }

    /// A broken stream at `offset`.
    pub fn stream(offset: u64, reason: impl Into<String>) -> Self {
        ReplicationError::Stream { offset, reason: reason.into() }
    }

    /// The status code this error travels with.
    pub fn code(&self) -> Code {
        match self {
            ReplicationError::InvalidName { .. } | ReplicationError::InvalidEndpoint { .. } => Code::InvalidArgument,
            ReplicationError::NotFound(_) => Code::NotFound,
            ReplicationError::Conflict(_) => Code::FailedPrecondition,
            ReplicationError::Checksum { .. } | ReplicationError::Stream { .. } => Code::DataLoss,
            ReplicationError::Protocol(_) => Code::InvalidArgument,
            ReplicationError::Command { .. } => Code::Internal,
            ReplicationError::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => Code::NotFound,
                std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
                // Resending into a full disk cannot help: an operator must free space first.
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => Code::FailedPrecondition,
                _ => Code::Internal,
            },
            ReplicationError::Remote(status) => status.code,
        }
    }

    /// Whether running the transfer again can succeed: connection trouble, a corrupt or truncated
    /// chunk. Bad names, conflicts and failing commands need an operator.
    pub fn is_retryable(&self) -> bool {
        let code = self.code();
        code.is_retryable() || code == Code::DataLoss || code == Code::Cancelled
    }

    /// "retryable" or "permanent", for messages.
    pub fn kind_word(&self) -> &'static str {
        if self.is_retryable() { "retryable" } else { "permanent" }
    }

    /// The status that carries this error over the wire.
    pub fn to_status(&self) -> Status {
        match self {
            ReplicationError::Remote(status) => status.clone(),
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<Status> for ReplicationError {
    fn from(status: Status) -> Self {
        ReplicationError::Remote(status)
    }
}

impl From<ReplicationError> for Status {
    fn from(err: ReplicationError) -> Self {
        err.to_status()
    }
}

/// Short for results of this module.
pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let corrupt = ReplicationError::Checksum { offset: 4096, len: 10, expected: 1, actual: 2 };
        assert!(corrupt.is_retryable());
        assert_eq!(corrupt.to_status().code, Code::DataLoss);
        assert!(corrupt.to_string().contains("offset 4096"));
        let name = ReplicationError::InvalidName { name: "a;b".into(), reason: "no" };
        assert!(!name.is_retryable());
        let cmd = ReplicationError::Command {
            command: "btrfs receive /x".into(),
            status: "exit status: 1".into(),
            stderr_tail: "ERROR: no space\n".into(),
        };
        assert!(!cmd.is_retryable());
        assert!(cmd.to_string().ends_with("ERROR: no space"), "{cmd}");
        assert!(ReplicationError::Remote(Status::unavailable("gone")).is_retryable());
        assert!(!ReplicationError::protocol("a second header").is_retryable());
        let full = ReplicationError::io("writing", std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!full.is_retryable() && full.to_string().contains("free space"), "{full}");
    }
}
