//! The `rdma-rpc` binary as a user runs it: real processes, a real server on a loopback port.
//! Every wait is bounded: a command that outlives its limit is killed and the test fails.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rdma-rpc");
const LIMIT: Duration = Duration::from_secs(60);

/// What a finished command left behind.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout\n{}--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `rdma-rpc ARGS` to completion, killing it (and failing) after `LIMIT`.
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rdma-rpc");
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for rdma-rpc") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`rdma-rpc {}` did not finish within {LIMIT:?}", args.join(" "));
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}

/// A running `rdma-rpc serve` on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "tcp://127.0.0.1:0", "--drain-secs", "2"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rdma-rpc serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep reading so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve printed no `listening on` line: {other:?}");
            }
        };
        let mut server = Server { child, port: 0 };
        let rest = line.strip_prefix("listening on tcp://127.0.0.1:").unwrap_or_else(|| panic!("{line}"));
        let (port, services) = rest.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert_eq!(services, "(services: rdmarpc.echo.Echo)", "{line}");
        server.port = port.parse().unwrap_or_else(|_| panic!("{line}"));
        assert_ne!(server.port, 0, "{line}");
        server
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ping_measures_round_trips_against_serve() {
    let server = Server::start();
    let out = run(&["ping", &server.url("tcp"), "--count", "200", "--size", "4096"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("transport: tcp\n"), "{out}");
    assert!(out.stdout.contains(&format!("peer: {}", server.url("tcp"))), "{out}");
    assert!(out.stdout.contains("200 calls, 4096 B payload: p50 "), "{out}");
    for word in ["p99", "max", "calls/s", "MB/s"] {
        assert!(out.stdout.contains(word), "{word}: {out}");
    }

    let out = run(&["ping", &server.url("tcp"), "-c", "300", "-s", "100", "--concurrency", "8"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("300 calls, 100 B payload"), "{out}");

    let out = run(&["ping", &server.url("tcp"), "-c", "200", "-s", "4096", "--inline"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("transport: tcp, inline client"), "{out}");
    assert!(out.stdout.contains("200 calls, 4096 B payload: p50 "), "{out}");
    let out = run(&["ping", &server.url("tcp"), "--inline", "--concurrency", "4"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("cannot be used with"), "{out}");
}

#[test]
fn ping_without_a_server_names_the_fix() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local addr").port()
    };
    let url = format!("tcp://127.0.0.1:{port}");
    let out = run(&["ping", &url, "--timeout-ms", "3000"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&format!("cannot connect to {url}")), "{out}");
    assert!(out.stderr.contains(&format!("is `rdma-rpc serve --listen {url}` running there?")), "{out}");
}

#[test]
fn bad_urls_list_the_accepted_forms() {
    for url in ["ftp://x", "tcp://host", "127.0.0.1:7878", "tcp://::1:7878"] {
        let out = run(&["ping", url]);
        assert_eq!(out.status.code(), Some(2), "{url}: {out}");
        assert!(out.stderr.contains("expected tcp://HOST:PORT or rdma://HOST:PORT"), "{url}: {out}");
        assert!(out.stderr.contains("tcp://[::1]:7878"), "{url}: {out}");
    }
    let out = run(&["serve", "--listen", "udp://0.0.0.0:1"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("unsupported scheme `udp`"), "{out}");
}

#[test]
fn fallback_urls_fail_or_use_tcp_on_a_host_without_devices() {
    if std::env::var_os("RDMA_TEST_DEVICE").is_some() {
        eprintln!("SKIPPED: this host has an RDMA device; tests/rdma.rs covers it");
        return;
    }
    let server = Server::start();
    let out = run(&["ping", &server.url("rdma"), "--no-fallback"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("RDMA not possible to 127.0.0.1:"), "{out}");
    assert!(out.stderr.contains(&format!("use {}", server.url("tcp"))), "{out}");

    let out = run(&["ping", &server.url("rdma"), "--count", "20"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("transport: tcp (fallback from rdma: "), "{out}");
    assert!(out.stdout.contains("20 calls"), "{out}");
    assert!(out.stderr.contains("RDMA not possible; using TCP"), "{out}");

    let out = run(&["serve", "--listen", "rdma://127.0.0.1:0", "--no-fallback"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("RDMA not possible to 127.0.0.1:0"), "{out}");

    let out = run(&["ping", &server.url("rdma"), "--count", "20", "--inline"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("transport: tcp (fallback from rdma: "), "{out}");
    assert!(out.stdout.contains("inline client"), "{out}");
    assert!(out.stdout.contains("20 calls"), "{out}");

    // Run to completion polls a completion queue: never TCP.
    let out = run(&["ping", &server.url("rdma"), "--run-to-completion", "--count", "5"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("RDMA not possible to 127.0.0.1:"), "{out}");
}

#[test]
fn run_to_completion_ping_needs_rdma_and_one_call_in_flight() {
    let out = run(&["ping", "tcp://127.0.0.1:7878", "--run-to-completion"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("use an rdma:// URL"), "{out}");
    let out = run(&["ping", "rdma://127.0.0.1:7878", "--run-to-completion", "--concurrency", "4"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("cannot be used with"), "{out}");
    let out = run(&["serve", "--listen", "rdma://127.0.0.1:0", "--run-to-completion", "--target", "dir:/tmp/x"]);
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("cannot be used with"), "{out}");
}

#[test]
fn devices_reports_devices_or_why_there_are_none() {
    let out = run(&["devices"]);
    assert!(out.status.success(), "{out}");
    let listed = out.stdout.lines().any(|line| line.contains(": node_type "));
    assert!(listed || out.stdout.contains("no RDMA devices"), "{out}");
    assert!(out.stdout.contains("libibverbs"), "{out}");
    assert!(out.stdout.contains("rdma transport: "), "{out}");
}

#[test]
fn help_and_version_teach_the_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success(), "{out}");
    for word in ["serve", "ping", "devices", "Examples:", "--verbose"] {
        assert!(out.stdout.contains(word), "{word}: {out}");
    }
    for command in ["serve", "ping", "devices"] {
        let out = run(&[command, "--help"]);
        assert!(out.status.success(), "{command}: {out}");
        assert!(out.stdout.contains("Example"), "{command}: {out}");
    }
    let out = run(&["--version"]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.starts_with("rdma-rpc "), "{out}");
}

#[test]
fn listening_on_a_busy_port_names_the_fix() {
    let server = Server::start();
    let out = run(&["serve", "--listen", &server.url("tcp")]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains("another process already uses this port"), "{out}");
}

#[cfg(unix)]
#[test]
fn serve_stops_gracefully_on_sigterm() {
    let mut server = Server::start();
    let pid = server.child.id().to_string();
    match Command::new("kill").args(["-TERM", &pid]).status() {
        Ok(status) => assert!(status.success(), "kill -TERM {pid}: {status}"),
        Err(err) => {
            eprintln!("skipped: no `kill` command ({err})");
            return;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("wait for serve") {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop within 20 s of SIGTERM");
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "serve exited with {status} after SIGTERM");
}

#[test]
fn ping_gives_up_on_a_silent_peer_after_its_timeout() {
    // Accepts connections (in the kernel's backlog) but never answers the handshake.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let url = format!("tcp://{}", listener.local_addr().expect("local addr"));
    let started = Instant::now();
    let out = run(&["ping", &url, "--timeout-ms", "300"]);
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stderr.contains(&format!("no connection to {url} within 300 ms")), "{out}");
    assert!(out.stderr.contains("raise --timeout-ms"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    drop(listener);
}
