//! The demo's generated dataset: a `dir:` stream store holding one filesystem, `demo`, with a full
//! snapshot stream and three incrementals of pseudo-random (incompressible) bytes, written through
//! the store's own receive path so they carry real metadata and checksums; and the check that a
//! replica holds exactly the same streams.

use std::io::Read;
use std::path::Path;

use crate::pb::replication::FilesystemVersion;
use crate::replication::endpoint::{Endpoint, ReceiveSpec};
use crate::replication::error::{ReplicationError, Result};

/// The filesystem name in the demo's stores.
pub const FILESYSTEM: &str = "demo";

/// Snapshot names and sizes: half the dataset in the full stream, the rest in three incrementals.
pub fn snapshots(total_mib: u64) -> Vec<(String, u64)> {
    let full = total_mib / 2;
    let incremental = (total_mib - full) / 3;
    let mut out = vec![("s1".to_string(), full << 20)];
    out.extend((2..=4).map(|i| (format!("s{i}"), incremental << 20)));
    out
}

/// xorshift64*: fast, deterministic filler (about 3 GB/s), not for cryptography.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for word in buf.chunks_exact_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
}

/// Writes the dataset into a `dir:` store at `root` (blocking).
pub fn generate(root: &Path, total_mib: u64) -> Result<u64> {
    let store = Endpoint::parse(&format!("dir:{}", root.display()))?;
    let mut previous: Option<FilesystemVersion> = None;
    let mut written = 0;
    for (index, (name, size)) in snapshots(total_mib).into_iter().enumerate() {
        let guid = 0x5eed_0000_0000_0000 | (index as u64 + 1);
        let version = FilesystemVersion {
            r#type: 0,
            name: name.clone(),
            guid,
            create_txg: index as u64 + 1,
            creation: format!("2026-11-22T00:0{index}:00Z"),
        };
        let spec = ReceiveSpec {
            filesystem: FILESYSTEM.into(),
            to: version.clone(),
            from: previous.clone(),
            resume_offset: 0,
            clear_resume: true,
            prefix_crc: None,
        };
        let mut sink = store.receive(&spec)?;
        let mut state = guid;
        let mut block = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = block.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            fill(&mut state, &mut block[..n]);
            sink.write(&block[..n])?;
            left -= n as u64;
        }
        sink.finish()?;
        written += size;
        previous = Some(version);
    }
    Ok(written)
}

fn crc_of_file(path: &Path) -> Result<(u64, u32)> {
    let mut file =
        std::fs::File::open(path).map_err(|err| ReplicationError::io(format!("opening {}", path.display()), err))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut len, mut crc) = (0u64, 0u32);
    loop {
        let n = file.read(&mut buf).map_err(|err| ReplicationError::io(format!("reading {}", path.display()), err))?;
        if n == 0 {
            return Ok((len, crc));
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        len += n as u64;
    }
}

/// Checks that `replica` holds every stream of `source`, byte for byte (length and CRC32C of each
/// stream file, read back from disk), and no partial stream. Returns the bytes compared.
pub fn verify(source: &Path, replica: &Path, total_mib: u64) -> Result<u64> {
    let mut compared = 0;
    for (name, size) in snapshots(total_mib) {
        let file = format!("{FILESYSTEM}/{name}.stream");
        let expected = crc_of_file(&source.join(&file))?;
        let actual = crc_of_file(&replica.join(&file))?;
        if expected != actual || expected.0 != size {
            return Err(ReplicationError::Conflict(format!(
                "replica of {FILESYSTEM}@{name} differs: {} bytes crc {:#010x}, source {} bytes crc {:#010x}",
                actual.0, actual.1, expected.0, expected.1
            )));
        }
        compared += size;
    }
    let leftovers = std::fs::read_dir(replica.join(FILESYSTEM))
        .map_err(|err| ReplicationError::io("listing the replica", err))?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
        .count();
    if leftovers > 0 {
        return Err(ReplicationError::Conflict(format!("{leftovers} partial stream(s) left in the replica")));
    }
    Ok(compared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_streams_are_deterministic_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        assert_eq!(generate(&a, 8).expect("generate"), 7 << 20);
        generate(&b, 8).expect("generate");
        assert_eq!(verify(&a, &b, 8).expect("same"), 7 << 20);
        let stream = b.join("demo/s3.stream");
        let mut bytes = std::fs::read(&stream).expect("read");
        bytes[1000] ^= 1;
        std::fs::write(&stream, bytes).expect("write");
        assert!(verify(&a, &b, 8).is_err(), "a flipped bit is found");
    }
}
