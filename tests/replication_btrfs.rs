//! Replication with real `btrfs send` / `btrfs receive` on two loop-device filesystems, through
//! the real `rdma-rpc` binary over loopback TCP: full then incremental, a sender and a receiver
//! killed mid-stream (SIGKILL), all checked file by file. Skips, saying why, without root or btrfs.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::replication::{BIN, LoopBtrfs, ServeProcess, rdma_rpc, skip_without_btrfs, tree_digest, write_tree};

#[test]
fn full_then_incremental_replicas_are_identical() {
    if skip_without_btrfs("full_then_incremental_replicas_are_identical") {
        return;
    }
    let (src, dst) = (LoopBtrfs::new(400), LoopBtrfs::new(400));
    let data = src.subvolume("data");
    write_tree(&data, 1, 24, 256 << 10);
    let s1 = src.snapshot("data", "s1");
    let server = ServeProcess::start(&dst.spec(), 0);

    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url(), "--dry-run"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("would send data@s1 (full)"), "{out}");
    assert!(dst.listing().is_empty(), "a dry run sends nothing");

    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("sent data@s1 (full)"), "{out}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s1")), tree_digest(&s1));

    // Changes: new files, a deleted one, a rewritten one; two more snapshots.
    write_tree(&data, 2, 8, 512 << 10);
    std::fs::remove_file(data.join("d1/f1_1.bin")).expect("rm");
    std::fs::write(data.join("d2/f1_2.bin"), b"rewritten").expect("write");
    let s2 = src.snapshot("data", "s2");
    write_tree(&data, 3, 4, 64 << 10);
    let s3 = src.snapshot("data", "s3");

    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url(), "--compress"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("sent data@s1 -> @s2 (incremental)") && out.contains("sent data@s2 -> @s3 (incremental)"),
        "{out}"
    );
    assert!(!out.contains("(full)"), "only incrementals after the first run: {out}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s2")), tree_digest(&s2));
    assert_eq!(tree_digest(&dst.snaps().join("data@s3")), tree_digest(&s3));

    let (ok, out, _) = rdma_rpc(&["replicate", &src.spec(), &server.url()]);
    assert!(ok && out.contains("nothing to send: the target is up to date"), "{out}");
}

/// Starts `replicate` slowed down by --bwlimit, waits until the target shows a receive in
/// progress, and returns the running process.
fn slow_replicate(src: &LoopBtrfs, url: &str, retry_secs: &str, stderr: Stdio) -> std::process::Child {
    Command::new(BIN)
        .args(["replicate", &src.spec(), url, "--bwlimit", "6M", "--retry-secs", retry_secs, "--progress-secs", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn replicate")
}

fn wait_for_partial(dst: &LoopBtrfs) {
    let start = Instant::now();
    while !dst.snaps().join("data@s1").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the receive never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn a_killed_sender_is_rerun_and_the_replica_is_identical() {
    if skip_without_btrfs("a_killed_sender_is_rerun_and_the_replica_is_identical") {
        return;
    }
    let (src, dst) = (LoopBtrfs::new(400), LoopBtrfs::new(400));
    let data = src.subvolume("data");
    write_tree(&data, 7, 40, 1 << 20);
    let s1 = src.snapshot("data", "s1");
    let server = ServeProcess::start(&dst.spec(), 0);

    let mut sender = slow_replicate(&src, &server.url(), "5", Stdio::inherit());
    wait_for_partial(&dst);
    sender.kill().expect("SIGKILL the sender");
    let _ = sender.wait();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out, _) = rdma_rpc(&["replicate", &src.spec(), &server.url(), "--dry-run"]);
    assert!(ok && out.contains("would send data@s1 (full)"), "the partial receive is not a snapshot: {out}");

    let (ok, out, err) = rdma_rpc(&["replicate", &src.spec(), &server.url()]);
    assert!(ok, "{out}{err}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s1")), tree_digest(&s1));
}

#[test]
fn a_killed_receiver_is_restarted_and_the_sender_reconnects_and_finishes() {
    if skip_without_btrfs("a_killed_receiver_is_restarted_and_the_sender_reconnects_and_finishes") {
        return;
    }
    let (src, dst) = (LoopBtrfs::new(400), LoopBtrfs::new(400));
    let data = src.subvolume("data");
    write_tree(&data, 9, 40, 1 << 20);
    let s1 = src.snapshot("data", "s1");
    let server = ServeProcess::start(&dst.spec(), 0);
    let port = server.port;

    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut sender = slow_replicate(&src, &server.url(), "120", Stdio::from(log.reopen().expect("reopen")));
    wait_for_partial(&dst);
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    let _server = ServeProcess::start(&dst.spec(), port);

    let start = Instant::now();
    let status = loop {
        if let Some(status) = sender.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the sender never finished");
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(log.path()).expect("read log");
    assert!(status.success(), "the sender reconnected and finished: {status}\n{log}");
    assert!(log.contains("(retryable)") && log.contains("reconnecting"), "the cut was seen and retried: {log}");
    assert!(log.contains("MiB/s, ETA "), "periodic progress lines when stderr is not a terminal: {log}");
    assert_eq!(tree_digest(&dst.snaps().join("data@s1")), tree_digest(&s1));
}

#[test]
fn a_failing_receive_reports_the_commands_stderr_as_permanent_and_leaves_nothing() {
    if skip_without_btrfs("a_failing_receive_reports_the_commands_stderr_as_permanent_and_leaves_nothing") {
        return;
    }
    // A real btrfs stream cut in half: `btrfs receive` creates the subvolume, then fails at the
    // early end and says why; the half-received subvolume must not survive.
    let src = LoopBtrfs::new(200);
    let data = src.subvolume("data");
    write_tree(&data, 31, 8, 256 << 10);
    let snapshot = src.snapshot("data", "s1");
    let stream = Command::new("btrfs").args(["send", "-q"]).arg(&snapshot).output().expect("btrfs send").stdout;
    assert!(stream.len() > 1 << 20, "a real stream: {} bytes", stream.len());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rdma_rpc::replication::endpoint::Endpoint::parse(&format!("dir:{}", dir.path().join("src").display()))
        .expect("store");
    let version = rdma_rpc::pb::replication::FilesystemVersion { name: "s1".into(), guid: 5, ..Default::default() };
    let spec =
        rdma_rpc::replication::endpoint::ReceiveSpec { filesystem: "data".into(), to: version, ..Default::default() };
    let mut sink = store.receive(&spec).expect("receive");
    sink.write(&stream[..stream.len() / 2]).expect("write");
    sink.finish().expect("finish");

    let dst = LoopBtrfs::new(200);
    let server = ServeProcess::start(&dst.spec(), 0);
    let source = format!("dir:{}", dir.path().join("src").display());
    let (ok, out, err) = rdma_rpc(&["replicate", &source, &server.url()]);
    assert!(!ok, "{out}");
    assert!(err.contains("replication failed (permanent)") && err.contains("btrfs receive"), "{err}");
    assert!(err.contains("ERROR"), "the tail of btrfs receive's stderr travels with the error: {err}");
    assert!(dst.listing().is_empty(), "the half-received subvolume was deleted: {:?}", dst.listing());
}
