//! The RDMA transport alone, no RPC: what rdma-rpc's RDMA round trip is measured against between
//! perftest (verbs in a tight loop) and the full RPC stack.
//!
//! [`RawRdmaEchoServer`] accepts RDMA connections through rdma-rpc's own handshake and transport
//! (`transport-rdma`: registered slots, SEND with immediate, the CQ reaped by the receiver while
//! it spins, tokio tasks) and echoes every message back unchanged, copied into a send slot. No
//! frame header, no session, no protobuf, no call state: the same split as the raw tokio TCP echo
//! has against rdma-rpc over TCP. [`RawRdmaEchoClient`] makes one round trip at a time.

use std::io;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes};
use rdma_rpc::transport::rdma::{
    Accepted, Negotiated, RdmaAlloc, RdmaConfig, RdmaError, RdmaReceiver, RdmaSender, accept, connect,
};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection, TcpListener};
use tokio::task::JoinHandle;

/// An echo server over the bare RDMA transport.
pub struct RawRdmaEchoServer {
    addr: SocketAddr,
    config: RdmaConfig,
    task: JoinHandle<()>,
}

impl RawRdmaEchoServer {
    /// Binds `bind` (`host:port` on an RDMA device's address, port 0 for a free one) and echoes
    /// on every connection that negotiates RDMA, each in a task of the current runtime. A
    /// connection that stays on TCP is dropped: this baseline is RDMA or nothing.
    pub async fn start(bind: &str, config: RdmaConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(bind, TcpConfig::default()).await?;
        let addr = listener.local_addr()?;
        let server_config = config.clone();
        let task = tokio::spawn(async move {
            while let Ok(tcp) = listener.accept().await {
                let config = server_config.clone();
                tokio::spawn(async move {
                    if let Ok(Accepted::Rdma(connection)) = accept(tcp, Some(&config)).await {
                        let (alloc, sender, receiver) = connection.split();
                        // A connection ends with its peer; errors only end that connection.
                        let _ = echo(alloc, sender, receiver).await;
                    }
                });
            }
        });
        Ok(RawRdmaEchoServer { addr, config, task })
    }

    /// A new RDMA connection to the server.
    pub async fn client(&self) -> Result<RawRdmaEchoClient, String> {
        let tcp = TcpConnection::connect(self.addr, TcpConfig::default())
            .await
            .map_err(|err| format!("raw rdma echo: cannot connect to {}: {err}", self.addr))?;
        match connect(tcp, &self.config).await {
            Ok(Negotiated::Rdma(connection)) => {
                let (alloc, sender, receiver) = connection.split();
                Ok(RawRdmaEchoClient { alloc, sender, receiver })
            }
            Ok(Negotiated::Tcp { reason, .. }) => Err(format!("raw rdma echo: RDMA was refused: {reason}")),
            Err(err) => Err(format!("raw rdma echo: handshake failed: {err}")),
        }
    }
}

impl Drop for RawRdmaEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends every received message back, one SEND each.
async fn echo(alloc: RdmaAlloc, mut sender: RdmaSender, mut receiver: RdmaReceiver) -> Result<(), RdmaError> {
    while let Some(message) = receiver.recv().await? {
        send(&alloc, &mut sender, &message).await?;
    }
    Ok(())
}

/// Copies `payload` into a send slot and posts it.
async fn send(alloc: &RdmaAlloc, sender: &mut RdmaSender, payload: &[u8]) -> Result<(), RdmaError> {
    let mut buf = alloc.alloc(payload.len()).await?;
    buf.put_slice(payload);
    sender.feed(buf)?;
    sender.flush().await
}

/// The client side of [`RawRdmaEchoServer`]: one RDMA connection, one round trip at a time.
pub struct RawRdmaEchoClient {
    alloc: RdmaAlloc,
    sender: RdmaSender,
    receiver: RdmaReceiver,
}

impl RawRdmaEchoClient {
    /// Sends `payload` as one message and waits for its echo.
    pub async fn round_trip(&mut self, payload: &[u8]) -> Result<Bytes, String> {
        send(&self.alloc, &mut self.sender, payload).await.map_err(|err| format!("raw rdma echo: {err}"))?;
        match self.receiver.recv().await {
            Ok(Some(back)) => Ok(back),
            Ok(None) => Err("raw rdma echo: the server closed the connection".to_owned()),
            Err(err) => Err(format!("raw rdma echo: {err}")),
        }
    }
}
