//! The replication commands end to end through the binary, on `dir:` stores (no root needed):
//! `demo` (generate, replicate, cut, resume, verify), `push` into a `--sink`, `replicate` from
//! that store on to another server, and errors that explain themselves.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::replication::{BIN, ServeProcess, rdma_rpc};

#[test]
fn demo_replicates_cuts_resumes_and_verifies() {
    let work = tempfile::tempdir().expect("tempdir");
    let work_dir = work.path().to_str().expect("utf-8");
    let (ok, out, err) = rdma_rpc(&["demo", "--dataset-mib", "96", "--calls", "300", "--work-dir", work_dir]);
    assert!(ok, "{out}\n{err}");
    for expected in
        ["cut: server stopped", "(resumed at byte ", "verified: the replica's 4 streams equal the source's", "demo OK"]
    {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert!(err.contains("reconnecting"), "the cut was retried: {err}");
    assert_eq!(std::fs::read_dir(work.path()).expect("list").count(), 0, "the demo cleans up after itself");
}

#[test]
fn push_into_a_sink_then_replicate_the_store_onwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sink, onward) = (dir.path().join("sink"), dir.path().join("onward"));
    let first = ServeProcess::start(&format!("dir:{}", sink.display()), 0);
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();

    let mut push = Command::new(BIN)
        .args(["push", &first.url(), "home@monday", "--chunk-kib", "256", "--compress"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn push");
    push.stdin.take().expect("stdin").write_all(&payload).expect("pipe the stream");
    let out = push.wait_with_output().expect("push");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored home@monday: 2.9 MiB"), "{out:?}");
    assert_eq!(std::fs::read(sink.join("home/monday.stream")).expect("stored"), payload);

    let second = ServeProcess::start(&format!("dir:{}", onward.display()), 0);
    let source = format!("dir:{}", sink.display());
    let (ok, out, err) = rdma_rpc(&["replicate", &source, &second.url()]);
    assert!(ok && out.contains("sent home@monday (full)"), "{out}{err}");
    assert_eq!(std::fs::read(onward.join("home/monday.stream")).expect("replicated"), payload);
}

#[test]
fn push_runs_the_producer_and_a_failing_one_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = dir.path().join("sink");
    let server = ServeProcess::start(&format!("dir:{}", sink.display()), 0);
    let (ok, out, err) = rdma_rpc(&["push", &server.url(), "db@x", "--", "head", "-c", "2000000", "/dev/zero"]);
    assert!(ok && out.contains("stored db@x: 1.9 MiB"), "{out}{err}");
    assert_eq!(std::fs::read(sink.join("db/x.stream")).expect("stored").len(), 2_000_000);

    let dying = "head -c 3000000 /dev/zero; echo 'zfs: I/O error' >&2; exit 3";
    let (ok, out, err) = rdma_rpc(&["push", &server.url(), "db@y", "--", "sh", "-c", dying]);
    assert!(!ok, "{out}");
    assert!(err.contains("exit status: 3") && err.contains("I/O error"), "the producer's failure is reported: {err}");
    assert!(!sink.join("db/y.stream").exists(), "a short stream is never stored as complete");
}

#[test]
fn bad_endpoints_and_names_are_explained() {
    let (ok, _, err) = rdma_rpc(&["replicate", "nfs:/x", "tcp://127.0.0.1:9"]);
    assert!(!ok && err.contains("unknown kind: use btrfs:, zfs: or dir:"), "{err}");
    let (ok, _, err) = rdma_rpc(&["replicate", "zfs:tank;reboot", "tcp://127.0.0.1:9"]);
    assert!(!ok && err.contains("shell metacharacters"), "{err}");
    let (ok, _, err) = rdma_rpc(&["push", "tcp://127.0.0.1:9", "no-snapshot-name"]);
    assert!(!ok && err.contains("FS@SNAP"), "{err}");
    let (ok, _, err) = rdma_rpc(&["replicate", "dir:/nonexistent", "tcp://127.0.0.1:9", "--retry-secs", "0"]);
    assert!(!ok && err.contains("retryable"), "a refused connection is worth retrying: {err}");
    let (ok, out, _) = rdma_rpc(&["replicate", "--help"]);
    assert!(ok && out.contains("--bwlimit") && out.contains("--dry-run") && out.contains("Example"), "{out}");
}
