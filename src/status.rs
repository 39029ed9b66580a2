//! The status of a finished call, as it travels on the wire: a small `Status { code, message }`, with
//! codes numbered as gRPC's so that operators read them the same way.
//!
//! Local failures (a socket error, a frame that does not parse) are typed errors of their own layer;
//! they become a `Status` only where a call has to be told how it ended.

use std::fmt;

use crate::pb::rpc as pb;

/// Why a call ended. Numbered as gRPC's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The call succeeded.
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error that fits no other code (also: a code this version does not know).
    Unknown = 2,
    /// The request is invalid, whatever the server's state.
    InvalidArgument = 3,
    /// The deadline passed before the call finished.
    DeadlineExceeded = 4,
    /// Something the request names does not exist.
    NotFound = 5,
    /// Something the request would create already exists.
    AlreadyExists = 6,
    /// The caller may not do this.
    PermissionDenied = 7,
    /// A limit was hit: memory, calls in flight, message size.
    ResourceExhausted = 8,
    /// The system is not in the state the call needs.
    FailedPrecondition = 9,
    /// The call was aborted, e.g. by a conflict; retry at a higher level.
    Aborted = 10,
    /// A value is past the valid range.
    OutOfRange = 11,
    /// The server does not implement this method.
    Unimplemented = 12,
    /// An invariant broke: a bug, or bytes that do not decode.
    Internal = 13,
    /// The peer or connection is gone; retrying may help.
    Unavailable = 14,
    /// Data was lost or corrupted.
    DataLoss = 15,
    /// The caller is not authenticated.
    Unauthenticated = 16,
}

impl Code {
    /// The code for a number read from the wire; unknown numbers map to `Unknown`.
    pub fn from_u32(value: u32) -> Code {
        use Code::*;
        const ALL: [Code; 17] = [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ];
        usize::try_from(value).ok().and_then(|i| ALL.get(i).copied()).unwrap_or(Unknown)
    }

    /// Whether a caller may reasonably retry a call that ended with this code.
    pub fn is_retryable(self) -> bool {
        matches!(self, Code::Unavailable | Code::Aborted | Code::ResourceExhausted | Code::DeadlineExceeded)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a call ended: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: Code,
    /// What happened, for a person; may be empty.
    pub message: String,
}

impl Status {
    /// A status with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status { code, message: message.into() }
    }

    /// Success.
    pub fn ok() -> Self {
        Status::new(Code::Ok, "")
    }

    /// `Cancelled` with a message.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Status::new(Code::Cancelled, message)
    }

    /// `InvalidArgument` with a message.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Status::new(Code::InvalidArgument, message)
    }

    /// `DeadlineExceeded` with a message.
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Status::new(Code::DeadlineExceeded, message)
    }

    /// `NotFound` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Status::new(Code::NotFound, message)
    }

    /// `ResourceExhausted` with a message.
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Status::new(Code::ResourceExhausted, message)
    }

    /// `Unimplemented` with a message.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Status::new(Code::Unimplemented, message)
    }

    /// `Internal` with a message.
    pub fn internal(message: impl Into<String>) -> Self {
        Status::new(Code::Internal, message)
    }

    /// `Unavailable` with a message.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Status::new(Code::Unavailable, message)
    }

    /// `DataLoss` with a message.
    pub fn data_loss(message: impl Into<String>) -> Self {
        Status::new(Code::DataLoss, message)
    }

    /// Whether the code is `Ok`.
    pub fn is_ok(&self) -> bool {
        self.code == Code::Ok
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Status {
        pb::Status { code: self.code as u32, message: self.message.clone() }
    }

    /// From the wire form.
    pub fn from_proto(status: pb::Status) -> Self {
        Status { code: Code::from_u32(status.code), message: status.message }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() { write!(f, "{}", self.code) } else { write!(f, "{}: {}", self.code, self.message) }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_numbers() {
        for n in 0..17 {
            assert_eq!(Code::from_u32(n) as u32, n);
        }
        assert_eq!(Code::from_u32(17), Code::Unknown);
        assert_eq!(Code::from_u32(u32::MAX), Code::Unknown);
    }

    #[test]
    fn display_includes_code_and_message() {
        let status = Status::not_found("no dataset pool/x");
        assert_eq!(status.to_string(), "NotFound: no dataset pool/x");
        assert_eq!(Status::ok().to_string(), "Ok");
        assert_eq!(Status::from_proto(status.to_proto()), status);
    }
}
