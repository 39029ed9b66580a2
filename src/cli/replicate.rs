//! `rdma-rpc replicate` and `rdma-rpc push`: the sending side of replication, with a progress bar
//! (or periodic lines), a report per step, and errors that say whether a rerun can help.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::{PushArgs, ReplicateArgs, SendFlags};
use super::error::CliError;
use super::url::Endpoint as Url;
use crate::pb::replication::{FilesystemVersion, PingReq, ReplicationClient};
use crate::replication::endpoint::{Endpoint, SendStream};
use crate::replication::error::ReplicationError;
use crate::replication::plan::Step;
use crate::replication::process::CommandLine;
use crate::replication::progress::{Progress, human_bytes};
use crate::replication::push::{StepDone, TransferOptions, send_stream};
use crate::replication::replicate::{ReplicateOptions, replicate};
use crate::rpc::{ConnectOptions, Connection, connect};

fn connect_options(url: &Url, flags: &SendFlags) -> ConnectOptions {
    ConnectOptions {
        rdma: url.wants_rdma().then(|| super::rdma_config(flags.poll)),
        fallback: !flags.no_fallback,
        tcp: super::tcp_config(flags.poll),
        ..ConnectOptions::default()
    }
}

fn transfer_options(flags: &SendFlags, raw: bool) -> TransferOptions {
    TransferOptions {
        chunk_size: usize::try_from(flags.chunk_kib * 1024).unwrap_or(1 << 20),
        compress: flags.compress,
        bwlimit: flags.bwlimit,
        raw,
    }
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{}/s", human_bytes(bytes as f64 / secs.max(1e-6)))
}

/// Runs `replicate`.
pub async fn run_replicate(args: ReplicateArgs) -> Result<(), CliError> {
    let source = Arc::new(Endpoint::parse(&args.source)?);
    let options = ReplicateOptions {
        transfer: transfer_options(&args.send, args.raw),
        filesystems: args.filesystems.clone(),
        dry_run: args.dry_run,
        retry_for: Duration::from_secs(args.retry_secs),
        ..ReplicateOptions::default()
    };
    let progress = Progress::default();
    let reporter = (!args.dry_run).then(|| {
        progress.report(format!("{} -> {}", args.source, args.url), Duration::from_secs(args.send.progress_secs))
    });
    let started = Instant::now();
    let result =
        replicate(source, &args.url.host_port(), &connect_options(&args.url, &args.send), &options, &progress).await;
    progress.finish();
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
    let report = result?;
    println!("transport: {}", report.transport);
    if args.dry_run {
        if report.plan.is_empty() {
            println!("nothing to send: the target is up to date");
        }
        let total: u64 = report.plan.iter().map(|(_, size)| size).sum();
        for (step, size) in &report.plan {
            let size = if *size > 0 { format!("~{}", human_bytes(*size as f64)) } else { "size unknown".into() };
            println!("would send {step}: {size}");
        }
        if total > 0 {
            println!("estimated total: {}", human_bytes(total as f64));
        }
        return Ok(());
    }
    if report.done.is_empty() {
        println!("nothing to send: the target is up to date");
    }
    for done in &report.done {
        let resumed =
            if done.resumed_at > 0 { format!(", resumed at byte {}", done.resumed_at) } else { String::new() };
        println!(
            "sent {}: {} in {:.1}s ({}){resumed}",
            done.step,
            human_bytes(done.bytes as f64),
            done.secs,
            rate(done.bytes, done.secs)
        );
    }
    let bytes: u64 = report.done.iter().map(|d| d.bytes).sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replicated {} snapshot(s), {} in {secs:.1}s ({}), {} connection(s)",
        report.done.len(),
        human_bytes(bytes as f64),
        rate(bytes, secs),
        report.attempts
    );
    Ok(())
}

/// A version for a piped stream: named by the operator, identified by its name and start time.
fn piped_version(name: &str) -> FilesystemVersion {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let guid =
        u64::from(crc32c::crc32c(name.as_bytes())) << 32 | u64::from(crc32c::crc32c(&now.as_nanos().to_le_bytes()));
    FilesystemVersion {
        r#type: 0,
        name: name.to_string(),
        guid,
        create_txg: now.as_secs(),
        creation: now.as_secs().to_string(),
    }
}

/// Sends one stream over a connected client, compressing only if the receiver offers zstd.
async fn push_over<T: crate::transport::Transport>(
    client: crate::rpc::Client<T>,
    step: &Step,
    stream: SendStream,
    expected: u64,
    options: &TransferOptions,
    progress: &Progress,
) -> Result<StepDone, ReplicationError> {
    let client = ReplicationClient::new(client);
    let features = client.ping(&PingReq { message: "rdma-rpc push".into() }).await?.features;
    let compress = options.compress && features.iter().any(|f| f == "zstd");
    send_stream(&client, step, stream, expected, compress, options, progress).await
}

/// Runs `push`.
pub async fn run_push(args: PushArgs) -> Result<(), CliError> {
    let (filesystem, snapshot) = args.name.split_once('@').ok_or_else(|| {
        CliError::Replication(ReplicationError::InvalidName {
            name: args.name.clone(),
            reason: "write it as FS@SNAP, e.g. home@monday",
        })
    })?;
    crate::replication::names::check_filesystem(filesystem)?;
    crate::replication::names::check_snapshot(snapshot)?;
    let (reader, child): (Box<dyn std::io::Read + Send>, _) = match (&args.input, args.command.split_first()) {
        (_, Some((program, rest))) => {
            let (child, stdout) = CommandLine::new(program, rest.iter().cloned()).spawn_reader()?;
            (Box::new(stdout), Some(child))
        }
        (Some(path), None) => {
            let file = std::fs::File::open(path)
                .map_err(|err| ReplicationError::io(format!("opening {}", path.display()), err))?;
            (Box::new(file), None)
        }
        (None, None) => (Box::new(std::io::stdin()), None),
    };
    let expected = args.input.as_ref().and_then(|path| std::fs::metadata(path).ok()).map_or(0, |m| m.len());
    let step = Step { filesystem: filesystem.into(), from: None, to: piped_version(snapshot), resume_token: None };
    let stream = SendStream { reader, start_offset: 0, used_token: false, child };
    let options = transfer_options(&args.send, false);
    let progress = Progress::default();
    progress.expect(expected);
    let reporter = progress.report(format!("push {}", args.name), Duration::from_secs(args.send.progress_secs));
    let connected = connect(&args.url.host_port(), &connect_options(&args.url, &args.send))
        .await
        .map_err(|err| CliError::connect(&args.url.to_string(), err))?;
    let result = match connected {
        Connection::Tcp { client, .. } => push_over(client, &step, stream, expected, &options, &progress).await,
        Connection::Rdma(client) => push_over(client, &step, stream, expected, &options, &progress).await,
    };
    progress.finish();
    let _ = reporter.await;
    let done = result?;
    println!(
        "stored {}: {} in {:.1}s ({})",
        args.name,
        human_bytes(done.bytes as f64),
        done.secs,
        rate(done.bytes, done.secs)
    );
    Ok(())
}
