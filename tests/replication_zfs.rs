//! Replication between two real ZFS pools (Debian's zfs-fuse, pools on files): planning, a full
//! then incremental transfer through the `rdma-rpc` binary over loopback TCP, target identical to
//! the source. zfs-fuse predates resumable receive (`-s`/`-t`); that path is tested on argument
//! vectors and real tokens in `src/replication/endpoint/zfs_tests.rs` and `resume.rs`. Skips,
//! saying why, without root, /dev/fuse or zfs-fuse.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::replication::{ServeProcess, rdma_rpc, sh, tree_digest, write_tree};

fn zfs_unavailable() -> Option<String> {
    if sh("id", &["-u"]).trim() != "0" {
        return Some("needs root".into());
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    for tool in ["zfs-fuse", "zfs", "zpool"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("`{tool}` is missing: apt-get install zfs-fuse (scripts/deps does)"));
        }
    }
    None
}

const PIDFILE: &str = "/run/zfs-fuse-rdma-rpc-test.pid";

/// Starts zfs-fuse, first removing a pidfile left by a daemon that no longer runs (zfs-fuse exits
/// with status 1, saying nothing, when its pidfile exists). Returns what the start printed.
fn start_daemon() -> String {
    if let Ok(pid) = std::fs::read_to_string(PIDFILE) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", pid.trim())).unwrap_or_default();
        if comm.trim() != "zfs-fuse" {
            let _ = std::fs::remove_file(PIDFILE);
        }
    }
    match Command::new("zfs-fuse").args(["--pidfile", PIDFILE]).output() {
        Ok(out) => format!(
            "zfs-fuse exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("zfs-fuse could not start: {e}"),
    }
}

/// Starts the zfs-fuse daemon unless one answers, and waits until `zpool list` does. A daemon that
/// is running but does not answer within 5 s (e.g. one shutting down) gets a new one started.
fn ensure_daemon() {
    let answers = || Command::new("zpool").arg("list").output().map(|o| o.status.success()).unwrap_or(false);
    let running = Command::new("pgrep").args(["-x", "zfs-fuse"]).status().map(|s| s.success()).unwrap_or(false);
    let mut started = if running { String::new() } else { start_daemon() };
    let begin = Instant::now();
    let mut restarted = !running;
    while !answers() {
        if !restarted && begin.elapsed() > Duration::from_secs(5) {
            started = start_daemon();
            restarted = true;
        }
        assert!(begin.elapsed() < Duration::from_secs(30), "zfs-fuse did not come up; {started}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pool on a sparse file; destroyed when dropped.
struct Pool {
    name: String,
    _dir: tempfile::TempDir,
}

impl Pool {
    fn new(tag: &str) -> Pool {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vdev");
        sh("truncate", &["-s", "256M", file.to_str().expect("utf-8")]);
        let name = format!("rr{tag}{}", std::process::id());
        sh("zpool", &["create", &name, file.to_str().expect("utf-8")]);
        Pool { name, _dir: dir }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("zpool").args(["destroy", "-f", &self.name]).status();
    }
}

#[test]
fn zfs_full_then_incremental_between_two_pools() {
    if let Some(reason) = zfs_unavailable() {
        eprintln!("SKIPPED zfs_full_then_incremental_between_two_pools: {reason}");
        return;
    }
    ensure_daemon();
    let (src, dst) = (Pool::new("src"), Pool::new("dst"));
    let fs = format!("{}/data", src.name);
    sh("zfs", &["create", &fs]);
    sh("zfs", &["create", &format!("{}/backup", dst.name)]);
    let mount = std::path::PathBuf::from(format!("/{fs}"));
    write_tree(&mount, 11, 10, 128 << 10);
    sh("zfs", &["snapshot", &format!("{fs}@s1")]);
    let server = ServeProcess::start(&format!("zfs:{}/backup", dst.name), 0);
    let source = format!("zfs:{}", src.name);

    let (ok, out, err) = rdma_rpc(&["replicate", &source, &server.url(), "--dry-run"]);
    assert!(ok && out.contains("would send data@s1 (full)"), "{out}{err}");
    let (ok, out, err) = rdma_rpc(&["replicate", &source, &server.url()]);
    assert!(ok && out.contains("sent data@s1 (full)"), "{out}{err}");

    write_tree(&mount, 12, 6, 256 << 10);
    std::fs::remove_file(mount.join("empty")).expect("rm");
    sh("zfs", &["snapshot", &format!("{fs}@s2")]);
    let (ok, out, err) = rdma_rpc(&["replicate", &source, &server.url(), "--dry-run"]);
    assert!(ok && out.contains("would send data@s1 -> @s2 (incremental)") && !out.contains("(full)"), "{out}{err}");
    let (ok, out, err) = rdma_rpc(&["replicate", &source, &server.url()]);
    assert!(ok && out.contains("sent data@s1 -> @s2 (incremental)"), "{out}{err}");

    let replica = std::path::PathBuf::from(format!("/{}/backup/data", dst.name));
    assert_eq!(tree_digest(&replica), tree_digest(&mount), "the replica equals the source at @s2");
    let snapshots = sh("zfs", &["list", "-H", "-o", "name", "-t", "snapshot", "-r", &format!("{}/backup", dst.name)]);
    assert_eq!(snapshots.lines().count(), 2, "{snapshots}");
    let (ok, out, _) = rdma_rpc(&["replicate", &source, &server.url()]);
    assert!(ok && out.contains("up to date"), "{out}");
}
