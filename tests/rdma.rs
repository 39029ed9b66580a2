//! RDMA over real verbs, on a real device: run by `scripts/rxe-test` in a soft-RoCE guest, where
//! `RDMA_TEST_DEVICE` (rxe0) and `RDMA_TEST_ADDR` (the device's IPv4 address) are set. Elsewhere
//! they are `#[ignore]`d (reported as ignored, never as passed); run without a device they fail.
//!
//! Single-host tests (`rdma_*`) run client and server in one guest over rxe loopback; two-host
//! tests (`rdma_pair_*`) talk to an `rdma-rpc serve` on `RDMA_TEST_PEER_ADDR`.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::calculator::pb::{CalculatorClient, CountRequest};
use common::{pattern, rdma_addr};
use rdma_rpc::Code;
use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::rpc::{Client, ConnectError, ConnectOptions, Connection, ConnectionConfig, Router, Server, connect};
use rdma_rpc::transport::Transport;
use rdma_rpc::transport::rdma::{self, Negotiated, RdmaConfig, RdmaConnection};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};

/// A server on `addr` offering RDMA (or not), serving echo and the calculator.
async fn start_server(addr: &str, rdma: Option<RdmaConfig>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind(format!("{addr}:0"), TcpConfig::default()).await.expect("bind");
    let bound = listener.local_addr().expect("addr").to_string();
    let mut router = Router::default();
    router.add(EchoService::server());
    router.add(common::calculator::server(Default::default()));
    let server = Server::new(router, ConnectionConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        server.serve(listener, rdma, shutdown, Duration::from_secs(5)).await.expect("serve");
    });
    (bound, stop)
}

fn rdma_options(fallback: bool) -> ConnectOptions {
    ConnectOptions { rdma: Some(RdmaConfig::default()), fallback, ..ConnectOptions::default() }
}

async fn rdma_client(addr: &str) -> rdma_rpc::rpc::Client<RdmaConnection> {
    match connect(addr, &rdma_options(false)).await.expect("connect over RDMA") {
        Connection::Rdma(client) => client,
        other => panic!("expected an RDMA connection, got {}", other.transport_name()),
    }
}

/// A large payload, cheap to build in a slow guest: a 65,521-byte period (prime, so no buffer or
/// page offset lines up with it) with the offset stamped every 4 KiB, so a misplaced, repeated or
/// stale block shows.
fn large_pattern(len: usize, seed: u8) -> Bytes {
    const PERIOD: usize = 65_521;
    let period: Vec<u8> = (0..PERIOD).map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed)).collect();
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        let take = PERIOD.min(len - data.len());
        data.extend_from_slice(&period[..take]);
    }
    for offset in (0..len.saturating_sub(8)).step_by(4096) {
        data[offset..offset + 8].copy_from_slice(&(offset as u64 ^ u64::from(seed) << 56).to_be_bytes());
    }
    data.into()
}

/// Where two payloads first differ, for a failure message that says more than "not equal" (the
/// comparison itself is a memcmp: a byte loop is slow in an unoptimised build in an emulated guest).
/// Streams `chunks` copies of `base` as raw data, chunk `i` carrying `i` (big-endian) at byte
/// `at`, so loss, duplication and reordering all show; then finishes the stream.
fn spawn_numbered_chunks<T: Transport, M: prost::Message + 'static>(
    mut requests: rdma_rpc::rpc::CallSender<T, M>,
    base: Bytes,
    chunks: u64,
    at: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for index in 0..chunks {
            let mut chunk = BytesMut::from(&base[..]);
            chunk[at..at + 8].copy_from_slice(&index.to_be_bytes());
            requests.send_data(chunk.freeze()).await.expect("send");
        }
        requests.finish().await.expect("finish");
    })
}

fn first_difference(got: &[u8], expected: &[u8]) -> Option<usize> {
    if got == expected {
        return None;
    }
    got.iter().zip(expected).position(|(a, b)| a != b).or(Some(got.len().min(expected.len())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_unary_calls_of_every_size() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let client = rdma_client(&server).await;
    assert_eq!(client.transport_name(), "rdma");
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(30)));
    for (i, size) in [0usize, 1, 64, 4096, 65_536, 100_000].into_iter().enumerate() {
        let payload = pattern(size, i as u8);
        let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo over RDMA");
        assert_eq!(reply.payload, payload, "size {size}");
    }
    // Larger than the largest frame (16 MiB): refused locally, the connection survives.
    let err = echo.echo(&EchoRequest { payload: large_pattern(17 << 20, 9) }).await.expect_err("too large a frame");
    assert!(matches!(err.code, Code::ResourceExhausted | Code::Unavailable), "{err}");
    echo.echo(&EchoRequest { payload: pattern(10, 1) }).await.expect("connection still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_thousand_concurrent_calls() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let echo = EchoClient::new(rdma_client(&server).await.with_timeout(Duration::from_secs(120)));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let echo = echo.clone();
        calls.spawn(async move {
            let payload = pattern(64 + (i as usize % 512), i as u8);
            let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload);
        });
    }
    let mut done = 0;
    while let Some(result) = calls.join_next().await {
        result.expect("call");
        done += 1;
    }
    assert_eq!(done, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_stream_64_mib_each_way_byte_for_byte() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let echo = EchoClient::new(rdma_client(&server).await);
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: u64 = 1024; // 64 MiB
    let base = pattern(CHUNK, 3);
    let (requests, mut replies) = echo.pipe().await.expect("open");
    let producer = spawn_numbered_chunks(requests, base.clone(), CHUNKS, 0);
    let mut index = 0u64;
    while let Some(data) = replies.data().await.expect("stream") {
        assert_eq!(data.len(), CHUNK);
        assert_eq!(data[..8], index.to_be_bytes(), "chunk out of order");
        assert!(data[8..] == base[8..], "chunk {index} corrupted");
        index += 1;
    }
    producer.await.expect("producer");
    assert_eq!(index, CHUNKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_dropped_calls_are_cancel_safe() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let client = rdma_client(&server).await;
    let calc = CalculatorClient::new(client.clone());
    let echo = EchoClient::new(client);
    // Drop many calls at random points mid-flight; buffers in flight must not be reused early,
    // which would corrupt the payloads checked afterwards.
    for round in 0..50u64 {
        let request = EchoRequest { payload: pattern(60_000, round as u8) };
        let call = echo.echo(&request);
        let _ = tokio::time::timeout(Duration::from_micros(50 * round), call).await;
        let stream = calc.count(&CountRequest { upto: 100, delay_ms: 0 });
        let _ = tokio::time::timeout(Duration::from_micros(30 * round), stream).await;
    }
    for round in 0..20u8 {
        let payload = pattern(50_000, round);
        let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo after cancellations");
        assert_eq!(reply.payload, payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_falls_back_to_tcp_when_the_server_has_no_rdma() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, None).await;
    match connect(&server, &rdma_options(true)).await.expect("connect") {
        Connection::Tcp { client, fallback } => {
            let reason = fallback.expect("the reason is visible to the caller");
            assert!(reason.contains("without RDMA"), "{reason}");
            let echo = EchoClient::new(client);
            let reply = echo.echo(&EchoRequest { payload: pattern(100, 1) }).await.expect("echo over TCP");
            assert_eq!(reply.payload, pattern(100, 1));
        }
        Connection::Rdma(_) => panic!("the server has no RDMA: the connection cannot be RDMA"),
    }
    match connect(&server, &rdma_options(false)).await {
        Err(ConnectError::RdmaRequired { reason }) => assert!(reason.contains("without RDMA"), "{reason}"),
        other => panic!("--no-fallback must fail clearly, got {:?}", other.map(|c| c.transport_name())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_unary_large_messages_up_to_16_mib_byte_for_byte() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let client = rdma_client(&server).await;
    let max = client.peer_settings().max_frame_size;
    assert!(max >= 16 << 20, "the server's frame limit over RDMA must not be clamped to a slot: {max}");
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(60)));
    // One slot exactly, just over it, then every large class; the last is as large as a 16 MiB
    // frame allows (its header and the protobuf tag and length take the rest).
    let sizes = [128 * 1024 - 64, 128 * 1024 + 1, 1 << 20, (1 << 20) + 4096, 4 << 20, (16 << 20) - 256];
    for (i, size) in sizes.into_iter().enumerate() {
        let payload = large_pattern(size, i as u8 + 1);
        let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("large echo over RDMA");
        let difference = first_difference(&reply.payload, &payload);
        assert!(
            difference.is_none(),
            "size {size}: {} bytes back, first difference at {difference:?}",
            reply.payload.len()
        );
    }
    // Small calls still work after the large ones (slots and large buffers both came back).
    for round in 0..10u8 {
        let payload = pattern(1000, round);
        assert_eq!(echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("small echo").payload, payload);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_stream_64_mib_in_1_mib_messages_each_way() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let echo = EchoClient::new(rdma_client(&server).await);
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 64;
    let base = large_pattern(CHUNK, 5);
    let (requests, mut replies) = echo.pipe().await.expect("open");
    let producer = spawn_numbered_chunks(requests, base.clone(), CHUNKS, CHUNK - 8);
    let mut index = 0u64;
    while let Some(data) = replies.data().await.expect("stream") {
        assert_eq!(data.len(), CHUNK, "message {index}");
        assert_eq!(data[CHUNK - 8..], index.to_be_bytes(), "message out of order");
        let difference = first_difference(&data[..CHUNK - 8], &base[..CHUNK - 8]);
        assert!(difference.is_none(), "message {index} corrupted at {difference:?}");
        index += 1;
    }
    producer.await.expect("producer");
    assert_eq!(index, CHUNKS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_large_stream_and_large_calls_share_the_buffers() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let client = rdma_client(&server).await;
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(90)));
    // Stream payloads are joined into large send buffers at flush time while calls encode into
    // the same class of buffers from their own tasks: both kinds of waiter on one pool.
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 16;
    let base = large_pattern(CHUNK, 21);
    let (requests, mut replies) = echo.pipe().await.expect("open");
    let producer = spawn_numbered_chunks(requests, base.clone(), CHUNKS, 0);
    let mut calls = tokio::task::JoinSet::new();
    for task in 0..4u8 {
        let echo = echo.clone();
        calls.spawn(async move {
            for round in 0..4u8 {
                let payload = large_pattern(CHUNK - 4096 * usize::from(task), task * 16 + round);
                let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("large call");
                let difference = first_difference(&reply.payload, &payload);
                assert!(difference.is_none(), "task {task} round {round}: first difference at {difference:?}");
            }
        });
    }
    let mut index = 0u64;
    while let Some(data) = replies.data().await.expect("stream") {
        assert_eq!(data[..8], index.to_be_bytes(), "message out of order");
        let difference = first_difference(&data[8..], &base[8..]);
        assert!(difference.is_none(), "message {index} corrupted at {difference:?}");
        index += 1;
    }
    assert_eq!(index, CHUNKS);
    producer.await.expect("producer");
    while let Some(done) = calls.join_next().await {
        done.expect("calls");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_dropped_large_calls_are_cancel_safe() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let echo = EchoClient::new(rdma_client(&server).await.with_timeout(Duration::from_secs(60)));
    // Drop large calls at every stage (encoding, waiting for a large buffer of the peer's, being
    // written, being echoed); a buffer reused before its completion would corrupt what follows.
    let payloads: Vec<Bytes> = (0..4u8).map(|i| large_pattern((1 << 20) + 4096 * usize::from(i), i)).collect();
    for round in 0..40u64 {
        let request = EchoRequest { payload: payloads[round as usize % payloads.len()].clone() };
        let _ = tokio::time::timeout(Duration::from_micros(200 * round), echo.echo(&request)).await;
        if round % 8 == 7 {
            let big = EchoRequest { payload: large_pattern(4 << 20, round as u8) };
            let _ = tokio::time::timeout(Duration::from_millis(round), echo.echo(&big)).await;
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..8u8 {
        let echo = echo.clone();
        calls.spawn(async move {
            let payload = large_pattern((2 << 20) + usize::from(i) * 4096, 100 + i);
            let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo after cancellations");
            let difference = first_difference(&reply.payload, &payload);
            assert!(difference.is_none(), "call {i}: first difference at {difference:?}");
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("large call after cancellations");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_inline_size_is_what_the_device_granted() {
    let addr = rdma_addr();
    let inline = RdmaConfig { max_inline: 64, ..RdmaConfig::default() };
    let (server, _stop) = start_server(&addr, Some(inline.clone())).await;
    let default = RdmaConfig::default();
    let asked_by_default = default.max_inline as usize;
    let off = RdmaConfig { max_inline: 0, ..RdmaConfig::default() };
    // More than any provider offers: rxe refuses such a QP (its limit is a few hundred bytes),
    // and the connection must then come up without inline sends (the retry in `verbs/qp.rs`).
    let too_much = RdmaConfig { max_inline: 64 * 1024, ..RdmaConfig::default() };
    for (config, asked) in [(off, 0), (inline, 64), (default, asked_by_default), (too_much, 64 * 1024)] {
        let tcp = TcpConnection::connect(server.as_str(), TcpConfig::default()).await.expect("tcp");
        let connection = match rdma::connect(tcp, &config).await.expect("offer RDMA") {
            Negotiated::Rdma(connection) => connection,
            Negotiated::Tcp { reason, .. } => panic!("expected RDMA, fell back: {reason}"),
        };
        let granted = connection.capabilities().max_inline_size;
        eprintln!("max_inline {asked}: the device granted {granted}");
        assert!(granted <= asked, "reported {granted} inline bytes, only {asked} were asked for");
        if asked == 64 * 1024 {
            if connection.device().starts_with("rxe") {
                assert_eq!(granted, 0, "rxe refuses {asked} inline bytes: the QP should have none");
            }
        } else if asked > 0 {
            // rxe supports inline sends: a QP that silently went without them would be slower.
            assert!(granted > 0, "asked for {asked} inline bytes, the device granted none");
        }
        // Messages around the inline size arrive intact either way: a request frame is the
        // payload + 45 bytes from 128 B up (236 B at 191), a reply frame the payload + 19 (236 B
        // at 217).
        let echo = EchoClient::new(Client::connect(connection, ConnectionConfig::default()).await.expect("session"));
        for size in [0usize, 1, 20, 40, 47, 48, 49, 64, 65, 180, 190, 191, 192, 216, 217, 218, 1000] {
            let payload = pattern(size, size as u8);
            assert_eq!(echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo").payload, payload);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_pair_unary_concurrent_and_64_mib_stream_across_the_wire() {
    let peer = std::env::var("RDMA_TEST_PEER_ADDR")
        .expect("RDMA_TEST_PEER_ADDR is unset: this test needs a second RDMA host (scripts/rxe-test boots two guests)");
    let addr = format!("{peer}:7878");
    let mut connected = None;
    for _ in 0..100 {
        match connect(&addr, &rdma_options(false)).await {
            Ok(Connection::Rdma(client)) => {
                connected = Some(client);
                break;
            }
            Ok(other) => panic!("expected RDMA to the peer, got {}", other.transport_name()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let echo = EchoClient::new(connected.expect("the peer's server came up within 20 s"));
    for size in [1usize, 4096, 65_536] {
        let payload = pattern(size, 5);
        assert_eq!(echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo").payload, payload);
    }
    // Large messages by RDMA WRITE into the peer's buffers, across the wire.
    for size in [1usize << 20, 4 << 20, (16 << 20) - 256] {
        let payload = large_pattern(size, 6);
        let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("large echo");
        let difference = first_difference(&reply.payload, &payload);
        assert!(difference.is_none(), "size {size}: first difference at {difference:?}");
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let echo = echo.clone();
        calls.spawn(async move {
            let payload = pattern(64 + (i as usize % 256), i as u8);
            assert_eq!(echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo").payload, payload);
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("concurrent call");
    }
    // 64 MiB each way across the wire.
    let (mut requests, mut replies) = echo.pipe().await.expect("open");
    let base = pattern(64 * 1024, 8);
    let producer = tokio::spawn(async move {
        for _ in 0..1024 {
            requests.send_data(base.clone()).await.expect("send");
        }
        requests.finish().await.expect("finish");
    });
    let mut received = 0;
    let expected = pattern(64 * 1024, 8);
    while let Some(data) = replies.data().await.expect("stream") {
        let first_difference = data.iter().zip(expected.iter()).position(|(a, b)| a != b);
        assert!(
            data.len() == expected.len() && first_difference.is_none(),
            "chunk {received}: {} bytes (expected {}), first difference at {first_difference:?}",
            data.len(),
            expected.len()
        );
        received += 1;
    }
    producer.await.expect("producer");
    assert_eq!(received, 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_peer_killed_mid_stream_fails_the_call_promptly() {
    let addr = rdma_addr();
    let (mut server, port, _) = common::spawn_rdma_serve(&addr, &[]);
    let client = rdma_client(&format!("{addr}:{port}")).await;
    let probe = client.clone();
    let echo = EchoClient::new(client);
    let (mut requests, mut replies) = echo.pipe().await.expect("open");
    let producer = tokio::spawn(async move {
        let chunk = pattern(32 * 1024, 4);
        while requests.send_data(chunk.clone()).await.is_ok() {}
    });
    for _ in 0..16 {
        replies.data().await.expect("stream runs").expect("chunk");
    }
    server.kill().expect("SIGKILL the server");
    let _ = server.wait();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match replies.data().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the stream must fail promptly, not hang");
    let status = outcome.expect_err("a killed peer is an error, not a clean end");
    assert_eq!(status.code, Code::Unavailable, "{status}");
    producer.await.expect("the producer stops");
    // The connection is torn down: its driver finished and published why.
    for _ in 0..100 {
        if probe.closed_status().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the connection to a killed peer was not torn down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_stream_read_straight_into_registered_buffers() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, Some(RdmaConfig::default())).await;
    let echo = EchoClient::new(rdma_client(&server).await);
    let content: Vec<u8> =
        (0..16 * 1024 * 1024 + 77).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    let (requests, replies) = echo.pipe().await.expect("open");
    // Registered memory: read(2)-style fill, then posted as is.
    let source = std::io::Cursor::new(content.clone());
    let echoed = common::pipe_from_reader(requests, replies, source, 100 * 1024).await;
    assert!(echoed == content, "the stream came back different ({} of {} bytes)", echoed.len(), content.len());
}
