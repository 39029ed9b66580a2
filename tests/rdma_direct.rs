//! Run-to-completion RDMA connections (`rpc::direct`) over real verbs on a real device: run by
//! `scripts/rxe-test` in a soft-RoCE guest (`RDMA_TEST_DEVICE`, `RDMA_TEST_ADDR`); elsewhere
//! `#[ignore]`d. The server runs each RDMA connection in a thread that polls its CQ; the
//! [`DirectClient`] polls its own from the calling thread. Each side is also checked against the
//! ordinary (tokio-driven) other side: the wire is the same. The inline client (async calls in
//! the caller's task) is run against both kinds of server here too.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::calculator::pb::{Blob, CalculatorClient, CalculatorDirectClient, CountRequest, Numbers, Sum};
use common::{pattern, rdma_addr};
use rdma_rpc::Code;
use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::{EchoClient, EchoInlineClient, EchoReply, EchoRequest};
use rdma_rpc::rpc::direct::{DirectClient, InlineClient};
use rdma_rpc::rpc::{ConnectOptions, Connection, ConnectionConfig, Router, Server, connect};
use rdma_rpc::transport::rdma::{self, Negotiated, RdmaConfig};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};

const ECHO: &str = "/rdmarpc.echo.Echo/Echo";
const WAIT: &str = "/rdmarpc.test.Calculator/Wait";

/// A server on the device's address serving echo and the calculator; RDMA connections run to
/// completion when `direct`.
async fn start_server(addr: &str, direct: bool) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind(format!("{addr}:0"), TcpConfig::default()).await.expect("bind");
    let bound = listener.local_addr().expect("addr").to_string();
    let mut router = Router::default();
    router.add(EchoService::server());
    router.add(common::calculator::server(Default::default()));
    let mut server = Server::new(router, ConnectionConfig::default());
    if direct {
        server = server.run_to_completion();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        server.serve(listener, Some(RdmaConfig::default()), shutdown, Duration::from_secs(5)).await.expect("serve");
    });
    (bound, stop)
}

async fn direct_client(server: &str) -> DirectClient {
    let mut client =
        DirectClient::connect(server, &RdmaConfig::default(), ConnectionConfig::default()).await.expect("connect");
    client.set_timeout(Some(Duration::from_secs(30)));
    client
}

/// Runs `work` with the client in a blocking thread (its calls block), and gives the client back.
async fn blocking<T: Send + 'static>(
    client: DirectClient,
    work: impl FnOnce(&mut DirectClient) -> T + Send + 'static,
) -> (DirectClient, T) {
    tokio::task::spawn_blocking(move || {
        let mut client = client;
        let out = work(&mut client);
        (client, out)
    })
    .await
    .expect("the calling thread")
}

fn echo(client: &mut DirectClient, payload: &Bytes) -> Result<Bytes, rdma_rpc::Status> {
    client.unary::<_, EchoReply>(ECHO, &EchoRequest { payload: payload.clone() }).map(|reply| reply.payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_run_to_completion_calls_of_every_size_both_sides() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, true).await;
    let client = direct_client(&server).await;
    let (client, ()) = blocking(client, |client| {
        // Sizes across one slot, inline sends, and the large-buffer path (RDMA WRITE).
        for (i, size) in [0usize, 1, 64, 4096, 65_536, 1 << 20].into_iter().enumerate() {
            let payload = pattern(size, i as u8);
            assert_eq!(echo(client, &payload).expect("echo"), payload, "size {size}");
        }
        // Many in a row: slots, credit and large buffers come back call after call.
        for i in 0..300u32 {
            let payload = pattern(64 + (i as usize % 3) * 5000, i as u8);
            assert_eq!(echo(client, &payload).expect("echo"), payload, "call {i}");
        }
    })
    .await;
    // The generated typed client, on the same connection.
    let mut calculator = CalculatorDirectClient::new(client);
    let client = tokio::task::spawn_blocking(move || {
        let sum = calculator.add(&Numbers { values: vec![2, 3, 37] }).expect("add");
        assert_eq!(sum.total, 42);
        let blob = Blob { data: pattern(3 << 20, 7) };
        let back = calculator.reflect(&blob).expect("reflect 3 MiB");
        assert!(back.data == blob.data, "3 MiB came back changed");
        calculator.into_inner()
    })
    .await
    .expect("the calling thread");
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_run_to_completion_interoperates_with_the_ordinary_client_and_server() {
    let addr = rdma_addr();
    // The ordinary client against a run-to-completion server.
    let (direct_server, _stop) = start_server(&addr, true).await;
    let options = ConnectOptions { rdma: Some(RdmaConfig::default()), fallback: false, ..ConnectOptions::default() };
    let Connection::Rdma(client) = connect(&direct_server, &options).await.expect("connect") else {
        panic!("expected RDMA");
    };
    let echo_client = EchoClient::new(client.with_timeout(Duration::from_secs(30)));
    // Concurrent calls on one connection: the server's thread takes them one after another.
    let calls = (0..32u8).map(|i| {
        let echo_client = echo_client.clone();
        async move {
            let payload = pattern(100 + usize::from(i) * 300, i);
            let reply = echo_client.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload);
        }
    });
    futures_util::future::join_all(calls).await;
    // The run-to-completion client against the ordinary server.
    let (server, _stop2) = start_server(&addr, false).await;
    let client = direct_client(&server).await;
    let (_client, ()) = blocking(client, |client| {
        for i in 0..50u8 {
            let payload = pattern(usize::from(i) * 97, i);
            assert_eq!(echo(client, &payload).expect("echo"), payload);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_run_to_completion_errors_waits_deadlines_and_refusals() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, true).await;
    let client = direct_client(&server).await;
    let (client, ()) = blocking(client, |client| {
        let wait = |upto, delay_ms| CountRequest { upto, delay_ms };
        // The handler's own error status, and a panic, end only their calls.
        let err = client.unary::<_, Sum>(WAIT, &wait(0, 0)).expect_err("told to fail");
        assert_eq!(err.code, Code::NotFound, "{err}");
        let err = client.unary::<_, Sum>(WAIT, &wait(1, 0)).expect_err("told to panic");
        assert_eq!(err.code, Code::Internal, "{err}");
        // A handler that waits (a tokio timer) holds the thread, then answers.
        let started = Instant::now();
        let sum: Sum = client.unary(WAIT, &wait(7, 200)).expect("a handler that waits");
        assert_eq!(sum.total, 7);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // A deadline shorter than the handler's wait ends the call on time.
        client.set_timeout(Some(Duration::from_millis(300)));
        let started = Instant::now();
        let err = client.unary::<_, Sum>(WAIT, &wait(7, 5_000)).expect_err("past its deadline");
        assert_eq!(err.code, Code::DeadlineExceeded, "{err}");
        assert!(started.elapsed() < Duration::from_secs(4), "the deadline was not kept: {:?}", started.elapsed());
        client.set_timeout(Some(Duration::from_secs(30)));
        // Unknown methods, and a request that does not decode as the method's type.
        let err = client.unary::<_, EchoReply>("/no.Such/Method", &EchoRequest::default()).expect_err("unknown");
        assert_eq!(err.code, Code::Unimplemented, "{err}");
        assert!(err.message.contains("rdmarpc.echo.Echo"), "names what is served: {err}");
        let err = client.unary::<_, EchoReply>(ECHO, &Sum { total: 5, count: 1 }).expect_err("does not decode");
        assert_eq!(err.code, Code::InvalidArgument, "{err}");
        // Larger than the largest frame (16 MiB): refused before it is sent.
        let huge = EchoRequest { payload: Bytes::from(vec![0u8; 17 << 20]) };
        let err = client.unary::<_, EchoReply>(ECHO, &huge).expect_err("too large a frame");
        assert_eq!(err.code, Code::ResourceExhausted, "{err}");
        // The connection is still fine.
        assert_eq!(echo(client, &pattern(64, 3)).expect("still served"), pattern(64, 3));
    })
    .await;
    drop(client);
    // Streaming methods are refused on such a connection, saying where they are served.
    let options = ConnectOptions { rdma: Some(RdmaConfig::default()), fallback: false, ..ConnectOptions::default() };
    let Connection::Rdma(client) = connect(&server, &options).await.expect("connect") else { panic!("expected RDMA") };
    let calculator = CalculatorClient::new(client.with_timeout(Duration::from_secs(30)));
    let refused = async {
        let mut sums = calculator.count(&CountRequest { upto: 3, delay_ms: 0 }).await?;
        sums.message().await
    };
    let err = refused.await.expect_err("streaming is not run to completion");
    assert_eq!(err.code, Code::Unimplemented, "{err}");
    assert!(err.message.contains("streaming"), "{err}");
    let sum = calculator.add(&Numbers { values: vec![1, 2] }).await.expect("unary still served");
    assert_eq!(sum.total, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_run_to_completion_bad_frames_close_only_that_connection() {
    let addr = rdma_addr();
    let (server, _stop) = start_server(&addr, true).await;
    let client = direct_client(&server).await;
    let (client, ()) = blocking(client, |client| {
        echo(client, &pattern(64, 1)).expect("served");
    })
    .await;
    // A peer that speaks the transport but sends garbage instead of frames.
    let tcp = TcpConnection::connect(server.as_str(), TcpConfig::default()).await.expect("tcp");
    let Negotiated::Rdma(raw) = rdma::connect(tcp, &RdmaConfig::default()).await.expect("handshake") else {
        panic!("expected RDMA");
    };
    let (alloc, mut sender, mut receiver) = raw.split();
    let mut buf = alloc.alloc(64).await.expect("buffer");
    bytes::BufMut::put_slice(&mut buf, &[0xff; 64]);
    sender.feed(buf).expect("feed");
    sender.flush().await.expect("flush");
    // The server answers with its SETTINGS (and a GOAWAY), then closes this connection.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match receiver.recv().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server must close a connection that sends garbage");
    // The other connection is still served.
    let (_client, ()) = blocking(client, |client| {
        for i in 0..20u8 {
            assert_eq!(echo(client, &pattern(200, i)).expect("still served"), pattern(200, i));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_run_to_completion_peer_killed_fails_the_call_promptly() {
    let addr = rdma_addr();
    let (mut server, port, line) = common::spawn_rdma_serve(&addr, &["--run-to-completion"]);
    assert!(line.contains("run to completion"), "{line}");
    // The CLI's own run-to-completion ping against it.
    let ping = Command::new(env!("CARGO_BIN_EXE_rdma-rpc"))
        .args(["ping", &format!("rdma://{addr}:{port}"), "--run-to-completion", "--count", "200", "--size", "100"])
        .output()
        .expect("run rdma-rpc ping");
    let stdout = String::from_utf8_lossy(&ping.stdout);
    assert!(ping.status.success(), "{stdout}{}", String::from_utf8_lossy(&ping.stderr));
    assert!(stdout.contains("run to completion") && stdout.contains("200 calls, 100 B payload"), "{stdout}");
    let client = direct_client(&format!("{addr}:{port}")).await;
    let (client, ()) = blocking(client, |client| {
        echo(client, &pattern(64, 1)).expect("served by the CLI's run-to-completion server");
    })
    .await;
    server.kill().expect("SIGKILL the server");
    let _ = server.wait();
    let (_client, outcome) = blocking(client, |client| {
        let started = Instant::now();
        // Calls until one fails: the first may still find the connection open.
        let err = loop {
            match echo(client, &pattern(64, 2)) {
                Ok(_) if started.elapsed() < Duration::from_secs(10) => continue,
                Ok(_) => panic!("calls to a killed server kept succeeding"),
                Err(err) => break err,
            }
        };
        (err, started.elapsed())
    })
    .await;
    let (err, took) = outcome;
    assert_eq!(err.code, Code::Unavailable, "{err}");
    assert!(took < Duration::from_secs(10), "the call hung for {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real RDMA device: scripts/rxe-test runs it on soft-RoCE"]
async fn rdma_inline_client_calls_both_kinds_of_server() {
    let addr = rdma_addr();
    for direct in [false, true] {
        let (server, _stop) = start_server(&addr, direct).await;
        let tcp = TcpConnection::connect(server.as_str(), TcpConfig::default()).await.expect("tcp");
        let Negotiated::Rdma(connection) = rdma::connect(tcp, &RdmaConfig::default()).await.expect("handshake") else {
            panic!("expected RDMA");
        };
        let client = InlineClient::connect(connection, ConnectionConfig::default()).await.expect("session");
        assert_eq!(client.transport_name(), "rdma");
        let mut echo = EchoInlineClient::new(client);
        // Sizes across inline sends, one slot, and the large-buffer path (RDMA WRITE).
        for size in [0usize, 64, 4096, 200_000, 1 << 20] {
            let payload = pattern(size, size as u8);
            let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload, "size {size}, run to completion: {direct}");
        }
        let mut client = echo.into_inner();
        client.set_timeout(Some(Duration::from_millis(200)));
        let slow = CountRequest { upto: 5, delay_ms: 3_000 };
        let late = client.unary::<_, Sum>(WAIT, &slow).await.expect_err("the deadline passes first");
        assert_eq!(late.code, Code::DeadlineExceeded, "{late}");
        client.set_timeout(None);
        for round in 0..1_000u64 {
            let payload = Bytes::from(round.to_le_bytes().to_vec());
            let reply: EchoReply = client.unary(ECHO, &EchoRequest { payload: payload.clone() }).await.expect("echo");
            assert_eq!(reply.payload, payload, "round {round}");
        }
        client.close().await;
    }
}
