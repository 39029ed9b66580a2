//! RDMA under each way of waiting for completions, on a real device (`scripts/rxe-test`; `#[ignore]`d
//! elsewhere): `PollMode::BusyPoll` (the receiver and the poller never
//! sleep) and `PollMode::Adaptive(0)` (`--no-spin`: every message comes through the completion
//! channel and the poller task). The default (50 µs of spinning, the receiver reaping inline) is
//! what every other RDMA test runs. Each mode carries unary calls of several sizes, calls in
//! flight together, and a stream checked chunk by chunk.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::rpc::{ConnectOptions, Connection, ConnectionConfig, Router, Server, connect};
use rdma_rpc::transport::rdma::{PollMode, RdmaConfig};
use rdma_rpc::transport::tcp::{TcpConfig, TcpListener};

/// The device's address; panics when no RDMA device is configured.
fn rdma_addr() -> String {
    match (std::env::var("RDMA_TEST_DEVICE"), std::env::var("RDMA_TEST_ADDR")) {
        (Ok(_), Ok(addr)) => addr,
        _ => panic!(
            "RDMA_TEST_DEVICE / RDMA_TEST_ADDR are unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)"
        ),
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

/// Echo calls and a 16 MiB stream over RDMA, client and server both waiting as `poll` says.
async fn calls_and_a_stream(addr: &str, poll: PollMode) {
    let rdma = RdmaConfig { poll, ..RdmaConfig::default() };
    let listener = TcpListener::bind(format!("{addr}:0"), TcpConfig::default()).await.expect("bind");
    let bound = listener.local_addr().expect("addr").to_string();
    let mut router = Router::default();
    router.add(EchoService::server());
    let server = Server::new(router, ConnectionConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn({
        let rdma = rdma.clone();
        async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve(listener, Some(rdma), shutdown, Duration::from_secs(5)).await.expect("serve");
        }
    });
    let options = ConnectOptions { rdma: Some(rdma), fallback: false, ..ConnectOptions::default() };
    let client = match connect(&bound, &options).await.expect("connect over RDMA") {
        Connection::Rdma(client) => client,
        other => panic!("{poll:?}: expected an RDMA connection, got {}", other.transport_name()),
    };
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(60)));

    // One at a time, with pauses longer than the spin budget: each reply comes after the
    // receiver stopped spinning.
    for (i, size) in [0usize, 64, 4096, 65_536, 1 << 20].into_iter().enumerate() {
        let payload = pattern(size, i as u8);
        let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
        assert_eq!(reply.payload, payload, "{poll:?}: size {size}");
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Many in flight.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let echo = echo.clone();
        calls.spawn(async move {
            let payload = pattern(64 + (i as usize % 3000), i as u8);
            let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload);
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("call");
    }
    // A stream, each chunk numbered.
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: u64 = 64;
    let base = pattern(CHUNK, 7);
    let (mut requests, mut replies) = echo.pipe().await.expect("open");
    let producer = tokio::spawn({
        let base = base.clone();
        async move {
            for index in 0..CHUNKS {
                let mut chunk = BytesMut::from(&base[..]);
                chunk[..8].copy_from_slice(&index.to_be_bytes());
                requests.send_data(chunk.freeze()).await.expect("send");
            }
            requests.finish().await.expect("finish");
        }
    });
    let mut index = 0u64;
    while let Some(data) = replies.data().await.expect("stream") {
        assert_eq!(data[..8], index.to_be_bytes(), "{poll:?}: chunk out of order");
        assert!(data[8..] == base[8..], "{poll:?}: chunk {index} corrupted");
        index += 1;
    }
    producer.await.expect("producer");
    assert_eq!(index, CHUNKS, "{poll:?}");
    // The connection closes before the server stops, so it does not wait out its drain.
    drop(echo);
    client.close().await;
    let _ = stop.send(());
    serving.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_busy_polling_carries_calls_and_streams() {
    let addr = rdma_addr();
    calls_and_a_stream(&addr, PollMode::BusyPoll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_without_spinning_carries_calls_and_streams() {
    let addr = rdma_addr();
    calls_and_a_stream(&addr, PollMode::Adaptive(Duration::ZERO)).await;
}
