//! Whole frames: decoding a received transport message into a [`Frame`], and encoding frames.
//!
//! Decoding never panics and never allocates more than the message it was given already holds:
//! bodies are `Bytes` views into the received buffer, and every length read from the peer is checked
//! against the message and the configured maximum first.

use bytes::{Buf, BufMut, Bytes};
use prost::Message as _;

use super::WireError;
use super::header::*;
use crate::pb::rpc as pb;

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest frame accepted, header included.
    pub max_frame_size: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits { max_frame_size: 16 * 1024 * 1024 + HEADER_LEN }
    }
}

/// Body size of a CREDIT frame: bytes (u64) and frames (u32).
pub const CREDIT_BODY_LEN: usize = 12;
/// Body size of PING and PONG frames: an opaque u64.
pub const PING_BODY_LEN: usize = 8;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Frame {
    /// The sender's limits and features.
    Settings(pb::Settings),
    /// Opens call `id`.
    Call {
        /// The call id, chosen by the client.
        id: u64,
        /// Method, deadline, metadata.
        header: pb::CallHeader,
        /// The first message, when the frame carries one.
        message: Option<Bytes>,
        /// The client sends nothing more.
        end: bool,
    },
    /// One protobuf message.
    Message {
        /// The call.
        id: u64,
        /// The encoded message.
        body: Bytes,
        /// Last frame from this side.
        end: bool,
    },
    /// Raw stream data.
    Data {
        /// The call.
        id: u64,
        /// The bytes.
        body: Bytes,
        /// Last frame from this side.
        end: bool,
    },
    /// Half-close.
    StreamEnd {
        /// The call.
        id: u64,
    },
    /// Final status (server) or cancellation (client).
    Trailer {
        /// The call.
        id: u64,
        /// How it ended.
        status: pb::Status,
    },
    /// Flow-control credit. `id` 0 is the connection.
    Credit {
        /// The call, or 0 for the connection.
        id: u64,
        /// Bytes granted.
        bytes: u64,
        /// Frames granted.
        frames: u32,
    },
    /// Keepalive probe.
    Ping(u64),
    /// Keepalive answer.
    Pong(u64),
    /// Graceful shutdown.
    GoAway(pb::GoAway),
}

impl Frame {
    /// Decodes one frame from a whole transport message.
    pub fn decode(message: Bytes, limits: &WireLimits) -> Result<Frame, WireError> {
        if message.len() > limits.max_frame_size {
            return Err(WireError::TooLarge { what: "frame", len: message.len(), max: limits.max_frame_size });
        }
        let mut body = message;
        let header = FrameHeader::decode(&mut body)?;
        let id = header.call_id;
        let end = header.has(FLAG_END_STREAM);
        let allowed = match header.kind {
            Kind::Call => FLAG_END_STREAM | FLAG_HAS_MESSAGE,
            Kind::Message | Kind::Data => FLAG_END_STREAM,
            _ => 0,
        };
        if header.flags & !allowed != 0 {
            return Err(WireError::UnknownFlags { kind: header.kind, flags: header.flags });
        }
        let needs_call = !matches!(header.kind, Kind::Settings | Kind::Ping | Kind::Pong | Kind::GoAway | Kind::Credit);
        if needs_call && id == 0 {
            return Err(WireError::Malformed { kind: header.kind, reason: "call id 0 is reserved for the connection" });
        }
        Ok(match header.kind {
            Kind::Settings => Frame::Settings(decode_proto(header.kind, body)?),
            Kind::Call => {
                let call_header = decode_call_header(&mut body)?;
                // Method paths are ASCII in practice: checked a word at a time, UTF-8 only if not.
                if !call_header.method.is_ascii() && std::str::from_utf8(&call_header.method).is_err() {
                    return Err(WireError::Malformed { kind: Kind::Call, reason: "method is not UTF-8" });
                }
                let message = if header.has(FLAG_HAS_MESSAGE) {
                    Some(body)
                } else if body.is_empty() {
                    None
                } else {
                    return Err(WireError::Malformed {
                        kind: Kind::Call,
                        reason: "trailing bytes without HAS_MESSAGE",
                    });
                };
                Frame::Call { id, header: call_header, message, end }
            }
            Kind::Message => Frame::Message { id, body, end },
            Kind::Data => Frame::Data { id, body, end },
            Kind::StreamEnd => {
                expect_len(Kind::StreamEnd, &body, 0)?;
                Frame::StreamEnd { id }
            }
            Kind::Trailer => Frame::Trailer { id, status: decode_proto(Kind::Trailer, body)? },
            Kind::Credit => {
                expect_len(Kind::Credit, &body, CREDIT_BODY_LEN)?;
                Frame::Credit { id, bytes: body.get_u64(), frames: body.get_u32() }
            }
            Kind::Ping => {
                expect_len(Kind::Ping, &body, PING_BODY_LEN)?;
                Frame::Ping(body.get_u64())
            }
            Kind::Pong => {
                expect_len(Kind::Pong, &body, PING_BODY_LEN)?;
                Frame::Pong(body.get_u64())
            }
            Kind::GoAway => Frame::GoAway(decode_proto(Kind::GoAway, body)?),
        })
    }

    /// The frame's header.
    pub fn header(&self) -> FrameHeader {
        match self {
            Frame::Settings(_) => FrameHeader::new(Kind::Settings, 0),
            Frame::Call { id, message, end, .. } => FrameHeader::new(Kind::Call, *id)
                .with_flag(FLAG_HAS_MESSAGE, message.is_some())
                .with_flag(FLAG_END_STREAM, *end),
            Frame::Message { id, end, .. } => FrameHeader::new(Kind::Message, *id).with_flag(FLAG_END_STREAM, *end),
            Frame::Data { id, end, .. } => FrameHeader::new(Kind::Data, *id).with_flag(FLAG_END_STREAM, *end),
            Frame::StreamEnd { id } => FrameHeader::new(Kind::StreamEnd, *id),
            Frame::Trailer { id, .. } => FrameHeader::new(Kind::Trailer, *id),
            Frame::Credit { id, .. } => FrameHeader::new(Kind::Credit, *id),
            Frame::Ping(_) => FrameHeader::new(Kind::Ping, 0),
            Frame::Pong(_) => FrameHeader::new(Kind::Pong, 0),
            Frame::GoAway(_) => FrameHeader::new(Kind::GoAway, 0),
        }
    }

    /// The encoded length of the frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Settings(s) => s.encoded_len(),
                Frame::Call { header, message, .. } => {
                    header.encoded_len()
                        + prost::encoding::encoded_len_varint(header.encoded_len() as u64)
                        + message.as_ref().map_or(0, Bytes::len)
                }
                Frame::Message { body, .. } | Frame::Data { body, .. } => body.len(),
                Frame::StreamEnd { .. } => 0,
                Frame::Trailer { status, .. } => status.encoded_len(),
                Frame::Credit { .. } => CREDIT_BODY_LEN,
                Frame::Ping(_) | Frame::Pong(_) => PING_BODY_LEN,
                Frame::GoAway(g) => g.encoded_len(),
            }
    }

    /// Appends the whole frame to `buf`. Message and data bodies are copied here; the RPC layer's
    /// hot path instead encodes bodies straight into transport buffers and back-patches the header
    /// (see `rpc::outgoing`).
    pub fn encode(&self, buf: &mut impl BufMut) {
        self.header().encode(buf);
        match self {
            Frame::Settings(s) => put_proto(s, buf),
            Frame::Call { header, message, .. } => {
                prost::encoding::encode_varint(header.encoded_len() as u64, buf);
                put_proto(header, buf);
                if let Some(message) = message {
                    buf.put_slice(message);
                }
            }
            Frame::Message { body, .. } | Frame::Data { body, .. } => buf.put_slice(body),
            Frame::StreamEnd { .. } => {}
            Frame::Trailer { status, .. } => put_proto(status, buf),
            Frame::Credit { bytes, frames, .. } => {
                buf.put_u64(*bytes);
                buf.put_u32(*frames);
            }
            Frame::Ping(v) | Frame::Pong(v) => buf.put_u64(*v),
            Frame::GoAway(g) => put_proto(g, buf),
        }
    }
}

fn put_proto(message: &impl prost::Message, buf: &mut impl BufMut) {
    // A BufMut that grows (BytesMut, Vec, transport buffers) never reports insufficient capacity,
    // and callers size fixed buffers with `encoded_len`; an error here is a caller bug.
    if let Err(err) = message.encode(buf) {
        tracing::error!(%err, "frame buffer too small for its body");
    }
}

/// Takes the length-delimited call header off the front of a CALL body.
pub(super) fn decode_call_header(body: &mut Bytes) -> Result<pb::CallHeader, WireError> {
    let header_len = prost::encoding::decode_varint(body)
        .map_err(|_| WireError::Malformed { kind: Kind::Call, reason: "bad call header length" })?;
    let header_len = usize::try_from(header_len).unwrap_or(usize::MAX);
    if header_len > body.len() {
        return Err(WireError::Truncated { what: "call header", needed: header_len, got: body.len() });
    }
    if let Some(header) = plain_call_header(body, header_len) {
        body.advance(header_len);
        return Ok(header);
    }
    decode_proto(Kind::Call, body.split_to(header_len))
}

/// The call header in its usual shape (a method, then maybe a timeout, no metadata), read
/// without prost's general decoder: a call's path from read to handler goes through here. `None`
/// for any other shape (metadata, fields out of order or repeated, unknown fields, a varint
/// prost would refuse), which prost then decodes, or refuses, as it would anyway.
fn plain_call_header(body: &Bytes, header_len: usize) -> Option<pb::CallHeader> {
    const METHOD_KEY: u8 = 1 << 3 | 2; // field 1, length-delimited
    const TIMEOUT_KEY: u8 = 2 << 3; // field 2, varint
    let encoded = body.get(..header_len)?;
    let mut rest = encoded;
    let mut method = Bytes::new();
    if let Some((&METHOD_KEY, after)) = rest.split_first() {
        rest = after;
        let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
        let start = header_len - rest.len();
        rest = rest.get(len..)?;
        method = body.slice(start..start + len);
    }
    let mut timeout_micros = 0;
    if let Some((&TIMEOUT_KEY, after)) = rest.split_first() {
        rest = after;
        timeout_micros = prost::encoding::decode_varint(&mut rest).ok()?;
    }
    rest.is_empty().then(|| pb::CallHeader { method, timeout_micros, metadata: Default::default() })
}

fn decode_proto<M: prost::Message + Default>(kind: Kind, body: Bytes) -> Result<M, WireError> {
    M::decode(body).map_err(|_| WireError::Malformed { kind, reason: "body does not decode as protobuf" })
}

fn expect_len(kind: Kind, body: &Bytes, len: usize) -> Result<(), WireError> {
    if body.len() == len { Ok(()) } else { Err(WireError::BadLength { kind, expected: len, got: body.len() }) }
}
