//! Endpoints: where snapshots come from and go to.
//!
//! - `btrfs:DIR`: read-only subvolumes named `FS@SNAP` directly in DIR (`btrfs subvolume snapshot
//!   -r data DIR/data@2026-11-22`); sent with `btrfs send [-p]`, received with `btrfs receive DIR`.
//! - `zfs:DATASET`: the filesystems under DATASET (`zfs:tank` holds `tank/home`, named `home` on
//!   the wire); `zfs send [-w] [-i] / -t TOKEN`, `zfs receive [-s] [-F]`.
//! - `dir:DIR`: a stream store. Each received stream is a file `DIR/FS/SNAP.stream` with a
//!   `SNAP.meta` beside it; a partial one (`.partial`) resumes by byte offset. It is also a
//!   source: stored streams are sent as they were received.
//!
//! Endpoint methods block (they run commands and file IO); async callers run them on the blocking
//! pool. Names are validated before they reach a command or a path.

mod btrfs;
mod dir;
mod zfs;

use std::io::Read;

pub use btrfs::BtrfsEndpoint;
pub use dir::DirEndpoint;
pub use zfs::ZfsEndpoint;

use super::error::{ReplicationError, Result};
use super::process::Running;
use crate::pb::replication::{DestroySnapshotRes, Filesystem, FilesystemVersion};

/// What to send: one step of a plan.
#[derive(Debug, Clone, Default)]
pub struct SendSpec {
    /// Filesystem name (relative to the endpoint).
    pub filesystem: String,
    /// Incremental base; `None` for a full stream.
    pub from: Option<FilesystemVersion>,
    /// The snapshot to send.
    pub to: FilesystemVersion,
    /// A resume token the receiver reported for this step, if any.
    pub resume_token: Option<String>,
    /// ZFS raw send (`-w`): encrypted data stays encrypted; never compressed again.
    pub raw: bool,
}

/// A stream being produced.
pub struct SendStream {
    /// The stream's bytes, from `start_offset` on.
    pub reader: Box<dyn Read + Send>,
    /// Offset of the first byte `reader` yields (non-zero when resuming by byte offset).
    pub start_offset: u64,
    /// Whether the resume token was used (zrepl's `SendRes.UsedResumeToken`).
    pub used_token: bool,
    /// The child producing it, if any; waited for at the end so its failure is seen.
    pub child: Option<Running>,
}

impl std::fmt::Debug for SendStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendStream")
            .field("start_offset", &self.start_offset)
            .field("used_token", &self.used_token)
            .finish()
    }
}

impl SendStream {
    /// Waits for the producing command, if any: a non-zero exit fails the transfer even when its
    /// output looked complete.
    pub fn finish(self) -> Result<()> {
        drop(self.reader);
        self.child.map_or(Ok(()), Running::wait)
    }
}

/// What to receive.
#[derive(Debug, Clone, Default)]
pub struct ReceiveSpec {
    /// Filesystem name (relative to the endpoint).
    pub filesystem: String,
    /// The snapshot the stream creates.
    pub to: FilesystemVersion,
    /// Its incremental base, if any.
    pub from: Option<FilesystemVersion>,
    /// Where the stream starts (byte resume of a partial `dir:` stream), else 0.
    pub resume_offset: u64,
    /// Discard partial state of an earlier attempt first.
    pub clear_resume: bool,
    /// With `resume_offset > 0`: the CRC32C of the prefix the sender verified.
    pub prefix_crc: Option<u32>,
}

/// Where a received stream goes. Dropping it without `finish` aborts: partial state that could be
/// mistaken for a complete snapshot is removed (a resumable partial stream is kept).
pub trait StreamSink: Send {
    /// Applies the next verified bytes.
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// The stream ended and verified: make the snapshot final.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Feeds a receiving child (`btrfs receive`, `zfs receive`) through its stdin.
pub(crate) struct ChildInput {
    child: Option<Running>,
    stdin: Option<std::process::ChildStdin>,
    what: &'static str,
}

impl ChildInput {
    pub(crate) fn new(child: Running, stdin: std::process::ChildStdin, what: &'static str) -> Self {
        ChildInput { child: Some(child), stdin: Some(stdin), what }
    }

    /// Writes to the child; if it died, fails with its exit status and stderr tail.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(ReplicationError::stream(0, format!("`{}` already ended", self.what)));
        };
        if let Err(err) = stdin.write_all(data) {
            self.stdin = None;
            if let Some(child) = self.child.take() {
                child.wait()?;
            }
            return Err(ReplicationError::io(format!("writing to `{}`", self.what), err));
        }
        Ok(())
    }

    /// Closes the child's input and waits for it to succeed.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.stdin = None;
        self.child.take().map_or(Ok(()), Running::wait)
    }

    /// Kills the child if it still runs.
    pub(crate) fn kill(&mut self) {
        self.stdin = None;
        if let Some(child) = self.child.take() {
            child.kill();
        }
    }
}

/// A source or target of snapshots.
#[derive(Debug)]
pub enum Endpoint {
    /// btrfs subvolumes.
    Btrfs(BtrfsEndpoint),
    /// ZFS datasets.
    Zfs(ZfsEndpoint),
    /// A directory of stream files.
    Dir(DirEndpoint),
}

impl Endpoint {
    /// Parses `btrfs:/mnt/pool/snaps`, `zfs:tank/backup` or `dir:/srv/streams`.
    pub fn parse(spec: &str) -> Result<Endpoint> {
        let invalid =
            |reason: &str| ReplicationError::InvalidEndpoint { spec: spec.to_string(), reason: reason.to_string() };
        let (kind, rest) = spec
            .split_once(':')
            .ok_or_else(|| invalid("write KIND:WHERE, e.g. btrfs:/mnt/snaps, zfs:tank/backup or dir:/srv/streams"))?;
        if rest.is_empty() {
            return Err(invalid("nothing after the `:`"));
        }
        match kind {
            "btrfs" => Ok(Endpoint::Btrfs(BtrfsEndpoint::new(rest.into()))),
            "zfs" => Ok(Endpoint::Zfs(ZfsEndpoint::new(rest)?)),
            "dir" => Ok(Endpoint::Dir(DirEndpoint::new(rest.into()))),
            _ => Err(invalid("unknown kind: use btrfs:, zfs: or dir:")),
        }
    }

    /// "btrfs", "zfs" or "dir".
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Btrfs(_) => "btrfs",
            Endpoint::Zfs(_) => "zfs",
            Endpoint::Dir(_) => "dir",
        }
    }

    /// The filesystems here, each with the resume token of a partial receive.
    pub fn filesystems(&self) -> Result<Vec<Filesystem>> {
        match self {
            Endpoint::Btrfs(e) => e.filesystems(),
            Endpoint::Zfs(e) => e.filesystems(),
            Endpoint::Dir(e) => e.filesystems(),
        }
    }

    /// Complete snapshots of `filesystem`, oldest first. Empty if the filesystem does not exist.
    pub fn versions(&self, filesystem: &str) -> Result<Vec<FilesystemVersion>> {
        super::names::check_filesystem(filesystem)?;
        match self {
            Endpoint::Btrfs(e) => e.versions(filesystem),
            Endpoint::Zfs(e) => e.versions(filesystem),
            Endpoint::Dir(e) => e.versions(filesystem),
        }
    }

    /// Starts producing a stream.
    pub fn send(&self, spec: &SendSpec) -> Result<SendStream> {
        check_spec(&spec.filesystem, &spec.to, spec.from.as_ref())?;
        match self {
            Endpoint::Btrfs(e) => e.send(spec),
            Endpoint::Zfs(e) => e.send(spec),
            Endpoint::Dir(e) => e.send(spec),
        }
    }

    /// The size a send would have, 0 if unknown.
    pub fn estimate(&self, spec: &SendSpec) -> Result<u64> {
        check_spec(&spec.filesystem, &spec.to, spec.from.as_ref())?;
        match self {
            Endpoint::Btrfs(e) => e.estimate(spec),
            Endpoint::Zfs(e) => e.estimate(spec),
            Endpoint::Dir(e) => e.estimate(spec),
        }
    }

    /// Starts receiving a stream.
    pub fn receive(&self, spec: &ReceiveSpec) -> Result<Box<dyn StreamSink>> {
        check_spec(&spec.filesystem, &spec.to, spec.from.as_ref())?;
        match self {
            Endpoint::Btrfs(e) => e.receive(spec),
            Endpoint::Zfs(e) => e.receive(spec),
            Endpoint::Dir(e) => e.receive(spec),
        }
    }

    /// Destroys snapshots; the result of each is reported separately.
    pub fn destroy(&self, filesystem: &str, versions: &[FilesystemVersion]) -> Result<Vec<DestroySnapshotRes>> {
        super::names::check_filesystem(filesystem)?;
        Ok(versions
            .iter()
            .map(|version| {
                let result = super::names::check_snapshot(&version.name).and_then(|()| match self {
                    Endpoint::Btrfs(e) => e.destroy(filesystem, version),
                    Endpoint::Zfs(e) => e.destroy(filesystem, version),
                    Endpoint::Dir(e) => e.destroy(filesystem, version),
                });
                DestroySnapshotRes {
                    snapshot: Some(version.clone()),
                    error: result.err().map(|err| err.to_string()).unwrap_or_default(),
                }
            })
            .collect())
    }
}

fn check_spec(filesystem: &str, to: &FilesystemVersion, from: Option<&FilesystemVersion>) -> Result<()> {
    super::names::check_filesystem(filesystem)?;
    super::names::check_snapshot(&to.name)?;
    from.map_or(Ok(()), |from| super::names::check_snapshot(&from.name))
}

/// Reads and discards `offset` bytes of a regenerated stream, checking that they are the bytes the
/// receiver holds (CRC32C), so a byte resume never splices two different streams.
pub(crate) fn skip_verified_prefix(reader: &mut dyn Read, offset: u64, prefix_crc: u32) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut left, mut crc) = (offset, 0u32);
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n =
            reader.read(&mut buf[..want]).map_err(|err| ReplicationError::io("reading the stream to resume", err))?;
        if n == 0 {
            return Err(ReplicationError::Conflict(format!(
                "cannot resume at byte {offset}: the regenerated stream is shorter"
            )));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        left -= n as u64;
    }
    if crc != prefix_crc {
        return Err(ReplicationError::Conflict(format!(
            "cannot resume at byte {offset}: the regenerated stream differs from the partial one (send it again from the start)"
        )));
    }
    Ok(())
}

/// A 64-bit GUID from a 128-bit UUID string (its first 16 hex digits).
pub(crate) fn guid_of_uuid(uuid: &str) -> Option<u64> {
    let hex: String = uuid.chars().filter(char::is_ascii_hexdigit).take(16).collect();
    (hex.len() == 16).then(|| u64::from_str_radix(&hex, 16).ok()).flatten()
}
