//! Fixtures for the replication tests: btrfs filesystems on loop devices, `rdma-rpc serve
//! --target` processes, file trees with real content, and tree digests to compare replicas.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_rdma-rpc");

/// Runs a command, panicking with its output on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|err| panic!("{program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Why btrfs on loop devices cannot be used here, if it cannot.
pub fn btrfs_unavailable() -> Option<String> {
    if sh("id", &["-u"]).trim() != "0" {
        return Some("needs root (loop devices and mount)".into());
    }
    for tool in ["mkfs.btrfs", "btrfs", "losetup", "mount"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("`{tool}` is missing: apt-get install btrfs-progs (scripts/deps does)"));
        }
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("btrfs")
        && Command::new("modprobe").arg("btrfs").status().map(|s| !s.success()).unwrap_or(true)
    {
        return Some("this kernel has no btrfs".into());
    }
    None
}

/// Prints the skip reason and returns true when btrfs tests cannot run here.
pub fn skip_without_btrfs(test: &str) -> bool {
    match btrfs_unavailable() {
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            true
        }
        None => false,
    }
}

/// A btrfs filesystem on a loop device, mounted in a temporary directory; unmounted when dropped.
pub struct LoopBtrfs {
    pub mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    pub fn new(mib: u64) -> LoopBtrfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mkdir");
        sh("truncate", &["-s", &format!("{mib}M"), image.to_str().expect("utf-8")]);
        sh("mkfs.btrfs", &["-q", "-f", image.to_str().expect("utf-8")]);
        sh("mount", &["-o", "loop", image.to_str().expect("utf-8"), mount.to_str().expect("utf-8")]);
        std::fs::create_dir(mount.join("snaps")).expect("mkdir snaps");
        LoopBtrfs { mount, _dir: dir }
    }

    pub fn snaps(&self) -> PathBuf {
        self.mount.join("snaps")
    }

    /// `btrfs:<mount>/snaps`.
    pub fn spec(&self) -> String {
        format!("btrfs:{}", self.snaps().display())
    }

    pub fn subvolume(&self, name: &str) -> PathBuf {
        let path = self.mount.join(name);
        sh("btrfs", &["subvolume", "create", path.to_str().expect("utf-8")]);
        path
    }

    /// A read-only snapshot `snaps/<fs>@<snap>` of subvolume `fs`.
    pub fn snapshot(&self, fs: &str, snap: &str) -> PathBuf {
        let target = self.snaps().join(format!("{fs}@{snap}"));
        let source = self.mount.join(fs);
        sh("btrfs", &["subvolume", "snapshot", "-r", source.to_str().expect("utf-8"), target.to_str().expect("utf-8")]);
        target
    }

    /// Names in `snaps/`.
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.snaps())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Writes `files` files of about `size` bytes of seeded pseudo-random content under `dir`, in a
/// few subdirectories, plus a symlink and an empty file.
pub fn write_tree(dir: &Path, seed: u64, files: usize, size: usize) {
    let mut state = seed | 1;
    for i in 0..files {
        let sub = dir.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&sub).expect("mkdir");
        let len = size / 2 + (state as usize % size.max(1));
        let mut data = vec![0u8; len];
        for byte in data.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        std::fs::write(sub.join(format!("f{seed}_{i}.bin")), data).expect("write");
    }
    std::fs::write(dir.join("empty"), b"").expect("write");
    let _ = std::os::unix::fs::symlink("d0", dir.join(format!("link{seed}")));
}

/// Path, kind, size and CRC32C of everything under `root`, sorted: equal digests, equal trees.
pub fn tree_digest(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").display().to_string();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            if meta.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", std::fs::read_link(&path).expect("readlink").display()));
            } else if meta.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else {
                let data = std::fs::read(&path).expect("read");
                out.push(format!("{rel} {} {:08x}", data.len(), crc32c::crc32c(&data)));
            }
        }
    }
    out.sort();
    out
}

/// `rdma-rpc serve --target SPEC` on loopback; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    pub port: u16,
    scheme: String,
    host: String,
}

impl ServeProcess {
    pub fn start(target: &str, port: u16) -> ServeProcess {
        Self::start_on("tcp", "127.0.0.1", port, target)
    }

    /// Serves on `scheme://host:port` (`rdma` with `--no-fallback`).
    pub fn start_on(scheme: &str, host: &str, port: u16, target: &str) -> ServeProcess {
        let listen = format!("{scheme}://{host}:{port}");
        let mut args = vec!["serve", "--listen", &listen, "--drain-secs", "1", "--target", target];
        if scheme == "rdma" {
            args.push("--no-fallback");
        }
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rdma-rpc serve");
        let stdout = child.stdout.take().expect("stdout");
        // The server's log goes on to this test's stderr, and is kept to explain a failed start.
        let stderr = child.stderr.take().expect("stderr");
        let (log_tx, log_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                let _ = log_tx.send(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                let log: Vec<String> = log_rx.try_iter().collect();
                panic!(
                    "serve printed no `listening on` line: {other:?}; exit: {status:?}; its stderr:\n{}",
                    log.join("\n")
                );
            }
        };
        let rest = line.strip_prefix(&format!("listening on {scheme}://{host}:")).unwrap_or_else(|| panic!("{line}"));
        let port = rest.split(' ').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{line}"));
        assert!(line.contains("rdmarpc.replication.Replication"), "{line}");
        ServeProcess { child, port, scheme: scheme.to_string(), host: host.to_string() }
    }

    pub fn url(&self) -> String {
        format!("{}://{}:{}", self.scheme, self.host, self.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rdma-rpc ARGS` to completion: (success, stdout, stderr).
pub fn rdma_rpc(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).stdin(Stdio::null()).output().expect("run rdma-rpc");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
