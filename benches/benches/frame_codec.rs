//! Encoding and decoding of wire frames and of protobuf messages, without any IO.
//!
//! - `frame_encode` / `frame_decode`: a 64 B and a 64 KiB DATA frame, a CALL frame (call header +
//!   64 B message) and a CREDIT frame, through `Frame::encode` and `Frame::decode`.
//! - `prost_echo_request`: prost encode of an `EchoRequest` (64 B, 64 KiB payload) into a
//!   `BytesMut`, and decode back from `Bytes`.
//!
//! Throughput is the encoded size of the frame or message.

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use rdma_rpc::pb::echo::EchoRequest;
use rdma_rpc::pb::rpc::CallHeader;
use rdma_rpc::wire::{Frame, WireLimits};
use rdma_rpc_benches::payload;

/// The frames benchmarked, by name.
fn frames() -> Vec<(&'static str, Frame)> {
    let call_header = CallHeader {
        method: bytes::Bytes::from_static(b"/rdmarpc.echo.Echo/Echo"),
        timeout_micros: 5_000_000,
        metadata: BTreeMap::from([("trace-id".to_string(), "4bf92f3577b34da6".to_string())]),
    };
    vec![
        ("data_64B", Frame::Data { id: 7, body: payload(64), end: false }),
        ("data_64KiB", Frame::Data { id: 7, body: payload(64 * 1024), end: false }),
        ("call_64B", Frame::Call { id: 7, header: call_header, message: Some(payload(64)), end: true }),
        ("credit", Frame::Credit { id: 0, bytes: 1 << 20, frames: 64 }),
    ]
}

fn encoded(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.encoded_len());
    frame.encode(&mut buf);
    buf.freeze()
}

fn frame_codec(c: &mut Criterion) {
    let limits = WireLimits::default();
    let frames = frames();

    let mut group = c.benchmark_group("frame_encode");
    for (name, frame) in &frames {
        group.throughput(Throughput::Bytes(frame.encoded_len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), frame, |b, frame| {
            // The buffer is reused: this measures encoding, not allocation.
            let mut buf = BytesMut::with_capacity(frame.encoded_len());
            b.iter(|| {
                buf.clear();
                black_box(frame).encode(&mut buf);
                black_box(buf.len())
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("frame_decode");
    for (name, frame) in &frames {
        let bytes = encoded(frame);
        assert_eq!(Frame::decode(bytes.clone(), &limits).as_ref(), Ok(frame), "{name} round-trips");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            // Cloning `Bytes` is a reference-count increment; decoding slices it without copying.
            b.iter(|| Frame::decode(black_box(bytes.clone()), &limits).expect("a valid frame decodes"));
        });
    }
    group.finish();
}

fn prost_echo_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("prost_echo_request");
    for (name, len) in [("64B", 64), ("64KiB", 64 * 1024)] {
        let request = EchoRequest { payload: payload(len) };
        let encoded_len = request.encoded_len();
        group.throughput(Throughput::Bytes(encoded_len as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &request, |b, request| {
            let mut buf = BytesMut::with_capacity(encoded_len);
            b.iter(|| {
                buf.clear();
                black_box(request).encode(&mut buf).expect("the buffer grows, so encoding cannot fail");
                black_box(buf.len())
            });
        });
        let bytes: Bytes = request.encode_to_vec().into();
        assert_eq!(EchoRequest::decode(bytes.clone()).as_ref(), Ok(&request), "{name} round-trips");
        group.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, bytes: &Bytes| {
            b.iter(|| EchoRequest::decode(black_box(bytes.clone())).expect("a valid message decodes"));
        });
    }
    group.finish();
}

criterion_group!(benches, frame_codec, prost_echo_request);
criterion_main!(benches);
