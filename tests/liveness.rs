//! Peers that vanish: a server that goes silent mid-call (no FIN: keepalive must notice) and one
//! that closes mid-stream. The caller gets `Unavailable` within the keepalive timeout, never a hang.
//! Graceful shutdown, by the server or by the client's `close`, drains in-flight calls.

mod common;

use std::time::Duration;

use common::TestServer;
use common::calculator::pb::{CalculatorClient, CountRequest};
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::rpc::{Client, ConnectionConfig};
use rdma_rpc::session::SessionConfig;
use rdma_rpc::transport::tcp::{SendBuf, TcpConfig, TcpConnection, TcpListener};
use rdma_rpc::wire::Frame;
use rdma_rpc::{Code, Status};

const LIMIT: Duration = Duration::from_secs(10);

fn quick_keepalive() -> ConnectionConfig {
    ConnectionConfig {
        session: SessionConfig {
            keepalive_interval: Duration::from_millis(200),
            keepalive_timeout: Duration::from_millis(400),
            ..SessionConfig::default()
        },
    }
}

/// A "server" that completes the handshake and then never reads or writes again.
async fn silent_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let connection = listener.accept().await.expect("accept");
        let (mut tx, rx) = connection.split();
        let settings = Frame::Settings(SessionConfig::default().to_settings());
        let mut buf = SendBuf::with_capacity(settings.encoded_len());
        settings.encode(buf.body_mut());
        tx.send(buf).await.expect("settings");
        tokio::time::sleep(Duration::from_secs(30)).await; // holds the socket open, silent
        drop((tx, rx));
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_peer_fails_the_call_within_the_keepalive_timeout() {
    let (addr, silent) = silent_server().await;
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    let client = EchoClient::new(Client::connect(connection, quick_keepalive()).await.expect("handshake"));
    let request = EchoRequest::default();
    let call = client.echo(&request);
    let status = tokio::time::timeout(LIMIT, call).await.expect("no hang").expect_err("silent peer");
    assert_eq!(status.code, Code::Unavailable);
    assert!(status.message.contains("keepalive"), "{status}");
    silent.abort();
}

#[tokio::test]
async fn a_peer_that_closes_mid_stream_fails_the_call() {
    let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Serves the handshake, waits for the call, then closes the socket.
    let dying = tokio::spawn(async move {
        let (mut tx, mut rx) = listener.accept().await.expect("accept").split();
        let settings = Frame::Settings(SessionConfig::default().to_settings());
        let mut buf = SendBuf::with_capacity(64);
        settings.encode(buf.body_mut());
        tx.send(buf).await.expect("settings");
        let _settings = rx.recv().await;
        let _call = rx.recv().await;
    });
    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.expect("connect");
    let client = CalculatorClient::new(Client::connect(connection, quick_keepalive()).await.expect("handshake"));
    let mut replies = client.count(&CountRequest { upto: 10, delay_ms: 0 }).await.expect("open");
    let status: Status = tokio::time::timeout(LIMIT, replies.message()).await.expect("no hang").expect_err("peer died");
    assert_eq!(status.code, Code::Unavailable, "{status}");
    dying.await.expect("peer task");
}

#[tokio::test]
async fn graceful_shutdown_drains_calls_in_flight() {
    let server = TestServer::start().await;
    let client = CalculatorClient::new(server.client().await);
    let mut replies = client.count(&CountRequest { upto: 5, delay_ms: 100 }).await.expect("open");
    replies.message().await.expect("first").expect("item");
    let stopping = tokio::spawn(server.stop());
    let mut items = 1;
    while let Some(_item) = replies.message().await.expect("the call completes during the drain") {
        items += 1;
    }
    assert_eq!(items, 5);
    tokio::time::timeout(LIMIT, stopping).await.expect("server stops").expect("stop");
    let after = client.count(&CountRequest { upto: 1, delay_ms: 0 }).await;
    let refused = match after {
        Err(status) => status,
        Ok(mut replies) => replies.message().await.expect_err("no new calls after GOAWAY"),
    };
    assert_eq!(refused.code, Code::Unavailable, "{refused}");
}

#[tokio::test]
async fn client_close_drains_calls_in_flight() {
    let server = TestServer::start().await;
    let connection = server.client().await;
    let client = CalculatorClient::new(connection.clone());
    let mut replies = client.count(&CountRequest { upto: 5, delay_ms: 100 }).await.expect("open");
    replies.message().await.expect("first").expect("item");
    let closing = tokio::spawn(async move { connection.close().await });
    let mut items = 1;
    while let Some(_item) = replies.message().await.expect("the call completes during the close") {
        items += 1;
    }
    assert_eq!(items, 5);
    let status = tokio::time::timeout(LIMIT, closing).await.expect("the connection closes").expect("close");
    assert!(status.is_ok(), "a graceful close ends the connection cleanly: {status}");
    let after = client.count(&CountRequest { upto: 1, delay_ms: 0 }).await;
    let refused = match after {
        Err(status) => status,
        Ok(mut replies) => replies.message().await.expect_err("no new calls on a closed connection"),
    };
    assert_eq!(refused.code, Code::Unavailable, "{refused}");
    server.stop().await;
}
