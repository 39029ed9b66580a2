//! The sending side of one step: a `Receive` call fed from a [`SendStream`].
//!
//! Each chunk is encoded straight into a transport send buffer (registered memory over RDMA) and
//! the source is `read(2)` into it on the blocking pool, so stream bytes are copied once, by the
//! kernel, from the pipe or page cache into the buffer the NIC or socket sends from. While one
//! chunk is on the wire the next is being read. The producer's exit status is checked *before*
//! the `StreamEnd` goes out, so a `btrfs send` that fails part-way can never look complete.

use std::time::Instant;

use super::chunk::{CHUNK_OVERHEAD, ChunkBuffer, Compressor, chunk_capacity, digest_bytes, encode_chunk};
use super::endpoint::SendStream;
use super::error::{ReplicationError, Result};
use super::limit::RateLimit;
use super::plan::Step;
use super::progress::Progress;
use super::resume::ByteToken;
use crate::pb::replication::{ReceiveReq, ReceiveStreamItem, ReplicationClient, StreamEnd, receive_stream_item};
use crate::rpc::DataBuffer;
use crate::transport::{SendBuffer, Transport};

impl<B: SendBuffer> ChunkBuffer for DataBuffer<B> {
    fn len(&self) -> usize {
        DataBuffer::len(self)
    }
    fn append(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn append_zeroed(&mut self, n: usize) -> &mut [u8] {
        DataBuffer::append_zeroed(self, n)
    }
    fn truncate(&mut self, len: usize) {
        DataBuffer::truncate(self, len);
    }
    fn written_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

/// How streams are sent.
#[derive(Debug, Clone)]
pub struct TransferOptions {
    /// Stream bytes per chunk (capped by what the connection carries in one message).
    pub chunk_size: usize,
    /// zstd-compress chunks when the receiver offers it (never for raw sends).
    pub compress: bool,
    /// Payload bytes per second, if limited.
    pub bwlimit: Option<u64>,
    /// ZFS raw sends (`zfs send -w`).
    pub raw: bool,
}

impl Default for TransferOptions {
    fn default() -> Self {
        TransferOptions { chunk_size: super::chunk::DEFAULT_CHUNK_SIZE, compress: false, bwlimit: None, raw: false }
    }
}

/// One finished step.
#[derive(Debug, Clone)]
pub struct StepDone {
    /// What was sent.
    pub step: String,
    /// Stream bytes this transfer carried.
    pub bytes: u64,
    /// Offset it resumed at (0 = from the start).
    pub resumed_at: u64,
    /// Seconds it took.
    pub secs: f64,
}

/// Data bytes per chunk that fit one message of `max_message` bytes.
pub fn fitting_chunk_size(wanted: usize, max_message: usize, compress: bool) -> usize {
    let room = max_message.saturating_sub(CHUNK_OVERHEAD + 64);
    let room = if compress { room - room / 255 - 64 } else { room };
    wanted.min(room).max(4096)
}

/// Sends `stream` as `step` through a `Receive` call and waits for the receiver's verdict. The
/// bytes it counts in `progress` are taken back if it fails, so a retry does not count them twice.
pub async fn send_stream<T: Transport>(
    client: &ReplicationClient<T>,
    step: &Step,
    stream: SendStream,
    expected_size: u64,
    compress: bool,
    options: &TransferOptions,
    progress: &Progress,
) -> Result<StepDone> {
    let before = progress.done();
    progress.add(stream.start_offset);
    let result = transfer(client, step, stream, expected_size, compress, options, progress).await;
    if result.is_err() {
        progress.take_back(progress.done().saturating_sub(before));
    }
    result
}

async fn transfer<T: Transport>(
    client: &ReplicationClient<T>,
    step: &Step,
    stream: SendStream,
    expected_size: u64,
    compress: bool,
    options: &TransferOptions,
    progress: &Progress,
) -> Result<StepDone> {
    let started = Instant::now();
    let chunk = fitting_chunk_size(options.chunk_size, client.inner().max_message_len(), compress);
    let capacity = chunk_capacity(chunk, compress);
    let SendStream { reader, start_offset, used_token, child } = stream;
    let (mut sender, receiver) = client.receive().await?;
    let header = ReceiveReq {
        filesystem: step.filesystem.clone(),
        to: Some(step.to.clone()),
        clear_resume_token: !used_token,
        replication_config: None,
        from: step.from.clone(),
        resume_offset: start_offset,
        compression: if compress { "zstd".into() } else { String::new() },
        expected_size,
        // The prefix the source proved it regenerates (byte resume); the receiver re-checks it.
        prefix_crc32c: match step.resume_token.as_deref().and_then(ByteToken::parse) {
            Some(Ok(token)) if start_offset > 0 && token.offset == start_offset => token.prefix_crc,
            _ => 0,
        },
    };
    sender.send(&ReceiveStreamItem { item: Some(receive_stream_item::Item::Header(header)) }).await?;

    let mut limit = options.bwlimit.map(|rate| RateLimit::new(rate, (4 * chunk) as u64));
    let mut state =
        Some((reader, compress.then(|| Compressor::new(1)).transpose().map_err(|e| ReplicationError::io("zstd", e))?));
    let (mut offset, mut crc) = (start_offset, 0u32);
    loop {
        let mut buf = sender.data_buffer(capacity).await?;
        let (mut reader, mut compressor) =
            state.take().ok_or_else(|| ReplicationError::stream(offset, "reader lost"))?;
        let (buf, reader, compressor, encoded) = tokio::task::spawn_blocking(move || {
            let encoded = encode_chunk(&mut buf, offset, &mut *reader, chunk, compressor.as_mut());
            (buf, reader, compressor, encoded)
        })
        .await
        .map_err(|err| ReplicationError::stream(offset, format!("reader task failed: {err}")))?;
        state = Some((reader, compressor));
        let Some(encoded) = encoded.map_err(|err| ReplicationError::io("reading the source stream", err))? else {
            break;
        };
        if let Some(limit) = limit.as_mut() {
            limit.acquire(encoded.len as u64).await;
        }
        crc = crc32c::crc32c_combine(crc, encoded.crc, encoded.len);
        offset += encoded.len as u64;
        sender.send_encoded(buf).await?;
        progress.add(encoded.len as u64);
    }
    drop(state);
    if let Some(child) = child {
        // A failed producer must not end the stream cleanly: cancel the call instead.
        let waited = tokio::task::spawn_blocking(move || child.wait()).await.unwrap_or_else(|err| {
            Err(ReplicationError::stream(offset, format!("waiting for the producer failed: {err}")))
        });
        if let Err(err) = waited {
            drop(receiver);
            return Err(err);
        }
    }
    let end = StreamEnd { total_bytes: offset, digest: digest_bytes(crc) };
    sender.send(&ReceiveStreamItem { item: Some(receive_stream_item::Item::End(end)) }).await?;
    sender.finish().await?;
    receiver.response().await?;
    Ok(StepDone {
        step: step.to_string(),
        bytes: offset - start_offset,
        resumed_at: start_offset,
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_the_connection() {
        assert_eq!(fitting_chunk_size(1 << 20, 16 << 20, false), 1 << 20);
        let small = fitting_chunk_size(1 << 20, 128 << 10, false);
        assert!(small + CHUNK_OVERHEAD <= 128 << 10 && small > 120 << 10, "{small}");
        let compressed = fitting_chunk_size(1 << 20, 128 << 10, true);
        assert!(chunk_capacity(compressed, true) <= 128 << 10, "{compressed}");
    }
}
