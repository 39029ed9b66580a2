//! `rdma-rpc demo`, the main job on one machine: a server and a client in this process on
//! loopback. It generates a multi-GiB dataset (a `dir:` store: one full snapshot stream and three
//! incrementals), replicates it to the server with the real replication service, cuts the
//! connection part-way by stopping the server, restarts it, lets the client reconnect and resume
//! at the byte where the replica stopped, then reads both stores back and compares every stream.
//! Then it times echo calls (latency, call rate). Nothing is simulated: bytes cross a real socket
//! and land in real files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::args::DemoArgs;
use super::demo_dataset::{self, FILESYSTEM};
use super::error::CliError;
use super::ping::new_histogram;
use crate::echo::EchoService;
use crate::pb::echo::{EchoClient, EchoRequest};
use crate::replication::endpoint::Endpoint;
use crate::replication::progress::{Progress, human_bytes};
use crate::replication::replicate::{ReplicateOptions, replicate};
use crate::replication::service::ReplicationService;
use crate::rpc::{Client, ConnectOptions, Connection, ConnectionConfig, Router, Server, connect};
use crate::transport::Transport;
use crate::transport::rdma::RdmaConfig;
use crate::transport::tcp::{TcpConfig, TcpListener};

const IN_FLIGHT: u64 = 64;

/// A temporary directory removed when dropped (also when the demo fails).
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(parent: Option<PathBuf>) -> Result<Self, CliError> {
        let parent = parent.unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("rdma-rpc-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|err| CliError::Demo(format!("cannot create {}: {err}", dir.display())))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server: echo, plus replication into `replica`.
struct RunningServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start_server(
    addr: std::net::SocketAddr,
    replica: &Path,
    rdma: Option<RdmaConfig>,
) -> Result<RunningServer, CliError> {
    // The port was just released by the previous server; give the kernel a moment if needed.
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr, TcpConfig::default()).await {
            Ok(listener) => break listener,
            Err(err) if tries < 50 => {
                tries += 1;
                tracing::debug!(%err, "rebinding the demo port");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => return Err(fail(err)),
        }
    };
    let mut router = Router::default();
    router.add(EchoService::server());
    router.add(ReplicationService::new(Endpoint::parse(&format!("dir:{}", replica.display()))?).server());
    let server = Server::new(router, ConnectionConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // No drain: stopping cuts every connection at once, mid-stream, like a crash of the link.
    let task = tokio::spawn(server.serve(
        listener,
        rdma,
        async {
            let _ = stopped.await;
        },
        Duration::ZERO,
    ));
    Ok(RunningServer { stop, task })
}

impl RunningServer {
    async fn stop(self) -> Result<(), CliError> {
        let _ = self.stop.send(());
        self.task.await.map_err(fail)?.map_err(fail)
    }
}

/// Runs the demo and prints its report.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    // The best transport available: RDMA through an active RoCE device's own address (the NIC
    // loops it back), else TCP on 127.0.0.1.
    let (host, rdma) = match super::devices::active_roce_ipv4() {
        Some(ip) => {
            println!(
                "rdma-rpc demo: server and client on {ip}, an active RoCE device's address: RDMA, TCP as fallback"
            );
            (std::net::IpAddr::V4(ip), Some(super::rdma_config(super::PollFlags::default())))
        }
        None => {
            println!(
                "rdma-rpc demo: server and client on 127.0.0.1 over TCP (no active RDMA device here; between RDMA \
                 hosts, `serve --listen rdma://IP:PORT` and `replicate ... rdma://IP:PORT` use RDMA)"
            );
            (std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), None)
        }
    };
    let connect_options = ConnectOptions { rdma: rdma.clone(), ..ConnectOptions::default() };
    let work = WorkDir::create(args.work_dir.clone())?;
    let (source, replica) = (work.0.join("source"), work.0.join("replica"));
    let mib = args.dataset_mib;

    let started = Instant::now();
    let generated = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || demo_dataset::generate(&source, mib)).await.map_err(fail)??
    };
    let names: Vec<String> = demo_dataset::snapshots(mib)
        .iter()
        .map(|(name, size)| format!("@{name} {}", human_bytes(*size as f64)))
        .collect();
    println!(
        "dataset: {} in dir:{} ({FILESYSTEM}: {}), generated in {:.1}s",
        human_bytes(generated as f64),
        source.display(),
        names.join(", "),
        started.elapsed().as_secs_f64()
    );

    let probe = std::net::TcpListener::bind((host, 0)).map_err(fail)?;
    let addr = probe.local_addr().map_err(fail)?;
    drop(probe);
    let server = start_server(addr, &replica, rdma.clone()).await?;

    let progress = Progress::default();
    let cut_at = demo_dataset::snapshots(mib)[0].1 * 2 / 5;
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos = {
        let (progress, replica, finished, rdma) = (progress.clone(), replica.clone(), finished.clone(), rdma.clone());
        tokio::spawn(async move {
            while progress.done() < cut_at {
                if finished.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(server); // too fast to cut: reported below
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at = progress.done();
            server.stop().await?;
            println!("cut: server stopped with {} of @s1 sent; restarting it", human_bytes(at as f64));
            start_server(addr, &replica, rdma).await
        })
    };
    let options = ReplicateOptions {
        first_backoff: Duration::from_millis(100),
        retry_for: Duration::from_secs(120),
        ..ReplicateOptions::default()
    };
    let reporter = progress.report("replicating".into(), Duration::from_secs(2));
    let started = Instant::now();
    let source_endpoint = Arc::new(Endpoint::parse(&format!("dir:{}", source.display()))?);
    let result = replicate(source_endpoint, &addr.to_string(), &connect_options, &options, &progress).await;
    let seconds = started.elapsed().as_secs_f64();
    finished.store(true, std::sync::atomic::Ordering::Relaxed);
    progress.finish();
    let _ = reporter.await;
    let report = result?;
    let server = chaos.await.map_err(fail)??;

    for done in &report.done {
        let resumed =
            if done.resumed_at > 0 { format!(" (resumed at byte {})", done.resumed_at) } else { String::new() };
        println!("  sent {}: {} in {:.2}s{resumed}", done.step, human_bytes(done.bytes as f64), done.secs);
    }
    if report.attempts < 2 || !report.done.iter().any(|d| d.resumed_at > 0) {
        return Err(CliError::Demo("the cut did not interrupt the transfer, or it did not resume".into()));
    }
    let resumed: u64 = report.done.iter().map(|d| d.resumed_at).sum();
    println!(
        "replicated {} snapshots ({}) in {seconds:.1}s over {} {} connections, cut included: {}/s; the {} received \
         before the cut were not sent again",
        report.done.len(),
        human_bytes(generated as f64),
        report.attempts,
        report.transport,
        human_bytes(generated as f64 / seconds),
        human_bytes(resumed as f64),
    );
    let compared = {
        let (source, replica) = (source.clone(), replica.clone());
        tokio::task::spawn_blocking(move || demo_dataset::verify(&source, &replica, mib)).await.map_err(fail)??
    };
    println!(
        "verified: the replica's {} streams equal the source's, byte for byte ({})",
        report.done.len(),
        human_bytes(compared as f64)
    );

    match connect(&addr.to_string(), &connect_options).await.map_err(fail)? {
        Connection::Tcp { client, .. } => echo_figures(client, args.calls).await?,
        Connection::Rdma(client) => echo_figures(client, args.calls).await?,
    }
    server.stop().await?;
    println!("demo OK");
    Ok(())
}

/// Latency and call rate of echo calls over `client` (the demo's second part).
async fn echo_figures<T: Transport>(client: Client<T>, calls: u64) -> Result<(), CliError> {
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(30)));
    latency(&echo, calls).await?;
    call_rate(&echo, calls).await?;
    client.close().await;
    Ok(())
}

async fn latency<T: Transport>(echo: &EchoClient<T>, calls: u64) -> Result<(), CliError> {
    let payload = Bytes::from(vec![0x5a; 64]);
    let mut histogram = new_histogram();
    let started = Instant::now();
    for _ in 0..calls {
        let request = EchoRequest { payload: payload.clone() };
        let at = Instant::now();
        let reply = echo.echo(&request).await.map_err(fail)?;
        histogram.saturating_record(u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1));
        if reply.payload != payload {
            return Err(CliError::Demo("an echo reply differs from its request".into()));
        }
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    println!(
        "unary 64 B, 1 in flight:   p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  ({rate:.0} calls/s)",
        histogram.value_at_quantile(0.5) as f64 / 1e3,
        histogram.value_at_quantile(0.99) as f64 / 1e3,
        histogram.value_at_quantile(0.999) as f64 / 1e3,
    );
    Ok(())
}

async fn call_rate<T: Transport>(echo: &EchoClient<T>, calls: u64) -> Result<(), CliError> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..IN_FLIGHT {
        let echo = echo.clone();
        let share = calls / IN_FLIGHT + u64::from(worker < calls % IN_FLIGHT);
        tasks.spawn(async move {
            for i in 0..share {
                let payload = Bytes::from(format!("{worker}:{i}").into_bytes());
                let reply = echo.echo(&EchoRequest { payload: payload.clone() }).await?;
                if reply.payload != payload {
                    return Err(crate::Status::data_loss("reply differs from request"));
                }
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(fail)?.map_err(fail)?;
    }
    let rate = calls as f64 / started.elapsed().as_secs_f64();
    println!("unary, {IN_FLIGHT} in flight:        {rate:.0} calls/s");
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> CliError {
    CliError::Demo(err.to_string())
}
