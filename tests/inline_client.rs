//! The inline client (`rpc::direct::InlineClient`): unary calls that run in the caller's task,
//! over TCP on loopback against an ordinary server. Its RDMA run is in `tests/rdma_direct.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::calculator::pb::{CalculatorInlineClient, CountRequest, Numbers, Sum};
use common::{TestServer, eventually, pattern};
use rdma_rpc::Code;
use rdma_rpc::pb::echo::{EchoInlineClient, EchoRequest};
use rdma_rpc::rpc::ConnectionConfig;
use rdma_rpc::rpc::direct::InlineClient;
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection};

/// Bounds every call of these tests: a hang fails the test instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(10);

async fn inline_client(server: &TestServer) -> InlineClient<TcpConnection> {
    let connection = TcpConnection::connect(server.addr, TcpConfig::default()).await.expect("connect");
    InlineClient::connect(connection, ConnectionConfig::default()).await.expect("handshake")
}

async fn bounded<F: std::future::Future>(what: &str, call: F) -> F::Output {
    tokio::time::timeout(LIMIT, call).await.unwrap_or_else(|_| panic!("{what} did not end within {LIMIT:?}"))
}

#[tokio::test]
async fn inline_calls_of_many_sizes_metadata_and_the_handshake() {
    let server = TestServer::start().await;
    let client = inline_client(&server).await;
    assert_eq!(client.transport_name(), "tcp");
    assert!(client.peer_settings().is_some(), "connect waits for the server's SETTINGS");
    let mut echo = EchoInlineClient::new(client);
    for size in [0usize, 1, 64, 4096, 65_536, 1 << 20] {
        let payload = pattern(size, size as u8);
        let reply = bounded("echo", echo.echo(&EchoRequest { payload: payload.clone() })).await.expect("echo");
        assert_eq!(reply.payload, payload, "size {size}");
    }
    // Another service on the same connection, with metadata the handler reads.
    let mut client = echo.into_inner();
    client.set_metadata(BTreeMap::from([("offset".to_string(), "100".to_string())]));
    let mut calc = CalculatorInlineClient::new(client);
    let sum = bounded("add", calc.add(&Numbers { values: vec![1, 2] })).await.expect("add");
    assert_eq!(sum.total, 103, "the handler read the call's metadata");
    calc.inner_mut().set_metadata(BTreeMap::new());
    let sum = bounded("add", calc.add(&Numbers { values: vec![1, 2] })).await.expect("add");
    assert_eq!(sum.total, 3);
    calc.into_inner().close().await;
    server.stop().await;
}

#[tokio::test]
async fn inline_calls_get_typed_errors_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut client = inline_client(&server).await;
    let unknown = bounded("unknown method", client.unary::<_, Sum>("/t.Nope/Nothing", &Numbers::default())).await;
    let status = unknown.expect_err("an unknown method fails");
    assert_eq!(status.code, Code::Unimplemented, "{status}");
    // The handler's own error (`Wait` with `upto` 0 fails), then its panic (`upto` 1).
    for upto in [0, 1] {
        let wait = CountRequest { upto, delay_ms: 0 };
        let failed = bounded("failing handler", client.unary::<_, Sum>("/rdmarpc.test.Calculator/Wait", &wait)).await;
        assert!(failed.is_err(), "upto {upto}: {failed:?}");
    }
    // A request the server cannot decode: the echo's bytes field given a varint.
    let bad =
        bounded("bad request", client.unary::<_, Sum>("/rdmarpc.echo.Echo/Echo", &Numbers { values: vec![7] })).await;
    assert!(bad.is_err(), "a request that does not decode fails: {bad:?}");
    // A request over the frame limit (16 MiB) fails here, before anything is sent.
    let huge = EchoRequest { payload: Bytes::from(vec![0u8; 17 << 20]) };
    let too_large = bounded("oversized request", client.unary::<_, Sum>("/rdmarpc.echo.Echo/Echo", &huge)).await;
    let status = too_large.expect_err("over the frame limit");
    assert_eq!(status.code, Code::ResourceExhausted, "{status}");
    let mut calc = CalculatorInlineClient::new(client);
    let sum = bounded("add after errors", calc.add(&Numbers { values: vec![4, 5] })).await.expect("add");
    assert_eq!(sum.total, 9);
    server.stop().await;
}

#[tokio::test]
async fn an_inline_call_past_its_deadline_ends_and_the_next_one_runs() {
    let server = TestServer::start().await;
    let mut client = inline_client(&server).await;
    client.set_timeout(Some(Duration::from_millis(100)));
    let started = Instant::now();
    let slow = CountRequest { upto: 5, delay_ms: 3_000 };
    let late = bounded("slow call", client.unary::<_, Sum>("/rdmarpc.test.Calculator/Wait", &slow)).await;
    let status = late.expect_err("the deadline passes first");
    assert_eq!(status.code, Code::DeadlineExceeded, "{status}");
    assert!(started.elapsed() < Duration::from_secs(2), "ended at its deadline, not the handler's end");
    let probe = server.probe.clone();
    eventually("the server's handler aborted at the deadline", || probe.aborted() >= 1).await;
    client.set_timeout(None);
    let sum = bounded("add", CalculatorInlineClient::new(client).add(&Numbers { values: vec![2, 2] })).await;
    assert_eq!(sum.expect("add").total, 4);
    server.stop().await;
}

#[tokio::test]
async fn a_dropped_inline_call_is_cancelled_on_the_wire_and_the_next_one_runs() {
    let server = TestServer::start().await;
    let mut client = inline_client(&server).await;
    // The caller stops waiting (its future is dropped) while the handler waits 5 s.
    let slow = CountRequest { upto: 5, delay_ms: 5_000 };
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        client.unary::<_, Sum>("/rdmarpc.test.Calculator/Wait", &slow),
    )
    .await;
    assert!(dropped.is_err(), "the call was still waiting: {dropped:?}");
    // The next call tells the server the dropped one is cancelled, and gets its own reply (not
    // the dropped call's, which would be 5).
    let mut calc = CalculatorInlineClient::new(client);
    let sum = bounded("add after a dropped call", calc.add(&Numbers { values: vec![20, 22] })).await.expect("add");
    assert_eq!(sum.total, 42);
    let probe = server.probe.clone();
    eventually("the dropped call's handler aborted", || probe.aborted() >= 1).await;
    server.stop().await;
}

#[tokio::test]
async fn an_inline_call_to_a_server_that_went_away_fails_promptly() {
    let server = TestServer::start().await;
    let mut client = CalculatorInlineClient::new(inline_client(&server).await);
    assert_eq!(bounded("add", client.add(&Numbers { values: vec![1] })).await.expect("add").total, 1);
    server.stop().await;
    // The server closed while this client was idle: the next call finds out, whatever it reads
    // first (the GOAWAY, the end of the stream, or a failed write).
    let after = bounded("call after the server stopped", client.add(&Numbers { values: vec![1] })).await;
    let status = after.expect_err("no server");
    assert_eq!(status.code, Code::Unavailable, "{status}");
    // And every later call says so at once.
    let again = bounded("second call", client.add(&Numbers { values: vec![1] })).await;
    assert_eq!(again.expect_err("still no server").code, Code::Unavailable);
}

#[tokio::test]
async fn an_idle_inline_client_answers_keepalive_when_asked() {
    // A server that pings after 50 ms of silence and gives up 200 ms after an unanswered ping.
    let mut config = ConnectionConfig::default();
    config.session.keepalive_interval = Duration::from_millis(50);
    config.session.keepalive_timeout = Duration::from_millis(200);
    let server = TestServer::start_with(config).await;
    let mut client = inline_client(&server).await;
    // Idle for 1 s, but answering what came every 20 ms: the connection stays up.
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bounded("keep_alive", client.keep_alive()).await;
    }
    let payload = Bytes::from_static(b"still here");
    let reply = bounded(
        "echo",
        client.unary::<_, rdma_rpc::pb::echo::EchoReply>(
            "/rdmarpc.echo.Echo/Echo",
            &EchoRequest { payload: payload.clone() },
        ),
    )
    .await
    .expect("the connection survived");
    assert_eq!(reply.payload, payload);
    server.stop().await;
}

#[tokio::test]
async fn inline_connect_to_a_peer_that_is_no_rdma_rpc_server_fails_with_why() {
    use tokio::io::AsyncWriteExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let peers = tokio::spawn(async move {
        // The first answers in another protocol; the second never answers.
        let (mut http, _) = listener.accept().await.expect("accept");
        let _ = http.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        let (silent, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop((http, silent));
    });
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    let refused = bounded("connect to HTTP", InlineClient::connect(connection, ConnectionConfig::default())).await;
    let err = refused.expect_err("no rdma-rpc handshake");
    assert!(matches!(err, rdma_rpc::rpc::ConnectError::Handshake { .. }), "{err}");

    let mut quick = ConnectionConfig::default();
    quick.session.keepalive_timeout = Duration::from_millis(300);
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    let started = Instant::now();
    let silent = bounded("connect to a silent peer", InlineClient::connect(connection, quick)).await;
    let err = silent.expect_err("no SETTINGS came");
    assert!(err.to_string().contains("no SETTINGS from the peer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3), "gave up at the handshake timeout");
    peers.abort();
}
