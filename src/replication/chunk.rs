//! Stream chunks: how a snapshot stream is cut, checksummed and checked.
//!
//! **Sending.** [`encode_chunk`] writes one `StreamChunk` item (the `Chunk` case of
//! `SendStreamItem`/`ReceiveStreamItem`, both field 2) straight into a transport buffer and reads
//! the source *into that buffer*: the data is not staged in an extra copy. The two length prefixes
//! are unknown until the read returns, so they are written as fixed five-byte varints (valid
//! protobuf: decoders accept non-minimal varints) and patched afterwards; the CRC32C field follows
//! the data (protobuf fields may come in any order). With zstd, the source is read into a scratch
//! buffer and compressed into the transport buffer, and the CRC covers the uncompressed bytes.
//!
//! **Receiving.** [`ChunkChecker`] checks each chunk independently (its offset is the next one
//! expected, its CRC32C matches, its decompressed size is what it says and within limits) and
//! keeps a running CRC32C of the transfer that the final `StreamEnd` must match. A corrupt or
//! missing chunk is reported at that chunk's offset, before its bytes are applied anywhere.

use std::io::Read;

use bytes::Bytes;

use super::error::{ReplicationError, Result};
use crate::pb::replication::{StreamChunk, StreamEnd};

/// Default bytes of stream data per chunk (zrepl uses 512 KiB frames): 1 MiB less 4 KiB, so that
/// a chunk with its framing fits the RDMA transport's 1 MiB large-buffer class.
pub const DEFAULT_CHUNK_SIZE: usize = (1 << 20) - 4096;
/// Largest chunk accepted (uncompressed), whatever the sender says.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// Encoding overhead around a chunk's data: item key and length, offset field, data key and
/// length before; CRC field and compressed-length field after.
pub const CHUNK_OVERHEAD: usize = (1 + 5) + (1 + 10) + (1 + 5) + (1 + 4) + (1 + 5);

/// A buffer a chunk is encoded into: a transport send buffer, or a `Vec` for tests.
pub trait ChunkBuffer {
    /// Bytes written so far.
    fn len(&self) -> usize;
    /// Whether nothing was written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends bytes.
    fn append(&mut self, bytes: &[u8]);
    /// Appends `n` zero bytes and returns them, to be read or compressed into.
    fn append_zeroed(&mut self, n: usize) -> &mut [u8];
    /// Keeps the first `len` bytes.
    fn truncate(&mut self, len: usize);
    /// Everything written, for back-patching.
    fn written_mut(&mut self) -> &mut [u8];
}

impl ChunkBuffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn append_zeroed(&mut self, n: usize) -> &mut [u8] {
        let start = Vec::len(self);
        self.resize(start + n, 0);
        &mut self[start..]
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
    fn written_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A five-byte varint of `value` (< 2^35), patchable in place.
fn padded_varint(value: u64) -> [u8; 5] {
    let mut out = [0u8; 5];
    for (i, byte) in out.iter_mut().enumerate() {
        let bits = ((value >> (7 * i)) & 0x7f) as u8;
        *byte = if i < 4 { bits | 0x80 } else { bits };
    }
    out
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads from `source` until `buf` holds `want` more bytes or the source ends; returns the count.
fn fill(buf: &mut [u8], source: &mut dyn Read) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// What [`encode_chunk`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedChunk {
    /// Stream bytes in the chunk (uncompressed).
    pub len: usize,
    /// Their CRC32C.
    pub crc: u32,
}

/// Reusable state of a compressing sender.
pub struct Compressor {
    scratch: Vec<u8>,
    zstd: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compressor(zstd)")
    }
}

impl Compressor {
    /// A zstd compressor at `level` (1 is fast and is what `--compress` uses).
    pub fn new(level: i32) -> std::io::Result<Self> {
        Ok(Compressor { scratch: Vec::new(), zstd: zstd::bulk::Compressor::new(level)? })
    }
}

/// Room a chunk of `data_len` bytes needs in a buffer, compressed or not.
pub fn chunk_capacity(data_len: usize, compressed: bool) -> usize {
    CHUNK_OVERHEAD + if compressed { zstd::zstd_safe::compress_bound(data_len) } else { data_len }
}

/// Encodes the chunk at stream `offset` with up to `max_data` bytes read from `source` into `buf`.
/// Returns `None`, leaving `buf` as it was, when the source had nothing left.
pub fn encode_chunk(
    buf: &mut impl ChunkBuffer,
    offset: u64,
    source: &mut dyn Read,
    max_data: usize,
    compressor: Option<&mut Compressor>,
) -> std::io::Result<Option<EncodedChunk>> {
    let start = buf.len();
    let mut head = vec![0x12];
    head.extend_from_slice(&padded_varint(0));
    let body_start = start + head.len();
    head.push(0x08);
    varint(offset, &mut head);
    head.push(0x12);
    let data_len_at = start + head.len();
    head.extend_from_slice(&padded_varint(0));
    buf.append(&head);
    let data_start = buf.len();

    let (len, crc, raw_len) = match compressor {
        None => {
            let room = buf.append_zeroed(max_data);
            let n = fill(room, source)?;
            let crc = crc32c::crc32c(&room[..n]);
            buf.truncate(data_start + n);
            (n, crc, None)
        }
        Some(compressor) => {
            compressor.scratch.resize(max_data, 0);
            let n = fill(&mut compressor.scratch, source)?;
            let raw = &compressor.scratch[..n];
            let crc = crc32c::crc32c(raw);
            let room = buf.append_zeroed(zstd::zstd_safe::compress_bound(n));
            let written = compressor.zstd.compress_to_buffer(raw, room)?;
            buf.truncate(data_start + written);
            (n, crc, Some(n))
        }
    };
    if len == 0 {
        buf.truncate(start);
        return Ok(None);
    }
    let data_len = (buf.len() - data_start) as u64;
    buf.written_mut()[data_len_at..data_len_at + 5].copy_from_slice(&padded_varint(data_len));
    let mut tail = vec![0x1d];
    tail.extend_from_slice(&crc.to_le_bytes());
    if let Some(raw_len) = raw_len {
        tail.push(0x20);
        varint(raw_len as u64, &mut tail);
    }
    buf.append(&tail);
    let body_len = (buf.len() - body_start) as u64;
    buf.written_mut()[start + 1..start + 6].copy_from_slice(&padded_varint(body_len));
    Ok(Some(EncodedChunk { len, crc }))
}

/// The `Digest` of a `StreamEnd`: the transfer's CRC32C, big-endian.
pub fn digest_bytes(crc: u32) -> Bytes {
    Bytes::copy_from_slice(&crc.to_be_bytes())
}

/// Checks the chunks of one transfer as they arrive.
#[derive(Debug)]
pub struct ChunkChecker {
    next_offset: u64,
    running_crc: u32,
    compression_allowed: bool,
}

impl ChunkChecker {
    /// A transfer whose first chunk starts at `start_offset`.
    pub fn new(start_offset: u64, compression_allowed: bool) -> Self {
        ChunkChecker { next_offset: start_offset, running_crc: 0, compression_allowed }
    }

    /// The offset the next chunk must have (= stream bytes accepted so far).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Checks one chunk and returns its uncompressed bytes.
    pub fn check(&mut self, chunk: StreamChunk) -> Result<Bytes> {
        if chunk.offset != self.next_offset {
            return Err(ReplicationError::stream(
                self.next_offset,
                format!(
                    "chunk at offset {} where {} was expected (lost or repeated chunk)",
                    chunk.offset, self.next_offset
                ),
            ));
        }
        let data = if chunk.raw_length == 0 {
            chunk.data
        } else {
            if !self.compression_allowed {
                return Err(ReplicationError::protocol(format!(
                    "compressed chunk at offset {}, but no compression was agreed",
                    chunk.offset
                )));
            }
            let raw_len = chunk.raw_length as usize;
            if raw_len > MAX_CHUNK_SIZE {
                return Err(ReplicationError::protocol(format!(
                    "chunk at offset {} of {raw_len} bytes exceeds {MAX_CHUNK_SIZE}",
                    chunk.offset
                )));
            }
            let raw = zstd::bulk::decompress(&chunk.data, raw_len)
                .map_err(|err| ReplicationError::stream(chunk.offset, format!("zstd: {err}")))?;
            if raw.len() != raw_len {
                return Err(ReplicationError::stream(chunk.offset, "compressed chunk decompressed to the wrong size"));
            }
            Bytes::from(raw)
        };
        if data.is_empty() || data.len() > MAX_CHUNK_SIZE {
            return Err(ReplicationError::protocol(format!(
                "chunk at offset {} of {} bytes",
                chunk.offset,
                data.len()
            )));
        }
        let actual = crc32c::crc32c(&data);
        if actual != chunk.crc32c {
            return Err(ReplicationError::Checksum {
                offset: chunk.offset,
                len: data.len(),
                expected: chunk.crc32c,
                actual,
            });
        }
        self.running_crc = crc32c::crc32c_append(self.running_crc, &data);
        self.next_offset += data.len() as u64;
        Ok(data)
    }

    /// Checks the end record against everything accepted.
    pub fn finish(&self, end: &StreamEnd) -> Result<()> {
        if end.total_bytes != self.next_offset {
            return Err(ReplicationError::stream(
                self.next_offset,
                format!(
                    "the sender says the stream has {} bytes; {} arrived (truncated)",
                    end.total_bytes, self.next_offset
                ),
            ));
        }
        if end.digest[..] != self.running_crc.to_be_bytes() {
            return Err(ReplicationError::stream(self.next_offset, "whole-transfer digest mismatch"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
