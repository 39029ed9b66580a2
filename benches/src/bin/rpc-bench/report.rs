//! The bench binary's output: Markdown tables of absolute figures and of ratios to the baselines
//! measured in the same run, then the targets, each marked met or missed.

use std::fmt::Write as _;

use super::stream::Throughput;
use super::unary::{Measured, PerCall};

/// The systems compared. rdma-rpc over TCP with its defaults: after each message a connection
/// spins on its socket for 50 µs (`TcpConfig::busy_poll`), then sleeps in epoll.
pub const RPC_TCP: &str = "rdma-rpc tcp";
/// rdma-rpc over TCP, sleeping at once (`busy_poll: None`, the CLI's `--no-spin`).
pub const RPC_TCP_SLEEP: &str = "rdma-rpc tcp no-spin";
/// rdma-rpc over TCP with the inline client: the call's own task writes the request and reads
/// the reply, with no driver task between them (`rpc::direct::InlineClient`; one call in flight).
pub const RPC_TCP_INLINE: &str = "rdma-rpc tcp inline";
/// rdma-rpc over RDMA (only when an RDMA address was given).
pub const RPC_RDMA: &str = "rdma-rpc rdma";
/// rdma-rpc over RDMA with the inline client against the ordinary server (one call in flight).
pub const RPC_RDMA_INLINE: &str = "rdma-rpc rdma inline";
/// rdma-rpc over RDMA run to completion: the server's connection thread and the calling thread
/// poll their CQs themselves (`rpc::direct`; one call in flight).
pub const RPC_RDMA_DIRECT: &str = "rdma-rpc rdma run-to-completion";
/// The RDMA transport alone echoing messages, no RPC layers (only with an RDMA address; one call
/// in flight).
pub const RAW_RDMA: &str = "raw rdma transport";
/// The RDMA transport alone, run to completion: each side's thread polls its CQ itself, as
/// `RPC_RDMA_DIRECT` does (one call in flight).
pub const RAW_RDMA_DIRECT: &str = "raw rdma transport run-to-completion";
/// The raw tokio TCP echo / copy.
pub const RAW: &str = "raw tokio tcp";
/// The raw tokio TCP echo, busy-polling its reads as `RPC_TCP` does (one call in flight).
pub const RAW_BUSY: &str = "raw tokio tcp busy-poll";
/// tonic over HTTP/2.
pub const TONIC: &str = "tonic";

/// One unary cell: a system at a payload size and a number of calls in flight.
#[derive(Debug)]
pub struct UnaryRow {
    /// Payload bytes (each way).
    pub size: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// Which system.
    pub system: &'static str,
    /// What was measured.
    pub measured: Measured,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Unary round trips.
    pub unary: Vec<UnaryRow>,
    /// Stream throughput per system (echo: both directions at once).
    pub streams: Vec<(&'static str, Throughput)>,
    /// Stream throughput per system, one way.
    pub one_way: Vec<(&'static str, Throughput)>,
    /// Allocations per unary call per system, at a payload size.
    pub allocations: Vec<(&'static str, usize, PerCall)>,
    /// Why the timings say nothing (a `--quick` smoke run, a debug build), if they don't.
    pub not_meaningful: Option<&'static str>,
    /// perftest's figures from the same device and boot, if given.
    pub perftest: Perftest,
}

/// perftest's figures, measured outside this binary in the same boot (`scripts/rxe-bench`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Perftest {
    /// `ib_send_lat` t_typical: half a round trip, µs.
    pub lat_us: Option<f64>,
    /// `ib_write_bw` average, one way, MB/s.
    pub bw_mbs: Option<f64>,
    /// `ib_send_lat` t_typical at the echo request's size plus at its reply's: a round trip of
    /// the same bytes, µs.
    pub frames_rt_us: Option<f64>,
}

impl Report {
    fn unary(&self, system: &str, size: usize, in_flight: usize) -> Option<&Measured> {
        self.unary
            .iter()
            .find(|r| r.system == system && r.size == size && r.in_flight == in_flight)
            .map(|r| &r.measured)
    }

    fn stream(&self, system: &str) -> Option<&Throughput> {
        self.streams.iter().find(|(s, _)| *s == system).map(|(_, t)| t)
    }

    /// The whole report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        self.write_unary(&mut out);
        self.write_streams(&mut out);
        self.write_allocations(&mut out);
        self.write_rdma_layers(&mut out);
        self.write_targets(&mut out);
        out
    }

    fn write_unary(&self, out: &mut String) {
        out.push_str("### Unary echo: round trip (request and reply), one connection per system\n\n");
        out.push_str(
            "| payload | in flight | system | p50 µs | p99 µs | p99.9 µs | calls/s | p50 ÷ raw tcp | p50 ÷ tonic | calls/s ÷ raw tcp | calls/s ÷ tonic |\n",
        );
        out.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for row in &self.unary {
            let m = &row.measured;
            let raw = self.unary(RAW, row.size, row.in_flight);
            let tonic = self.unary(TONIC, row.size, row.in_flight);
            let p50_vs = |base: Option<&Measured>| ratio(base.map(|b| (m.micros(50.0), b.micros(50.0))));
            let rate_vs = |base: Option<&Measured>| ratio(base.map(|b| (m.calls_per_sec(), b.calls_per_sec())));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} | {} | {} |",
                size_name(row.size),
                row.in_flight,
                row.system,
                m.micros(50.0),
                m.micros(99.0),
                m.micros(99.9),
                m.calls_per_sec(),
                p50_vs(raw),
                p50_vs(tonic),
                rate_vs(raw),
                rate_vs(tonic),
            );
        }
        out.push('\n');
    }

    fn write_streams(&self, out: &mut String) {
        out.push_str("### Stream echo: throughput each way (every byte crosses the connection once each way)\n\n");
        Self::write_stream_table(out, &self.streams, "each way", "÷ raw TCP copy");
        out.push_str("### Stream one way: client to a server that counts the bytes\n\n");
        Self::write_stream_table(out, &self.one_way, "one way", "÷ raw TCP one way");
    }

    fn write_stream_table(out: &mut String, rows: &[(&'static str, Throughput)], way: &str, baseline: &str) {
        let _ = writeln!(out, "| system | chunk | MiB {way} | MB/s {way} | {baseline} |\n|---|---:|---:|---:|---:|");
        let raw = rows.iter().find(|(s, _)| *s == RAW).map(|(_, t)| t);
        for (system, t) in rows {
            let _ = writeln!(
                out,
                "| {system} | {} | {} | {:.0} | {} |",
                size_name(t.chunk),
                t.bytes >> 20,
                t.megabytes_per_sec(),
                ratio(raw.map(|r| (t.megabytes_per_sec(), r.megabytes_per_sec()))),
            );
        }
        out.push('\n');
    }

    /// The RDMA round trip layer by layer: perftest's verbs loop, rdma-rpc's transport alone, the
    /// whole RPC stack. Printed when the run measured RDMA.
    fn write_rdma_layers(&self, out: &mut String) {
        let (Some(rpc), raw) = (self.unary(RPC_RDMA, 64, 1), self.unary(RAW_RDMA, 64, 1)) else { return };
        let perftest = self.perftest.lat_us.map(|half| 2.0 * half);
        out.push_str("### RDMA round trip by layer, 64 B, 1 in flight (p50)\n\n");
        out.push_str(
            "| layer | p50 µs | ÷ perftest round trip | ÷ perftest, same message sizes | ÷ raw rdma transport |\n\
             |---|---:|---:|---:|---:|\n",
        );
        let raw_p50 = raw.map(|m| m.micros(50.0));
        let same_sizes = self.perftest.frames_rt_us;
        let mut row = |layer: &str, p50: Option<f64>| {
            let Some(p50) = p50 else { return };
            let vs = |base: Option<f64>| ratio(base.map(|b| (p50, b)));
            let _ = writeln!(out, "| {layer} | {p50:.1} | {} | {} | {} |", vs(perftest), vs(same_sizes), vs(raw_p50));
        };
        row("perftest: 2 × `ib_send_lat` t_typical (verbs in a tight loop)", perftest);
        let same_bytes =
            "perftest with the echo's message sizes: `ib_send_lat` t_typical at the request's + at the reply's";
        row(same_bytes, self.perftest.frames_rt_us);
        row("raw rdma transport: rdma-rpc's RDMA transport echoing, no RPC layers", raw_p50);
        let raw_direct = self.unary(RAW_RDMA_DIRECT, 64, 1).map(|m| m.micros(50.0));
        row("raw rdma transport run-to-completion: the same, each side's thread polling its CQ", raw_direct);
        row("rdma-rpc rdma: the whole stack (frame, session, call, protobuf)", Some(rpc.micros(50.0)));
        let inline = self.unary(RPC_RDMA_INLINE, 64, 1).map(|m| m.micros(50.0));
        row("rdma-rpc rdma inline: the whole stack, the client's side run in the calling task", inline);
        let direct = self.unary(RPC_RDMA_DIRECT, 64, 1).map(|m| m.micros(50.0));
        row(
            "rdma-rpc rdma run-to-completion: the whole stack, polled by the caller's and the connection's threads",
            direct,
        );
        out.push('\n');
    }

    fn write_allocations(&self, out: &mut String) {
        out.push_str("### Heap allocations per unary call, steady state, one call in flight\n\n");
        out.push_str(
            "| system | payload | client allocs | server allocs | both sides | client bytes | server bytes |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (system, size, per) in &self.allocations {
            let _ = writeln!(
                out,
                "| {system} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
                size_name(*size),
                per.client,
                per.server,
                per.client + per.server + per.other,
                per.client_bytes,
                per.server_bytes,
            );
        }
        out.push('\n');
    }

    fn write_targets(&self, out: &mut String) {
        out.push_str("### Targets of issue 5 (ratios within this run)\n\n| target | measured | |\n|---|---:|---|\n");
        let not_meaningful = self.not_meaningful;
        let mut target = |name: &str, value: Option<f64>, met: &dyn Fn(f64) -> bool| {
            let (shown, verdict) = match (value, not_meaningful) {
                (Some(v), Some(why)) => (format!("{v:.2}"), why),
                (Some(v), None) => (format!("{v:.2}"), if met(v) { "met" } else { "missed" }),
                (None, _) => ("—".to_string(), "not measured"),
            };
            let _ = writeln!(out, "| {name} | {shown} | {verdict} |");
        };
        let p50 = |system| self.unary(system, 64, 1).map(|m| m.micros(50.0));
        let rate = |system| self.unary(system, 64, 64).map(|m| m.calls_per_sec());
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        target("TCP unary p50, 64 B, 1 in flight ÷ raw echo ≤ 1.15", div(p50(RPC_TCP), p50(RAW)), &|v| v <= 1.15);
        target("TCP unary p50, 64 B, 1 in flight ÷ tonic ≤ 0.4", div(p50(RPC_TCP), p50(TONIC)), &|v| v <= 0.4);
        // Like for like: each polling mode against the raw echo waiting the same way.
        let sleep = "TCP unary p50 without spinning (no-spin), 64 B, 1 in flight ÷ raw echo (sleeps too) ≤ 1.15";
        target(sleep, div(p50(RPC_TCP_SLEEP), p50(RAW)), &|v| v <= 1.15);
        let busy = "TCP unary p50, 64 B, 1 in flight ÷ raw echo busy-polling too ≤ 1.15";
        target(busy, div(p50(RPC_TCP), p50(RAW_BUSY)), &|v| v <= 1.15);
        let inline = "TCP unary p50, 64 B, 1 in flight, inline client ÷ raw echo busy-polling too ≤ 1.15";
        target(inline, div(p50(RPC_TCP_INLINE), p50(RAW_BUSY)), &|v| v <= 1.15);
        target("TCP calls/s, 64 B, 64 in flight ÷ tonic ≥ 2", div(rate(RPC_TCP), rate(TONIC)), &|v| v >= 2.0);
        let mbps = |system| self.stream(system).map(Throughput::megabytes_per_sec);
        target("TCP stream throughput ÷ raw TCP copy ≥ 0.8", div(mbps(RPC_TCP), mbps(RAW)), &|v| v >= 0.8);
        // RDMA against perftest (busy-polling both; `rpc-bench --busy-poll` is like for like).
        if let (Some(lat), Some(_)) = (self.perftest.lat_us, self.unary(RPC_RDMA, 64, 1)) {
            let name = "RDMA unary p50, 64 B, 1 in flight ÷ perftest round trip (2 × ib_send_lat) ≤ 1.5";
            target(name, div(p50(RPC_RDMA), Some(2.0 * lat)), &|v| v <= 1.5);
            if self.unary(RPC_RDMA_DIRECT, 64, 1).is_some() {
                let name =
                    "RDMA unary p50 run to completion (`rpc::direct`), 64 B, 1 in flight ÷ perftest round trip ≤ 1.5";
                target(name, div(p50(RPC_RDMA_DIRECT), Some(2.0 * lat)), &|v| v <= 1.5);
            }
        }
        // Like for like: perftest moving the same bytes as the echo's request and reply.
        if let Some(frames) = self.perftest.frames_rt_us {
            for (system, name) in [
                (RPC_RDMA, "RDMA unary p50, 64 B, 1 in flight ÷ perftest round trip with the same message sizes ≤ 1.5"),
                (
                    RPC_RDMA_DIRECT,
                    "RDMA unary p50 run to completion, 64 B, 1 in flight ÷ perftest with the same message sizes ≤ 1.5",
                ),
            ] {
                if self.unary(system, 64, 1).is_some() {
                    target(name, div(p50(system), Some(frames)), &|v| v <= 1.5);
                }
            }
        }
        let one_way = |system| self.one_way.iter().find(|(s, _)| *s == system).map(|(_, t)| t.megabytes_per_sec());
        if let (Some(bw), Some(rdma)) = (self.perftest.bw_mbs, one_way(RPC_RDMA)) {
            target("RDMA stream one way ÷ ib_write_bw ≥ 0.7", Some(rdma / bw), &|v| v >= 0.7);
        }
        let allocs = |system| self.allocations.iter().find(|(s, size, _)| *s == system && *size == 64).map(|a| &a.2);
        let systems =
            [(RPC_TCP, "TCP", 4.0), (RPC_RDMA, "RDMA", 2.0), (RPC_RDMA_DIRECT, "RDMA run to completion", 2.0)];
        for (system, name, limit) in systems {
            let Some(per) = allocs(system) else { continue };
            let client = format!("{name} heap allocations per unary call, 64 B, client side ≤ {limit}");
            target(&client, Some(per.client), &|v| v <= limit);
            let server = format!("{name} heap allocations per unary call, 64 B, server side ≤ {limit}");
            target(&server, Some(per.server), &|v| v <= limit);
            let both = format!("{name} heap allocations per unary call, 64 B, both sides together ≤ {limit}");
            target(&both, Some(per.client + per.server + per.other), &|v| v <= limit);
        }
        out.push('\n');
    }
}

/// `a ÷ b` with two decimals, or a dash when either is missing.
fn ratio(pair: Option<(f64, f64)>) -> String {
    match pair {
        Some((a, b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "—".to_string(),
    }
}

/// 64 B, 4 KiB, 1 MiB.
pub fn size_name(size: usize) -> String {
    match size {
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}
