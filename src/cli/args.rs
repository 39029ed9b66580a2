//! The command line, as clap derive structs. Every command and flag documents itself with an
//! example, so `--help` is the manual.

use clap::{ArgAction, Args, Parser, Subcommand};

use super::url::Endpoint;

/// Largest `ping --size`: the default frame limit (16 MiB) minus room for the frame and call headers.
pub const MAX_PING_SIZE: u64 = 16 * 1024 * 1024 - 4096;

const AFTER_HELP: &str = "\
Examples:
  rdma-rpc serve --listen tcp://0.0.0.0:7878
      serve the echo service on every address, port 7878
  rdma-rpc ping tcp://10.0.0.2:7878 --count 1000 --size 4096 --concurrency 8
      measure round trips and throughput to that server
  rdma-rpc devices
      list this host's RDMA devices, or say why there are none
  rdma-rpc serve --listen rdma://0.0.0.0:7878 --target btrfs:/mnt/backup/snaps
      receive snapshots into a btrfs directory (also zfs:POOL/DATASET, dir:/PATH)
  rdma-rpc replicate btrfs:/mnt/data/snaps rdma://backup1:7878 --dry-run
      show what replication would send (newest common snapshot, incrementals, sizes)
  rdma-rpc push tcp://backup1:7878 home@monday -- btrfs send /mnt/data/snaps/home@monday
      pipe mode: store one stream on a server started with --sink dir:/PATH
  rdma-rpc devices
      list this host's RDMA devices, or say why there are none
  rdma-rpc demo
      replicate a generated multi-GiB dataset on loopback, cut the connection, resume, verify

Endpoints are tcp://HOST:PORT or rdma://HOST:PORT (HOST: a name, IPv4, or [IPv6]).
rdma:// uses RDMA when both hosts can (soft-RoCE too) and falls back to TCP on the same port,
saying why, unless --no-fallback is given.
Logs go to stderr; RUST_LOG (e.g. RUST_LOG=rdma_rpc=debug), when set, takes precedence over -v.";

/// rdma-rpc: RPC for protobuf messages and bulk replication streams over RDMA, with TCP fallback.
#[derive(Debug, Parser)]
#[command(name = "rdma-rpc", version, about, long_about = None, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr: -v info, -vv debug, -vvv trace (default: warnings only).
    /// Example: `rdma-rpc -vv ping tcp://127.0.0.1:7878`.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the echo service until Ctrl-C or SIGTERM, then drain in-flight calls.
    ///
    /// Prints `listening on tcp://ADDR (services: ...)` on stdout once bound.
    /// Example: `rdma-rpc serve --listen tcp://0.0.0.0:7878 --drain-secs 5`.
    Serve(ServeArgs),
    /// Measure round-trip latency and throughput to a server with echo calls.
    ///
    /// Example: `rdma-rpc ping tcp://10.0.0.2:7878 --count 1000 --size 65536 --concurrency 4`.
    Ping(PingArgs),
    /// List this host's RDMA devices (from sysfs), or say precisely why there are none.
    ///
    /// Example: `rdma-rpc devices`.
    Devices,
    /// Replicate snapshots to a server (`serve --target`), zrepl style: find the newest common
    /// snapshot, send the newer ones in order (full first if the target has none), resume an
    /// interrupted transfer, reconnect with back-off on network trouble.
    ///
    /// SOURCE is btrfs:DIR (read-only subvolumes named FS@SNAP in DIR), zfs:DATASET (the
    /// filesystems under it) or dir:DIR (a stream store).
    /// Example: `rdma-rpc replicate btrfs:/mnt/data/snaps rdma://backup1:7878 --compress --bwlimit 200M`.
    Replicate(ReplicateArgs),
    /// Send one stream to a server started with `--sink dir:/PATH`, stored as NAME (FS@SNAP): the
    /// output of a command given after `--` (run without a shell; its exit status is checked
    /// before the stream is declared complete), or stdin, or --input FILE. Cannot resume: rerun.
    ///
    /// Example: `rdma-rpc push tcp://backup1:7878 home@mon -- btrfs send /mnt/snaps/home@mon`.
    /// With stdin (`btrfs send ... | rdma-rpc push URL NAME`) a producer that dies part-way looks
    /// like a normal end of the stream: prefer the `-- COMMAND` form.
    Push(PushArgs),
    /// Replicate a generated multi-GiB dataset (a full and incremental snapshot streams) between a
    /// server and a client in this process on loopback, cut the connection part-way, resume,
    /// verify every byte, and print throughput; then latency and call rate of the echo service.
    ///
    /// Example: `rdma-rpc demo --dataset-mib 512`.
    Demo(DemoArgs),
}

/// Flags of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Sequential 64-byte echo calls timed for the latency figures. Example: `--calls 5000`.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calls: u64,

    /// MiB of the generated dataset: a full stream of half of it, then three incrementals.
    /// Example: `--dataset-mib 8192`.
    #[arg(long, value_name = "MIB", default_value_t = 2560, value_parser = clap::value_parser!(u64).range(64..=1 << 20))]
    pub dataset_mib: u64,

    /// Where the demo's source and target stores go (a fresh temporary directory inside it,
    /// removed at the end). Example: `--work-dir /mnt/fast`.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<std::path::PathBuf>,
}

/// Flags shared by the commands that send streams.
#[derive(Debug, Args)]
pub struct SendFlags {
    /// Compress chunks with zstd (level 1) when the receiver offers it; never for --raw sends.
    /// Helps on links slower than the CPU can compress. Example: `--compress`.
    #[arg(long)]
    pub compress: bool,

    /// Limit stream payload to this rate per second (K, M, G are powers of 1024).
    /// Example: `--bwlimit 200M`.
    #[arg(long, value_name = "RATE", value_parser = crate::replication::limit::parse_rate)]
    pub bwlimit: Option<u64>,

    /// KiB of stream data per chunk (each with its own CRC32C); capped by the connection's
    /// message size. The default fits RDMA's 1 MiB buffers. Example: `--chunk-kib 512`.
    #[arg(long, value_name = "KIB", default_value_t = 1020, value_parser = clap::value_parser!(u64).range(4..=16384))]
    pub chunk_kib: u64,

    /// Fail on an rdma:// URL instead of falling back to TCP.
    #[arg(long)]
    pub no_fallback: bool,

    /// How connections wait for data.
    #[command(flatten)]
    pub poll: PollFlags,

    /// Seconds between progress lines when stderr is not a terminal (a terminal gets a live bar).
    /// Example: `--progress-secs 30`.
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_secs: u64,
}

/// How connections wait for data: by default each one spins 50 µs after every message (a reply
/// that comes within that is read without a wake-up), then sleeps.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct PollFlags {
    /// Poll instead of sleeping: RDMA completions without ever sleeping (one core busy per
    /// connection while it lives), a TCP socket for 1 ms after each message. Lowest latency.
    #[arg(long, conflicts_with = "no_spin")]
    pub busy_poll: bool,

    /// Never spin: sleep (in epoll, or on the RDMA completion channel) as soon as a connection
    /// has nothing to read. Saves the CPU of the default 50 µs spin after each message; costs a
    /// wake-up per message (tens of µs on a VM).
    #[arg(long)]
    pub no_spin: bool,
}

/// Flags of `replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// What to replicate: btrfs:DIR, zfs:DATASET or dir:DIR. Example: `zfs:tank/data`.
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// The receiving server (`rdma-rpc serve --target ...`). Example: `rdma://backup1:7878`.
    #[arg(value_name = "URL")]
    pub url: Endpoint,

    /// Only this filesystem (repeat for more; default: all of the source's). Example: `--fs home`.
    #[arg(long = "fs", value_name = "NAME")]
    pub filesystems: Vec<String>,

    /// Print the plan (steps and size estimates) and send nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// ZFS raw sends (`zfs send -w`): encrypted datasets stay encrypted on the wire and target.
    #[arg(long)]
    pub raw: bool,

    /// Keep reconnecting and resuming after retryable failures for this long, with back-off from
    /// 0.25 s to 10 s. Example: `--retry-secs 3600`.
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub retry_secs: u64,

    /// Sending options.
    #[command(flatten)]
    pub send: SendFlags,
}

/// Flags of `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The receiving server (`rdma-rpc serve --sink dir:/PATH`). Example: `tcp://backup1:7878`.
    #[arg(value_name = "URL")]
    pub url: Endpoint,

    /// Name to store the stream under, FS@SNAP. Example: `home@2026-11-22`.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Read the stream from this file instead of stdin. Example: `--input /tmp/home.stream`.
    #[arg(long, value_name = "FILE", conflicts_with = "command")]
    pub input: Option<std::path::PathBuf>,

    /// The command whose stdout is the stream, after `--`. Example: `-- zfs send tank/db@x`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    /// Sending options.
    #[command(flatten)]
    pub send: SendFlags,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen. Port 0 picks a free port (the line printed on stdout shows which).
    /// Example: `--listen tcp://[::]:7878`.
    #[arg(short, long, value_name = "URL", default_value = "tcp://0.0.0.0:7878")]
    pub listen: Endpoint,

    /// Seconds in-flight calls get to finish after Ctrl-C / SIGTERM; the rest are aborted.
    /// Example: `--drain-secs 30`.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub drain_secs: u64,

    /// Fail on an rdma:// URL instead of falling back to TCP on the same host and port.
    /// Example: `--listen rdma://0.0.0.0:7878 --no-fallback`.
    #[arg(long)]
    pub no_fallback: bool,

    /// How connections wait for data.
    #[command(flatten)]
    pub poll: PollFlags,

    /// Serve each RDMA connection in a thread of its own that polls the connection's completion
    /// queue and runs unary handlers right where their requests arrive (no async runtime in
    /// between): the lowest latency, for one busy core per RDMA connection. Such connections
    /// serve unary methods only (streaming calls are refused); TCP clients are served as usual.
    /// Example: `--listen rdma://0.0.0.0:7878 --run-to-completion`.
    #[arg(long, conflicts_with = "target")]
    pub run_to_completion: bool,

    /// Also serve replication, receiving into this endpoint: btrfs:DIR (`btrfs receive`),
    /// zfs:DATASET (`zfs receive` below it) or dir:DIR (stream files; `--sink` is the same flag,
    /// for pipe mode). Example: `--target btrfs:/mnt/backup/snaps`.
    #[arg(long, visible_alias = "sink", value_name = "SPEC")]
    pub target: Option<String>,
}

/// Flags of `ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The server. Example: `tcp://10.0.0.2:7878`, `rdma://node2:7878`, `tcp://[::1]:7878`.
    #[arg(value_name = "URL")]
    pub url: Endpoint,

    /// Echo calls to send in all. Example: `--count 10000` (or `-c 10000`).
    #[arg(short, long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,

    /// Payload bytes per call, echoed back (at most 16 MiB - 4 KiB). Example: `--size 1048576`.
    #[arg(short, long, value_name = "BYTES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=MAX_PING_SIZE))]
    pub size: u64,

    /// Calls in flight at once, from that many tasks sharing one connection. Example: `--concurrency 16`.
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub concurrency: u64,

    /// Time allowed for connecting, and for each call. Example: `--timeout-ms 200`.
    #[arg(long, value_name = "MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// Fail on an rdma:// URL instead of falling back to TCP on the same host and port.
    /// Example: `rdma-rpc ping rdma://node2:7878 --no-fallback`.
    #[arg(long)]
    pub no_fallback: bool,

    /// Make the calls from this thread, which polls the RDMA completion queue itself between
    /// request and reply (no async runtime on the round trip; the library's `DirectClient`).
    /// The lowest latency, for a busy core while calls wait. Needs an rdma:// URL (never falls
    /// back to TCP) and one call in flight; pairs with `serve --run-to-completion`.
    /// Example: `rdma-rpc ping rdma://node2:7878 --run-to-completion`.
    #[arg(long, conflicts_with = "concurrency")]
    pub run_to_completion: bool,

    /// Make the calls from this command's task with the library's `InlineClient`: it writes each
    /// request and reads its reply itself, with no connection task in between. Lower latency
    /// than the default client, over tcp:// and rdma:// alike (with the same fallback); one call
    /// in flight. Example: `rdma-rpc ping tcp://node2:7878 --inline`.
    #[arg(long, conflicts_with_all = ["concurrency", "run_to_completion"])]
    pub inline: bool,

    /// How connections wait for data.
    #[command(flatten)]
    pub poll: PollFlags,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["rdma-rpc", "ping", "tcp://h:1"]).expect("parses");
        let Command::Ping(ping) = cli.command else { panic!("not ping") };
        assert_eq!((ping.count, ping.size, ping.concurrency, ping.timeout_ms), (10, 64, 1, 5000));
        let cli = Cli::try_parse_from(["rdma-rpc", "-vv", "serve"]).expect("parses");
        assert_eq!(cli.verbose, 2);
        let Command::Serve(serve) = cli.command else { panic!("not serve") };
        assert_eq!(serve.listen.to_string(), "tcp://0.0.0.0:7878");
        assert_eq!(serve.drain_secs, 10);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Cli::try_parse_from(["rdma-rpc", "ping", "ftp://h:1"]).is_err());
        assert!(Cli::try_parse_from(["rdma-rpc", "ping", "tcp://h:1", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["rdma-rpc", "ping", "tcp://h:1", "--concurrency", "0"]).is_err());
        assert!(Cli::try_parse_from(["rdma-rpc", "ping", "tcp://h:1", "--size", "999999999"]).is_err());
        assert!(Cli::try_parse_from(["rdma-rpc", "serve", "--busy-poll", "--no-spin"]).is_err());
    }

    #[test]
    fn polling_flags_set_both_transports() {
        use crate::transport::rdma::PollMode;
        use std::time::Duration;
        let poll = |args: &[&str]| {
            let cli = Cli::try_parse_from(["rdma-rpc", "ping", "tcp://h:1"].iter().chain(args)).expect("parses");
            let Command::Ping(ping) = cli.command else { panic!("not ping") };
            (super::super::tcp_config(ping.poll).busy_poll, super::super::rdma_config(ping.poll).poll)
        };
        assert_eq!(poll(&[]), (Some(Duration::from_micros(50)), PollMode::Adaptive(Duration::from_micros(50))));
        assert_eq!(poll(&["--busy-poll"]), (Some(Duration::from_millis(1)), PollMode::BusyPoll));
        assert_eq!(poll(&["--no-spin"]), (None, PollMode::Adaptive(Duration::ZERO)));
    }
}
