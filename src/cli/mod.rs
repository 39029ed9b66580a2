//! The `rdma-rpc` command line: `serve` (the echo service, and replication with `--target`),
//! `ping` (latency and throughput against a server), `replicate` and `push` (send snapshots),
//! `devices` (the host's RDMA devices) and `demo` (replication and echo on loopback,
//! self-checking).
//!
//! - `args.rs`: the clap structs, which are also the `--help` text;
//! - `url.rs`: `tcp://HOST:PORT` / `rdma://HOST:PORT` endpoints, and the TCP fallback for `rdma://`;
//! - `serve.rs`, `ping.rs`, `replicate.rs` (also `push`), `devices.rs`, `demo.rs`: the commands;
//! - `error.rs`: [`CliError`], whose messages name the fix.
//!
//! [`main`] is the whole program: `src/main.rs` only calls it. Logs go to stderr; results to stdout.

mod args;
mod demo;
mod demo_dataset;
mod devices;
mod error;
mod ping;
mod replicate;
mod serve;
mod url;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

pub use args::{Cli, Command, DemoArgs, PingArgs, PollFlags, PushArgs, ReplicateArgs, ServeArgs};
pub use error::CliError;
pub use url::{Endpoint, Scheme};

/// The RDMA settings the command line asks for.
pub(crate) fn rdma_config(poll: PollFlags) -> crate::transport::rdma::RdmaConfig {
    use crate::transport::rdma::PollMode;
    let mut config = crate::transport::rdma::RdmaConfig::default();
    if poll.busy_poll {
        config.poll = PollMode::BusyPoll;
    } else if poll.no_spin {
        config.poll = PollMode::Adaptive(std::time::Duration::ZERO);
    }
    config
}

/// How long `--busy-poll` makes a TCP connection spin on its socket after each message.
const TCP_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// The TCP settings the command line asks for (also those an rdma:// URL falls back to).
pub(crate) fn tcp_config(poll: PollFlags) -> crate::transport::tcp::TcpConfig {
    let default = crate::transport::tcp::TcpConfig::default();
    let busy_poll = if poll.busy_poll {
        Some(TCP_BUSY_POLL)
    } else if poll.no_spin {
        None
    } else {
        default.busy_poll
    };
    crate::transport::tcp::TcpConfig { busy_poll, ..default }
}

/// Parses the process arguments, runs the command, and reports a failure on stderr.
///
/// Exit codes: 0 success, 1 a failure at run time, 2 a command line that cannot work.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo cuts its own connection on purpose: its warnings would only be noise.
    let quiet = matches!(cli.command, Command::Demo(_)) && cli.verbose == 0;
    init_tracing(if quiet { None } else { Some(cli.verbose) });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return report(CliError::Runtime(err)),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

/// Runs a parsed command line (inside a tokio runtime with IO and time enabled).
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Ping(args) => ping::run(args).await,
        Command::Devices => {
            devices::run();
            Ok(())
        }
        Command::Replicate(args) => replicate::run_replicate(args).await,
        Command::Push(args) => replicate::run_push(args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}

fn report(err: CliError) -> ExitCode {
    eprintln!("error: {err}");
    err.exit_code()
}

/// Logs to stderr. `RUST_LOG`, when set, decides the filter; otherwise `-v` does: warnings only,
/// then info, debug, trace (`None`: errors only).
fn init_tracing(verbose: Option<u8>) {
    let level = match verbose {
        None => "error",
        Some(0) => "warn",
        Some(1) => "info",
        Some(2) => "debug",
        Some(_) => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|err| {
            eprintln!("warning: ignoring RUST_LOG={spec:?} ({err}); using level {level}");
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
