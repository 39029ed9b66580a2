//! The fixed 16-byte frame header and the frame kinds, flags and feature bits.
//!
//! ```text
//!  0        1        2        3        4                 8                               16
//! +--------+--------+-----------------+-----------------+-------------------------------+
//! |version |  kind  |  flags (u16 BE) | features (u32 BE)|       call id (u64 BE)        |
//! +--------+--------+-----------------+-----------------+-------------------------------+
//! ```
//! The body follows the header and runs to the end of the transport message: every frame is exactly
//! one message of the transport, which delimits it (TCP with a length prefix, RDMA by the work
//! completion's byte count).

use bytes::{Buf, BufMut};

use super::WireError;

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// The protocol version this build speaks.
pub const VERSION: u8 = 1;

/// Flag: the sender will send nothing more on this call (half-close). On a server's MESSAGE it
/// also means the call succeeded, so a unary reply needs no separate trailer.
pub const FLAG_END_STREAM: u16 = 0x0001;
/// Flag on CALL: the body carries the first message after the call header.
pub const FLAG_HAS_MESSAGE: u16 = 0x0002;
/// Flags this version understands; others are refused.
pub const KNOWN_FLAGS: u16 = FLAG_END_STREAM | FLAG_HAS_MESSAGE;

/// Feature bits 0..15 are *required*: a receiver that does not know one must refuse the frame.
pub const REQUIRED_FEATURES_MASK: u32 = 0x0000_ffff;
/// Required feature bits this version understands (none yet: version 1 is the baseline).
pub const KNOWN_REQUIRED_FEATURES: u32 = 0;
/// Optional feature bit 16: the peer can take zstd-compressed DATA (negotiated in SETTINGS).
pub const FEATURE_ZSTD: u32 = 1 << 16;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// Limits and features; the first frame of each side.
    Settings = 0x01,
    /// Opens a call: a `CallHeader`, maybe followed by the first message.
    Call = 0x02,
    /// One protobuf message of a call.
    Message = 0x03,
    /// Raw stream data of a call (bulk bytes, not protobuf).
    Data = 0x04,
    /// The sender half-closes the call.
    StreamEnd = 0x05,
    /// The call's final status (from the server), or its cancellation (from the client).
    Trailer = 0x06,
    /// Flow-control credit: bytes and frames the receiver grants.
    Credit = 0x07,
    /// Keepalive probe.
    Ping = 0x08,
    /// Keepalive answer.
    Pong = 0x09,
    /// Graceful shutdown.
    GoAway = 0x0a,
}

impl Kind {
    /// The kind for a byte, or `None` for a kind this version does not know.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Settings,
            0x02 => Kind::Call,
            0x03 => Kind::Message,
            0x04 => Kind::Data,
            0x05 => Kind::StreamEnd,
            0x06 => Kind::Trailer,
            0x07 => Kind::Credit,
            0x08 => Kind::Ping,
            0x09 => Kind::Pong,
            0x0a => Kind::GoAway,
            _ => return None,
        })
    }

    /// Whether frames of this kind carry call data and so consume flow-control credit.
    pub fn is_flow_controlled(self) -> bool {
        matches!(self, Kind::Call | Kind::Message | Kind::Data)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame is.
    pub kind: Kind,
    /// `FLAG_*` bits.
    pub flags: u16,
    /// Feature bits the frame depends on.
    pub features: u32,
    /// The call the frame belongs to; 0 for connection-level frames.
    pub call_id: u64,
}

impl FrameHeader {
    /// A header with no flags and no features.
    pub fn new(kind: Kind, call_id: u64) -> Self {
        FrameHeader { kind, flags: 0, features: 0, call_id }
    }

    /// The same header with `flag` set when `on` is true.
    pub fn with_flag(mut self, flag: u16, on: bool) -> Self {
        if on {
            self.flags |= flag;
        }
        self
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Writes the header into exactly `HEADER_LEN` bytes (used to back-patch a header into the
    /// headroom of a buffer the body was already encoded into).
    pub fn write_to(&self, out: &mut [u8; HEADER_LEN]) {
        out[0] = VERSION;
        out[1] = self.kind as u8;
        out[2..4].copy_from_slice(&self.flags.to_be_bytes());
        out[4..8].copy_from_slice(&self.features.to_be_bytes());
        out[8..16].copy_from_slice(&self.call_id.to_be_bytes());
    }

    /// Appends the header to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        let mut bytes = [0u8; HEADER_LEN];
        self.write_to(&mut bytes);
        buf.put_slice(&bytes);
    }

    /// Reads and validates a header from the front of `buf`: version, kind, flags and required
    /// features are checked here, before the body is looked at.
    pub fn decode(buf: &mut impl Buf) -> Result<FrameHeader, WireError> {
        if buf.remaining() < HEADER_LEN {
            return Err(WireError::Truncated { what: "frame header", needed: HEADER_LEN, got: buf.remaining() });
        }
        let version = buf.get_u8();
        if version != VERSION {
            return Err(WireError::UnsupportedVersion { got: version, supported: VERSION });
        }
        let kind_byte = buf.get_u8();
        let kind = Kind::from_u8(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;
        let flags = buf.get_u16();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags { kind, flags });
        }
        let features = buf.get_u32();
        let unknown_required = features & REQUIRED_FEATURES_MASK & !KNOWN_REQUIRED_FEATURES;
        if unknown_required != 0 {
            return Err(WireError::UnknownRequiredFeature(unknown_required));
        }
        let call_id = buf.get_u64();
        Ok(FrameHeader { kind, flags, features, call_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = FrameHeader { kind: Kind::Data, flags: FLAG_END_STREAM, features: FEATURE_ZSTD, call_id: 7 };
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(FrameHeader::decode(&mut &out[..]), Ok(header));
    }

    #[test]
    fn every_kind_byte_round_trips_and_others_are_unknown() {
        for byte in 0..=u8::MAX {
            match Kind::from_u8(byte) {
                Some(kind) => assert_eq!(kind as u8, byte),
                None => assert!(byte == 0 || byte > 0x0a),
            }
        }
    }

    #[test]
    fn refuses_bad_version_kind_flags_and_required_features() {
        let good = {
            let mut v = Vec::new();
            FrameHeader::new(Kind::Ping, 0).encode(&mut v);
            v
        };
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(matches!(FrameHeader::decode(&mut &bad[..]), Err(WireError::UnsupportedVersion { got: 9, .. })));
        let mut bad = good.clone();
        bad[1] = 0xee;
        assert_eq!(FrameHeader::decode(&mut &bad[..]), Err(WireError::UnknownKind(0xee)));
        let mut bad = good.clone();
        bad[2] = 0x80;
        assert!(matches!(FrameHeader::decode(&mut &bad[..]), Err(WireError::UnknownFlags { .. })));
        let mut bad = good.clone();
        bad[7] = 0x04;
        assert_eq!(FrameHeader::decode(&mut &bad[..]), Err(WireError::UnknownRequiredFeature(0x04)));
        let mut optional = good.clone();
        optional[4] = 0x80; // an unknown optional bit is ignored
        assert!(FrameHeader::decode(&mut &optional[..]).is_ok());
        assert!(matches!(
            FrameHeader::decode(&mut &good[..10]),
            Err(WireError::Truncated { needed: HEADER_LEN, got: 10, .. })
        ));
    }
}
