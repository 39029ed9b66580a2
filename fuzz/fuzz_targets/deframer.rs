//! Fuzzes what a peer controls on a TCP connection: the byte stream (through the transport's
//! `Deframer`) and every message in it (through `Frame::decode`).
//!
//! Input layout: the first byte picks the feeding pattern, the rest is the byte stream.
//! - bits 0..=5: chunk length in which the stream is appended to the buffer (0: all at once,
//!   1: byte by byte, ...), to exercise partial prefixes and partial bodies;
//! - bits 6..=7: the deframer's maximum message size, one of `MAX_MESSAGE_SIZES`.
//!
//! Properties checked, beyond "never panics":
//! - the deframer yields the same messages, the same error and the same leftover bytes whatever
//!   the chunking, and never a message over its maximum;
//! - re-framing the yielded messages reproduces exactly the bytes they were taken from;
//! - a message (or the raw input) that decodes as a frame re-encodes to `encoded_len()` bytes
//!   that decode to the same frame.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rdma_rpc::wire::{Frame, HEADER_LEN, WireLimits};
use rdma_rpc_transport_tcp::{Deframer, LENGTH_PREFIX_LEN, TcpError};

/// Deframer maximums, picked by the top two bits of the first input byte.
const MAX_MESSAGE_SIZES: [usize; 4] = [0, HEADER_LEN + 16, 1024, 16 * 1024 * 1024 + 4096];

/// Frame limit: small enough that the fuzzer reaches `WireError::TooLarge` through the deframer
/// (whose maximum may be larger) and on the raw input.
const LIMITS: WireLimits = WireLimits { max_frame_size: 2048 };

/// What deframing a stream produced.
#[derive(Debug, PartialEq)]
struct Deframed {
    messages: Vec<Bytes>,
    /// The error that stopped deframing (a receiver closes the connection on it), as text.
    error: Option<String>,
    /// Bytes not consumed: left in the buffer, or not fed yet when an error stopped deframing.
    leftover: Bytes,
}

fn deframe(stream: &[u8], max: usize, chunk: usize) -> Deframed {
    let mut deframer = Deframer::new(max);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let chunk = if chunk == 0 { stream.len().max(1) } else { chunk };
    let mut fed = 0;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            match deframer.decode(&mut buf) {
                Ok(Some(message)) => {
                    assert!(message.len() <= max, "deframer yielded {} bytes over its maximum {max}", message.len());
                    messages.push(message);
                }
                Ok(None) => {
                    assert!(deframer.bytes_needed(&buf) > 0, "no message, yet nothing more needed");
                    break;
                }
                Err(err) => {
                    assert!(matches!(err, TcpError::MessageTooLarge { .. }), "unexpected deframer error {err:?}");
                    assert_eq!(deframer.bytes_needed(&buf), 0, "an oversized prefix needs no more bytes");
                    // Not consumed: the buffer (the offending prefix included) and what was not fed yet.
                    buf.extend_from_slice(&stream[fed..]);
                    return Deframed { messages, error: Some(err.to_string()), leftover: buf.freeze() };
                }
            }
        }
    }
    Deframed { messages, error: None, leftover: buf.freeze() }
}

/// Decodes `message` as a frame; if it decodes, checks that it survives encode and decode.
fn check_frame(message: Bytes) {
    let Ok(frame) = Frame::decode(message, &LIMITS) else {
        return;
    };
    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded);
    assert_eq!(encoded.len(), frame.encoded_len(), "encoded_len disagrees with encode for {frame:?}");
    match Frame::decode(encoded.freeze(), &LIMITS) {
        Ok(again) => assert_eq!(again, frame, "frame changed across encode + decode"),
        Err(err) => panic!("re-encoded {frame:?} does not decode: {err}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check_frame(Bytes::copy_from_slice(data));

    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x3f);
    let max = MAX_MESSAGE_SIZES[usize::from(control >> 6)];

    let chunked = deframe(stream, max, chunk);
    let whole = deframe(stream, max, 0);
    assert_eq!(chunked, whole, "chunking (by {chunk}) changed what the deframer yields");

    // The yielded messages, framed again, are exactly the bytes they were taken from.
    let mut reframed = BytesMut::new();
    for message in &whole.messages {
        Deframer::encode(message, &mut reframed).expect("a message under the maximum re-frames");
    }
    let consumed = stream.len() - whole.leftover.len();
    assert_eq!(&reframed[..], &stream[..consumed], "re-framed messages differ from the stream");
    assert_eq!(&whole.leftover[..], &stream[consumed..], "leftover is not the stream's tail");
    if whole.error.is_none() {
        assert!(whole.leftover.len() < LENGTH_PREFIX_LEN + max, "a complete frame was left in the buffer");
    }

    for message in whole.messages {
        check_frame(message);
    }
});
