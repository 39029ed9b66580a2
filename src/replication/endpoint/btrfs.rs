//! `btrfs:DIR`: read-only subvolumes named `FS@SNAP` directly in DIR. A snapshot's GUID is the
//! first 64 bits of its UUID; a received snapshot carries the sender's UUID as its "Received
//! UUID", so the same snapshot has the same GUID on both sides and the newest common one is found
//! by GUID, as zrepl does for ZFS. `btrfs send` cannot resume: an interrupted receive leaves a
//! writable subvolume without a received UUID, which the next receive deletes before it starts
//! that snapshot again (and says so).

use std::path::{Path, PathBuf};

use super::{ChildInput, ReceiveSpec, SendSpec, SendStream, StreamSink, guid_of_uuid, skip_verified_prefix};
use crate::pb::replication::{Filesystem, FilesystemVersion};
use crate::replication::error::{ReplicationError, Result};
use crate::replication::process::CommandLine;
use crate::replication::resume::ByteToken;

/// Subvolume snapshots in one directory of a btrfs filesystem.
#[derive(Debug)]
pub struct BtrfsEndpoint {
    dir: PathBuf,
}

/// What `btrfs subvolume show` says about a subvolume.
#[derive(Debug, Default)]
struct SubvolumeInfo {
    uuid: String,
    received_uuid: Option<String>,
    generation_at_creation: u64,
    creation: String,
    readonly: bool,
}

fn parse_show(text: &str) -> SubvolumeInfo {
    let mut info = SubvolumeInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(':') else { continue };
        let value = value.trim();
        match key.trim() {
            "UUID" => info.uuid = value.to_string(),
            "Received UUID" if value != "-" => info.received_uuid = Some(value.to_string()),
            "Gen at creation" => info.generation_at_creation = value.parse().unwrap_or(0),
            "Creation time" => info.creation = value.to_string(),
            "Flags" => info.readonly = value.split(|c: char| c == ',' || c.is_whitespace()).any(|f| f == "readonly"),
            _ => {}
        }
    }
    info
}

impl BtrfsEndpoint {
    /// Snapshots in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        BtrfsEndpoint { dir }
    }

    /// btrfs filesystem names are single components: `btrfs receive` names the subvolume after the
    /// stream, in the receive directory itself.
    fn check_flat(filesystem: &str) -> Result<()> {
        if filesystem.contains('/') {
            return Err(ReplicationError::InvalidName {
                name: filesystem.to_string(),
                reason: "btrfs filesystem names have no `/` (snapshots live directly in the directory)",
            });
        }
        Ok(())
    }

    fn path_of(&self, filesystem: &str, snapshot: &str) -> PathBuf {
        self.dir.join(format!("{filesystem}@{snapshot}"))
    }

    fn show(&self, path: &Path) -> Result<SubvolumeInfo> {
        let text =
            CommandLine::new("btrfs", ["subvolume".into(), "show".into(), path.display().to_string()]).output()?;
        Ok(parse_show(&text))
    }

    /// `FS@SNAP` entries of the directory.
    fn entries(&self) -> Result<Vec<(String, String)>> {
        let entries = std::fs::read_dir(&self.dir).map_err(|err| {
            ReplicationError::io(format!("listing {} (is it a btrfs directory?)", self.dir.display()), err)
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((fs, snap)) = name.split_once('@')
                && entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
                && crate::replication::names::check_filesystem(fs).is_ok()
                && crate::replication::names::check_snapshot(snap).is_ok()
            {
                out.push((fs.to_string(), snap.to_string()));
            }
        }
        Ok(out)
    }

    pub(super) fn filesystems(&self) -> Result<Vec<Filesystem>> {
        let mut names: Vec<String> = self.entries()?.into_iter().map(|(fs, _)| fs).collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|path| Filesystem { path, resume_token: String::new(), is_placeholder: false })
            .collect())
    }

    pub(super) fn versions(&self, filesystem: &str) -> Result<Vec<FilesystemVersion>> {
        let mut versions = Vec::new();
        for (fs, snap) in self.entries()?.into_iter().filter(|(fs, _)| fs == filesystem) {
            let info = self.show(&self.path_of(&fs, &snap))?;
            if !info.readonly {
                continue; // a writable subvolume is no snapshot (or an interrupted receive)
            }
            let Some(guid) = guid_of_uuid(info.received_uuid.as_deref().unwrap_or(&info.uuid)) else { continue };
            versions.push(FilesystemVersion {
                r#type: 0,
                name: snap,
                guid,
                create_txg: info.generation_at_creation,
                creation: info.creation,
            });
        }
        versions.sort_by(|a, b| (a.create_txg, &a.name).cmp(&(b.create_txg, &b.name)));
        Ok(versions)
    }

    fn send_command(&self, spec: &SendSpec) -> CommandLine {
        let mut args = vec!["send".to_string(), "-q".to_string()];
        if let Some(from) = &spec.from {
            args.extend(["-p".to_string(), self.path_of(&spec.filesystem, &from.name).display().to_string()]);
        }
        args.push(self.path_of(&spec.filesystem, &spec.to.name).display().to_string());
        CommandLine::new("btrfs", args)
    }

    pub(super) fn send(&self, spec: &SendSpec) -> Result<SendStream> {
        Self::check_flat(&spec.filesystem)?;
        let (child, mut stdout) = self.send_command(spec).spawn_reader()?;
        // btrfs send cannot start in the middle; a byte resume (into a dir: store) regenerates
        // the stream and proves the prefix is the same before continuing.
        let token = spec.resume_token.as_deref().and_then(ByteToken::parse).transpose()?;
        let (start_offset, used_token) = match token {
            Some(token) if token.to_guid == spec.to.guid => {
                skip_verified_prefix(&mut stdout, token.offset, token.prefix_crc)?;
                (token.offset, true)
            }
            _ => (0, false),
        };
        Ok(SendStream { reader: Box::new(stdout), start_offset, used_token, child: Some(child) })
    }

    pub(super) fn estimate(&self, spec: &SendSpec) -> Result<u64> {
        if spec.from.is_some() {
            return Ok(0); // unknown without running the send
        }
        let path = self.path_of(&spec.filesystem, &spec.to.name);
        let text = CommandLine::new("du", ["-sb".to_string(), path.display().to_string()]).output()?;
        Ok(text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0))
    }

    pub(super) fn receive(&self, spec: &ReceiveSpec) -> Result<Box<dyn StreamSink>> {
        Self::check_flat(&spec.filesystem)?;
        if spec.resume_offset != 0 {
            return Err(ReplicationError::Conflict("btrfs receive cannot resume a stream part-way".into()));
        }
        let target = self.path_of(&spec.filesystem, &spec.to.name);
        if target.exists() {
            let info = self.show(&target)?;
            if info.readonly && info.received_uuid.is_some() {
                return Err(ReplicationError::Conflict(format!("{} was already received", target.display())));
            }
            tracing::warn!(
                subvolume = %target.display(),
                "deleting the partial subvolume of an interrupted receive: btrfs send cannot resume, so this \
                 snapshot starts again from its first byte"
            );
            CommandLine::new("btrfs", ["subvolume".into(), "delete".into(), target.display().to_string()]).output()?;
        }
        // -e: stop at the stream's end marker; -C: chroot into the directory, so a stream from the
        // network cannot name paths outside it.
        let command =
            CommandLine::new("btrfs", ["receive".into(), "-e".into(), "-C".into(), self.dir.display().to_string()]);
        let (child, stdin) = command.spawn_writer()?;
        let input = ChildInput::new(child, stdin, "btrfs receive");
        Ok(Box::new(BtrfsSink { input, target, to_guid: spec.to.guid, finished: false }))
    }

    pub(super) fn destroy(&self, filesystem: &str, version: &FilesystemVersion) -> Result<()> {
        let path = self.path_of(filesystem, &version.name);
        CommandLine::new("btrfs", ["subvolume".into(), "delete".into(), path.display().to_string()]).output().map(drop)
    }
}

/// Feeds `btrfs receive`. Dropped unfinished, it kills the receive and deletes the subvolume it
/// was creating — never a complete replica (read-only with a received UUID), so a stale sink
/// cannot destroy a snapshot another receive finished meanwhile.
struct BtrfsSink {
    input: ChildInput,
    target: PathBuf,
    to_guid: u64,
    finished: bool,
}

/// Whether `path` is a complete received snapshot, and of which GUID.
fn received_guid(path: &Path) -> Option<u64> {
    let text =
        CommandLine::new("btrfs", ["subvolume".into(), "show".into(), path.display().to_string()]).output().ok()?;
    let info = parse_show(&text);
    if info.readonly { info.received_uuid.as_deref().and_then(guid_of_uuid) } else { None }
}

impl StreamSink for BtrfsSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.input.write(data)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.input.finish()?;
        match received_guid(&self.target) {
            Some(guid) if guid == self.to_guid => {
                self.finished = true;
                Ok(())
            }
            other => Err(ReplicationError::Conflict(format!(
                "`btrfs receive` succeeded but {} is not the snapshot sent (received GUID {other:?}, expected {:#x}): \
                 did the stream name another subvolume?",
                self.target.display(),
                self.to_guid
            ))),
        }
    }
}

impl Drop for BtrfsSink {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.input.kill();
        if !self.target.exists() || received_guid(&self.target).is_some() {
            return;
        }
        let path = self.target.display().to_string();
        match CommandLine::new("btrfs", ["subvolume".into(), "delete".into(), path.clone()]).output() {
            Ok(_) => tracing::info!(subvolume = %path, "aborted receive: partial subvolume deleted"),
            Err(err) => {
                tracing::warn!(subvolume = %path, %err, "aborted receive: could not delete the partial subvolume")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subvolume_show() {
        let text = "data@s1\n\tName: \t\t\tdata@s1\n\tUUID: \t\t\taabca1e0-c907-1844-90a9-f0e9db17fc39\n\
                    \tReceived UUID: \t\t-\n\tCreation time: \t\t2026-11-22 07:08:05 +0000\n\tGeneration: \t\t7\n\
                    \tGen at creation: \t7\n\tFlags: \t\t\treadonly\n";
        let info = parse_show(text);
        assert_eq!(guid_of_uuid(&info.uuid), Some(0xaabc_a1e0_c907_1844));
        assert!(info.readonly && info.received_uuid.is_none());
        assert_eq!(info.generation_at_creation, 7);
        assert_eq!(info.creation, "2026-11-22 07:08:05 +0000");
    }

    #[test]
    fn send_commands_are_argument_vectors() {
        let endpoint = BtrfsEndpoint::new("/mnt/snaps".into());
        let version = |name: &str| FilesystemVersion { name: name.into(), ..Default::default() };
        let spec =
            SendSpec { filesystem: "data".into(), from: Some(version("s1")), to: version("s2"), ..Default::default() };
        assert_eq!(
            endpoint.send_command(&spec).args(),
            ["send", "-q", "-p", "/mnt/snaps/data@s1", "/mnt/snaps/data@s2"]
        );
    }
}
