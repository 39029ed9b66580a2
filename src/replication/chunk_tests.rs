//! Chunk encoding round trips through prost, and every kind of damage is caught.

use prost::Message;

use super::*;
use crate::pb::replication::{ReceiveStreamItem, SendStreamItem, receive_stream_item, send_stream_item};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn encode_all(data: &[u8], chunk: usize, compress: bool) -> Vec<Vec<u8>> {
    let mut source = data;
    let mut compressor = compress.then(|| Compressor::new(1).expect("zstd"));
    let mut offset = 0;
    let mut items = Vec::new();
    loop {
        let mut buf = b"hdr".to_vec();
        match encode_chunk(&mut buf, offset, &mut source, chunk, compressor.as_mut()).expect("encode") {
            None => {
                assert_eq!(buf, b"hdr", "nothing left behind at the end");
                return items;
            }
            Some(encoded) => {
                offset += encoded.len as u64;
                items.push(buf.split_off(3));
            }
        }
    }
}

fn decode_chunk(item: &[u8]) -> StreamChunk {
    match ReceiveStreamItem::decode(item).expect("decodes").item {
        Some(receive_stream_item::Item::Chunk(chunk)) => chunk,
        other => panic!("not a chunk: {other:?}"),
    }
}

#[test]
fn chunks_round_trip_through_prost_both_item_types() {
    for compress in [false, true] {
        let data = pattern(300_000);
        let items = encode_all(&data, 65_536, compress);
        assert_eq!(items.len(), 5);
        let mut checker = ChunkChecker::new(0, compress);
        let mut out = Vec::new();
        for item in &items {
            let via_send = match SendStreamItem::decode(&item[..]).expect("decodes").item {
                Some(send_stream_item::Item::Chunk(chunk)) => chunk,
                other => panic!("{other:?}"),
            };
            let chunk = decode_chunk(item);
            assert_eq!(via_send, chunk);
            out.extend_from_slice(&checker.check(chunk).expect("valid"));
        }
        assert_eq!(out, data);
        let end = StreamEnd { total_bytes: data.len() as u64, digest: digest_bytes(crc32c::crc32c(&data)) };
        checker.finish(&end).expect("digest matches");
    }
}

#[test]
fn a_flipped_byte_is_caught_at_its_chunk() {
    let data = pattern(200_000);
    let mut items = encode_all(&data, 65_536, false);
    let len = items[1].len();
    items[1][len / 2] ^= 0x40;
    let mut checker = ChunkChecker::new(0, false);
    checker.check(decode_chunk(&items[0])).expect("first is fine");
    let err = checker.check(decode_chunk(&items[1])).expect_err("corrupt");
    assert!(matches!(err, ReplicationError::Checksum { offset: 65_536, .. }), "{err}");
    assert!(err.is_retryable());
}

#[test]
fn missing_repeated_and_truncated_streams_are_caught() {
    let data = pattern(200_000);
    let items = encode_all(&data, 65_536, false);
    let mut checker = ChunkChecker::new(0, false);
    checker.check(decode_chunk(&items[0])).expect("ok");
    let err = checker.check(decode_chunk(&items[2])).expect_err("gap");
    assert!(err.to_string().contains("where 65536 was expected"), "{err}");
    let err = checker.check(decode_chunk(&items[0])).expect_err("repeat");
    assert!(err.to_string().contains("lost or repeated"), "{err}");
    let end = StreamEnd { total_bytes: data.len() as u64, digest: digest_bytes(0) };
    let err = checker.finish(&end).expect_err("truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn resumed_transfers_start_at_their_offset() {
    let data = pattern(100_000);
    let mut source = &data[40_000..];
    let mut buf = Vec::new();
    encode_chunk(&mut buf, 40_000, &mut source, 1 << 20, None).expect("encode").expect("data");
    let mut checker = ChunkChecker::new(40_000, false);
    assert_eq!(checker.check(decode_chunk(&buf)).expect("ok").len(), 60_000);
    assert_eq!(checker.next_offset(), 100_000);
    let end = StreamEnd { total_bytes: 100_000, digest: digest_bytes(crc32c::crc32c(&data[40_000..])) };
    checker.finish(&end).expect("digest of the resumed part");
}

#[test]
fn compression_must_be_agreed_and_bounded() {
    let data = vec![0u8; 100_000];
    let items = encode_all(&data, 1 << 20, true);
    assert!(items[0].len() < 1000, "zeros compress");
    let err = ChunkChecker::new(0, false).check(decode_chunk(&items[0])).expect_err("not agreed");
    assert!(err.to_string().contains("no compression was agreed"));
    let mut bomb = decode_chunk(&items[0]);
    bomb.raw_length = u32::MAX;
    assert!(ChunkChecker::new(0, true).check(bomb).is_err());
}

#[test]
fn padded_varints_decode() {
    for value in [0u64, 1, 127, 128, 1 << 20, (1 << 35) - 1] {
        let bytes = padded_varint(value);
        assert_eq!(prost::encoding::decode_varint(&mut &bytes[..]).expect("decodes"), value);
    }
}
