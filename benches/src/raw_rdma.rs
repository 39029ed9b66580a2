//! The RDMA transport alone, no RPC: what rdma-rpc's RDMA round trip is measured against between
//! perftest (verbs in a tight loop) and the full RPC stack.
//!
//! [`RawRdmaEchoServer`] accepts RDMA connections through rdma-rpc's own handshake and transport
//! (`transport-rdma`: registered slots, SEND with immediate, the CQ reaped by the receiver while
//! it spins, tokio tasks) and echoes every message back unchanged, copied into a send slot. No
//! frame header, no session, no protobuf, no call state: the same split as the raw tokio TCP echo
//! has against rdma-rpc over TCP. [`RawRdmaEchoClient`] makes one round trip at a time.
//!
//! Run to completion ([`RawRdmaEchoServer::start_run_to_completion`], [`RawRdmaDirectClient`]):
//! the same transport polled by a thread that claimed its CQ (`RdmaReceiver::claim_cq`,
//! `poll_now`, `RdmaSender::try_flush`), no runtime in between: the baseline of `rpc::direct`,
//! as the tokio-driven echo is that of the tokio-driven stack.

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
        Self::start_with(bind, config, false).await
    }

    /// As [`start`](Self::start), but every connection is echoed by a thread of its own that
    /// polls its CQ (run to completion); the thread ends with its connection.
    pub async fn start_run_to_completion(bind: &str, config: RdmaConfig) -> io::Result<Self> {
        Self::start_with(bind, config, true).await
    }

    async fn start_with(bind: &str, config: RdmaConfig, direct: bool) -> io::Result<Self> {
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
                        if direct {
                            std::thread::spawn(move || echo_direct(&alloc, sender, receiver));
                        } else {
                            let _ = echo(alloc, sender, receiver).await;
                        }
                    }
                });
            }
        });
        Ok(RawRdmaEchoServer { addr, config, task })
    }

    /// A new RDMA connection to the server.
    pub async fn client(&self) -> Result<RawRdmaEchoClient, String> {
        let (alloc, sender, receiver) = self.connect().await?;
        Ok(RawRdmaEchoClient { alloc, sender, receiver })
    }

    /// A new RDMA connection to the server, for a thread that polls it (run to completion).
    pub async fn direct_client(&self) -> Result<RawRdmaDirectClient, String> {
        let (alloc, sender, mut receiver) = self.connect().await?;
        receiver.claim_cq();
        Ok(RawRdmaDirectClient { alloc, sender, receiver })
    }

    async fn connect(&self) -> Result<(RdmaAlloc, RdmaSender, RdmaReceiver), String> {
        let tcp = TcpConnection::connect(self.addr, TcpConfig::default())
            .await
            .map_err(|err| format!("raw rdma echo: cannot connect to {}: {err}", self.addr))?;
        match connect(tcp, &self.config).await {
            Ok(Negotiated::Rdma(connection)) => Ok(connection.split()),
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

/// Echoes every message back from the calling thread, which claims the connection's CQ and
/// polls it, until the connection ends.
fn echo_direct(alloc: &RdmaAlloc, mut sender: RdmaSender, mut receiver: RdmaReceiver) {
    receiver.claim_cq();
    loop {
        match receiver.poll_now() {
            Some(Ok(Some(message))) => {
                if send_now(alloc, &mut sender, &mut receiver, &message).is_err() {
                    return;
                }
            }
            Some(Ok(None) | Err(_)) => return,
            None => {
                // Credit a send waits for comes with the completions the poll reaps.
                if sender.try_flush().is_err() {
                    return;
                }
                std::hint::spin_loop();
            }
        }
    }
}

/// Copies `payload` into a send slot and posts it as far as credit allows now, without waiting:
/// a slot still in flight comes back when the CQ is reaped. A message that arrives meanwhile
/// breaks the one-at-a-time echo's protocol, and is an error.
fn send_now(
    alloc: &RdmaAlloc,
    sender: &mut RdmaSender,
    receiver: &mut RdmaReceiver,
    payload: &[u8],
) -> Result<(), RdmaError> {
    let mut buf = loop {
        if let Some(buf) = alloc.try_alloc(payload.len()) {
            break buf?;
        }
        match receiver.poll_now() {
            None => std::hint::spin_loop(),
            Some(Err(err)) => return Err(err),
            Some(Ok(_)) => return Err(RdmaError::Protocol("a message arrived before the echo was sent".into())),
        }
    };
    buf.put_slice(payload);
    sender.feed(buf)?;
    sender.try_flush().map(drop)
}

/// The client side of [`RawRdmaEchoServer::start_run_to_completion`]: one RDMA connection whose CQ
/// the calling thread polls, one blocking round trip at a time.
pub struct RawRdmaDirectClient {
    alloc: RdmaAlloc,
    sender: RdmaSender,
    receiver: RdmaReceiver,
}

impl RawRdmaDirectClient {
    /// Sends `payload` as one message and spins on the CQ until its echo is back; returns the
    /// echo's length.
    pub fn round_trip(&mut self, payload: &[u8]) -> Result<usize, String> {
        send_now(&self.alloc, &mut self.sender, &mut self.receiver, payload)
            .map_err(|err| format!("raw rdma echo: {err}"))?;
        loop {
            match self.receiver.poll_now() {
                Some(Ok(Some(back))) => return Ok(back.len()),
                Some(Ok(None)) => return Err("raw rdma echo: the server closed the connection".to_owned()),
                Some(Err(err)) => return Err(format!("raw rdma echo: {err}")),
                None => {
                    self.sender.try_flush().map_err(|err| format!("raw rdma echo: {err}"))?;
                    std::hint::spin_loop();
                }
            }
        }
    }
}
