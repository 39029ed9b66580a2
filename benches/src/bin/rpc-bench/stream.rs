//! Stream throughput: `count` chunks sent while the echo comes back on the same connection, so
//! every byte crosses the connection once each way. Figures are bytes per second *each way*
//! (one-way volume over the whole transfer's time).
//!
//! - rdma-rpc: `Echo/Pipe`, raw DATA frames (`send_data(Bytes)`: the chunk is not copied before
//!   the socket or the NIC), echoed by the server's handler.
//! - tonic: `Echo/EchoStream`, one `EchoRequest { payload: chunk }` message per chunk.
//! - raw TCP: a plain write loop against a read/write copy loop ([`raw_copy_stream`]).
//!
//! One way (`*_one_way`): `count` chunks to a server that only counts them and answers with the
//! total once the stream ended; figures are bytes per second from the first chunk to the answer.
//! rdma-rpc: `Echo/Sink` with DATA frames; tonic: `Echo/Sink` with one message per chunk; raw:
//! a write loop into a read loop ([`raw_sink_stream`]). This is the figure to set next to
//! perftest's `ib_write_bw`, which is one-way too.
//!
//! Every measurement runs [`TRIALS`] times, systems interleaved, and [`Trials`] keeps the median.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdma_rpc::pb::echo::{EchoClient, EchoRequest};
use rdma_rpc::transport::Transport;
use rdma_rpc_benches::tonic_echo::TonicEchoClient;
use rdma_rpc_benches::{RawCopyServer, RawSinkServer, raw_copy_stream, raw_sink_stream};

/// One stream measurement.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Bytes each way.
    pub bytes: u64,
    /// Chunk size.
    pub chunk: usize,
    /// Time from the first chunk sent to the last byte back.
    pub elapsed: Duration,
}

impl Throughput {
    /// Megabytes (10^6 bytes) per second each way.
    pub fn megabytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Each stream measurement is repeated this many times, systems interleaved, and the median
/// reported: single transfers on two shared cores swing by ±20 %.
pub const TRIALS: usize = 3;

/// Stream measurements by system, in the order first measured.
#[derive(Default)]
pub struct Trials(Vec<(&'static str, Vec<Throughput>)>);

impl Trials {
    pub fn add(&mut self, system: &'static str, measured: Throughput) {
        match self.0.iter_mut().find(|(s, _)| *s == system) {
            Some((_, all)) => all.push(measured),
            None => self.0.push((system, vec![measured])),
        }
    }

    /// The median trial of each system (by time taken).
    pub fn medians(self) -> Vec<(&'static str, Throughput)> {
        self.0
            .into_iter()
            .filter_map(|(system, mut all)| {
                all.sort_by_key(|t| t.elapsed);
                all.get(all.len() / 2).map(|median| (system, *median))
            })
            .collect()
    }
}

/// `count` chunks through rdma-rpc's `Pipe`.
pub async fn rpc<T: Transport>(echo: &EchoClient<T>, chunk: Bytes, count: usize) -> Result<Throughput, String> {
    let fail = |status: rdma_rpc::Status| format!("rdma-rpc pipe: {status}");
    let chunk_len = chunk.len();
    let started = Instant::now();
    let (mut sender, mut receiver) = echo.pipe().await.map_err(fail)?;
    let producer = tokio::spawn(async move {
        for _ in 0..count {
            sender.send_data(chunk.clone()).await?;
        }
        sender.finish().await
    });
    let mut received = 0u64;
    while let Some(data) = receiver.data().await.map_err(fail)? {
        received += data.len() as u64;
    }
    producer.await.map_err(|err| format!("the producer failed: {err}"))?.map_err(fail)?;
    check(received, chunk_len, count)?;
    Ok(Throughput { bytes: received, chunk: chunk_len, elapsed: started.elapsed() })
}

/// `count` chunks through tonic's bidirectional `EchoStream`.
pub async fn tonic(
    client: &TonicEchoClient<tonic::transport::Channel>,
    chunk: Bytes,
    count: usize,
) -> Result<Throughput, String> {
    let fail = |status: tonic::Status| format!("tonic echo stream: {status}");
    let chunk_len = chunk.len();
    let started = Instant::now();
    let requests = futures_util::stream::iter(std::iter::repeat_n(EchoRequest { payload: chunk }, count));
    let mut replies = client.clone().echo_stream(requests).await.map_err(fail)?.into_inner();
    let mut received = 0u64;
    while let Some(reply) = replies.message().await.map_err(fail)? {
        received += reply.payload.len() as u64;
    }
    check(received, chunk_len, count)?;
    Ok(Throughput { bytes: received, chunk: chunk_len, elapsed: started.elapsed() })
}

/// `count` chunks written to a raw TCP copy loop and read back.
pub async fn raw(server: &RawCopyServer, chunk: Bytes, count: usize) -> Result<Throughput, String> {
    let chunk_len = chunk.len();
    let started = Instant::now();
    raw_copy_stream(server, chunk, count).await.map_err(|err| format!("raw copy: {err}"))?;
    Ok(Throughput { bytes: (chunk_len * count) as u64, chunk: chunk_len, elapsed: started.elapsed() })
}

/// `count` chunks one way through rdma-rpc's `Sink`.
pub async fn rpc_one_way<T: Transport>(echo: &EchoClient<T>, chunk: Bytes, count: usize) -> Result<Throughput, String> {
    let fail = |status: rdma_rpc::Status| format!("rdma-rpc sink: {status}");
    let chunk_len = chunk.len();
    let started = Instant::now();
    let (mut sender, reply) = echo.sink().await.map_err(fail)?;
    for _ in 0..count {
        sender.send_data(chunk.clone()).await.map_err(fail)?;
    }
    sender.finish().await.map_err(fail)?;
    let reply = reply.response().await.map_err(fail)?;
    check(counted(&reply.payload)?, chunk_len, count)?;
    Ok(Throughput { bytes: (chunk_len * count) as u64, chunk: chunk_len, elapsed: started.elapsed() })
}

/// `count` chunks one way through tonic's client-streaming `Sink`.
pub async fn tonic_one_way(
    client: &TonicEchoClient<tonic::transport::Channel>,
    chunk: Bytes,
    count: usize,
) -> Result<Throughput, String> {
    let fail = |status: tonic::Status| format!("tonic sink: {status}");
    let chunk_len = chunk.len();
    let started = Instant::now();
    let requests = futures_util::stream::iter(std::iter::repeat_n(EchoRequest { payload: chunk }, count));
    let reply = client.clone().sink(requests).await.map_err(fail)?.into_inner();
    check(counted(&reply.payload)?, chunk_len, count)?;
    Ok(Throughput { bytes: (chunk_len * count) as u64, chunk: chunk_len, elapsed: started.elapsed() })
}

/// `count` chunks one way into a raw TCP read loop.
pub async fn raw_one_way(server: &RawSinkServer, chunk: Bytes, count: usize) -> Result<Throughput, String> {
    let chunk_len = chunk.len();
    let started = Instant::now();
    raw_sink_stream(server, chunk, count).await.map_err(|err| format!("raw sink: {err}"))?;
    Ok(Throughput { bytes: (chunk_len * count) as u64, chunk: chunk_len, elapsed: started.elapsed() })
}

/// The byte count a sink answered with.
fn counted(payload: &[u8]) -> Result<u64, String> {
    let bytes: [u8; 8] = payload.try_into().map_err(|_| format!("a sink answered {} bytes, not 8", payload.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn check(received: u64, chunk: usize, count: usize) -> Result<(), String> {
    let expected = (chunk * count) as u64;
    if received == expected { Ok(()) } else { Err(format!("the echo returned {received} of {expected} bytes")) }
}
