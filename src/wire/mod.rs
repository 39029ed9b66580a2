//! The wire format: IO-free encoding and decoding of frames. Nothing here knows about sockets,
//! queue pairs or tokio; every function takes bytes and returns bytes or a typed [`WireError`].
//!
//! A frame is one transport message: a 16-byte [`FrameHeader`] (version, kind, flags, feature bits,
//! call id) and a body whose layout depends on the [`Kind`]. `ARCHITECTURE.md` documents it byte by
//! byte.

mod frame;
mod header;
#[cfg(test)]
mod proptests;

pub use frame::{CREDIT_BODY_LEN, Frame, PING_BODY_LEN, WireLimits};
pub use header::*;

/// A frame that cannot be accepted. The connection that sent it is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the format needs.
    #[error("truncated {what}: needed {needed} bytes, got {got}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A version this build does not speak.
    #[error("peer speaks wire version {got}, this build speaks {supported}: upgrade the older side")]
    UnsupportedVersion {
        /// The peer's version.
        got: u8,
        /// Ours.
        supported: u8,
    },
    /// A frame kind this version does not know.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// Flags not defined for this kind.
    #[error("flags {flags:#06x} are not valid on a {kind:?} frame")]
    UnknownFlags {
        /// The frame kind.
        kind: Kind,
        /// The flags.
        flags: u16,
    },
    /// A required feature bit this version does not implement.
    #[error("peer requires unknown feature bits {0:#010x}: upgrade this side")]
    UnknownRequiredFeature(u32),
    /// A length over the configured maximum.
    #[error("{what} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Which length.
        what: &'static str,
        /// Its value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A fixed-size body of the wrong size.
    #[error("{kind:?} frame body must be {expected} bytes, got {got}")]
    BadLength {
        /// The kind.
        kind: Kind,
        /// Its fixed size.
        expected: usize,
        /// What came.
        got: usize,
    },
    /// A body that does not parse.
    #[error("malformed {kind:?} frame: {reason}")]
    Malformed {
        /// The kind.
        kind: Kind,
        /// Why.
        reason: &'static str,
    },
}
