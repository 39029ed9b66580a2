//! `rpc-bench`: rdma-rpc next to its baselines, measured in one run and printed as Markdown
//! tables of absolute figures and ratios.
//!
//! - unary echo round trips (64 B, 4 KiB, 64 KiB; 1 and 64 calls in flight): rdma-rpc over TCP,
//!   over RDMA when an address is given (`--rdma ADDR` or `RDMA_TEST_ADDR`), a raw tokio TCP echo
//!   and tonic (gRPC) with the same prost messages: p50/p99/p99.9 and calls per second; with RDMA,
//!   also rdma-rpc's RDMA transport alone echoing (one in flight: the layers between perftest and
//!   the RPC);
//! - stream echo throughput (1 MiB chunks; 1020 KiB over RDMA, so that a chunk and its frame
//!   header fit the transport's 1 MiB large buffers): rdma-rpc `Pipe`, tonic `EchoStream`, a raw
//!   TCP copy loop, then the same one way (`Sink`, a raw read loop);
//! - heap allocations per unary call in steady state, client and server side, from a counting
//!   global allocator (`RPC_BENCH_TRACE_ALLOCS=N` prints the backtrace of each allocation of the
//!   first N measured calls of every cell to stderr, to find where they come from).
//!
//! Server and client run in two tokio runtimes of one worker thread each (as two processes on two
//! cores would), every system on loopback (or the RDMA address) with its own connection.
//! `cargo run --release -p rdma-rpc-benches --bin rpc-bench [-- --quick]`; `scripts/bench` puts the
//! output into BENCHMARKING.md.

mod report;
mod stream;
mod unary;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use rdma_rpc::pb::echo::{EchoClient, EchoInlineClient};
use rdma_rpc::rpc::direct::{DirectClient, InlineClient};
use rdma_rpc::rpc::{ConnectOptions, Connection, ConnectionConfig};
use rdma_rpc::transport::rdma::{self, Negotiated, PollMode, RdmaConfig, RdmaConnection};
use rdma_rpc::transport::tcp::{TcpConfig, TcpConnection};
use rdma_rpc_benches::alloc_count::{CountingAlloc, Side, set_side};
use rdma_rpc_benches::tonic_echo::{TonicEchoClient, TonicEchoServer};
use rdma_rpc_benches::{RawCopyServer, RawEchoServer, RawPipelinedClient, RawSinkServer, RpcEchoServer, payload};

use rdma_rpc_benches::raw_rdma::RawRdmaEchoServer;
use report::{
    RAW, RAW_BUSY, RAW_RDMA, RAW_RDMA_DIRECT, RPC_RDMA, RPC_RDMA_DIRECT, RPC_RDMA_INLINE, RPC_TCP, RPC_TCP_INLINE,
    RPC_TCP_SLEEP, Report, TONIC, UnaryRow,
};
use unary::{Caller, Inline, Measured, Raw, RawPipelined, RawRdma, Rpc, Tonic};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Unary payload sizes.
const SIZES: [usize; 3] = [64, 4 * 1024, 64 * 1024];
/// Calls in flight.
const IN_FLIGHT: [usize; 2] = [1, 64];
/// Stream chunk size over TCP.
const CHUNK: usize = 1 << 20;
/// Stream chunk size over RDMA: 1 MiB less 4 KiB, so that a chunk with its frame header fits the
/// transport's 1 MiB large-buffer class (larger messages use the 16 MiB class, of which there are
/// only two per connection).
const RDMA_CHUNK: usize = (1 << 20) - 4096;

/// rdma-rpc against raw tokio TCP and tonic, side by side.
#[derive(Debug, Parser)]
#[command(name = "rpc-bench")]
struct Args {
    /// A smoke run for CI: very short windows, small streams (figures are not meaningful).
    #[arg(long)]
    quick: bool,
    /// Measured window per unary cell, in milliseconds.
    #[arg(long, default_value_t = 800)]
    window_ms: u64,
    /// Warm-up before each unary cell, in milliseconds.
    #[arg(long, default_value_t = 200)]
    warm_up_ms: u64,
    /// Rounds per unary cell: the systems take turns, each round getting its share of the window
    /// and of the warm-up, and a system's rounds merge into one histogram. Taking turns spreads
    /// the machine's drift (other load, frequency) over every system alike.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
    /// MiB sent each way per stream measurement.
    #[arg(long, default_value_t = 512)]
    stream_mib: usize,
    /// Also measure rdma-rpc over RDMA: the local address of an RDMA device (its GID table must
    /// hold it). Defaults to `RDMA_TEST_ADDR` when set.
    #[arg(long, env = "RDMA_TEST_ADDR")]
    rdma: Option<String>,
    /// Busy-poll the RDMA completion queues instead of sleeping on the completion channel.
    #[arg(long)]
    busy_poll: bool,
    /// Run one part only (for profiling, e.g. under `valgrind --tool=dhat` or callgrind).
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Unary payload sizes in bytes, comma-separated (for profiling one cell).
    #[arg(long, value_delimiter = ',', default_values_t = SIZES)]
    sizes: Vec<usize>,
    /// Unary calls in flight, comma-separated (for profiling one cell).
    #[arg(long, value_delimiter = ',', default_values_t = IN_FLIGHT)]
    in_flight: Vec<usize>,
    /// Unary rows of these systems only (labels as in the table, e.g. `--system "rdma-rpc tcp"`;
    /// repeatable; default all): to profile one system.
    #[arg(long = "system")]
    systems: Vec<String>,
    /// perftest's `ib_send_lat` t_typical (half a round trip, µs) on the same device in the same
    /// boot: the RDMA latency target is computed against it (`scripts/rxe-bench` passes it).
    #[arg(long, value_name = "US")]
    perftest_lat_us: Option<f64>,
    /// perftest's `ib_write_bw` average (MB/s, one way), same device and boot: the RDMA stream
    /// target is computed against it.
    #[arg(long, value_name = "MBS")]
    perftest_bw_mbs: Option<f64>,
    /// perftest's round trip with the 64 B echo's own message sizes: `ib_send_lat -s REQUEST`
    /// t_typical plus `ib_send_lat -s REPLY` t_typical (µs; the sizes `--print-frame-sizes`
    /// gives), same device and boot: the latency baseline that moves the same bytes.
    #[arg(long, value_name = "US")]
    perftest_frames_rt_us: Option<f64>,
    /// Print the sizes in bytes of the 64 B echo's request and reply as they cross the wire
    /// (frame header included), one line "REQUEST REPLY", and exit.
    #[arg(long)]
    print_frame_sizes: bool,
}

/// The parts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Unary round trips.
    Unary,
    /// Stream throughput.
    Stream,
    /// Allocations per call.
    Alloc,
}

/// How long each part runs.
#[derive(Debug, Clone)]
struct Plan {
    warm_up: Duration,
    window: Duration,
    rounds: u32,
    stream_bytes: usize,
    alloc_calls: u64,
    only: Option<Part>,
    quick: bool,
    perftest: report::Perftest,
    sizes: Vec<usize>,
    in_flight: Vec<usize>,
    systems: Vec<String>,
}

impl Plan {
    /// Why this run's timings say nothing, if they don't.
    fn not_meaningful(&self) -> Option<&'static str> {
        if self.quick {
            Some("smoke run (--quick): no verdict")
        } else if cfg!(debug_assertions) {
            Some("debug build: no verdict")
        } else {
            None
        }
    }

    fn runs(&self, part: Part) -> bool {
        self.only.is_none_or(|only| only == part)
    }

    /// Whether the unary rows of `system` are measured.
    fn measures(&self, system: &str) -> bool {
        self.systems.is_empty() || self.systems.iter().any(|s| s == system)
    }
}

impl Plan {
    fn from(args: &Args) -> Plan {
        if args.quick {
            Plan {
                warm_up: Duration::from_millis(10),
                window: Duration::from_millis(30),
                rounds: 1,
                stream_bytes: 8 << 20,
                alloc_calls: 100,
                only: args.only,
                quick: args.quick,
                perftest: report::Perftest {
                    lat_us: args.perftest_lat_us,
                    bw_mbs: args.perftest_bw_mbs,
                    frames_rt_us: args.perftest_frames_rt_us,
                },
                sizes: args.sizes.clone(),
                in_flight: args.in_flight.clone(),
                systems: args.systems.clone(),
            }
        } else {
            Plan {
                warm_up: Duration::from_millis(args.warm_up_ms),
                window: Duration::from_millis(args.window_ms),
                rounds: args.rounds.max(1),
                stream_bytes: args.stream_mib << 20,
                alloc_calls: 2000,
                only: args.only,
                quick: args.quick,
                perftest: report::Perftest {
                    lat_us: args.perftest_lat_us,
                    bw_mbs: args.perftest_bw_mbs,
                    frames_rt_us: args.perftest_frames_rt_us,
                },
                sizes: args.sizes.clone(),
                in_flight: args.in_flight.clone(),
                systems: args.systems.clone(),
            }
        }
    }
}

/// The servers, in the server runtime.
struct Servers {
    rpc: RpcEchoServer,
    /// The same, sleeping at once instead of spinning after each message.
    rpc_sleep: RpcEchoServer,
    rdma: Option<(RpcEchoServer, RdmaConfig)>,
    /// The same server running each RDMA connection to completion in a thread of its own.
    rdma_direct: Option<RpcEchoServer>,
    /// The bare RDMA transport's echo on the same device.
    raw_rdma: Option<RawRdmaEchoServer>,
    /// The same, each connection echoed by a thread polling its CQ.
    raw_rdma_direct: Option<RawRdmaEchoServer>,
    raw_echo: RawEchoServer,
    raw_echo_busy: RawEchoServer,
    raw_copy: RawCopyServer,
    raw_sink: RawSinkServer,
    tonic: TonicEchoServer,
}

impl Servers {
    async fn start(rdma: Option<(String, RdmaConfig)>) -> Result<Servers, String> {
        let bind = |err| format!("a server cannot bind: {err}");
        let (rdma, rdma_direct, raw_rdma, raw_rdma_direct) = match rdma {
            Some((addr, config)) => {
                let server = RpcEchoServer::start_on(&format!("{addr}:0"), Some(config.clone())).await.map_err(bind)?;
                let direct =
                    RpcEchoServer::start_run_to_completion(&format!("{addr}:0"), config.clone()).await.map_err(bind)?;
                let raw = RawRdmaEchoServer::start(&format!("{addr}:0"), config.clone()).await.map_err(bind)?;
                let raw_direct = RawRdmaEchoServer::start_run_to_completion(&format!("{addr}:0"), config.clone())
                    .await
                    .map_err(bind)?;
                (Some((server, config)), Some(direct), Some(raw), Some(raw_direct))
            }
            None => (None, None, None, None),
        };
        Ok(Servers {
            rpc: RpcEchoServer::start().await.map_err(bind)?,
            rpc_sleep: RpcEchoServer::start_with("127.0.0.1:0", no_spin_tcp(), None).await.map_err(bind)?,
            rdma,
            rdma_direct,
            raw_rdma,
            raw_rdma_direct,
            raw_echo: RawEchoServer::start().await.map_err(bind)?,
            raw_echo_busy: RawEchoServer::start_with(true).await.map_err(bind)?,
            raw_copy: RawCopyServer::start().await.map_err(bind)?,
            raw_sink: RawSinkServer::start().await.map_err(bind)?,
            tonic: TonicEchoServer::start().await.map_err(bind)?,
        })
    }

    /// A new rdma-rpc connection over RDMA, if this run measures RDMA. Each measurement gets its
    /// own and drops it (the last client handle closes the connection): with `--busy-poll` an
    /// idle connection's drivers keep polling their CQ and would slow down whatever else the
    /// same runtime threads measure.
    async fn rdma_client(&self) -> Result<Option<EchoClient<RdmaConnection>>, String> {
        match &self.rdma {
            Some((server, config)) => Ok(Some(rdma_client(server, config).await?)),
            None => Ok(None),
        }
    }

    /// A new inline client of the ordinary server over RDMA, if this run measures RDMA (one per
    /// measurement, as for [`rdma_client`](Self::rdma_client)).
    async fn rdma_inline_client(&self) -> Result<Option<EchoInlineClient<RdmaConnection>>, String> {
        let Some((server, config)) = &self.rdma else { return Ok(None) };
        let tcp = TcpConnection::connect(&server.addr().to_string(), TcpConfig::default())
            .await
            .map_err(|err| format!("inline client over RDMA: {err}"))?;
        match rdma::connect(tcp, config).await.map_err(|err| format!("inline client over RDMA: {err}"))? {
            Negotiated::Rdma(connection) => InlineClient::connect(connection, ConnectionConfig::default())
                .await
                .map(|client| Some(EchoInlineClient::new(client)))
                .map_err(|err| format!("inline client over RDMA: {err}")),
            Negotiated::Tcp { reason, .. } => Err(format!("RDMA was refused: {reason}")),
        }
    }

    /// A new run-to-completion client of the run-to-completion server, if this run measures
    /// RDMA (one per measurement, as for [`rdma_client`](Self::rdma_client)).
    async fn direct_client(&self) -> Result<Option<DirectClient>, String> {
        let (Some(server), Some((_, config))) = (&self.rdma_direct, &self.rdma) else { return Ok(None) };
        let client = DirectClient::connect(&server.addr().to_string(), config, ConnectionConfig::default())
            .await
            .map_err(|err| format!("run-to-completion client: {err}"))?;
        Ok(Some(client))
    }
}

/// TCP settings of the no-spin rows: sleep in epoll at once, as `--no-spin` does.
fn no_spin_tcp() -> TcpConfig {
    TcpConfig { busy_poll: None, ..TcpConfig::default() }
}

fn runtime(name: &'static str, side: Side) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || set_side(side))
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_frame_sizes {
        let (request, reply) = unary::echo_frame_sizes(64);
        println!("{request} {reply}");
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(report) => {
            print!("{}", report.to_markdown());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rpc-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<Report, String> {
    let plan = Plan::from(args);
    let server_rt = runtime("bench-server", Side::Server).map_err(|err| format!("no server runtime: {err}"))?;
    let client_rt = runtime("bench-client", Side::Client).map_err(|err| format!("no client runtime: {err}"))?;
    let rdma = args.rdma.clone().map(|addr| {
        let mut config = RdmaConfig::default();
        if args.busy_poll {
            config.poll = PollMode::BusyPoll;
        }
        (addr, config)
    });
    let servers = Arc::new(server_rt.block_on(Servers::start(rdma))?);
    let measured = client_rt.block_on(client_rt.spawn(measure_all(servers.clone(), plan)));
    let report = measured.map_err(|err| format!("the measuring task failed: {err}"))??;
    if let Ok(servers) = Arc::try_unwrap(servers) {
        server_rt.block_on(async {
            let _ = servers.rpc.stop().await;
            let _ = servers.rpc_sleep.stop().await;
            if let Some((server, _)) = servers.rdma {
                let _ = server.stop().await;
            }
            if let Some(server) = servers.rdma_direct {
                let _ = server.stop().await;
            }
            let _ = servers.tonic.stop().await;
        });
    }
    Ok(report)
}

/// Every measurement, systems interleaved within each cell so drift hits them alike.
async fn measure_all(servers: Arc<Servers>, plan: Plan) -> Result<Report, String> {
    let connect_err = |err: Box<dyn std::error::Error + Send + Sync>| format!("cannot connect: {err}");
    let rpc = servers.rpc.client().await.map_err(connect_err)?;
    let rpc_sleep = servers.rpc_sleep.client_with(no_spin_tcp()).await.map_err(connect_err)?;
    let tonic = servers.tonic.client().await.map_err(|err| format!("tonic cannot connect: {err}"))?;
    let raw_err = |err: std::io::Error| format!("raw echo: {err}");
    let pipelined = RawPipelinedClient::connect(&servers.raw_echo).await.map_err(raw_err)?;

    let mut report = Report { not_meaningful: plan.not_meaningful(), perftest: plan.perftest, ..Report::default() };
    for &size in plan.sizes.iter().filter(|_| plan.runs(Part::Unary)) {
        let data = payload(size);
        for &in_flight in &plan.in_flight {
            let mut cells: Vec<(&'static str, Measured)> = Vec::new();
            let (warm_up, window) = (plan.warm_up / plan.rounds, plan.window / plan.rounds);
            let many = |client: &EchoClient<TcpConnection>| (0..in_flight).map(|_| Rpc(client.clone())).collect();
            for _ in 0..plan.rounds {
                if plan.measures(RPC_TCP) {
                    unary::merge_into(
                        &mut cells,
                        RPC_TCP,
                        unary::run(many(&rpc), data.clone(), warm_up, window).await?,
                    )?;
                }
                if in_flight == 1 && plan.measures(RPC_TCP_INLINE) {
                    // A connection per round: an inline client answers the server's keepalive
                    // only while it calls, and an idle one could outlive it in a long run.
                    let caller = Inline(servers.rpc.inline_client().await.map_err(connect_err)?);
                    unary::merge_into(
                        &mut cells,
                        RPC_TCP_INLINE,
                        unary::run(vec![caller], data.clone(), warm_up, window).await?,
                    )?;
                }
                if plan.measures(RPC_TCP_SLEEP) {
                    let measured = unary::run(many(&rpc_sleep), data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RPC_TCP_SLEEP, measured)?;
                }
                // RDMA connections last one round: an idle one that busy-polls would take turns
                // from the measured connection on the same runtime thread.
                if plan.measures(RPC_RDMA)
                    && let Some(rdma) = servers.rdma_client().await?
                {
                    let callers = (0..in_flight).map(|_| Rpc(rdma.clone())).collect();
                    unary::merge_into(&mut cells, RPC_RDMA, unary::run(callers, data.clone(), warm_up, window).await?)?;
                }
                if in_flight == 1
                    && plan.measures(RPC_RDMA_INLINE)
                    && let Some(client) = servers.rdma_inline_client().await?
                {
                    let measured = unary::run(vec![Inline(client)], data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RPC_RDMA_INLINE, measured)?;
                }
                if in_flight == 1
                    && plan.measures(RPC_RDMA_DIRECT)
                    && let Some(client) = servers.direct_client().await?
                {
                    let measured = unary::run_direct(client, data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RPC_RDMA_DIRECT, measured)?;
                }
                if let Some(server) = servers.raw_rdma.as_ref().filter(|_| in_flight == 1 && plan.measures(RAW_RDMA)) {
                    let measured =
                        unary::run(vec![RawRdma(server.client().await?)], data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RAW_RDMA, measured)?;
                }
                if let Some(server) =
                    servers.raw_rdma_direct.as_ref().filter(|_| in_flight == 1 && plan.measures(RAW_RDMA_DIRECT))
                {
                    let client = server.direct_client().await?;
                    let measured = unary::run_raw_direct(client, data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RAW_RDMA_DIRECT, measured)?;
                }
                if plan.measures(RAW) {
                    let raw = if in_flight == 1 {
                        let client = servers.raw_echo.client().await.map_err(raw_err)?;
                        unary::run(vec![Raw(client)], data.clone(), warm_up, window).await?
                    } else {
                        let callers = (0..in_flight).map(|_| RawPipelined(pipelined.clone())).collect();
                        unary::run(callers, data.clone(), warm_up, window).await?
                    };
                    unary::merge_into(&mut cells, RAW, raw)?;
                }
                if in_flight == 1 && plan.measures(RAW_BUSY) {
                    let client = servers.raw_echo_busy.client().await.map_err(raw_err)?;
                    let raw_busy = unary::run(vec![Raw(client)], data.clone(), warm_up, window).await?;
                    unary::merge_into(&mut cells, RAW_BUSY, raw_busy)?;
                }
                if plan.measures(TONIC) {
                    let callers = (0..in_flight).map(|_| Tonic(tonic.clone())).collect();
                    unary::merge_into(&mut cells, TONIC, unary::run(callers, data.clone(), warm_up, window).await?)?;
                }
            }
            let rows = cells.into_iter().map(|(system, measured)| UnaryRow { size, in_flight, system, measured });
            report.unary.extend(rows);
        }
    }

    if plan.runs(Part::Stream) {
        measure_streams(&mut report, &servers, &rpc, &tonic, &plan).await?;
    }
    for size in [64, 4096].into_iter().filter(|_| plan.runs(Part::Alloc)) {
        let data = payload(size);
        report.allocations.push((RPC_TCP, size, alloc_of(Rpc(rpc.clone()), &data, &plan).await?));
        let inline = Inline(servers.rpc.inline_client().await.map_err(connect_err)?);
        report.allocations.push((RPC_TCP_INLINE, size, alloc_of(inline, &data, &plan).await?));
        if let Some(rdma) = servers.rdma_client().await? {
            report.allocations.push((RPC_RDMA, size, alloc_of(Rpc(rdma), &data, &plan).await?));
        }
        if let Some(client) = servers.direct_client().await? {
            let (warm_up, calls) = (plan.alloc_calls / 2, plan.alloc_calls);
            let per = unary::allocations_per_call_direct(client, data.clone(), warm_up, calls).await?;
            report.allocations.push((RPC_RDMA_DIRECT, size, per));
        }
        let raw = servers.raw_echo.client().await.map_err(raw_err)?;
        report.allocations.push((RAW, size, alloc_of(Raw(raw), &data, &plan).await?));
        report.allocations.push((TONIC, size, alloc_of(Tonic(tonic.clone()), &data, &plan).await?));
    }
    Ok(report)
}

async fn measure_streams(
    report: &mut Report,
    servers: &Servers,
    rpc: &EchoClient<TcpConnection>,
    tonic: &TonicEchoClient<tonic::transport::Channel>,
    plan: &Plan,
) -> Result<(), String> {
    let chunk = payload(CHUNK);
    let count = plan.stream_bytes / CHUNK;
    let rdma_count = plan.stream_bytes / RDMA_CHUNK;
    let trials = if plan.quick { 1 } else { stream::TRIALS };
    let (mut echo, mut one_way): (stream::Trials, stream::Trials) = Default::default();
    for _ in 0..trials {
        echo.add(RPC_TCP, stream::rpc(rpc, chunk.clone(), count).await?);
        if let Some(rdma) = &servers.rdma_client().await? {
            echo.add(RPC_RDMA, stream::rpc(rdma, payload(RDMA_CHUNK), rdma_count).await?);
        }
        echo.add(RAW, stream::raw(&servers.raw_copy, chunk.clone(), count).await?);
        echo.add(TONIC, stream::tonic(tonic, chunk.clone(), count).await?);

        one_way.add(RPC_TCP, stream::rpc_one_way(rpc, chunk.clone(), count).await?);
        if let Some(rdma) = &servers.rdma_client().await? {
            one_way.add(RPC_RDMA, stream::rpc_one_way(rdma, payload(RDMA_CHUNK), rdma_count).await?);
        }
        one_way.add(RAW, stream::raw_one_way(&servers.raw_sink, chunk.clone(), count).await?);
        one_way.add(TONIC, stream::tonic_one_way(tonic, chunk.clone(), count).await?);
    }
    report.streams = echo.medians();
    report.one_way = one_way.medians();
    Ok(())
}

async fn alloc_of<C: Caller>(caller: C, data: &Bytes, plan: &Plan) -> Result<unary::PerCall, String> {
    unary::allocations_per_call(caller, data.clone(), plan.alloc_calls / 2, plan.alloc_calls).await
}

async fn rdma_client(server: &RpcEchoServer, config: &RdmaConfig) -> Result<EchoClient<RdmaConnection>, String> {
    let options = ConnectOptions { rdma: Some(config.clone()), fallback: false, ..ConnectOptions::default() };
    match server.connect(&options).await.map_err(|err| format!("no RDMA connection to {}: {err}", server.addr()))? {
        Connection::Rdma(client) => Ok(EchoClient::new(client)),
        Connection::Tcp { fallback, .. } => Err(format!("RDMA was refused: {fallback:?}")),
    }
}
