//! Benchmarks of rdma-rpc: the criterion benches live in `benches/`; this library holds the
//! loopback fixtures they share.
//!
//! - [`RpcEchoServer`]: an rdma-rpc server (echo service) on 127.0.0.1 over the TCP transport, and
//!   a client connected to it.
//! - [`RawEchoServer`]: a plain tokio TCP echo of length-prefixed messages, the baseline the RPC
//!   round trip is compared with.
//!
//! Both must be started from inside a tokio runtime (their tasks are spawned on it) and serve
//! 127.0.0.1 only.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rdma_rpc::echo::EchoService;
use rdma_rpc::pb::echo::EchoClient;
use rdma_rpc::rpc::{Client, ConnectionConfig, Router, Server};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Payload sizes of the round-trip benches: 64 B, 4 KiB, 64 KiB.
pub const ROUND_TRIP_SIZES: [usize; 3] = [64, 4 * 1024, 64 * 1024];

/// A deterministic, non-constant payload of `len` bytes.
pub fn payload(len: usize) -> bytes::Bytes {
    (0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into()
}

/// An rdma-rpc server serving [`EchoService`] on a loopback TCP port.
#[derive(Debug)]
pub struct RpcEchoServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RpcEchoServer {
    /// Binds 127.0.0.1 on a free port and serves in a task of the current runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await?;
        let addr = listener.local_addr()?;
        let mut router = Router::default();
        router.add(EchoService::server());
        let server = Server::new(router, ConnectionConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve_tcp(listener, shutdown, Duration::from_secs(1)).await
        });
        Ok(RpcEchoServer { addr, stop: Some(stop), task: Some(task) })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new connection to the server, handshake done.
    pub async fn client(&self) -> Result<EchoClient<TcpConnection>, Box<dyn std::error::Error + Send + Sync>> {
        let connection = TcpConnection::connect(self.addr, TcpConfig::default()).await?;
        Ok(EchoClient::new(Client::connect(connection, ConnectionConfig::default()).await?))
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

/// A plain tokio TCP echo server: every message is a big-endian `u32` length followed by that
/// many bytes, and is written back unchanged. No framing library, no protobuf, no RPC: the
/// floor an RPC round trip over TCP can be compared with.
#[derive(Debug)]
pub struct RawEchoServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawEchoServer {
    /// Binds 127.0.0.1 on a free port and echoes on every accepted connection, each in a task of
    /// the current runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // A connection ends with its peer; errors only end that connection.
                    let _ = raw_echo_connection(stream).await;
                });
            }
        });
        Ok(RawEchoServer { addr, task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new connection to the server.
    pub async fn client(&self) -> io::Result<RawEchoClient> {
        let stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawEchoClient { stream, out: Vec::new(), back: Vec::new() })
    }
}

impl Drop for RawEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_echo_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let len = match stream.read_u32().await {
            Ok(len) => len,
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        };
        buf.clear();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.resize(4 + usize::try_from(len).map_err(io::Error::other)?, 0);
        stream.read_exact(&mut buf[4..]).await?;
        stream.write_all(&buf).await?;
    }
}

/// The client side of [`RawEchoServer`]: one connection, buffers reused between round trips.
#[derive(Debug)]
pub struct RawEchoClient {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl RawEchoClient {
    /// Sends `payload` as one length-prefixed message (one write) and reads the echo back; returns
    /// the echoed bytes.
    pub async fn round_trip(&mut self, payload: &[u8]) -> io::Result<&[u8]> {
        let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.out.clear();
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(payload);
        self.stream.write_all(&self.out).await?;
        let back_len = usize::try_from(self.stream.read_u32().await?).map_err(io::Error::other)?;
        self.back.resize(back_len, 0);
        self.stream.read_exact(&mut self.back).await?;
        Ok(&self.back)
    }
}
