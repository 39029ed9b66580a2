//! The server side of replication: [`ReplicationService`] serves one endpoint (the `--target` or
//! `--sink` of `rdma-rpc serve`) through the generated `Replication` trait.
//!
//! `Receive` checks every chunk (offset, CRC32C, decompressed size) before its bytes reach the
//! endpoint, and hands verified bytes to a writer thread (bounded queue) that feeds
//! `btrfs receive`, `zfs receive` or the stream file, so network and disk overlap. Anything wrong
//! — a corrupt chunk, a stream that ends without its `StreamEnd`, a peer that vanishes — aborts
//! that receive: the sink is dropped unfinished, which kills the child and removes what cannot be
//! resumed. Nothing half-received is left looking complete, and only that call fails.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::chunk::{ChunkChecker, DEFAULT_CHUNK_SIZE, encode_chunk};
use super::endpoint::{Endpoint, ReceiveSpec, SendSpec, StreamSink};
use super::error::{ReplicationError, Result};
use crate::pb::replication::{
    self as pb, ReceiveStreamItem, SendStreamItem, receive_stream_item, replication_cursor_res, send_stream_item,
};
use crate::rpc::{CallReceiver, RequestContext, ResponseSender};
use crate::status::Status;

/// Verified chunks queued between the network and the endpoint.
const WRITE_QUEUE: usize = 8;

/// Serves an endpoint. Clone-cheap.
#[derive(Debug, Clone)]
pub struct ReplicationService {
    endpoint: Arc<Endpoint>,
    /// Filesystems with a receive in progress: a second one waits for the first to end (a stale
    /// receive on a half-open connection must not race a reconnected sender).
    receiving: Arc<Mutex<HashSet<String>>>,
}

/// Holds a filesystem's receive slot; frees it when dropped.
struct ReceiveSlot {
    receiving: Arc<Mutex<HashSet<String>>>,
    filesystem: String,
}

impl Drop for ReceiveSlot {
    fn drop(&mut self) {
        if let Ok(mut receiving) = self.receiving.lock() {
            receiving.remove(&self.filesystem);
        }
    }
}

/// Runs blocking endpoint work off the async threads.
async fn blocking<R: Send + 'static>(work: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ReplicationError::Remote(Status::internal(format!("endpoint task failed: {err}"))))?
}

impl ReplicationService {
    /// Serves `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        ReplicationService { endpoint: Arc::new(endpoint), receiving: Arc::default() }
    }

    fn claim(&self, filesystem: &str) -> Result<ReceiveSlot> {
        let mut receiving =
            self.receiving.lock().map_err(|_| ReplicationError::protocol("receive registry poisoned"))?;
        if !receiving.insert(filesystem.to_string()) {
            return Err(ReplicationError::Remote(Status::new(
                crate::status::Code::Aborted,
                format!("{filesystem} is being received already (an earlier connection?); retry when it ends"),
            )));
        }
        Ok(ReceiveSlot { receiving: self.receiving.clone(), filesystem: filesystem.to_string() })
    }

    /// The generated router adapter, for `Router::add`.
    pub fn server(self) -> pb::ReplicationServer<Self> {
        pb::ReplicationServer::new(self)
    }

    fn with<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Endpoint) -> Result<R> + Send + 'static,
    ) -> impl Future<Output = Result<R>> {
        let endpoint = self.endpoint.clone();
        blocking(move || work(&endpoint))
    }

    async fn receive_stream(&self, requests: &mut CallReceiver<ReceiveStreamItem>, peer: &str) -> Result<u64> {
        let header = match requests.message().await? {
            Some(ReceiveStreamItem { item: Some(receive_stream_item::Item::Header(header)) }) => header,
            _ => return Err(ReplicationError::protocol("the first item of a Receive must be its ReceiveReq header")),
        };
        let to = header.to.clone().ok_or_else(|| ReplicationError::protocol("ReceiveReq without To"))?;
        let compressed = match header.compression.as_str() {
            "" => false,
            "zstd" => true,
            other => {
                return Err(ReplicationError::protocol(format!(
                    "unknown compression {other:?} (this receiver offers zstd)"
                )));
            }
        };
        let spec = ReceiveSpec {
            filesystem: header.filesystem.clone(),
            to: to.clone(),
            from: header.from.clone(),
            resume_offset: header.resume_offset,
            clear_resume: header.clear_resume_token,
            prefix_crc: (header.resume_offset > 0).then_some(header.prefix_crc32c),
        };
        tracing::info!(%peer, filesystem = %spec.filesystem, snapshot = %to.name, incremental = spec.from.is_some(),
            resume_offset = spec.resume_offset, expected = header.expected_size, "receiving");
        super::names::check_filesystem(&spec.filesystem)?;
        let slot = self.claim(&spec.filesystem)?;
        let sink = self.with(move |endpoint| endpoint.receive(&spec)).await?;
        let (queue, mut pending) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || -> Result<Box<dyn StreamSink>> {
            let mut sink = sink;
            while let Some(data) = pending.blocking_recv() {
                sink.write(&data)?;
            }
            Ok(sink)
        });
        let mut checker = ChunkChecker::new(header.resume_offset, compressed);
        let outcome = async {
            loop {
                match requests.message().await?.and_then(|item| item.item) {
                    Some(receive_stream_item::Item::Chunk(chunk)) => {
                        let data = checker.check(chunk)?;
                        if queue.send(data).await.is_err() {
                            return Ok(()); // the writer failed; its error is reported below
                        }
                    }
                    Some(receive_stream_item::Item::End(end)) => return checker.finish(&end),
                    Some(receive_stream_item::Item::Header(_)) => {
                        return Err(ReplicationError::protocol("a second ReceiveReq header"));
                    }
                    None => {
                        return Err(ReplicationError::stream(
                            checker.next_offset(),
                            "the stream ended without its StreamEnd (truncated)",
                        ));
                    }
                }
            }
        }
        .await;
        drop(queue);
        let written =
            writer.await.map_err(|err| ReplicationError::Remote(Status::internal(format!("writer failed: {err}"))));
        let result = match (outcome, written) {
            (Ok(()), Ok(Ok(sink))) => blocking(move || sink.finish()).await.map(|()| checker.next_offset()),
            (Err(err), Ok(Ok(sink))) => {
                // Dropped unfinished, the sink aborts the receive (kills the child, removes what
                // cannot resume): blocking work, so off the async threads.
                let _ = tokio::task::spawn_blocking(move || drop(sink)).await;
                Err(err)
            }
            (Err(err), _) | (Ok(()), Ok(Err(err))) | (Ok(()), Err(err)) => Err(err),
        };
        drop(slot);
        result
    }
}

fn status(err: ReplicationError) -> Status {
    tracing::warn!(%err, kind = err.kind_word(), "replication call failed");
    err.to_status()
}

impl pb::Replication for ReplicationService {
    async fn ping(&self, request: pb::PingReq, _ctx: RequestContext) -> Result<pb::PingRes, Status> {
        Ok(pb::PingRes { echo: request.message, features: vec!["zstd".into(), self.endpoint.kind().into()] })
    }

    async fn list_filesystems(
        &self,
        _: pb::ListFilesystemReq,
        _ctx: RequestContext,
    ) -> Result<pb::ListFilesystemRes, Status> {
        let filesystems = self.with(|endpoint| endpoint.filesystems()).await.map_err(status)?;
        Ok(pb::ListFilesystemRes { filesystems })
    }

    async fn list_filesystem_versions(
        &self,
        request: pb::ListFilesystemVersionsReq,
        _ctx: RequestContext,
    ) -> Result<pb::ListFilesystemVersionsRes, Status> {
        let versions = self.with(move |endpoint| endpoint.versions(&request.filesystem)).await.map_err(status)?;
        Ok(pb::ListFilesystemVersionsRes { versions })
    }

    async fn destroy_snapshots(
        &self,
        request: pb::DestroySnapshotsReq,
        _ctx: RequestContext,
    ) -> Result<pb::DestroySnapshotsRes, Status> {
        let results = self
            .with(move |endpoint| endpoint.destroy(&request.filesystem, &request.snapshots))
            .await
            .map_err(status)?;
        Ok(pb::DestroySnapshotsRes { results })
    }

    async fn replication_cursor(
        &self,
        request: pb::ReplicationCursorReq,
        _ctx: RequestContext,
    ) -> Result<pb::ReplicationCursorRes, Status> {
        let versions = self.with(move |endpoint| endpoint.versions(&request.filesystem)).await.map_err(status)?;
        let result = match versions.last() {
            Some(newest) => replication_cursor_res::Result::Guid(newest.guid),
            None => replication_cursor_res::Result::Notexist(true),
        };
        Ok(pb::ReplicationCursorRes { result: Some(result) })
    }

    async fn send_dry(&self, request: pb::SendReq, _ctx: RequestContext) -> Result<pb::SendRes, Status> {
        let spec = send_spec(&request).map_err(status)?;
        let expected_size = self.with(move |endpoint| endpoint.estimate(&spec)).await.map_err(status)?;
        Ok(pb::SendRes { used_resume_token: false, expected_size })
    }

    async fn send_completed(
        &self,
        request: pb::SendCompletedReq,
        ctx: RequestContext,
    ) -> Result<pb::SendCompletedRes, Status> {
        let original = request.original_req.unwrap_or_default();
        tracing::info!(peer = %ctx.peer, filesystem = %original.filesystem, snapshot = ?original.to.map(|v| v.name), "send completed");
        Ok(pb::SendCompletedRes {})
    }

    async fn send(
        &self,
        request: pb::SendReq,
        mut responses: ResponseSender<SendStreamItem>,
        _ctx: RequestContext,
    ) -> Result<(), Status> {
        let spec = send_spec(&request).map_err(status)?;
        let estimate_spec = spec.clone();
        let expected_size = self.with(move |endpoint| endpoint.estimate(&estimate_spec)).await.unwrap_or(0);
        let stream = self.with(move |endpoint| endpoint.send(&spec)).await.map_err(status)?;
        let header = pb::SendRes { used_resume_token: stream.used_token, expected_size };
        responses.send(&SendStreamItem { item: Some(send_stream_item::Item::Header(header)) }).await?;
        let (mut offset, start) = (stream.start_offset, stream.start_offset);
        let mut crc = 0u32;
        let mut stream = Some(stream);
        loop {
            let mut reader = stream.take().ok_or_else(|| Status::internal("stream lost"))?;
            let (reader, encoded) = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(DEFAULT_CHUNK_SIZE + 64);
                let encoded = encode_chunk(&mut buf, offset, &mut reader.reader, DEFAULT_CHUNK_SIZE, None);
                (reader, encoded.map(|chunk| chunk.map(|chunk| (chunk, buf))))
            })
            .await
            .map_err(|err| Status::internal(format!("reader failed: {err}")))?;
            match encoded.map_err(|err| status(ReplicationError::io("reading the source stream", err)))? {
                Some((chunk, buf)) => {
                    crc = crc32c::crc32c_combine(crc, chunk.crc, chunk.len);
                    offset += chunk.len as u64;
                    responses.send_encoded(Bytes::from(buf)).await?;
                    stream = Some(reader);
                }
                None => {
                    blocking(move || reader.finish()).await.map_err(status)?;
                    break;
                }
            }
        }
        tracing::info!(bytes = offset - start, "send finished");
        let end = pb::StreamEnd { total_bytes: offset, digest: super::chunk::digest_bytes(crc) };
        responses.send(&SendStreamItem { item: Some(send_stream_item::Item::End(end)) }).await
    }

    async fn receive(
        &self,
        mut requests: CallReceiver<ReceiveStreamItem>,
        ctx: RequestContext,
    ) -> Result<pb::ReceiveRes, Status> {
        let bytes = self.receive_stream(&mut requests, &ctx.peer).await.map_err(status)?;
        tracing::info!(peer = %ctx.peer, bytes, "receive finished");
        Ok(pb::ReceiveRes {})
    }
}

fn send_spec(request: &pb::SendReq) -> Result<SendSpec> {
    Ok(SendSpec {
        filesystem: request.filesystem.clone(),
        from: request.from.clone().filter(|v| !v.name.is_empty()),
        to: request.to.clone().ok_or_else(|| ReplicationError::protocol("SendReq without To"))?,
        resume_token: Some(request.resume_token.clone()).filter(|t| !t.is_empty()),
        raw: false,
    })
}
