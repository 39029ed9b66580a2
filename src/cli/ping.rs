//! `rdma-rpc ping`: echo calls against a server, timed one by one into an HDR histogram.
//!
//! `--concurrency C` runs C tasks that share one connection (clones of one client) and take call
//! numbers from a shared counter until `--count` calls were made. Every reply must equal its
//! payload (each payload starts with its call number, so swapped replies are caught too). The
//! first failure stops the run and becomes the command's error. `--run-to-completion` makes the
//! calls from one thread that polls the RDMA completion queue itself (`rpc::direct`); `--inline`
//! makes them from this command's task with an `InlineClient` (no connection task in between).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use crate::pb::echo::{EchoClient, EchoDirectClient, EchoInlineClient, EchoReply, EchoRequest};
use crate::rpc::direct::{DirectClient, InlineClient};
use crate::rpc::{Client, ConnectError, ConnectOptions, Connection, Established, connect, establish, within};
use crate::transport::Transport;
use crate::transport::rdma::RdmaConnection;
use crate::transport::tcp::TcpHalves;

use super::args::PingArgs;
use super::error::CliError;

/// Round trips above this (one minute, in nanoseconds) are recorded as this.
const MAX_RECORDED_NS: u64 = 60_000_000_000;

/// Runs `ping` to completion, printing its report on stdout.
pub async fn run(args: PingArgs) -> Result<(), CliError> {
    let endpoint = &args.url;
    if endpoint.port == 0 {
        return Err(CliError::BadUrl {
            url: args.url.to_string(),
            reason: "port 0 only makes sense for `serve` (it picks a free port); give the server's port".into(),
        });
    }
    let timeout = Duration::from_millis(args.timeout_ms);
    let url = endpoint.to_string();
    let host_port = endpoint.host_port();
    if args.run_to_completion {
        return run_to_completion(&args, &url, &host_port, timeout).await;
    }
    let options = ConnectOptions {
        rdma: endpoint.wants_rdma().then(|| super::rdma_config(args.poll)),
        fallback: !args.no_fallback,
        timeout,
        tcp: super::tcp_config(args.poll),
        ..ConnectOptions::default()
    };
    let connect_error = |err| match err {
        ConnectError::RdmaRequired { reason } => CliError::RdmaUnavailable { host_port: host_port.clone(), reason },
        ConnectError::Timeout { .. } => CliError::ConnectTimeout { endpoint: url.clone(), timeout_ms: args.timeout_ms },
        other => CliError::connect(&url, other),
    };
    if args.inline {
        return inline(&args, &host_port, &options, timeout).await.map_err(|err| err.into_cli(connect_error));
    }
    let connection = connect(&host_port, &options).await.map_err(connect_error)?;
    match connection {
        Connection::Tcp { client, fallback } => {
            match fallback {
                Some(reason) => println!("transport: tcp (fallback from rdma: {reason})"),
                None => println!("transport: tcp"),
            }
            measure(client, &args, timeout).await
        }
        Connection::Rdma(client) => {
            println!("transport: rdma");
            measure(client, &args, timeout).await
        }
    }
}

async fn measure<T: Transport>(client: Client<T>, args: &PingArgs, timeout: Duration) -> Result<(), CliError> {
    let client = client.with_timeout(timeout);
    println!("peer: {} (concurrency {}, timeout {} ms)", client.peer(), args.concurrency, args.timeout_ms);
    let size = usize::try_from(args.size).expect("--size is capped at 16 MiB by its parser");
    let run = Run { client: EchoClient::new(client.clone()), peer: client.peer().to_string(), count: args.count, size };
    let started = Instant::now();
    let histogram = run.all(args.concurrency).await?;
    let elapsed = started.elapsed();
    println!("{}", summary(&histogram, args.count, size, elapsed));
    client.close().await;
    Ok(())
}

struct Run<T: Transport> {
    client: EchoClient<T>,
    peer: String,
    count: u64,
    size: usize,
}

impl<T: Transport> Run<T> {
    /// Makes all the calls from `concurrency` tasks; the merged histogram of their round trips.
    async fn all(self, concurrency: u64) -> Result<Histogram<u64>, CliError> {
        let run = Arc::new(self);
        let next = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency.min(run.count) {
            let (run, next, stop) = (run.clone(), next.clone(), stop.clone());
            tasks.spawn(async move { run.worker(&next, &stop).await });
        }
        let mut total = new_histogram();
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(histogram)) => {
                    total.add(&histogram).expect("histograms with the same bounds merge");
                }
                Ok(Err(err)) => {
                    stop.store(true, Ordering::Relaxed);
                    failure.get_or_insert(err);
                }
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
        failure.map_or(Ok(total), Err)
    }

    /// Takes call numbers until all calls are made or another task failed.
    async fn worker(&self, next: &AtomicU64, stop: &AtomicBool) -> Result<Histogram<u64>, CliError> {
        let mut histogram = new_histogram();
        while !stop.load(Ordering::Relaxed) {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= self.count {
                break;
            }
            let request = EchoRequest { payload: payload(index, self.size) };
            let started = Instant::now();
            let reply = self.client.echo(&request).await.map_err(|status| CliError::call(index, &self.peer, status))?;
            record(&mut histogram, started);
            check_echo(index, &request, &reply)?;
        }
        Ok(histogram)
    }
}

/// `--run-to-completion`: one connection whose calls this command's own thread makes, polling the
/// completion queue between request and reply.
async fn run_to_completion(args: &PingArgs, url: &str, host_port: &str, timeout: Duration) -> Result<(), CliError> {
    if !args.url.wants_rdma() {
        return Err(CliError::BadUrl {
            url: url.to_string(),
            reason: "--run-to-completion polls an RDMA completion queue: use an rdma:// URL".into(),
        });
    }
    let config = super::rdma_config(args.poll);
    let connecting = DirectClient::connect(host_port, &config, crate::rpc::ConnectionConfig::default());
    let mut client = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => return Err(CliError::ConnectTimeout { endpoint: url.to_string(), timeout_ms: args.timeout_ms }),
        Ok(Err(ConnectError::RdmaRequired { reason })) => {
            return Err(CliError::RdmaUnavailable { host_port: host_port.to_string(), reason });
        }
        Ok(Err(other)) => return Err(CliError::connect(url, other)),
        Ok(Ok(client)) => client,
    };
    client.set_timeout(Some(timeout));
    println!("transport: rdma, run to completion (this thread polls the completion queue)");
    println!("peer: {} (concurrency 1, timeout {} ms)", client.peer(), args.timeout_ms);
    let peer = client.peer().to_string();
    let mut client = EchoDirectClient::new(client);
    let (count, size) = (args.count, usize::try_from(args.size).expect("--size is capped at 16 MiB by its parser"));
    let started = Instant::now();
    let calls = tokio::task::spawn_blocking(move || {
        let mut histogram = new_histogram();
        for index in 0..count {
            let request = EchoRequest { payload: payload(index, size) };
            let started = Instant::now();
            let reply = client.echo(&request).map_err(|status| CliError::call(index, &peer, status))?;
            record(&mut histogram, started);
            check_echo(index, &request, &reply)?;
        }
        Ok::<_, CliError>(histogram)
    });
    let histogram = match calls.await {
        Ok(result) => result?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    println!("{}", summary(&histogram, count, size, started.elapsed()));
    Ok(())
}

/// What `--inline` fails with: connecting, or a call.
enum InlineError {
    Connect(ConnectError),
    Cli(CliError),
}

impl InlineError {
    fn into_cli(self, connect_error: impl FnOnce(ConnectError) -> CliError) -> CliError {
        match self {
            InlineError::Connect(err) => connect_error(err),
            InlineError::Cli(err) => err,
        }
    }
}

/// `--inline`: one connection whose calls this command's task makes with an [`InlineClient`].
async fn inline(
    args: &PingArgs,
    host_port: &str,
    options: &ConnectOptions,
    timeout: Duration,
) -> Result<(), InlineError> {
    let config = options.connection.clone();
    let established = within(host_port, options, async {
        match establish(host_port, options).await? {
            Established::Tcp { halves, fallback } => {
                Ok(Inline::Tcp(InlineClient::connect(*halves, config).await?, fallback))
            }
            Established::Rdma(connection) => Ok(Inline::Rdma(InlineClient::connect(connection, config).await?)),
        }
    })
    .await
    .map_err(InlineError::Connect)?;
    match established {
        Inline::Tcp(client, fallback) => {
            match fallback {
                Some(reason) => println!("transport: tcp (fallback from rdma: {reason}), inline client"),
                None => println!("transport: tcp, inline client (this task writes and reads)"),
            }
            measure_inline(client, args, timeout).await
        }
        Inline::Rdma(client) => {
            println!("transport: rdma, inline client (this task posts and polls)");
            measure_inline(client, args, timeout).await
        }
    }
    .map_err(InlineError::Cli)
}

/// An inline client over whichever transport was negotiated.
enum Inline {
    Tcp(InlineClient<TcpHalves>, Option<String>),
    Rdma(InlineClient<RdmaConnection>),
}

async fn measure_inline<T: Transport>(
    mut client: InlineClient<T>,
    args: &PingArgs,
    timeout: Duration,
) -> Result<(), CliError> {
    client.set_timeout(Some(timeout));
    println!("peer: {} (concurrency 1, timeout {} ms)", client.peer(), args.timeout_ms);
    let peer = client.peer().to_string();
    let mut client = EchoInlineClient::new(client);
    let size = usize::try_from(args.size).expect("--size is capped at 16 MiB by its parser");
    let started = Instant::now();
    let mut histogram = new_histogram();
    for index in 0..args.count {
        let request = EchoRequest { payload: payload(index, size) };
        let call_started = Instant::now();
        let reply = client.echo(&request).await.map_err(|status| CliError::call(index, &peer, status))?;
        record(&mut histogram, call_started);
        check_echo(index, &request, &reply)?;
    }
    println!("{}", summary(&histogram, args.count, size, started.elapsed()));
    client.into_inner().close().await;
    Ok(())
}

/// Records the round trip that started at `started`.
fn record(histogram: &mut Histogram<u64>, started: Instant) {
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(nanos.clamp(1, MAX_RECORDED_NS));
}

/// The reply must be the payload sent.
fn check_echo(index: u64, request: &EchoRequest, reply: &EchoReply) -> Result<(), CliError> {
    if reply.payload == request.payload {
        return Ok(());
    }
    let (sent, got) = (&request.payload, &reply.payload);
    let at = sent.iter().zip(got.iter()).position(|(a, b)| a != b).unwrap_or(sent.len().min(got.len()));
    Err(CliError::Mismatch { index, sent: sent.len(), got: got.len(), at })
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("1 ns .. 60 s with 3 significant digits are valid bounds")
}

/// `size` bytes: the call number (little endian, truncated to fit), then a byte pattern.
fn payload(index: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size);
    let number = index.to_le_bytes();
    buf.put_slice(&number[..size.min(number.len())]);
    buf.extend((buf.len()..size).map(|i| (i as u64).wrapping_mul(31).wrapping_add(index) as u8));
    buf.freeze()
}

/// `N calls, SIZE B payload: p50 X µs, p99 Y µs, max Z µs, R calls/s, T MB/s`; throughput counts
/// payload bytes both ways, in MB of 10^6 bytes.
fn summary(histogram: &Histogram<u64>, count: u64, size: usize, elapsed: Duration) -> String {
    let micros = |nanos: u64| nanos as f64 / 1000.0;
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let calls_per_sec = count as f64 / seconds;
    let megabytes_per_sec = 2.0 * count as f64 * size as f64 / seconds / 1e6;
    let rate_decimals = if calls_per_sec < 100.0 { 1 } else { 0 };
    format!(
        "{count} calls, {size} B payload: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, {calls_per_sec:.rate_decimals$} \
         calls/s, {megabytes_per_sec:.2} MB/s",
        micros(histogram.value_at_quantile(0.5)),
        micros(histogram.value_at_quantile(0.99)),
        micros(histogram.max()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_and_differ_per_call() {
        for size in [0, 1, 7, 8, 9, 4096] {
            assert_eq!(payload(3, size).len(), size);
        }
        assert_ne!(payload(1, 64), payload(2, 64));
        assert_eq!(payload(5, 64), payload(5, 64));
    }

    #[test]
    fn summary_has_the_documented_shape() {
        let mut histogram = new_histogram();
        for nanos in [10_000, 20_000, 30_000, 1_000_000] {
            histogram.record(nanos).expect("in bounds");
        }
        let text = summary(&histogram, 4, 1000, Duration::from_millis(2));
        assert!(text.starts_with("4 calls, 1000 B payload: p50 20.0 µs, p99 1000.4 µs, max 1000.4 µs"), "{text}");
        assert!(text.ends_with("2000 calls/s, 4.00 MB/s"), "{text}");
    }
}
