//! `dir:DIR`, a stream store: `DIR/FS/SNAP.stream` plus `SNAP.meta` (a `StoredStream` message:
//! the versions, size and CRC32C). A receive writes `SNAP.stream.partial` and `SNAP.meta.partial`
//! and renames them into place only after the whole stream verified, so a listed snapshot is
//! always complete; an interrupted receive leaves a partial stream that resumes by byte offset
//! (the receiver reports a [`ByteToken`] with the CRC32C of what it holds, and checks on resume
//! that it still holds exactly the prefix the sender verified). As a source, a stored stream is
//! checked against its recorded size and CRC32C while it is read, so bit rot is never forwarded
//! under fresh chunk checksums.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use super::{ReceiveSpec, SendSpec, SendStream, StreamSink, skip_verified_prefix};
use crate::pb::replication::{Filesystem, FilesystemVersion, StoredStream};
use crate::replication::error::{ReplicationError, Result};
use crate::replication::resume::ByteToken;

const STREAM: &str = ".stream";
const META: &str = ".meta";
const PARTIAL_STREAM: &str = ".stream.partial";
const PARTIAL_META: &str = ".meta.partial";

/// A directory of snapshot streams.
#[derive(Debug)]
pub struct DirEndpoint {
    root: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReplicationError {
    let context = context.into();
    move |err| ReplicationError::io(context, err)
}

/// `base` + `suffix`, where `base` is `DIR/FS/SNAP`.
fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut path = base.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

fn read_meta(path: &Path) -> Result<StoredStream> {
    let bytes = fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    StoredStream::decode(&bytes[..])
        .map_err(|err| ReplicationError::Conflict(format!("{} is not a stream record: {err}", path.display())))
}

fn write_meta(path: &Path, meta: &StoredStream) -> Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    file.write_all(&meta.encode_to_vec())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
}

/// CRC32C of a file's first `len` bytes (fewer if it is shorter), and how many were read.
fn crc_of_prefix(path: &Path, len: u64) -> Result<(u32, u64)> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut read) = (0, 0);
    loop {
        let n = reader.read(&mut buf).map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok((crc, read));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        read += n as u64;
    }
}

fn same_version(a: Option<&FilesystemVersion>, b: Option<&FilesystemVersion>) -> bool {
    a.map(|v| v.guid) == b.map(|v| v.guid)
}

impl DirEndpoint {
    /// The store at `root` (created on the first receive).
    pub fn new(root: PathBuf) -> Self {
        DirEndpoint { root }
    }

    /// `(base, record)` of every file in FS's directory ending in `suffix` (base = path without it).
    fn records(&self, filesystem: &str, suffix: &str) -> Result<Vec<(PathBuf, StoredStream)>> {
        let dir = self.root.join(filesystem);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ReplicationError::io(format!("listing {}", dir.display()), err)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io(format!("listing {}", dir.display())))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(stem) = name.strip_suffix(suffix) {
                out.push((dir.join(stem), read_meta(&path)?));
            }
        }
        Ok(out)
    }

    fn walk(&self, dir: &Path, depth: usize, out: &mut Vec<Filesystem>) -> Result<()> {
        let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
        let mut holds_streams = false;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && depth < 8 {
                self.walk(&entry.path(), depth + 1, out)?;
            } else if name.ends_with(META) || name.ends_with(PARTIAL_META) {
                holds_streams = true;
            }
        }
        if holds_streams && let Ok(relative) = dir.strip_prefix(&self.root) {
            let path = relative.to_string_lossy().into_owned();
            let resume_token = self.resume_token(&path)?.unwrap_or_default();
            out.push(Filesystem { path, resume_token, is_placeholder: false });
        }
        Ok(())
    }

    /// The token of FS's partial stream, if one is there. A partial record without its stream (a
    /// crash between the two renames of `finish`) is stale and removed.
    fn resume_token(&self, filesystem: &str) -> Result<Option<String>> {
        let Some((base, meta)) = self.records(filesystem, PARTIAL_META)?.into_iter().next() else { return Ok(None) };
        let stream = with_suffix(&base, PARTIAL_STREAM);
        let Ok(len) = fs::metadata(&stream).map(|m| m.len()) else {
            tracing::info!(record = %base.display(), "removing a partial record whose stream is gone");
            let _ = fs::remove_file(with_suffix(&base, PARTIAL_META));
            return Ok(None);
        };
        let (prefix_crc, offset) = crc_of_prefix(&stream, len)?;
        let to_guid = meta.to.as_ref().map_or(0, |v| v.guid);
        let from_guid = meta.from.as_ref().map_or(0, |v| v.guid);
        Ok(Some(ByteToken { to_guid, from_guid, offset, prefix_crc }.encode()))
    }

    pub(super) fn filesystems(&self) -> Result<Vec<Filesystem>> {
        let mut out = Vec::new();
        self.walk(&self.root, 0, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    pub(super) fn versions(&self, filesystem: &str) -> Result<Vec<FilesystemVersion>> {
        let mut versions: Vec<FilesystemVersion> =
            self.records(filesystem, META)?.into_iter().filter_map(|(_, meta)| meta.to).collect();
        versions.sort_by(|a, b| (a.create_txg, &a.name).cmp(&(b.create_txg, &b.name)));
        Ok(versions)
    }

    fn stored(&self, filesystem: &str, to: &FilesystemVersion) -> Result<(PathBuf, StoredStream)> {
        self.records(filesystem, META)?
            .into_iter()
            .find(|(_, meta)| meta.to.as_ref().is_some_and(|v| v.guid == to.guid))
            .ok_or_else(|| ReplicationError::NotFound(format!("no stored stream for {filesystem}@{} here", to.name)))
    }

    pub(super) fn send(&self, spec: &SendSpec) -> Result<SendStream> {
        let (base, meta) = self.stored(&spec.filesystem, &spec.to)?;
        if !same_version(meta.from.as_ref(), spec.from.as_ref()) {
            let stored =
                meta.from.as_ref().map_or("a full stream".to_string(), |v| format!("incremental from @{}", v.name));
            return Err(ReplicationError::Conflict(format!(
                "{}@{} is stored as {stored}; a dir: store can only send streams as it received them",
                spec.filesystem, spec.to.name
            )));
        }
        let path = with_suffix(&base, STREAM);
        let mut file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let token = spec.resume_token.as_deref().and_then(ByteToken::parse).transpose()?;
        let (start_offset, used_token, crc) = match token {
            Some(token) if token.to_guid == spec.to.guid && token.offset <= meta.size => {
                skip_verified_prefix(&mut file, token.offset, token.prefix_crc)?;
                (token.offset, true, token.prefix_crc)
            }
            _ => (0, false, 0),
        };
        let reader =
            VerifiedReader { file, path, crc, len: start_offset, expected_crc: meta.crc32c, expected_len: meta.size };
        Ok(SendStream { reader: Box::new(reader), start_offset, used_token, child: None })
    }

    pub(super) fn estimate(&self, spec: &SendSpec) -> Result<u64> {
        Ok(self.stored(&spec.filesystem, &spec.to)?.1.size)
    }

    pub(super) fn receive(&self, spec: &ReceiveSpec) -> Result<Box<dyn StreamSink>> {
        let dir = self.root.join(&spec.filesystem);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        if self.versions(&spec.filesystem)?.iter().any(|v| v.guid == spec.to.guid) {
            return Err(ReplicationError::Conflict(format!("{}@{} is already here", spec.filesystem, spec.to.name)));
        }
        let base = dir.join(&spec.to.name);
        let (stream_path, meta_path) = (with_suffix(&base, PARTIAL_STREAM), with_suffix(&base, PARTIAL_META));
        let meta = StoredStream { to: Some(spec.to.clone()), from: spec.from.clone(), size: 0, crc32c: 0 };
        let (file, crc) = if spec.resume_offset > 0 {
            let held = self.records(&spec.filesystem, PARTIAL_META)?.into_iter().any(|(held_base, held)| {
                held_base == base
                    && held.to.as_ref().map(|v| v.guid) == Some(spec.to.guid)
                    && same_version(held.from.as_ref(), spec.from.as_ref())
            });
            if !held {
                return Err(ReplicationError::Conflict(format!(
                    "asked to resume {}@{} at byte {}, but no matching partial stream is here",
                    spec.filesystem, spec.to.name, spec.resume_offset
                )));
            }
            let (crc, len) = crc_of_prefix(&stream_path, spec.resume_offset)?;
            if len != spec.resume_offset || spec.prefix_crc != Some(crc) {
                // The partial changed since the sender checked it: plan again from a new token.
                return Err(ReplicationError::stream(
                    spec.resume_offset,
                    "the partial stream is not the prefix the sender verified",
                ));
            }
            let mut file = OpenOptions::new()
                .write(true)
                .open(&stream_path)
                .map_err(io(format!("opening {}", stream_path.display())))?;
            file.set_len(spec.resume_offset).map_err(io("truncating the partial stream"))?;
            file.seek(SeekFrom::End(0)).map_err(io("seeking"))?;
            (file, crc)
        } else {
            for (stale, _) in self.records(&spec.filesystem, PARTIAL_META)? {
                tracing::info!(partial = %stale.display(), "discarding an earlier partial stream");
                let _ = fs::remove_file(with_suffix(&stale, PARTIAL_STREAM));
                let _ = fs::remove_file(with_suffix(&stale, PARTIAL_META));
            }
            write_meta(&meta_path, &meta)?;
            (File::create(&stream_path).map_err(io(format!("creating {}", stream_path.display())))?, 0)
        };
        Ok(Box::new(DirSink { file, crc, size: spec.resume_offset, base, meta }))
    }

    pub(super) fn destroy(&self, filesystem: &str, version: &FilesystemVersion) -> Result<()> {
        let base = self.root.join(filesystem).join(&version.name);
        for suffix in [STREAM, META] {
            let path = with_suffix(&base, suffix);
            fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        }
        Ok(())
    }
}

/// Reads a stored stream and fails at its end unless its size and CRC32C are the recorded ones.
struct VerifiedReader {
    file: File,
    path: PathBuf,
    crc: u32,
    len: u64,
    expected_crc: u32,
    expected_len: u64,
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        if n == 0 && (self.len, self.crc) != (self.expected_len, self.expected_crc) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is damaged: {} bytes with CRC32C {:#010x}, recorded {} bytes with {:#010x}",
                    self.path.display(),
                    self.len,
                    self.crc,
                    self.expected_len,
                    self.expected_crc
                ),
            ));
        }
        Ok(n)
    }
}

struct DirSink {
    file: File,
    crc: u32,
    size: u64,
    base: PathBuf,
    meta: StoredStream,
}

impl StreamSink for DirSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(io(format!("writing {}", with_suffix(&self.base, PARTIAL_STREAM).display())))?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.size += data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        let partial = with_suffix(&self.base, PARTIAL_STREAM);
        self.file.sync_all().map_err(io(format!("syncing {}", partial.display())))?;
        // The stream first, then its record: a crash in between leaves a stream without a record
        // (not listed; the stale partial record is dropped at the next listing and the snapshot is
        // received again), never a record without its data.
        self.meta.size = self.size;
        self.meta.crc32c = self.crc;
        let stream = with_suffix(&self.base, STREAM);
        fs::rename(&partial, &stream).map_err(io(format!("renaming {}", partial.display())))?;
        write_meta(&with_suffix(&self.base, META), &self.meta)?;
        let _ = fs::remove_file(with_suffix(&self.base, PARTIAL_META));
        Ok(())
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
