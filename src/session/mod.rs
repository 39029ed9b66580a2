//! The IO-free session: one connection's state machine, in the style of quinn-proto.
//!
//! A [`Session`] multiplexes many calls (unary, client-, server- and bidirectional streaming) over
//! one connection. It never touches a socket, a queue pair or a clock: the driver feeds it decoded
//! frames with [`Session::handle_frame`], tells it the time with [`Session::handle_timeout`], hands
//! it outgoing call data, and drains what it decided with [`Session::poll_transmit`] (frames to
//! send), [`Session::poll_event`] (what the application must learn; [`Session::take_request`] and
//! [`Session::take_closed`] take the event that belongs with the one just polled) and
//! [`Session::poll_timeout`] (when to wake it next). Every behaviour is therefore testable with
//! virtual time.
//!
//! It owns:
//! - flow control: byte credits per call and per connection, granted as the application consumes
//!   data; control frames (credit, ping, trailer, goaway) are never held back by credit, so a
//!   connection whose data windows are exhausted can always return credit and cancel calls;
//! - deadlines (sent to the server as a relative timeout, enforced on both sides) and
//!   cancellation both ways;
//! - keepalive (PING after `keepalive_interval` of silence, dead after `keepalive_timeout`);
//! - graceful shutdown: GOAWAY names the last call accepted, in-flight calls drain.

mod config;
mod flow;
mod id_map;
mod machine;
mod queue;
#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use config::{ConfigError, SessionConfig};
pub(crate) use id_map::IdMap;
pub use machine::Session;

use crate::pb::rpc as pb;
use crate::status::Status;
use crate::wire::{Frame, FrameHeader};

/// Which end of the connection a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens calls.
    Client,
    /// Accepts calls.
    Server,
}

/// The body of an outgoing data frame, as the driver holds it: an encoded transport buffer or a
/// payload. The session only needs its length, for flow control.
pub trait Body {
    /// Body bytes, header excluded.
    fn body_len(&self) -> usize;
}

impl Body for Bytes {
    fn body_len(&self) -> usize {
        self.len()
    }
}

/// Something to send.
#[derive(Debug)]
pub enum Transmit<B> {
    /// A frame the driver encodes itself (small: settings, credit, ping, trailer, goaway).
    Control(Frame),
    /// A CALL, MESSAGE or DATA frame whose body the application already encoded.
    Data {
        /// Header to write in front of the body.
        header: FrameHeader,
        /// The body.
        body: B,
    },
}

/// What the application must learn.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// Server: the peer opened a call. Its first message, if any, follows as `Message`.
    Incoming {
        /// The call.
        id: u64,
        /// Method, timeout, metadata.
        header: pb::CallHeader,
    },
    /// A protobuf message arrived. `end`: the peer sends nothing more on this call.
    Message {
        /// The call.
        id: u64,
        /// The encoded message.
        body: Bytes,
        /// Peer half-closed with this message.
        end: bool,
    },
    /// Raw stream data arrived.
    Data {
        /// The call.
        id: u64,
        /// The bytes.
        body: Bytes,
        /// Peer half-closed with this chunk.
        end: bool,
    },
    /// The peer half-closed the call without data.
    RemoteEnd {
        /// The call.
        id: u64,
    },
    /// The call is over: trailer received, deadline passed, cancelled, or connection lost. No more
    /// events follow for it.
    Closed {
        /// The call.
        id: u64,
        /// How it ended.
        status: Status,
    },
    /// The peer is shutting down; calls above `last_call_id` were not processed.
    GoAway {
        /// The last call the peer processes.
        last_call_id: u64,
        /// Why.
        status: Status,
    },
    /// The connection is over: every open call got `Closed` before this.
    ConnectionClosed(Status),
}

/// A peer that broke the protocol. The driver closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent more than the credit it was granted.
    #[error("flow control violated on call {id}: {len} bytes sent with {credit} bytes of credit")]
    FlowControl {
        /// The call (0: the connection).
        id: u64,
        /// Frame body size.
        len: usize,
        /// Credit the peer had.
        credit: u64,
    },
    /// A frame that makes no sense in the current state.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer's SETTINGS cannot work.
    #[error("peer settings rejected: {0}")]
    Settings(String),
}

impl SessionError {
    /// The status the peer is told (in GOAWAY) and the calls end with.
    pub fn to_status(&self) -> Status {
        Status::internal(self.to_string())
    }
}
