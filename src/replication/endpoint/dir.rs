//! `dir:DIR`, a stream store: `DIR/FS/SNAP.stream` plus `SNAP.meta` (a `StoredStream` message:
//! the versions, size and CRC32C). A receive writes `SNAP.stream.partial` and `SNAP.meta.partial`
//! and renames them into place only after the whole stream verified, so a listed snapshot is
//! always complete; an interrupted receive leaves a partial stream that resumes by byte offset
//! (the receiver reports a [`ByteToken`] with the CRC32C of what it holds).

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
const PARTIAL: &str = ".partial";

/// A directory of snapshot streams.
#[derive(Debug)]
pub struct DirEndpoint {
    root: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ReplicationError {
    let context = context.into();
    move |err| ReplicationError::io(context, err)
}

fn read_meta(path: &Path) -> Result<StoredStream> {
    let bytes = fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    StoredStream::decode(&bytes[..])
        .map_err(|err| ReplicationError::Conflict(format!("{} is not a stream record: {err}", path.display())))
}

fn write_meta(path: &Path, meta: &StoredStream) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    file.write_all(&meta.encode_to_vec())
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("renaming {}", tmp.display())))
}

/// CRC32C of a file's first `len` bytes.
fn crc_of_prefix(path: &Path, len: u64) -> Result<u32> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut reader = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0;
    loop {
        let n = reader.read(&mut buf).map_err(io(format!("reading {}", path.display())))?;
        if n == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
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

    fn fs_dir(&self, filesystem: &str) -> PathBuf {
        self.root.join(filesystem)
    }

    fn metas(&self, filesystem: &str, suffix: &str) -> Result<Vec<(PathBuf, StoredStream)>> {
        let dir = self.fs_dir(filesystem);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(ReplicationError::io(format!("listing {}", dir.display()), err)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(io(format!("listing {}", dir.display())))?.path();
            if path.to_string_lossy().ends_with(suffix) {
                out.push((path.clone(), read_meta(&path)?));
            }
        }
        Ok(out)
    }

    fn partial(&self, filesystem: &str) -> Result<Option<(PathBuf, StoredStream)>> {
        Ok(self.metas(filesystem, &format!("{META}{PARTIAL}"))?.into_iter().next())
    }

    fn walk(&self, dir: &Path, depth: usize, out: &mut Vec<Filesystem>) -> Result<()> {
        let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
        let mut holds_streams = false;
        for entry in entries {
            let entry = entry.map_err(io(format!("listing {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && depth < 8 {
                self.walk(&entry.path(), depth + 1, out)?;
            } else if name.ends_with(META) || name.ends_with(&format!("{META}{PARTIAL}")) {
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

    fn resume_token(&self, filesystem: &str) -> Result<Option<String>> {
        let Some((meta_path, meta)) = self.partial(filesystem)? else { return Ok(None) };
        let stream = PathBuf::from(
            meta_path.to_string_lossy().replace(&format!("{META}{PARTIAL}"), &format!("{STREAM}{PARTIAL}")),
        );
        let len = fs::metadata(&stream).map(|m| m.len()).unwrap_or(0);
        let to_guid = meta.to.as_ref().map_or(0, |v| v.guid);
        let from_guid = meta.from.as_ref().map_or(0, |v| v.guid);
        let prefix_crc = crc_of_prefix(&stream, len)?;
        Ok(Some(ByteToken { to_guid, from_guid, offset: len, prefix_crc }.encode()))
    }

    pub(super) fn filesystems(&self) -> Result<Vec<Filesystem>> {
        let mut out = Vec::new();
        self.walk(&self.root, 0, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    pub(super) fn versions(&self, filesystem: &str) -> Result<Vec<FilesystemVersion>> {
        let mut versions: Vec<FilesystemVersion> =
            self.metas(filesystem, META)?.into_iter().filter_map(|(_, meta)| meta.to).collect();
        versions.sort_by(|a, b| (a.create_txg, &a.name).cmp(&(b.create_txg, &b.name)));
        Ok(versions)
    }

    fn stored(&self, filesystem: &str, to: &FilesystemVersion) -> Result<(PathBuf, StoredStream)> {
        self.metas(filesystem, META)?
            .into_iter()
            .find(|(_, meta)| meta.to.as_ref().is_some_and(|v| v.guid == to.guid))
            .map(|(path, meta)| (path.with_extension("stream"), meta))
            .ok_or_else(|| ReplicationError::NotFound(format!("no stored stream for {filesystem}@{} here", to.name)))
    }

    pub(super) fn send(&self, spec: &SendSpec) -> Result<SendStream> {
        let (path, meta) = self.stored(&spec.filesystem, &spec.to)?;
        if !same_version(meta.from.as_ref(), spec.from.as_ref()) {
            let stored =
                meta.from.as_ref().map_or("a full stream".to_string(), |v| format!("incremental from @{}", v.name));
            return Err(ReplicationError::Conflict(format!(
                "{}@{} is stored as {stored}; a dir: store can only send streams as it received them",
                spec.filesystem, spec.to.name
            )));
        }
        let mut file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let token = spec.resume_token.as_deref().and_then(ByteToken::parse).transpose()?;
        let (start_offset, used_token) = match token {
            Some(token) if token.to_guid == spec.to.guid && token.offset <= meta.size => {
                skip_verified_prefix(&mut file, token.offset, token.prefix_crc)?;
                (token.offset, true)
            }
            _ => (0, false),
        };
        Ok(SendStream { reader: Box::new(file), start_offset, used_token, child: None })
    }

    pub(super) fn estimate(&self, spec: &SendSpec) -> Result<u64> {
        Ok(self.stored(&spec.filesystem, &spec.to)?.1.size)
    }

    pub(super) fn receive(&self, spec: &ReceiveSpec) -> Result<Box<dyn StreamSink>> {
        let dir = self.fs_dir(&spec.filesystem);
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        if self.versions(&spec.filesystem)?.iter().any(|v| v.guid == spec.to.guid) {
            return Err(ReplicationError::Conflict(format!("{}@{} is already here", spec.filesystem, spec.to.name)));
        }
        let base = dir.join(&spec.to.name);
        let stream_path = PathBuf::from(format!("{}{STREAM}{PARTIAL}", base.display()));
        let meta_path = PathBuf::from(format!("{}{META}{PARTIAL}", base.display()));
        let meta = StoredStream { to: Some(spec.to.clone()), from: spec.from.clone(), size: 0, crc32c: 0 };
        let (file, crc) = if spec.resume_offset > 0 {
            let held = self.partial(&spec.filesystem)?.filter(|(path, held)| {
                *path == meta_path
                    && held.to.as_ref().map(|v| v.guid) == Some(spec.to.guid)
                    && same_version(held.from.as_ref(), spec.from.as_ref())
            });
            if held.is_none() {
                return Err(ReplicationError::Conflict(format!(
                    "asked to resume {}@{} at byte {}, but no matching partial stream is here",
                    spec.filesystem, spec.to.name, spec.resume_offset
                )));
            }
            let mut file = OpenOptions::new()
                .write(true)
                .open(&stream_path)
                .map_err(io(format!("opening {}", stream_path.display())))?;
            let len = file.metadata().map_err(io("stat"))?.len();
            if len < spec.resume_offset {
                return Err(ReplicationError::Conflict(format!(
                    "the partial stream has {len} bytes, not {}",
                    spec.resume_offset
                )));
            }
            file.set_len(spec.resume_offset).map_err(io("truncating the partial stream"))?;
            file.seek(SeekFrom::End(0)).map_err(io("seeking"))?;
            (file, crc_of_prefix(&stream_path, spec.resume_offset)?)
        } else {
            for (path, _) in self.metas(&spec.filesystem, &format!("{META}{PARTIAL}"))? {
                let stream = PathBuf::from(path.to_string_lossy().replace(META, STREAM));
                tracing::info!(partial = %stream.display(), "discarding an earlier partial stream");
                let _ = fs::remove_file(&stream);
                let _ = fs::remove_file(&path);
            }
            write_meta(&meta_path, &meta)?;
            (File::create(&stream_path).map_err(io(format!("creating {}", stream_path.display())))?, 0)
        };
        Ok(Box::new(DirSink { file, crc, size: spec.resume_offset, stream_path, meta_path, base, meta }))
    }

    pub(super) fn destroy(&self, filesystem: &str, version: &FilesystemVersion) -> Result<()> {
        let base = self.fs_dir(filesystem).join(&version.name);
        fs::remove_file(format!("{}{STREAM}", base.display()))
            .map_err(io(format!("removing {}{STREAM}", base.display())))?;
        fs::remove_file(format!("{}{META}", base.display())).map_err(io(format!("removing {}{META}", base.display())))
    }
}

struct DirSink {
    file: File,
    crc: u32,
    size: u64,
    stream_path: PathBuf,
    meta_path: PathBuf,
    base: PathBuf,
    meta: StoredStream,
}

impl StreamSink for DirSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file.write_all(data).map_err(io(format!("writing {}", self.stream_path.display())))?;
        self.crc = crc32c::crc32c_append(self.crc, data);
        self.size += data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.file.sync_all().map_err(io(format!("syncing {}", self.stream_path.display())))?;
        let stream = PathBuf::from(format!("{}{STREAM}", self.base.display()));
        fs::rename(&self.stream_path, &stream).map_err(io(format!("renaming {}", self.stream_path.display())))?;
        self.meta.size = self.size;
        self.meta.crc32c = self.crc;
        write_meta(&PathBuf::from(format!("{}{META}", self.base.display())), &self.meta)?;
        let _ = fs::remove_file(&self.meta_path);
        Ok(())
    }
}
