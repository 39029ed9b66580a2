//! `replicate SOURCE URL`: the active (push) side. Connect over the best transport, ask the
//! target what it has, plan, send each step, and on a retryable failure (connection lost, chunk
//! corrupt, receiver restarted) reconnect with exponential back-off, plan again and resume — the
//! target's resume token makes the interrupted step continue where it stopped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::endpoint::{Endpoint, SendSpec};
use super::error::{ReplicationError, Result};
use super::plan::{Step, plan_filesystem};
use super::progress::Progress;
use super::push::{StepDone, TransferOptions, send_stream};
use crate::pb::replication::{
    ListFilesystemReq, ListFilesystemVersionsReq, PingReq, ReplicationClient, ReplicationCursorReq,
    replication_cursor_res,
};
use crate::rpc::{ConnectError, ConnectOptions, Connection, connect};
use crate::status::{Code, Status};
use crate::transport::Transport;

/// What `replicate` does.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// How streams are sent.
    pub transfer: TransferOptions,
    /// Only these filesystems (all of the source's when empty).
    pub filesystems: Vec<String>,
    /// Plan and estimate only.
    pub dry_run: bool,
    /// Keep retrying retryable failures for this long.
    pub retry_for: Duration,
    /// First back-off delay (doubles up to 10 s).
    pub first_backoff: Duration,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        ReplicateOptions {
            transfer: TransferOptions::default(),
            filesystems: Vec::new(),
            dry_run: false,
            retry_for: Duration::from_secs(600),
            first_backoff: Duration::from_millis(250),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct ReplicateReport {
    /// Steps planned (dry run) with their size estimates.
    pub plan: Vec<(String, u64)>,
    /// Steps sent.
    pub done: Vec<StepDone>,
    /// Connections made (1 + reconnects).
    pub attempts: u32,
    /// Failures that were retried, as text.
    pub retried: Vec<String>,
    /// The transport of the last connection, and why not RDMA if it fell back.
    pub transport: String,
}

async fn blocking<R: Send + 'static>(work: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ReplicationError::Remote(Status::internal(format!("endpoint task failed: {err}"))))?
}

fn connect_error(err: ConnectError) -> ReplicationError {
    let code = match err {
        ConnectError::RdmaRequired { .. } | ConnectError::Config(_) => Code::FailedPrecondition,
        _ => Code::Unavailable,
    };
    ReplicationError::Remote(Status::new(code, err.to_string()))
}

/// Replicates `source` to the server at `addr`, retrying and resuming until done or a permanent
/// failure (or `retry_for` passes).
pub async fn replicate(
    source: Arc<Endpoint>,
    addr: &str,
    connect_options: &ConnectOptions,
    options: &ReplicateOptions,
    progress: &Progress,
) -> Result<ReplicateReport> {
    let deadline = Instant::now() + options.retry_for;
    let mut backoff = options.first_backoff;
    let mut report = ReplicateReport::default();
    let mut counted = HashSet::new();
    loop {
        report.attempts += 1;
        let steps_before = report.done.len();
        let attempt = match connect(addr, connect_options).await.map_err(connect_error) {
            Ok(Connection::Tcp { client, fallback }) => {
                report.transport = match fallback {
                    Some(reason) => format!("tcp (fallback from rdma: {reason})"),
                    None => "tcp".into(),
                };
                run(ReplicationClient::new(client), &source, options, progress, &mut report, &mut counted).await
            }
            Ok(Connection::Rdma(client)) => {
                report.transport = "rdma".into();
                run(ReplicationClient::new(client), &source, options, progress, &mut report, &mut counted).await
            }
            Err(err) => Err(err),
        };
        if report.done.len() > steps_before {
            backoff = options.first_backoff; // progress was made: start the back-off over
        }
        match attempt {
            Ok(()) => return Ok(report),
            Err(err) if err.is_retryable() && Instant::now() + backoff < deadline => {
                tracing::warn!(%err, retry_in = ?backoff, "transfer interrupted; reconnecting, then resuming");
                eprintln!(
                    "interrupted ({}): {err}; reconnecting in {:.1}s to resume",
                    err.kind_word(),
                    backoff.as_secs_f64()
                );
                report.retried.push(err.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(err) => return Err(err),
        }
    }
}

async fn run<T: Transport>(
    client: ReplicationClient<T>,
    source: &Arc<Endpoint>,
    options: &ReplicateOptions,
    progress: &Progress,
    report: &mut ReplicateReport,
    counted: &mut HashSet<String>,
) -> Result<()> {
    let features = client.ping(&PingReq { message: "rdma-rpc replicate".into() }).await?.features;
    let compress = options.transfer.compress && !options.transfer.raw && features.iter().any(|f| f == "zstd");
    if options.transfer.compress && !compress {
        tracing::warn!("not compressing: the receiver does not offer zstd, or the send is raw");
    }
    let tokens: HashMap<String, String> = client
        .list_filesystems(&ListFilesystemReq {})
        .await?
        .filesystems
        .into_iter()
        .map(|fs| (fs.path, fs.resume_token))
        .collect();
    let steps = plan_all(&client, source, options, &tokens).await?;
    let mut estimates = Vec::with_capacity(steps.len());
    for step in &steps {
        let spec = SendSpec { resume_token: None, ..spec_of(step, options) };
        let endpoint = source.clone();
        let estimate = blocking(move || endpoint.estimate(&spec)).await.unwrap_or(0);
        if counted.insert(format!("{}@{}", step.filesystem, step.to.name)) {
            progress.expect(estimate);
        }
        estimates.push(estimate);
    }
    if options.dry_run {
        let describe = |step: &Step| {
            let resume = if step.resume_token.is_some() { " (resumes a partial transfer)" } else { "" };
            format!("{step}{resume}")
        };
        report.plan = steps.iter().map(describe).zip(estimates).collect();
        return Ok(());
    }
    for (step, expected) in steps.into_iter().zip(estimates) {
        let done = match send_step(&client, source, &step, expected, compress, options, progress).await {
            // A resume that cannot work (a stale token, a regenerated stream that differs) is
            // not worth retrying as it is: send the step from its start instead, once.
            Err(err) if step.resume_token.is_some() && !err.is_retryable() => {
                tracing::warn!(%err, step = %step, "cannot resume this step; sending it from the start");
                eprintln!("cannot resume {step} ({err}); sending it from the start");
                let fresh = Step { resume_token: None, ..step.clone() };
                send_step(&client, source, &fresh, expected, compress, options, progress).await?
            }
            other => other?,
        };
        confirm_cursor(&client, &step).await?;
        report.done.push(done);
    }
    client.inner().close().await;
    Ok(())
}

/// Opens the source's stream for `step` and sends it.
async fn send_step<T: Transport>(
    client: &ReplicationClient<T>,
    source: &Arc<Endpoint>,
    step: &Step,
    expected: u64,
    compress: bool,
    options: &ReplicateOptions,
    progress: &Progress,
) -> Result<StepDone> {
    let spec = spec_of(step, options);
    let endpoint = source.clone();
    let stream = blocking(move || endpoint.send(&spec)).await?;
    if stream.start_offset > 0 {
        eprintln!("resuming {step} at byte {}", stream.start_offset);
    }
    send_stream(client, step, stream, expected, compress, &options.transfer, progress).await
}

/// Asks the target for its replication cursor (its newest complete snapshot) and checks that it
/// is the one just sent: the step counts as done only once the target says so.
async fn confirm_cursor<T: Transport>(client: &ReplicationClient<T>, step: &Step) -> Result<()> {
    let request = ReplicationCursorReq { filesystem: step.filesystem.clone() };
    match client.replication_cursor(&request).await?.result {
        Some(replication_cursor_res::Result::Guid(guid)) if guid == step.to.guid => Ok(()),
        other => Err(ReplicationError::Conflict(format!(
            "after {step}, the target's replication cursor is {other:?}, not @{} (guid {:#x}): was the target changed \
             meanwhile?",
            step.to.name, step.to.guid
        ))),
    }
}

fn spec_of(step: &Step, options: &ReplicateOptions) -> SendSpec {
    SendSpec {
        filesystem: step.filesystem.clone(),
        from: step.from.clone(),
        to: step.to.clone(),
        resume_token: step.resume_token.clone(),
        raw: options.transfer.raw,
    }
}

async fn plan_all<T: Transport>(
    client: &ReplicationClient<T>,
    source: &Arc<Endpoint>,
    options: &ReplicateOptions,
    tokens: &HashMap<String, String>,
) -> Result<Vec<Step>> {
    let endpoint = source.clone();
    let mut filesystems: Vec<String> =
        blocking(move || endpoint.filesystems()).await?.into_iter().map(|fs| fs.path).collect();
    if !options.filesystems.is_empty() {
        if let Some(missing) = options.filesystems.iter().find(|wanted| !filesystems.contains(wanted)) {
            return Err(ReplicationError::NotFound(format!(
                "the source has no filesystem {missing:?} (it has: {})",
                filesystems.join(", ")
            )));
        }
        filesystems.retain(|fs| options.filesystems.contains(fs));
    }
    let mut steps = Vec::new();
    for filesystem in filesystems {
        let endpoint = source.clone();
        let name = filesystem.clone();
        let source_versions = blocking(move || endpoint.versions(&name)).await?;
        let request = ListFilesystemVersionsReq { filesystem: filesystem.clone() };
        let target_versions = client.list_filesystem_versions(&request).await?.versions;
        let token = tokens.get(&filesystem).map(String::as_str);
        steps.extend(plan_filesystem(&filesystem, &source_versions, &target_versions, token)?);
    }
    Ok(steps)
}
