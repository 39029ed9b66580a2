//! `rdma-rpc demo`: a server and a client in one process on loopback, over the best transport this
//! host and build offer. It times sequential echo calls (latency), 64 calls in flight (call rate),
//! and streams raw data both ways through one bidirectional call (throughput), checking every byte.
//! Nothing here is simulated: the bytes cross a real socket.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use super::args::DemoArgs;
use super::error::CliError;
use super::ping::new_histogram;
use crate::echo::EchoService;
use crate::pb::echo::{EchoClient, EchoRequest};
use crate::rpc::{Client, ConnectionConfig, Router, Server};
use crate::transport::tcp::{TcpConfig, TcpConnection, TcpListener};

const CHUNK: usize = 1 << 20;
const IN_FLIGHT: u64 = 64;

/// Runs the demo and prints its report.
pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let why_tcp = "loopback: 127.0.0.1 has no RDMA device; `rdma-rpc serve --listen rdma://IP:PORT` and `rdma-rpc \
                   ping rdma://IP:PORT` use RDMA between hosts";
    println!("rdma-rpc demo: server and client on 127.0.0.1, transport tcp ({why_tcp})");

    let listener = TcpListener::bind("127.0.0.1:0", TcpConfig::default()).await.map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    let mut router = Router::default();
    router.add(EchoService::server());
    let server = Server::new(router, ConnectionConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_tcp(
        listener,
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));

    let connection = TcpConnection::connect(addr, TcpConfig::default()).await.map_err(fail)?;
    let client = Client::connect(connection, ConnectionConfig::default()).await.map_err(fail)?;
    let echo = EchoClient::new(client.with_timeout(Duration::from_secs(30)));

    latency(&echo, args.calls).await?;
    call_rate(&echo, args.calls).await?;
    stream(&echo, args.stream_mib).await?;

    client.close().await;
    let _ = stop.send(());
    serving.await.map_err(fail)?.map_err(fail)?;
    println!("all replies and {} MiB of stream data checked byte for byte: OK", 2 * args.stream_mib);
    println!("(snapshot replication over this transport arrives with the replication service)");
    Ok(())
}

async fn latency(echo: &EchoClient<TcpConnection>, calls: u64) -> Result<(), CliError> {
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

async fn call_rate(echo: &EchoClient<TcpConnection>, calls: u64) -> Result<(), CliError> {
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

/// Chunk `index`: a fixed pattern whose first 8 bytes carry the index, so loss, duplication and
/// reordering all show.
fn chunk(pattern: &[u8], index: u64) -> Bytes {
    let mut chunk = BytesMut::from(pattern);
    chunk[..8].copy_from_slice(&index.to_be_bytes());
    chunk.freeze()
}

async fn stream(echo: &EchoClient<TcpConnection>, mib: u64) -> Result<(), CliError> {
    let pattern: Bytes = (0..CHUNK).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect::<Vec<u8>>().into();
    let (mut sender, mut receiver) = echo.pipe().await.map_err(fail)?;
    let started = Instant::now();
    let producer = {
        let pattern = pattern.clone();
        tokio::spawn(async move {
            for index in 0..mib {
                sender.send_data(chunk(&pattern, index)).await?;
            }
            sender.finish().await
        })
    };
    let mut expected = 0u64;
    while let Some(data) = receiver.data().await.map_err(fail)? {
        if data.len() != CHUNK || data[..8] != expected.to_be_bytes() || data[8..] != pattern[8..] {
            return Err(CliError::Demo(format!("stream chunk {expected} arrived corrupted or out of order")));
        }
        expected += 1;
    }
    producer.await.map_err(fail)?.map_err(fail)?;
    if expected != mib {
        return Err(CliError::Demo(format!("stream delivered {expected} of {mib} chunks")));
    }
    let seconds = started.elapsed().as_secs_f64();
    let each_way = mib as f64 * CHUNK as f64 / seconds / 1e6;
    println!("stream, 1 MiB chunks:      {mib} MiB each way in {seconds:.2} s = {each_way:.0} MB/s each way");
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> CliError {
    CliError::Demo(err.to_string())
}
