//! Plain tokio TCP baselines, no RPC, no protobuf: what an RPC over TCP is measured against.
//!
//! - [`RawEchoServer`]: every message is a big-endian `u32` length and that many bytes, written
//!   back unchanged. [`RawEchoClient`] makes one round trip at a time; [`RawPipelinedClient`]
//!   keeps many in flight on one connection (a writer task batching queued requests into one
//!   write, a reader task answering them in order), the counterpart of calls multiplexed over one
//!   rdma-rpc or HTTP/2 connection.
//! - [`RawCopyServer`]: a byte stream copied back as it arrives (a plain read/write loop), the
//!   baseline for stream throughput; [`raw_copy_stream`] drives it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use crate::raw_frames::BUSY_POLL_WINDOW;
use crate::raw_frames::FrameBuf;

/// A plain tokio TCP echo server: every message is a big-endian `u32` length followed by that
/// many bytes, and is written back unchanged. No framing library, no protobuf, no RPC: the
/// floor an RPC round trip over TCP can be compared with.
#[derive(Debug)]
pub struct RawEchoServer {
    server: Loopback,
    busy_poll: bool,
}

impl RawEchoServer {
    /// Binds 127.0.0.1 on a free port and echoes on every accepted connection, each in a task of
    /// the current runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(false).await
    }

    /// As [`start`](Self::start); with `busy_poll`, server and clients read by busy-polling for
    /// [`BUSY_POLL_WINDOW`] after each message, as rdma-rpc's default `TcpConfig::busy_poll` does
    /// (the like-for-like baseline of its default row).
    pub async fn start_with(busy_poll: bool) -> io::Result<Self> {
        let server = Loopback::serve(move |stream| async move {
            // A connection ends with its peer; errors only end that connection.
            let _ = raw_echo_connection(stream, busy_poll).await;
        })
        .await?;
        Ok(RawEchoServer { server, busy_poll })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// A new connection to the server.
    pub async fn client(&self) -> io::Result<RawEchoClient> {
        let stream = TcpStream::connect(self.server.addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawEchoClient { stream, out: Vec::new(), back: FrameBuf::default(), busy_poll: self.busy_poll })
    }
}

async fn raw_echo_connection(mut stream: TcpStream, busy_poll: bool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = FrameBuf::default();
    loop {
        if buf.read_from(&mut stream, busy_poll).await? == 0 {
            return Ok(());
        }
        // Every complete message read goes back in one write.
        let echo = buf.pop_all();
        if !echo.is_empty() {
            stream.write_all(echo).await?;
        }
    }
}

/// The client side of [`RawEchoServer`]: one connection, buffers reused between round trips.
#[derive(Debug)]
pub struct RawEchoClient {
    stream: TcpStream,
    out: Vec<u8>,
    back: FrameBuf,
    busy_poll: bool,
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
        while !self.back.has_message() {
            if self.back.read_from(&mut self.stream, self.busy_poll).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.back.pop().ok_or_else(|| io::Error::other("a complete message did not pop"))
    }
}

/// A request of [`RawPipelinedClient`]: the payload and where its echo's length goes.
type Pending = (Bytes, oneshot::Sender<io::Result<usize>>);

/// Many round trips in flight on one raw echo connection; clones share the connection.
#[derive(Debug, Clone)]
pub struct RawPipelinedClient {
    requests: mpsc::UnboundedSender<Pending>,
}

impl RawPipelinedClient {
    /// A new connection to `server`, with its writer and reader tasks in the current runtime.
    pub async fn connect(server: &RawEchoServer) -> io::Result<Self> {
        let stream = TcpStream::connect(server.server.addr).await?;
        stream.set_nodelay(true)?;
        let (mut read, mut write) = stream.into_split();
        let (requests, mut queued) = mpsc::unbounded_channel::<Pending>();
        let (waiting_tx, mut waiting) = mpsc::unbounded_channel::<oneshot::Sender<io::Result<usize>>>();
        tokio::spawn(async move {
            let mut out = Vec::new();
            while let Some(first) = queued.recv().await {
                out.clear();
                // The other callers woken with the first are runnable: let them queue their
                // requests (nothing wakes this task meanwhile), as rdma-rpc's driver does.
                tokio::task::yield_now().await;
                let mut next = Some(first);
                // Everything queued goes out in one write, as rdma-rpc's writer batches frames.
                while let Some((payload, reply)) = next {
                    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    out.extend_from_slice(&payload);
                    if waiting_tx.send(reply).is_err() {
                        return;
                    }
                    next = queued.try_recv().ok();
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut back = FrameBuf::default();
            let mut order = VecDeque::new();
            loop {
                let read = back.read_from(&mut read, false).await;
                let ended = !matches!(read, Ok(1..));
                while let Some(len) = back.pop().map(<[u8]>::len) {
                    while order.is_empty() {
                        match waiting.recv().await {
                            Some(reply) => order.push_back(reply),
                            None => return,
                        }
                    }
                    if let Some(reply) = order.pop_front() {
                        let _ = reply.send(Ok::<usize, io::Error>(len));
                    }
                }
                if ended {
                    // Every caller still waiting learns the connection is gone.
                    while let Ok(reply) = waiting.try_recv() {
                        order.push_back(reply);
                    }
                    for reply in order.drain(..) {
                        let _ = reply.send(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "raw echo closed")));
                    }
                    return;
                }
            }
        });
        Ok(RawPipelinedClient { requests })
    }

    /// Sends `payload` and waits for its echo; returns the echoed length.
    pub async fn round_trip(&self, payload: Bytes) -> io::Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((payload, reply)).map_err(|_| io::Error::other("the connection's tasks ended"))?;
        answer.await.map_err(|_| io::Error::other("the connection's tasks ended"))?
    }
}

/// Copies every byte it reads back to the sender: a plain `read` / `write_all` loop with a 1 MiB
/// buffer per connection.
#[derive(Debug)]
pub struct RawCopyServer {
    server: Loopback,
}

impl RawCopyServer {
    /// Binds 127.0.0.1 on a free port and copies on every accepted connection.
    pub async fn start() -> io::Result<Self> {
        let server = Loopback::serve(|mut stream| async move {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .await?;
        Ok(RawCopyServer { server })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// Writes `count` copies of `chunk` to a [`RawCopyServer`] while reading the copy back; returns
/// when every byte came back. Bytes each way = `count × chunk.len()`.
pub async fn raw_copy_stream(server: &RawCopyServer, chunk: Bytes, count: usize) -> io::Result<()> {
    let stream = TcpStream::connect(server.server.addr).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let total = chunk.len() * count;
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            write.write_all(&chunk).await?;
        }
        write.shutdown().await
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0;
    while received < total {
        match read.read(&mut buf).await? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the copy ended early")),
            n => received += n,
        }
    }
    writer.await.map_err(io::Error::other)?
}

/// A plain tokio TCP sink: reads every connection to its end, then writes back how many bytes it
/// read (8 bytes, big-endian) and closes. The one-way baseline ([`raw_sink_stream`]).
#[derive(Debug)]
pub struct RawSinkServer {
    server: Loopback,
}

impl RawSinkServer {
    /// Binds 127.0.0.1 on a free port and sinks every accepted connection.
    pub async fn start() -> io::Result<Self> {
        let server = Loopback::serve(|mut stream| async move {
            let mut buf = vec![0u8; 1 << 20];
            let mut received = 0u64;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => received += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&received.to_be_bytes()).await;
        })
        .await?;
        Ok(RawSinkServer { server })
    }
}

/// Writes `count` copies of `chunk` to a [`RawSinkServer`], half-closes, and waits for its count;
/// fails unless every byte arrived.
pub async fn raw_sink_stream(server: &RawSinkServer, chunk: Bytes, count: usize) -> io::Result<()> {
    let mut stream = TcpStream::connect(server.server.addr).await?;
    stream.set_nodelay(true)?;
    for _ in 0..count {
        stream.write_all(&chunk).await?;
    }
    stream.shutdown().await?;
    let received = stream.read_u64().await?;
    let sent = (chunk.len() * count) as u64;
    if received == sent { Ok(()) } else { Err(io::Error::other(format!("the sink read {received} of {sent} bytes"))) }
}

/// A listener on 127.0.0.1 (a free port) that runs `serve` on every connection, each in a task of
/// the current runtime. Dropping it stops accepting.
#[derive(Debug)]
struct Loopback {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Loopback {
    async fn serve<F, Fut>(serve: F) -> io::Result<Loopback>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        Ok(Loopback { addr, task })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.task.abort();
    }
}
