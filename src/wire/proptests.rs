//! Property tests: every frame kind survives encode then decode unchanged, and arbitrary bytes
//! decode to a frame or a typed error, never a panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use prost::Message as _;

use super::*;
use crate::pb::rpc as pb;

fn bytes_strategy(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn status_strategy() -> impl Strategy<Value = pb::Status> {
    (0u32..20, ".{0,40}").prop_map(|(code, message)| pb::Status { code, message })
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let id = 1u64..u64::MAX;
    prop_oneof![
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>(), ".{0,20}").prop_map(
            |(max_frame_size, initial_call_window, connection_window, max_concurrent_calls, features, agent)| {
                Frame::Settings(pb::Settings {
                    max_frame_size,
                    initial_call_window,
                    connection_window,
                    max_concurrent_calls,
                    features,
                    agent,
                })
            }
        ),
        (
            id.clone(),
            "/[a-z.]{1,20}/[A-Za-z]{1,12}",
            any::<u64>(),
            proptest::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..3),
            proptest::option::of(bytes_strategy(256)),
            any::<bool>()
        )
            .prop_map(|(id, method, timeout_micros, metadata, message, end)| Frame::Call {
                id,
                header: pb::CallHeader { method: method.into(), timeout_micros, metadata },
                message,
                end,
            }),
        (id.clone(), bytes_strategy(512), any::<bool>()).prop_map(|(id, body, end)| Frame::Message { id, body, end }),
        (id.clone(), bytes_strategy(512), any::<bool>()).prop_map(|(id, body, end)| Frame::Data { id, body, end }),
        id.clone().prop_map(|id| Frame::StreamEnd { id }),
        (id.clone(), status_strategy()).prop_map(|(id, status)| Frame::Trailer { id, status }),
        (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(id, bytes, frames)| Frame::Credit { id, bytes, frames }),
        any::<u64>().prop_map(Frame::Ping),
        any::<u64>().prop_map(Frame::Pong),
        (any::<u64>(), proptest::option::of(status_strategy()))
            .prop_map(|(last_call_id, status)| Frame::GoAway(pb::GoAway { last_call_id, status })),
    ]
}

proptest! {
    #[test]
    fn every_frame_kind_round_trips(frame in frame_strategy()) {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        prop_assert_eq!(buf.len(), frame.encoded_len());
        let decoded = Frame::decode(buf.freeze(), &WireLimits::default());
        prop_assert_eq!(decoded, Ok(frame));
    }

    /// The plain-shape fast path of the call header decodes as prost does: the same header from
    /// any encoding prost accepts, the same refusal (through prost) of what it does not, and the
    /// same bytes left for the message.
    #[test]
    fn call_headers_decode_as_prost_decodes_them(
        header in (
            "/[a-z.]{0,20}/[A-Za-z]{0,12}",
            prop_oneof![Just(0u64), any::<u64>()],
            proptest::collection::btree_map("[a-z]{1,8}", ".{0,8}", 0..2),
        ),
        noise in proptest::collection::vec(any::<u8>(), 0..24),
        tail in proptest::collection::vec(any::<u8>(), 0..8),
        use_noise in any::<bool>(),
    ) {
        let (method, timeout_micros, metadata) = header;
        let encoded = if use_noise {
            noise
        } else {
            pb::CallHeader { method: method.into_bytes().into(), timeout_micros, metadata }.encode_to_vec()
        };
        let mut body = BytesMut::new();
        prost::encoding::encode_varint(encoded.len() as u64, &mut body);
        body.extend_from_slice(&encoded);
        body.extend_from_slice(&tail);
        let mut fast = body.freeze();
        let expected = pb::CallHeader::decode(&encoded[..]);
        match super::frame::decode_call_header(&mut fast) {
            Ok(header) => {
                prop_assert_eq!(Ok(header), expected.map_err(|_| ()));
                prop_assert_eq!(&fast[..], &tail[..]);
            }
            Err(_) => prop_assert!(expected.is_err()),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = Frame::decode(Bytes::from(bytes), &WireLimits::default());
    }

    #[test]
    fn arbitrary_bodies_after_a_valid_header_never_panic(kind in 1u8..=10, flags in 0u16..4, body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = vec![VERSION, kind];
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&body);
        let _ = Frame::decode(Bytes::from(bytes), &WireLimits::default());
    }
}

#[test]
fn oversized_frame_is_refused_before_parsing() {
    let limits = WireLimits { max_frame_size: 64 };
    let frame = Frame::Data { id: 1, body: Bytes::from(vec![0u8; 100]), end: false };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    assert_eq!(Frame::decode(buf.freeze(), &limits), Err(WireError::TooLarge { what: "frame", len: 116, max: 64 }));
}

#[test]
fn call_header_length_past_the_body_is_truncation() {
    let mut buf = BytesMut::new();
    FrameHeader::new(Kind::Call, 1).encode(&mut buf);
    prost::encoding::encode_varint(1000, &mut buf);
    buf.extend_from_slice(&[0u8; 10]);
    assert!(matches!(
        Frame::decode(buf.freeze(), &WireLimits::default()),
        Err(WireError::Truncated { what: "call header", .. })
    ));
}

#[test]
fn data_on_call_zero_is_refused() {
    let mut buf = BytesMut::new();
    FrameHeader::new(Kind::Data, 0).encode(&mut buf);
    assert!(matches!(Frame::decode(buf.freeze(), &WireLimits::default()), Err(WireError::Malformed { .. })));
}

#[test]
fn end_stream_on_a_ping_is_refused() {
    let mut buf = BytesMut::new();
    FrameHeader::new(Kind::Ping, 0).with_flag(FLAG_END_STREAM, true).encode(&mut buf);
    buf.extend_from_slice(&[0u8; 8]);
    assert!(matches!(Frame::decode(buf.freeze(), &WireLimits::default()), Err(WireError::UnknownFlags { .. })));
}

#[test]
fn a_method_that_is_not_utf8_is_refused() {
    let frame = Frame::Call {
        id: 1,
        header: pb::CallHeader { method: Bytes::from_static(&[b'/', 0xff, 0xfe]), ..Default::default() },
        message: None,
        end: true,
    };
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    assert!(matches!(
        Frame::decode(buf.freeze(), &WireLimits::default()),
        Err(WireError::Malformed { reason: "method is not UTF-8", .. })
    ));
}
