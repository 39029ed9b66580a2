//! The per-call work of rdma-rpc's hot path without any IO, and the checksum of a stream chunk.
//!
//! - `prost_send_buffer/encode/*`: what a client does per request: take a TCP transport send
//!   buffer (`TcpAlloc`, a heap `SendBuf`), leave room for the 16-byte frame header, prost-encode
//!   an `EchoRequest` straight into it, back-patch the header. The buffer is allocated per
//!   iteration, as it is per call.
//! - `prost_send_buffer/decode/*`: what a receiver does per message: the frame is a `Bytes` view
//!   into a larger receive buffer; decode the frame, then the message (its payload stays a view).
//! - `session/unary_call`: one unary call through two IO-free `Session`s (client and server)
//!   exchanging frames through the wire codec: open, CALL, reply, implicit OK, credit.
//! - `crc32c/1MiB`: CRC32C of a 1 MiB stream chunk (`crc32c` crate: SSE 4.2 / ARMv8 CRC
//!   instructions when the CPU has them).

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use rdma_rpc::pb::echo::EchoRequest;
use rdma_rpc::pb::rpc::CallHeader;
use rdma_rpc::session::{Event, Role, Session, SessionConfig, Transmit};
use rdma_rpc::transport::tcp::TcpAlloc;
use rdma_rpc::transport::{BufferAlloc, SendBuffer};
use rdma_rpc::wire::{Frame, FrameHeader, HEADER_LEN, Kind, WireLimits};
use rdma_rpc_benches::payload;

fn prost_send_buffer(c: &mut Criterion) {
    let limits = WireLimits::default();
    let mut group = c.benchmark_group("prost_send_buffer");
    for (name, len) in [("64B", 64), ("4KiB", 4096), ("64KiB", 64 * 1024)] {
        let request = EchoRequest { payload: payload(len) };
        group.throughput(Throughput::Bytes((HEADER_LEN + request.encoded_len()) as u64));
        group.bench_with_input(BenchmarkId::new("encode", name), &request, |b, request| {
            let alloc = TcpAlloc::default();
            b.iter(|| {
                let mut buf = alloc
                    .try_alloc(HEADER_LEN + request.encoded_len())
                    .expect("TCP buffers are always available")
                    .expect("heap buffers cannot fail");
                buf.writer().extend_from_slice(&[0; HEADER_LEN]);
                black_box(request).encode(buf.writer()).expect("the buffer grows, so encoding cannot fail");
                let header: &mut [u8; HEADER_LEN] =
                    (&mut buf.written_mut()[..HEADER_LEN]).try_into().expect("16 bytes were written");
                FrameHeader::new(Kind::Message, 7).write_to(header);
                black_box(buf)
            });
        });

        // A receive buffer holding this frame between two others, as TCP reads them.
        let frame = Frame::Message { id: 7, body: request.encode_to_vec().into(), end: true };
        let mut received = BytesMut::new();
        for _ in 0..3 {
            frame.encode(&mut received);
        }
        let received = received.freeze();
        let one = frame.encoded_len();
        group.bench_with_input(BenchmarkId::new("decode", name), &received, |b, received: &Bytes| {
            b.iter(|| {
                let view = black_box(received).slice(one..2 * one);
                let Ok(Frame::Message { body, .. }) = Frame::decode(view, &limits) else {
                    panic!("a MESSAGE frame decodes");
                };
                EchoRequest::decode(body).expect("a valid message decodes")
            });
        });
    }
    group.finish();
}

/// Turns what a session transmits into the frame its peer receives, through the wire codec.
fn to_frame(transmit: Transmit<Bytes>, limits: &WireLimits) -> Frame {
    let mut buf = BytesMut::new();
    match transmit {
        Transmit::Control(frame) => frame.encode(&mut buf),
        Transmit::Data { header, body } => {
            header.encode(&mut buf);
            buf.extend_from_slice(&body);
        }
    }
    Frame::decode(buf.freeze(), limits).expect("a session's own frames decode")
}

fn pump(from: &mut Session<Bytes>, to: &mut Session<Bytes>, now: Instant, limits: &WireLimits) {
    while let Some(transmit) = from.poll_transmit() {
        to.handle_frame(now, to_frame(transmit, limits)).expect("a session accepts its peer's frames");
    }
}

fn session(c: &mut Criterion) {
    let limits = WireLimits::default();
    let now = Instant::now();
    let config = SessionConfig::default();
    let mut client = Session::<Bytes>::new(Role::Client, config.clone(), now).expect("the default config is valid");
    let mut server = Session::<Bytes>::new(Role::Server, config, now).expect("the default config is valid");
    for _ in 0..2 {
        pump(&mut client, &mut server, now, &limits);
        pump(&mut server, &mut client, now, &limits);
    }
    assert!(client.is_ready() && server.is_ready(), "SETTINGS exchanged");

    let header =
        CallHeader { method: "/rdmarpc.echo.Echo/Echo".into(), timeout_micros: 0, metadata: Default::default() };
    let request = EchoRequest { payload: payload(64) };
    let mut call_body = BytesMut::new();
    header.encode_length_delimited(&mut call_body).expect("grows");
    request.encode(&mut call_body).expect("grows");
    let call_body = call_body.freeze();
    let reply: Bytes = request.encode_to_vec().into();

    let mut id = 0u64;
    c.bench_function("session/unary_call", |b| {
        b.iter(|| {
            id += 1;
            client.open_call(now, id, None, call_body.clone(), true, true).expect("the call opens");
            pump(&mut client, &mut server, now, &limits);
            while let Some(event) = server.poll_event() {
                if let Event::Message { id, body, .. } = event {
                    server.release(id, body.len());
                }
            }
            server.send(id, Kind::Message, reply.clone(), true).expect("the reply queues");
            pump(&mut server, &mut client, now, &limits);
            let mut closed = false;
            while let Some(event) = client.poll_event() {
                match event {
                    Event::Message { id, body, .. } => client.release(id, body.len()),
                    Event::Closed { status, .. } => closed = status.is_ok(),
                    _ => {}
                }
            }
            assert!(closed, "call {id} completes");
            pump(&mut client, &mut server, now, &limits);
        });
    });
}

fn crc32c(c: &mut Criterion) {
    let chunk = payload(1 << 20);
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(chunk.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| crc32c::crc32c(black_box(&chunk))));
    group.finish();
}

criterion_group!(benches, prost_send_buffer, session, crc32c);
criterion_main!(benches);
