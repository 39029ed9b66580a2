//! Benchmarks of rdma-rpc: the criterion benches live in `benches/`, the side-by-side bench
//! binary in `src/bin/rpc-bench/`; this library holds the fixtures they share.
//!
//! - [`RpcEchoServer`]: an rdma-rpc server (echo service) on 127.0.0.1 over the TCP transport (or
//!   on any address, offering RDMA), and clients connected to it.
//! - [`raw`]: plain tokio TCP echo and copy servers, the floor the RPC stack is compared with.
//! - [`raw_rdma`]: an echo over the bare RDMA transport (no frame, session or protobuf), the
//!   floor between perftest and rdma-rpc over RDMA.
//! - [`tonic_echo`]: the same echo service over tonic (gRPC), the other baseline.
//! - [`alloc_count`]: a counting global allocator for allocations per call.
//!
//! Servers must be started from inside a tokio runtime (their tasks are spawned on it).

pub mod alloc_count;
pub mod raw;
mod raw_frames;
pub mod raw_rdma;
pub mod tonic_echo;

pub use raw::{
    RawCopyServer, RawEchoClient, RawEchoServer, RawPipelinedClient, RawSinkServer, raw_copy_stream, raw_sink_stream,
};

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::{EchoClient, EchoInlineClient};
use rdma_rpc::rpc::direct::InlineClient;
use rdma_rpc::rpc::{Client, ConnectOptions, Connection, ConnectionConfig, Router, Server};
use rdma_rpc::transport::rdma::RdmaConfig;
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Payload sizes of the round-trip benches: 64 B, 4 KiB, 64 KiB.
pub const ROUND_TRIP_SIZES: [usize; 3] = [64, 4 * 1024, 64 * 1024];

/// A deterministic, non-constant payload of `len` bytes.
pub fn payload(len: usize) -> bytes::Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// An rdma-rpc server serving [`EchoService`] on a TCP port, offering RDMA when asked to.
#[derive(Debug)]
pub struct RpcEchoServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RpcEchoServer {
    /// Binds 127.0.0.1 on a free port and serves in a task of the current runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_on("127.0.0.1:0", None).await
    }

    /// Binds `bind` (`host:port`, port 0 for a free one) and serves in a task of the current
    /// runtime; clients that offer RDMA get it when `rdma` is set and this host can.
    pub async fn start_on(bind: &str, rdma: Option<RdmaConfig>) -> io::Result<Self> {
        Self::start_with(bind, TcpConfig::default(), rdma).await
    }

    /// As [`start_on`](Self::start_on), with these TCP settings (e.g. busy-polling).
    pub async fn start_with(bind: &str, tcp: TcpConfig, rdma: Option<RdmaConfig>) -> io::Result<Self> {
        Self::start_server(bind, tcp, rdma, false).await
    }

    /// As [`start_on`](Self::start_on) with RDMA, each RDMA connection run to completion in a
    /// thread of its own (`Server::run_to_completion`).
    pub async fn start_run_to_completion(bind: &str, rdma: RdmaConfig) -> io::Result<Self> {
        Self::start_server(bind, TcpConfig::default(), Some(rdma), true).await
    }

    async fn start_server(bind: &str, tcp: TcpConfig, rdma: Option<RdmaConfig>, direct: bool) -> io::Result<Self> {
        let listener = TcpListener::bind(bind, tcp).await?;
        let addr = listener.local_addr()?;
        let mut router = Router::default();
        router.add(EchoService::server());
        let mut server = Server::new(router, ConnectionConfig::default());
        if direct {
            server = server.run_to_completion();
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve(listener, rdma, shutdown, Duration::from_secs(1)).await
        });
        Ok(RpcEchoServer { addr, stop: Some(stop), task: Some(task) })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new connection to the server, handshake done.
    pub async fn client(&self) -> Result<EchoClient<TcpConnection>, Box<dyn std::error::Error + Send + Sync>> {
        self.client_with(TcpConfig::default()).await
    }

    /// A new connection with these TCP settings, handshake done.
    pub async fn client_with(
        &self,
        tcp: TcpConfig,
    ) -> Result<EchoClient<TcpConnection>, Box<dyn std::error::Error + Send + Sync>> {
        let connection = TcpConnection::connect(self.addr, tcp).await?;
        Ok(EchoClient::new(Client::connect(connection, ConnectionConfig::default()).await?))
    }

    /// A new connection for an inline client (calls run in the caller's task), handshake done.
    pub async fn inline_client(
        &self,
    ) -> Result<EchoInlineClient<TcpConnection>, Box<dyn std::error::Error + Send + Sync>> {
        let connection = TcpConnection::connect(self.addr, TcpConfig::default()).await?;
        Ok(EchoInlineClient::new(InlineClient::connect(connection, ConnectionConfig::default()).await?))
    }

    /// A new connection with these options (RDMA when `options.rdma` is set), handshake done.
    pub async fn connect(&self, options: &ConnectOptions) -> Result<Connection, rdma_rpc::rpc::ConnectError> {
        rdma_rpc::rpc::connect(&self.addr.to_string(), options).await
    }

    /// Graceful stop: GOAWAY on every connection, calls drain, the serving task ends.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RpcEchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
