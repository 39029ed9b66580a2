//! Shared test fixtures: a TCP server on loopback with the echo and calculator services.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rdma_rpc::echo::EchoService;
use rdma_rpc::rpc::{Client, ConnectionConfig, Router, Server};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};
use tokio::sync::oneshot;

pub mod calculator;
pub mod replication;

/// A server on 127.0.0.1 serving echo and the test calculator; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub probe: Arc<calculator::Probe>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(ConnectionConfig::default()).await
    }

    pub async fn start_with(config: ConnectionConfig) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut router = Router::default();
        router.add(EchoService::server());
        let probe = Arc::new(calculator::Probe::default());
        router.add(calculator::server(probe.clone()));
        let server = Server::new(router, config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve_tcp(listener, shutdown, Duration::from_secs(5)).await.expect("serve");
        });
        TestServer { addr, probe, stop: Some(stop), task: Some(task) }
    }

    pub async fn client(&self) -> Client<TcpConnection> {
        self.client_with(ConnectionConfig::default()).await
    }

    pub async fn client_with(&self, config: ConnectionConfig) -> Client<TcpConnection> {
        let connection = TcpConnection::connect(self.addr, TcpConfig::default()).await.expect("connect");
        Client::connect(connection, config).await.expect("handshake")
    }

    /// Graceful stop: GOAWAY, drain, done.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Streams everything `source` holds through a `Pipe` call (an echo of raw data) the way zero-copy
/// senders do (read straight into transport buffers of `chunk` bytes, sent as they are), and
/// returns what came back.
pub async fn pipe_from_reader<T, Req, Res, R>(
    mut requests: rdma_rpc::rpc::CallSender<T, Req>,
    mut replies: rdma_rpc::rpc::CallReceiver<Res>,
    mut source: R,
    chunk: usize,
) -> Vec<u8>
where
    T: rdma_rpc::transport::Transport,
    Req: prost::Message + Send + 'static,
    Res: prost::Message + Default,
    R: std::io::Read + Send + 'static,
{
    let producer = tokio::spawn(async move {
        loop {
            let mut buf = requests.data_buffer(chunk).await.expect("transport buffer");
            if buf.read_from(&mut source).expect("read") == 0 {
                break;
            }
            requests.send_data_buffer(buf).await.expect("send");
        }
        requests.finish().await.expect("finish");
    });
    let mut echoed = Vec::new();
    while let Some(data) = replies.data().await.expect("stream") {
        echoed.extend_from_slice(&data);
    }
    producer.await.expect("producer");
    echoed
}

/// Waits (bounded) until `condition` holds.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} did not happen within 2 s");
}

/// The RDMA device's address from `RDMA_TEST_DEVICE` / `RDMA_TEST_ADDR` (what `scripts/rxe-test`
/// sets in its guest), with tracing to the test's output; panics when no device is configured.
pub fn rdma_addr() -> String {
    match (std::env::var("RDMA_TEST_DEVICE"), std::env::var("RDMA_TEST_ADDR")) {
        (Ok(device), Ok(addr)) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
            eprintln!("RDMA test on {device} at {addr}");
            addr
        }
        _ => panic!(
            "RDMA_TEST_DEVICE / RDMA_TEST_ADDR are unset: this test needs a real RDMA device (scripts/rxe-test runs it on soft-RoCE)"
        ),
    }
}

/// `len` bytes of a pattern that differs by `seed` and along the buffer.
pub fn pattern(len: usize, seed: u8) -> bytes::Bytes {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
}

/// `rdma-rpc serve --listen rdma://ADDR:0 --no-fallback` plus `extra` flags, started as a child
/// process (so a test can kill it); the child, the port it listens on, and its "listening" line.
pub fn spawn_rdma_serve(addr: &str, extra: &[&str]) -> (std::process::Child, String, String) {
    use std::io::BufRead;
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_rdma-rpc"))
        .args(["serve", "--listen", &format!("rdma://{addr}:0"), "--no-fallback"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start rdma-rpc serve");
    let mut line = String::new();
    let stdout = server.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout).read_line(&mut line).expect("listening line");
    let port = line
        .split("rdma://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|hostport| hostport.rsplit(':').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    (server, port, line)
}
