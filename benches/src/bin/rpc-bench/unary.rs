//! Unary round trips: one load generator for every system, so rdma-rpc and its baselines are
//! timed by the same code.
//!
//! [`run`] spawns one task per call in flight on the client runtime; each makes calls back to back
//! and records, into its own HDR histogram, every round trip that *started* inside the measured
//! window (after the warm-up). Calls per second = recorded calls / window length.
//! [`allocations_per_call`] makes calls one at a time and reads the counting allocator around
//! them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use prost::Message as _;
use rdma_rpc::pb::echo::{EchoClient, EchoDirectClient, EchoInlineClient, EchoReply, EchoRequest};
use rdma_rpc::rpc::direct::DirectClient;
use rdma_rpc::transport::Transport;
use rdma_rpc::wire::HEADER_LEN;
use rdma_rpc_benches::alloc_count::{self, Counts, Side};
use rdma_rpc_benches::raw_rdma::{RawRdmaDirectClient, RawRdmaEchoClient};
use rdma_rpc_benches::tonic_echo::TonicEchoClient;
use rdma_rpc_benches::{RawEchoClient, RawPipelinedClient};

/// Round trips above this (10 s, in nanoseconds) are recorded as this.
const MAX_RECORDED_NS: u64 = 10_000_000_000;

/// Something that echoes a payload and returns the echoed length.
pub trait Caller: Send + 'static {
    /// One round trip.
    fn call(&mut self, request: &EchoRequest) -> impl Future<Output = Result<usize, String>> + Send;
}

/// An rdma-rpc client over any transport.
pub struct Rpc<T: Transport>(pub EchoClient<T>);

impl<T: Transport> Caller for Rpc<T> {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        let reply = self.0.echo(request).await.map_err(|status| format!("rdma-rpc echo: {status}"))?;
        Ok(reply.payload.len())
    }
}

/// An rdma-rpc inline client: calls run in the calling task (one at a time).
pub struct Inline<T: Transport>(pub EchoInlineClient<T>);

impl<T: Transport> Caller for Inline<T> {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        let reply = self.0.echo(request).await.map_err(|status| format!("rdma-rpc inline echo: {status}"))?;
        Ok(reply.payload.len())
    }
}

/// A tonic client (one HTTP/2 connection, shared by clones).
pub struct Tonic(pub TonicEchoClient<tonic::transport::Channel>);

impl Caller for Tonic {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        let reply = self.0.echo(request.clone()).await.map_err(|status| format!("tonic echo: {status}"))?;
        Ok(reply.into_inner().payload.len())
    }
}

/// The raw echo, one round trip at a time on its own connection.
pub struct Raw(pub RawEchoClient);

impl Caller for Raw {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        let back = self.0.round_trip(&request.payload).await.map_err(|err| format!("raw echo: {err}"))?;
        Ok(back.len())
    }
}

/// The bare RDMA transport's echo, one round trip at a time on its own connection.
pub struct RawRdma(pub RawRdmaEchoClient);

impl Caller for RawRdma {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        Ok(self.0.round_trip(&request.payload).await?.len())
    }
}

/// The raw echo, many round trips in flight on one connection.
pub struct RawPipelined(pub RawPipelinedClient);

impl Caller for RawPipelined {
    async fn call(&mut self, request: &EchoRequest) -> Result<usize, String> {
        self.0.round_trip(request.payload.clone()).await.map_err(|err| format!("raw pipelined echo: {err}"))
    }
}

/// What one unary measurement produced.
#[derive(Debug)]
pub struct Measured {
    /// Round-trip times in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Round trips recorded in the window.
    pub calls: u64,
    /// The window's length.
    pub window: Duration,
}

impl Measured {
    /// Calls per second over the window.
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// A percentile in microseconds.
    pub fn micros(&self, percentile: f64) -> f64 {
        self.histogram.value_at_quantile(percentile / 100.0) as f64 / 1000.0
    }

    /// Adds another round of the same system: one histogram, calls and windows summed.
    pub fn merge(&mut self, other: Measured) -> Result<(), String> {
        self.histogram.add(&other.histogram).map_err(|err| format!("histograms merge: {err}"))?;
        self.calls += other.calls;
        self.window += other.window;
        Ok(())
    }
}

/// Adds a round of `system` to its cell, or starts the cell.
pub fn merge_into(
    cells: &mut Vec<(&'static str, Measured)>,
    system: &'static str,
    round: Measured,
) -> Result<(), String> {
    match cells.iter_mut().find(|(name, _)| *name == system) {
        Some((_, measured)) => measured.merge(round),
        None => {
            cells.push((system, round));
            Ok(())
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("1 ns .. 10 s with 3 significant digits are valid bounds")
}

/// Records the round trip that began at `started` if it began in the window (at `start` or later).
fn record(histogram: &mut Histogram<u64>, started: Instant, start: Instant) {
    if started >= start {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(nanos.clamp(1, MAX_RECORDED_NS));
    }
}

/// Runs `callers` concurrently (one task each, so `callers.len()` calls in flight) for
/// `warm_up + window`, recording the round trips that started in the window.
pub async fn run<C: Caller>(
    callers: Vec<C>,
    payload: Bytes,
    warm_up: Duration,
    window: Duration,
) -> Result<Measured, String> {
    let start = Instant::now() + warm_up;
    let end = start + window;
    let mut tasks = Vec::with_capacity(callers.len());
    for mut caller in callers {
        let request = EchoRequest { payload: payload.clone() };
        tasks.push(tokio::spawn(async move { calls(&mut caller, &request, start, end).await }));
    }
    let mut histogram = new_histogram();
    for task in tasks {
        let part = task.await.map_err(|err| format!("a load task failed: {err}"))??;
        histogram.add(&part).map_err(|err| format!("histograms merge: {err}"))?;
    }
    Ok(Measured { calls: histogram.len(), histogram, window })
}

/// Calls back to back until `end`, recording each round trip that started at or after `start`.
async fn calls<C: Caller>(
    caller: &mut C,
    request: &EchoRequest,
    start: Instant,
    end: Instant,
) -> Result<Histogram<u64>, String> {
    let mut histogram = new_histogram();
    loop {
        let started = Instant::now();
        if started >= end {
            return Ok(histogram);
        }
        let len = caller.call(request).await?;
        if len != request.payload.len() {
            return Err(format!("echo returned {len} bytes for {}", request.payload.len()));
        }
        record(&mut histogram, started, start);
    }
}

/// The echo method's path (what its CALL frame carries).
const ECHO_PATH: &str = "/rdmarpc.echo.Echo/Echo";

/// The bytes on the wire of an echo of `payload` bytes, frame header included: the request (a
/// CALL frame: its call header, as every client here sends it, without timeout or metadata, then
/// the message) and the reply (a MESSAGE frame). What perftest is run with to move the same bytes.
pub fn echo_frame_sizes(payload: usize) -> (usize, usize) {
    let message = EchoRequest { payload: Bytes::from(vec![0; payload]) }.encoded_len();
    let header = rdma_rpc::pb::rpc::CallHeader { method: ECHO_PATH.into(), ..Default::default() }.encoded_len();
    let request = HEADER_LEN + prost::length_delimiter_len(header) + header + message;
    let reply = HEADER_LEN + EchoReply { payload: Bytes::from(vec![0; payload]) }.encoded_len();
    (request, reply)
}

/// [`run`] for a run-to-completion client: its calls block, so it runs in a blocking thread of
/// the runtime, one call in flight.
pub async fn run_direct(
    client: DirectClient,
    payload: Bytes,
    warm_up: Duration,
    window: Duration,
) -> Result<Measured, String> {
    let mut client = EchoDirectClient::new(client);
    let call = move |request: &EchoRequest| {
        let reply = client.echo(request).map_err(|status| format!("rdma-rpc run-to-completion echo: {status}"))?;
        Ok(reply.payload.len())
    };
    run_blocking(call, payload, warm_up, window).await
}

/// [`run`] for the RDMA transport alone, run to completion (one call in flight, as
/// [`run_direct`]).
pub async fn run_raw_direct(
    mut client: RawRdmaDirectClient,
    payload: Bytes,
    warm_up: Duration,
    window: Duration,
) -> Result<Measured, String> {
    run_blocking(move |request| client.round_trip(&request.payload), payload, warm_up, window).await
}

/// Blocking calls back to back in a blocking thread of the runtime, recording each round trip
/// that started in the window; `call` returns the echoed length. The clock is read once per call,
/// as perftest's `get_cycles()` per iteration: a round trip runs from one reading to the next, the
/// loop's own bookkeeping included (a second reading per call cost 0.1 µs under QEMU, on the
/// round trip's path, which perftest's loop does not have).
async fn run_blocking(
    mut call: impl FnMut(&EchoRequest) -> Result<usize, String> + Send + 'static,
    payload: Bytes,
    warm_up: Duration,
    window: Duration,
) -> Result<Measured, String> {
    let start = Instant::now() + warm_up;
    let end = start + window;
    let measured = tokio::task::spawn_blocking(move || {
        let request = EchoRequest { payload };
        let mut histogram = new_histogram();
        let mut started = Instant::now();
        while started < end {
            let echoed = call(&request)?;
            if echoed != request.payload.len() {
                return Err(format!("echo returned {echoed} bytes for {}", request.payload.len()));
            }
            let done = Instant::now();
            if started >= start {
                let nanos = u64::try_from((done - started).as_nanos()).unwrap_or(u64::MAX);
                histogram.saturating_record(nanos.clamp(1, MAX_RECORDED_NS));
            }
            started = done;
        }
        Ok::<_, String>(histogram)
    });
    let histogram = measured.await.map_err(|err| format!("the load thread failed: {err}"))??;
    Ok(Measured { calls: histogram.len(), histogram, window })
}

/// Heap allocations per call, by side, in steady state: `warm_up` calls first, then `calls` calls
/// one at a time between two readings of the counting allocator. Runs in a task of the client
/// runtime, so the caller's allocations count as [`Side::Client`].
pub async fn allocations_per_call<C: Caller>(
    mut caller: C,
    payload: Bytes,
    warm_up: u64,
    calls: u64,
) -> Result<PerCall, String> {
    let task = tokio::spawn(async move {
        let request = EchoRequest { payload };
        for _ in 0..warm_up {
            caller.call(&request).await?;
        }
        let traced = trace_allocs();
        let before = Counts::now();
        for i in 0..calls {
            alloc_count::set_tracing(i < traced);
            caller.call(&request).await?;
        }
        alloc_count::set_tracing(false);
        Ok::<_, String>(PerCall::since(&before, calls))
    });
    task.await.map_err(|err| format!("the allocation task failed: {err}"))?
}

/// [`allocations_per_call`] for a run-to-completion client, in a blocking thread of the client
/// runtime (counted as [`Side::Client`] too: the runtime marks its blocking threads).
pub async fn allocations_per_call_direct(
    client: DirectClient,
    payload: Bytes,
    warm_up: u64,
    calls: u64,
) -> Result<PerCall, String> {
    let task = tokio::task::spawn_blocking(move || {
        let mut client = EchoDirectClient::new(client);
        let request = EchoRequest { payload };
        let mut call = || client.echo(&request).map_err(|status| format!("run to completion: {status}"));
        for _ in 0..warm_up {
            call()?;
        }
        let traced = trace_allocs();
        let before = Counts::now();
        for i in 0..calls {
            alloc_count::set_tracing(i < traced);
            call()?;
        }
        alloc_count::set_tracing(false);
        Ok::<_, String>(PerCall::since(&before, calls))
    });
    task.await.map_err(|err| format!("the allocation thread failed: {err}"))?
}

/// How many measured calls of each allocation cell print their allocations' backtraces to stderr
/// (`RPC_BENCH_TRACE_ALLOCS`, default 0): where a count comes from. The figures stay valid (the
/// tracer's own allocations are not counted) but the run gets slow.
fn trace_allocs() -> u64 {
    std::env::var("RPC_BENCH_TRACE_ALLOCS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Allocations (and bytes allocated) per call, by side.
#[derive(Debug, Clone, Copy)]
pub struct PerCall {
    /// On the client runtime's threads.
    pub client: f64,
    /// On the server runtime's threads.
    pub server: f64,
    /// Anywhere else (the main thread; a runtime tags its blocking threads as its own side).
    pub other: f64,
    /// Bytes allocated on the client side.
    pub client_bytes: f64,
    /// Bytes allocated on the server side.
    pub server_bytes: f64,
}

impl PerCall {
    /// What was allocated since `before`, per call of `calls`.
    fn since(before: &Counts, calls: u64) -> PerCall {
        let delta = Counts::now().since(before);
        let per = |side| delta.allocations(side) as f64 / calls.max(1) as f64;
        let bytes = |side| delta.bytes(side) as f64 / calls.max(1) as f64;
        PerCall {
            client: per(Side::Client),
            server: per(Side::Server),
            other: per(Side::Other),
            client_bytes: bytes(Side::Client),
            server_bytes: bytes(Side::Server),
        }
    }
}
