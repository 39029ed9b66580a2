//! What call handles tell their connection's driver (what it tells them is in `events.rs`).
//!
//! Handles queue them in the connection's mailbox (`mailbox.rs`): commands carrying a body
//! encoded into the transport's own buffers (client calls) and everything else (raw `Bytes`
//! payloads, replies, half-close, cancellation, credit) share one queue, so the driver applies
//! them in the order they were sent: a stream's End or cancel cannot overtake its Open or last
//! message.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

pub(crate) use super::events::{CallEvent, CallRef, CallShared};
use crate::session::Body;
use crate::status::Status;
use crate::transport::SendBuffer;
use crate::wire::{HEADER_LEN, Kind};

/// The body of an outgoing data frame as the driver holds it.
#[derive(Debug)]
pub(crate) enum Outgoing<B> {
    /// A transport buffer holding `HEADER_LEN` bytes of room for the header, then the body.
    Buf(B),
    /// A payload that follows a separately encoded header (never copied by TCP).
    Bytes(Bytes),
    /// A heap buffer holding `HEADER_LEN` bytes of room for the header, then the body (written
    /// with one buffer less than `Bytes`, and reusable by the transport once written).
    Framed(BytesMut),
}

impl<B: SendBuffer> Body for Outgoing<B> {
    fn body_len(&self) -> usize {
        match self {
            Outgoing::Buf(buf) => buf.len().saturating_sub(HEADER_LEN),
            Outgoing::Bytes(bytes) => bytes.len(),
            Outgoing::Framed(bytes) => bytes.len().saturating_sub(HEADER_LEN),
        }
    }
}

/// A call's method as the driver keeps it, for the "call finished" log line only.
#[derive(Debug, Clone)]
pub(crate) enum MethodName {
    /// A served method: the router's own copy of the path, so naming it costs no allocation.
    Static(&'static str),
    /// A client's method, kept only while debug logging is on (it costs an allocation per call).
    Shared(Arc<str>),
    /// Not kept: debug logging was off when the call opened.
    Unrecorded,
}

impl std::fmt::Display for MethodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MethodName::Static(name) => f.write_str(name),
            MethodName::Shared(name) => f.write_str(name),
            MethodName::Unrecorded => f.write_str("?"),
        }
    }
}

/// Commands that carry a transport buffer (client side).
#[derive(Debug)]
pub(crate) enum BufCommand<B> {
    /// Open a call with an encoded CALL body.
    Open {
        id: u64,
        method: MethodName,
        timeout: Option<Duration>,
        body: B,
        has_message: bool,
        end: bool,
        /// The call's events: dropped unprocessed (the connection ended first), it closes the call.
        events: super::events::EventSender,
    },
    /// Send an encoded MESSAGE, or DATA the application wrote into a transport buffer.
    Send { id: u64, kind: Kind, body: B, end: bool, ack: Option<oneshot::Sender<()>> },
}

/// Commands without a transport buffer (both sides).
#[derive(Debug)]
pub(crate) enum CallCommand {
    /// Send a MESSAGE or DATA frame whose body is `body`.
    SendBytes { id: u64, kind: Kind, body: Bytes, end: bool, ack: Option<oneshot::Sender<()>> },
    /// Server: the last MESSAGE of a call, encoded behind `HEADER_LEN` bytes of room.
    Reply { id: u64, body: crate::transport::ReplyBody },
    /// Server: a MESSAGE of a response stream, encoded behind `HEADER_LEN` bytes of room.
    SendReply { id: u64, body: crate::transport::ReplyBody, ack: oneshot::Sender<()> },
    /// Half-close.
    End { id: u64 },
    /// Server: end the call with this status. Client: cancel it.
    Finish { id: u64, status: Status },
    /// The application consumed `len` bytes of the call's data.
    Consumed { id: u64, len: usize },
}
