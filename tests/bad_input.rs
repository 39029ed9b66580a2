//! Bad input over real TCP: garbage, truncated frames, oversized lengths, unknown kinds and
//! feature bits, unknown methods, messages that do not decode. Each gets a typed error, only the
//! offending connection is closed (with a GOAWAY trailer where the frame could be read at all), and
//! the same server goes on answering other clients.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::TestServer;
use common::calculator::pb::Sum;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::pb::rpc as pb;
use rdma_rpc::session::SessionConfig;
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpReceiver, TcpSender};
use rdma_rpc::wire::{Frame, FrameHeader, HEADER_LEN, Kind, WireLimits};
use rdma_rpc::{Code, Status};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(10);

/// Checks that the server still answers a fresh client.
async fn server_still_serves(server: &TestServer) {
    let client = EchoClient::new(server.client().await);
    let reply = client.echo(&EchoRequest { payload: Bytes::from_static(b"still here") }).await.expect("echo");
    assert_eq!(reply.payload, Bytes::from_static(b"still here"));
}

/// A raw peer that speaks frames by hand.
struct RawPeer {
    tx: TcpSender,
    rx: TcpReceiver,
}

impl RawPeer {
    /// Connects and completes the handshake (sends our SETTINGS, reads the server's).
    async fn handshake(server: &TestServer) -> RawPeer {
        let (mut tx, mut rx) =
            TcpConnection::connect(server.addr, TcpConfig::default()).await.expect("connect").split();
        let settings = Frame::Settings(SessionConfig::default().to_settings());
        tx.send(frame_buf(&settings)).await.expect("send settings");
        let first = rx.recv().await.expect("recv").expect("settings");
        assert!(matches!(Frame::decode(first, &WireLimits::default()), Ok(Frame::Settings(_))));
        RawPeer { tx, rx }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let mut buf = self.tx.buffer(bytes.len());
        buf.body_mut().put_slice(bytes);
        self.tx.send(buf).await.expect("send");
    }

    /// Reads until the server closes; returns the GOAWAY status it sent, if any.
    async fn goaway_then_close(&mut self) -> Option<Status> {
        let mut goaway = None;
        let read = async {
            while let Ok(Some(message)) = self.rx.recv().await {
                if let Ok(Frame::GoAway(g)) = Frame::decode(message, &WireLimits::default()) {
                    goaway = g.status.map(Status::from_proto);
                }
            }
        };
        tokio::time::timeout(LIMIT, read).await.expect("the server closes the bad connection");
        goaway
    }
}

fn frame_buf(frame: &Frame) -> rdma_rpc::transport::tcp::SendBuf {
    let mut buf = rdma_rpc::transport::tcp::SendBuf::with_capacity(frame.encoded_len());
    frame.encode(buf.body_mut());
    buf
}

async fn raw_bytes_close_the_connection(bytes: &[u8]) {
    let server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut sink = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink);
    // The server closes: EOF (or a reset), within the limit.
    let _ = tokio::time::timeout(LIMIT, read).await.expect("server closes the connection");
    server_still_serves(&server).await;
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    raw_bytes_close_the_connection(b"\x00\x00\x00\x20GET / HTTP/1.1\r\nHost: x\r\n\r\n....").await;
}

#[tokio::test]
async fn a_truncated_frame_closes_only_that_connection() {
    // A prefix announcing 100 bytes, then 10 bytes and EOF.
    raw_bytes_close_the_connection(b"\x00\x00\x00\x64\x01\x02\x00\x00\x00\x00\x00\x00\x00\x01").await;
}

#[tokio::test]
async fn a_length_over_the_maximum_is_refused_before_allocating() {
    raw_bytes_close_the_connection(&u32::MAX.to_be_bytes()).await;
}

#[tokio::test]
async fn an_unknown_frame_kind_gets_a_goaway_trailer() {
    let server = TestServer::start().await;
    let mut peer = RawPeer::handshake(&server).await;
    let mut bytes = [0u8; HEADER_LEN];
    FrameHeader::new(Kind::Ping, 0).write_to(&mut bytes);
    bytes[1] = 0x7f;
    peer.send_raw(&bytes).await;
    let status = peer.goaway_then_close().await.expect("a GOAWAY names the error");
    assert_eq!(status.code, Code::Internal);
    assert!(status.message.contains("unknown frame kind"), "{status}");
    server_still_serves(&server).await;
}

#[tokio::test]
async fn an_unknown_required_feature_bit_gets_a_goaway_trailer() {
    let server = TestServer::start().await;
    let mut peer = RawPeer::handshake(&server).await;
    let mut bytes = BytesMut::new();
    FrameHeader { kind: Kind::Ping, flags: 0, features: 0x0000_0100, call_id: 0 }.encode(&mut bytes);
    bytes.put_u64(1);
    peer.send_raw(&bytes).await;
    let status = peer.goaway_then_close().await.expect("GOAWAY");
    assert!(status.message.contains("unknown feature bits"), "{status}");
    server_still_serves(&server).await;
}

#[tokio::test]
async fn a_call_before_settings_is_a_protocol_error() {
    let server = TestServer::start().await;
    let (mut tx, mut rx) = TcpConnection::connect(server.addr, TcpConfig::default()).await.expect("connect").split();
    let call = Frame::Call { id: 1, header: pb::CallHeader::default(), message: None, end: true };
    tx.send(frame_buf(&call)).await.expect("send");
    let mut peer = RawPeer {
        tx,
        rx: {
            let _ = rx.recv().await;
            rx
        },
    };
    let status = peer.goaway_then_close().await.expect("GOAWAY");
    assert!(status.message.contains("SETTINGS"), "{status}");
    server_still_serves(&server).await;
}

#[tokio::test]
async fn an_unknown_method_fails_that_call_only() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let err = client
        .unary::<EchoRequest, EchoRequest>("/no.Such/Method", &EchoRequest::default())
        .await
        .expect_err("unknown method");
    assert_eq!(err.code, Code::Unimplemented);
    assert!(err.message.contains("rdmarpc.echo.Echo"), "the error lists what is served: {err}");
    // The same connection still works.
    let echo = EchoClient::new(client);
    echo.echo(&EchoRequest { payload: Bytes::from_static(b"ok") }).await.expect("echo after unknown method");
}

#[tokio::test]
async fn a_message_that_does_not_decode_fails_that_call_only() {
    let server = TestServer::start().await;
    let client = server.client().await;
    // Field 1 as a varint where EchoRequest has bytes: prost refuses the wire type.
    let err = client
        .unary::<Sum, EchoRequest>("/rdmarpc.echo.Echo/Echo", &Sum { total: 5, count: 1 })
        .await
        .expect_err("undecodable request");
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("does not decode"), "{err}");
    let echo = EchoClient::new(client);
    echo.echo(&EchoRequest::default()).await.expect("the connection survives");
}

#[tokio::test]
async fn a_message_over_the_peer_limit_fails_locally_with_the_fix() {
    let server = TestServer::start().await;
    let echo = EchoClient::new(server.client().await);
    let huge = Bytes::from(vec![0u8; 17 << 20]);
    let err = echo.echo(&EchoRequest { payload: huge }).await.expect_err("too large");
    assert_eq!(err.code, Code::ResourceExhausted);
    assert!(err.message.contains("max_frame_size"), "{err}");
    echo.echo(&EchoRequest::default()).await.expect("the connection survives");
}
