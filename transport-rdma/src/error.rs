//! Errors of the RDMA transport. [`RdmaError::is_unavailable`] separates "this host or peer cannot
//! do RDMA" (the caller may fall back to TCP) from failures of an RDMA connection that was possible.

use std::io;

/// An RDMA failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// RDMA cannot work here: no libibverbs, no device, no active port, no GID for the address.
    #[error("RDMA unavailable: {reason}")]
    Unavailable {
        /// Why, with what to do about it.
        reason: String,
    },
    /// The peer cannot or will not do RDMA.
    #[error("peer refused RDMA: {reason}")]
    PeerRefused {
        /// The peer's reason.
        reason: String,
    },
    /// A verbs call failed.
    #[error("{op} failed: {source}")]
    Verbs {
        /// Which verb, with context (device, qp number).
        op: String,
        /// The error the library reported.
        #[source]
        source: io::Error,
    },
    /// Registering memory failed because the locked-memory limit is too low.
    #[error(
        "cannot register {needed} bytes of memory: the locked-memory limit (RLIMIT_MEMLOCK) is {limit} bytes; raise \
         it with `ulimit -l unlimited` (or LimitMEMLOCK=infinity in the systemd unit), or lower the buffer counts"
    )]
    MemLock {
        /// Bytes the pools need.
        needed: usize,
        /// The current soft limit.
        limit: u64,
    },
    /// The RDMA handshake over the TCP connection failed.
    #[error("RDMA handshake failed: {0}")]
    Handshake(String),
    /// The TCP control connection failed.
    #[error(transparent)]
    Tcp(#[from] rdma_rpc_transport_tcp::TcpError),
    /// A work completion failed: the queue pair is in error and the connection is over.
    #[error("work completion failed on qp {qp_num}: {status} (wr_id {wr_id}); the connection is closed")]
    Completion {
        /// The queue pair.
        qp_num: u32,
        /// The status, as verbs names it.
        status: String,
        /// The work request.
        wr_id: u64,
    },
    /// The peer broke the transport's rules (e.g. wrote into a buffer it did not hold).
    #[error("RDMA protocol violation by the peer: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("RDMA connection closed: {0}")]
    Closed(String),
    /// A message larger than one registered buffer.
    #[error(
        "message of {len} bytes exceeds the largest RDMA buffer of {max}: add a larger RdmaConfig::large_classes entry"
    )]
    TooLarge {
        /// The message.
        len: usize,
        /// The buffer size.
        max: usize,
    },
}

impl RdmaError {
    /// Whether a caller may fall back to TCP: RDMA was not possible at all, as opposed to an RDMA
    /// connection that failed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, RdmaError::Unavailable { .. } | RdmaError::PeerRefused { .. } | RdmaError::MemLock { .. })
    }

    pub(crate) fn verbs(op: impl Into<String>, source: impl Into<io::Error>) -> Self {
        RdmaError::Verbs { op: op.into(), source: source.into() }
    }
}
