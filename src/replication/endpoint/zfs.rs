//! `zfs:DATASET`: the filesystems under DATASET, named relative to it (`zfs:tank` → `home` for
//! `tank/home`). Snapshots are listed with `zfs get -Hp` (GUID, createtxg, creation), sent with
//! `zfs send [-w] [-i @FROM] FS@TO` or `zfs send -t TOKEN`, and received with
//! `zfs receive [-s] [-F] FS` — `-s` (resumable) where the installed ZFS has it; `-F` on
//! incrementals, so a replica whose mount changed (atime) rolls back to the common snapshot the
//! planner just verified. A resume token is decoded and its GUIDs checked against the step before
//! `send -t` runs (zrepl's rule), so a token for another snapshot is an error, not a wrong stream.

use std::sync::OnceLock;

use super::{ChildInput, ReceiveSpec, SendSpec, SendStream, StreamSink};
use crate::pb::replication::{Filesystem, FilesystemVersion};
use crate::replication::error::{ReplicationError, Result};
use crate::replication::process::CommandLine;
use crate::replication::resume::ZfsToken;

/// Datasets under one ZFS dataset.
#[derive(Debug)]
pub struct ZfsEndpoint {
    root: String,
    resumable: OnceLock<bool>,
}

fn zfs<I: IntoIterator<Item = S>, S: Into<String>>(args: I) -> CommandLine {
    CommandLine::new("zfs", args)
}

/// Whether `zfs receive` lists `-s` among its flags in its usage text.
fn usage_has_resume(usage: &str) -> bool {
    usage
        .lines()
        .filter_map(|line| line.trim().strip_prefix("receive [-"))
        .any(|flags| flags.split(']').next().is_some_and(|flags| flags.contains('s')))
}

impl ZfsEndpoint {
    /// The datasets under `root` (validated: no shell or option tricks).
    pub fn new(root: &str) -> Result<Self> {
        crate::replication::names::check_dataset(root)?;
        Ok(ZfsEndpoint { root: root.to_string(), resumable: OnceLock::new() })
    }

    fn dataset(&self, filesystem: &str) -> String {
        format!("{}/{filesystem}", self.root)
    }

    /// Whether this host's `zfs receive` can keep partial state (`-s`); zfs-fuse cannot.
    pub fn resumable(&self) -> bool {
        *self.resumable.get_or_init(|| {
            let usage = match zfs(["receive"]).output() {
                Ok(text) => text,
                Err(ReplicationError::Command { stderr_tail, .. }) => stderr_tail,
                Err(_) => String::new(),
            };
            usage_has_resume(&usage)
        })
    }

    pub(super) fn filesystems(&self) -> Result<Vec<Filesystem>> {
        let text = zfs(["list", "-H", "-o", "name", "-r", "-t", "filesystem", self.root.as_str()]).output()?;
        let prefix = format!("{}/", self.root);
        let mut out = Vec::new();
        for name in text.lines().filter_map(|line| line.strip_prefix(&prefix)) {
            let resume_token = if self.resumable() {
                let dataset = self.dataset(name);
                let value = zfs(["get", "-H", "-o", "value", "receive_resume_token", dataset.as_str()]).output()?;
                let value = value.trim();
                if value == "-" { String::new() } else { value.to_string() }
            } else {
                String::new()
            };
            out.push(Filesystem { path: name.to_string(), resume_token, is_placeholder: false });
        }
        Ok(out)
    }

    pub(super) fn versions(&self, filesystem: &str) -> Result<Vec<FilesystemVersion>> {
        let dataset = self.dataset(filesystem);
        let args = ["get", "-Hp", "-r", "-d", "1", "-o", "name,property,value", "guid,createtxg,creation", &dataset];
        let text = match zfs(args).output() {
            Ok(text) => text,
            Err(ReplicationError::Command { stderr_tail, .. }) if stderr_tail.contains("does not exist") => {
                return Ok(Vec::new());
            }
            Err(err) => return Err(err),
        };
        Ok(parse_versions(&text, &dataset))
    }

    fn send_command(&self, spec: &SendSpec) -> Result<CommandLine> {
        if let Some(token) = &spec.resume_token {
            let decoded = ZfsToken::parse(token)?;
            let from_guid = spec.from.as_ref().map_or(0, |v| v.guid);
            if decoded.to_guid != spec.to.guid || decoded.from_guid != from_guid {
                return Err(ReplicationError::Conflict(format!(
                    "the resume token is for {} (toguid {:#x}, fromguid {:#x}), not for {}@{}: clear it on the \
                     receiver (`zfs receive -A`) or let the transfer start over",
                    decoded.to_name, decoded.to_guid, decoded.from_guid, spec.filesystem, spec.to.name
                )));
            }
            return Ok(zfs(["send".to_string(), "-t".to_string(), token.clone()]));
        }
        let mut args = vec!["send".to_string()];
        if spec.raw {
            args.push("-w".into());
        }
        if let Some(from) = &spec.from {
            args.extend(["-i".into(), format!("@{}", from.name)]);
        }
        args.push(format!("{}@{}", self.dataset(&spec.filesystem), spec.to.name));
        Ok(zfs(args))
    }

    pub(super) fn send(&self, spec: &SendSpec) -> Result<SendStream> {
        let command = self.send_command(spec)?;
        let (child, stdout) = command.spawn_reader()?;
        Ok(SendStream {
            reader: Box::new(stdout),
            start_offset: 0,
            used_token: spec.resume_token.is_some(),
            child: Some(child),
        })
    }

    pub(super) fn estimate(&self, spec: &SendSpec) -> Result<u64> {
        let mut args: Vec<String> = self.send_command(spec)?.args().to_vec();
        args.insert(1, "-nvP".into());
        Ok(zfs(args).output().ok().as_deref().map_or(0, parse_estimate))
    }

    fn receive_command(&self, spec: &ReceiveSpec, resumable: bool) -> CommandLine {
        let mut args = vec!["receive".to_string()];
        if resumable {
            args.push("-s".into());
        }
        if spec.from.is_some() {
            args.push("-F".into());
        }
        args.push(self.dataset(&spec.filesystem));
        zfs(args)
    }

    pub(super) fn receive(&self, spec: &ReceiveSpec) -> Result<Box<dyn StreamSink>> {
        if spec.resume_offset != 0 {
            return Err(ReplicationError::Conflict("zfs streams resume by token, not by byte offset".into()));
        }
        let resumable = self.resumable();
        if spec.clear_resume && resumable {
            // Nothing to abort is fine; anything else shows in the receive that follows.
            let _ = zfs(["receive".to_string(), "-A".to_string(), self.dataset(&spec.filesystem)]).output();
        }
        let (child, stdin) = self.receive_command(spec, resumable).spawn_writer()?;
        Ok(Box::new(ZfsSink { input: ChildInput::new(child, stdin, "zfs receive") }))
    }

    pub(super) fn destroy(&self, filesystem: &str, version: &FilesystemVersion) -> Result<()> {
        zfs(["destroy".to_string(), format!("{}@{}", self.dataset(filesystem), version.name)]).output().map(drop)
    }
}

fn parse_versions(text: &str, dataset: &str) -> Vec<FilesystemVersion> {
    let mut versions: Vec<FilesystemVersion> = Vec::new();
    let prefix = format!("{dataset}@");
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(name), Some(property), Some(value)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let Some(snapshot) = name.strip_prefix(&prefix) else { continue };
        let index = match versions.iter().position(|v| v.name == snapshot) {
            Some(index) => index,
            None => {
                versions.push(FilesystemVersion { name: snapshot.to_string(), ..Default::default() });
                versions.len() - 1
            }
        };
        let version = &mut versions[index];
        match property {
            "guid" => version.guid = value.parse().unwrap_or(0),
            "createtxg" => version.create_txg = value.parse().unwrap_or(0),
            "creation" => version.creation = value.to_string(),
            _ => {}
        }
    }
    versions.retain(|v| v.guid != 0);
    versions.sort_by(|a, b| (a.create_txg, &a.name).cmp(&(b.create_txg, &b.name)));
    versions
}

/// The `size` line of `zfs send -nvP`.
fn parse_estimate(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.strip_prefix("size"))
        .filter_map(|rest| rest.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Feeds `zfs receive`; dropped unfinished, it kills it (ZFS discards the partial stream, or
/// keeps it for a resume token with `-s`).
struct ZfsSink {
    input: ChildInput,
}

impl StreamSink for ZfsSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.input.write(data)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.input.finish()
    }
}

impl Drop for ZfsSink {
    fn drop(&mut self) {
        self.input.kill();
    }
}

#[cfg(test)]
#[path = "zfs_tests.rs"]
mod tests;
