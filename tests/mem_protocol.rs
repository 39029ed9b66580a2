//! Protocol behaviour of the RPC layer on the in-memory transport pair, with tokio's clock paused:
//! deadlines and keepalive run in virtual time, so these tests take milliseconds. (The same
//! behaviours are tested over real TCP in `deadline_cancel.rs` and `liveness.rs`; the in-memory
//! pair is never the evidence that a transport works.) Also how the driver batches writes, which
//! the in-memory sender counts.

use std::time::Duration;

use bytes::Bytes;
use rdma_rpc::Code;
use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::rpc::{Client, ConnectionConfig, Router, Server};
use rdma_rpc::session::SessionConfig;
use rdma_rpc::transport::mem;

fn config(interval_ms: u64, timeout_ms: u64) -> ConnectionConfig {
    ConnectionConfig {
        session: SessionConfig {
            keepalive_interval: Duration::from_millis(interval_ms),
            keepalive_timeout: Duration::from_millis(timeout_ms),
            ..SessionConfig::default()
        },
    }
}

async fn served_pair(config: ConnectionConfig) -> (Server, EchoClient<mem::MemTransport>) {
    let (a, b) = mem::pair(64);
    let mut router = Router::default();
    router.add(EchoService::server());
    let mut server = Server::new(router, config.clone());
    server.serve_connection(b);
    let client = Client::connect(a, config).await.expect("handshake");
    (server, EchoClient::new(client))
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_survives_many_keepalive_rounds() {
    let (_server, client) = served_pair(config(1_000, 2_000)).await;
    // An hour of virtual idleness: pings keep it alive.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let reply = client.echo(&EchoRequest { payload: Bytes::from_static(b"hi") }).await.expect("echo");
    assert_eq!(reply.payload, Bytes::from_static(b"hi"));
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_answering_is_declared_dead_after_the_keepalive_timeout() {
    let (a, mut b) = mem::pair(64);
    // A peer that answers the handshake by hand and then goes silent.
    let peer = tokio::spawn(async move {
        use rdma_rpc::wire::Frame;
        let mut buf = bytes::BytesMut::new();
        Frame::Settings(SessionConfig::default().to_settings()).encode(&mut buf);
        b.send_raw(buf.freeze()).await.expect("settings");
        while b.recv_raw().await.is_some() {}
    });
    let client = EchoClient::new(Client::connect(a, config(1_000, 2_000)).await.expect("handshake"));
    let started = tokio::time::Instant::now();
    let status = client.echo(&EchoRequest::default()).await.expect_err("silent peer");
    assert_eq!(status.code, Code::Unavailable);
    // Virtual time: interval (1 s) + timeout (2 s), give or take scheduling.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(4), "{waited:?}");
    peer.abort();
}

#[tokio::test(start_paused = true)]
async fn a_call_timeout_is_enforced_in_virtual_time() {
    let (a, mut b) = mem::pair(64);
    let peer = tokio::spawn(async move {
        use rdma_rpc::wire::Frame;
        let mut buf = bytes::BytesMut::new();
        Frame::Settings(SessionConfig::default().to_settings()).encode(&mut buf);
        b.send_raw(buf.freeze()).await.expect("settings");
        // Answers pings so keepalive stays quiet, never answers calls.
        while let Some(message) = b.recv_raw().await {
            if let Ok(Frame::Ping(v)) = Frame::decode(message, &Default::default()) {
                let mut pong = bytes::BytesMut::new();
                Frame::Pong(v).encode(&mut pong);
                let _ = b.send_raw(pong.freeze()).await;
            }
        }
    });
    let client = Client::connect(a, ConnectionConfig::default()).await.expect("handshake");
    let client = EchoClient::new(client.with_timeout(Duration::from_secs(30)));
    let started = tokio::time::Instant::now();
    let status = client.echo(&EchoRequest::default()).await.expect_err("no answer");
    assert_eq!(status.code, Code::DeadlineExceeded);
    assert_eq!(started.elapsed().as_secs(), 30);
    peer.abort();
}

/// Many calls in flight on one connection share writes: when a batch of replies wakes many
/// callers, their next requests leave together (the driver yields once before writing), not one
/// write per call, which tokio's run-next scheduling of a woken task would otherwise cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn calls_woken_together_share_one_write() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 40;
    let (a, b) = mem::pair(4096);
    let writes = a.write_counts();
    let mut router = Router::default();
    router.add(EchoService::server());
    let mut server = Server::new(router, ConnectionConfig::default());
    server.serve_connection(b);
    let client = EchoClient::new(Client::connect(a, ConnectionConfig::default()).await.expect("handshake"));
    let before = (writes.flushes(), writes.messages());
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let request = EchoRequest { payload: Bytes::from_static(b"ping") };
                for _ in 0..ROUNDS {
                    client.echo(&request).await.expect("echo");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("caller");
    }
    let (flushes, messages) = (writes.flushes() - before.0, writes.messages() - before.1);
    let calls = (TASKS * ROUNDS) as u64;
    assert!(messages >= calls, "every call sent its request: {messages} messages for {calls} calls");
    // Without the batching: one write per call (2,500-2,560 measured). With it: one per 5-20
    // calls (120-540 measured, the most on a loaded machine).
    eprintln!("{flushes} writes carried {calls} calls");
    assert!(flushes * 2 <= calls, "{flushes} writes carried {calls} calls");
}
