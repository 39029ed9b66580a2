//! The sending side of a connection: [`RdmaAlloc`] hands out registered send buffers (a slot, or
//! a large buffer of the smallest class that fits), [`RdmaSender`] posts them in order, batched
//! with one doorbell per flush and selectively signaled, within the peer's credit. A message that
//! fits a slot goes as a SEND; a larger one as an RDMA WRITE-with-immediate into a large buffer
//! the peer lent (`large.rs`), and waits while the peer has none of its class free.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes};
use rdma_rpc_transport_tcp::TcpSender;

use crate::RdmaError;
use crate::connection::{Inner, lock};
use crate::verbs::{Region, SendRequest, SlotWriter};

/// Signal at least every this many sends, so unsignaled slots come back in time.
const SIGNAL_EVERY: u64 = 16;

/// Send slots kept for control frames and headers: application data waits once only this many
/// are free.
const CONTROL_RESERVE: usize = 4;

/// Large buffers of each class kept for joining a header and a payload at flush time (when every
/// other buffer of the class could be queued behind that message, waiting without one would wait
/// forever).
const JOIN_RESERVE: usize = 1;

/// Hands out registered send buffers; waits when all are in flight.
#[derive(Clone)]
pub struct RdmaAlloc {
    slots: Arc<Region>,
    large: Vec<Arc<Region>>,
}

impl RdmaAlloc {
    pub(crate) fn new(inner: &Inner) -> Self {
        RdmaAlloc { slots: inner.send_region.clone(), large: inner.large_send.clone() }
    }

    /// A registered buffer with room for `capacity` bytes, for application data: waits while all
    /// but the reserve of its kind are in use.
    pub async fn alloc(&self, capacity: usize) -> Result<SlotWriter, RdmaError> {
        let (region, reserve) = self.region_for(capacity)?;
        Ok(SlotWriter::new(region.take(reserve).await))
    }

    /// A registered buffer now (a slot: reserve included), or `None` when every buffer is in use.
    pub fn try_alloc(&self, capacity: usize) -> Option<Result<SlotWriter, RdmaError>> {
        let (region, reserve) = match self.region_for(capacity) {
            Ok(found) => found,
            Err(err) => return Some(Err(err)),
        };
        let reserve = if Arc::ptr_eq(region, &self.slots) { 0 } else { reserve };
        region.try_take_above(reserve).map(|slot| Ok(SlotWriter::new(slot)))
    }

    /// A registered buffer for a control frame or header, waiting until any buffer (the reserve
    /// included) is free: what the driver uses once `try_alloc` found none. Waiting for more than
    /// the reserve here could wait forever when data frames holding the rest are queued behind it.
    pub async fn alloc_control(&self, capacity: usize) -> Result<SlotWriter, RdmaError> {
        let (region, _) = self.region_for(capacity)?;
        Ok(SlotWriter::new(region.take(0).await))
    }

    /// A registered buffer now for application data (the reserve for control frames stays free),
    /// or `None` when none is: the caller falls back to heap memory instead of waiting.
    pub fn try_alloc_data(&self, capacity: usize) -> Option<SlotWriter> {
        let (region, reserve) = self.region_for(capacity).ok()?;
        region.try_take_above(reserve).map(SlotWriter::new)
    }

    /// The region for `capacity` bytes and how many of its buffers application data leaves free.
    fn region_for(&self, capacity: usize) -> Result<(&Arc<Region>, usize), RdmaError> {
        if capacity <= self.slots.slot_size() {
            return Ok((&self.slots, CONTROL_RESERVE.min(self.slots.slots().saturating_sub(1) as usize)));
        }
        let region = self.large.iter().find(|r| r.slot_size() >= capacity).ok_or_else(|| RdmaError::TooLarge {
            len: capacity,
            max: self.large.iter().map(|r| r.slot_size()).fold(self.slots.slot_size(), usize::max),
        })?;
        Ok((region, JOIN_RESERVE.min(region.slots().saturating_sub(1) as usize)))
    }
}

/// A message waiting in the send queue.
enum Queued {
    /// Encoded in a registered buffer.
    Ready(SlotWriter),
    /// A header and a payload too large for the header's slot: joined into a large buffer when
    /// it reaches the front of the queue (feeding cannot wait for a buffer).
    Joined { head: SlotWriter, payload: Bytes },
}

/// The sending half.
pub struct RdmaSender {
    inner: Arc<Inner>,
    tcp: TcpSender,
    queue: VecDeque<Queued>,
    /// The work requests of one batch, between `reserve` and posting; kept so a flush allocates
    /// nothing once it has grown to the largest batch.
    batch: Vec<SendRequest>,
}

impl RdmaSender {
    pub(crate) fn new(inner: Arc<Inner>, tcp: TcpSender) -> Self {
        RdmaSender { inner, tcp, queue: VecDeque::new(), batch: Vec::new() }
    }

    /// Queues a message; no IO until `flush`.
    pub fn feed(&mut self, buf: SlotWriter) -> Result<(), RdmaError> {
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        self.queue.push_back(Queued::Ready(buf));
        Ok(())
    }

    /// Queues `head` followed by `payload`: the payload is copied into registered memory (it is
    /// not registered itself): into the head's slot when it fits, else into a large buffer.
    pub fn feed_with_payload(&mut self, mut head: SlotWriter, payload: Bytes) -> Result<(), RdmaError> {
        let total = head.len() + payload.len();
        if total <= head.len() + head.remaining_mut() {
            head.put_slice(&payload);
            return self.feed(head);
        }
        let max = self.inner.config.max_message_size();
        if total > max {
            return Err(RdmaError::TooLarge { len: total, max });
        }
        if self.inner.is_closed() {
            return Err(self.inner.closed_error());
        }
        self.queue.push_back(Queued::Joined { head, payload });
        Ok(())
    }

    /// Posts everything queued, in order, in batches as the peer's credit and large buffers
    /// allow. Cancel-safe: a message leaves the queue only when it is posted, so a dropped flush
    /// loses nothing and the next one goes on where it stopped.
    pub async fn flush(&mut self) -> Result<(), RdmaError> {
        while let Some(front) = self.queue.front() {
            if let Queued::Joined { head, payload } = front {
                let total = head.len() + payload.len();
                let joined = self.join_buffer(total).await?;
                if let Some(Queued::Joined { head, payload }) = self.queue.pop_front() {
                    self.queue.push_front(Queued::Ready(join(joined, &head, &payload)));
                }
            }
            self.reserve().await?;
            self.post_batch()?;
        }
        Ok(())
    }

    /// A large buffer for `total` bytes, to join a header and its payload in (the last resort
    /// of `feed`). Waiting for it is cancel-safe.
    async fn join_buffer(&self, total: usize) -> Result<SlotWriter, RdmaError> {
        let region = self.inner.large_send.iter().find(|r| r.slot_size() >= total);
        let region = region.ok_or(RdmaError::TooLarge { len: total, max: self.inner.config.max_message_size() })?;
        Ok(SlotWriter::new(region.take(0).await))
    }

    /// Posts what is queued as far as credit, large buffers and the peer's buffers allow now,
    /// without waiting: what a thread that polls its CQ itself (no runtime) sends with. True when
    /// the queue is empty; false when something waits for credit, which reaping the CQ brings.
    pub fn try_flush(&mut self) -> Result<bool, RdmaError> {
        while let Some(front) = self.queue.front() {
            if let Queued::Joined { head, payload } = front {
                let total = head.len() + payload.len();
                let region = self.inner.large_send.iter().find(|r| r.slot_size() >= total);
                let region =
                    region.ok_or(RdmaError::TooLarge { len: total, max: self.inner.config.max_message_size() })?;
                let Some(slot) = region.try_take() else { return Ok(false) };
                if let Some(Queued::Joined { head, payload }) = self.queue.pop_front() {
                    self.queue.push_front(Queued::Ready(join(SlotWriter::new(slot), &head, &payload)));
                }
            }
            if self.inner.is_closed() {
                return Err(self.inner.closed_error());
            }
            if !fill_batch(&self.inner, &mut self.queue, &mut self.batch) {
                return Ok(false);
            }
            self.post_batch()?;
        }
        Ok(true)
    }

    /// Posts `self.batch`; a failure closes the connection.
    fn post_batch(&mut self) -> Result<(), RdmaError> {
        if let Err(err) = lock(&self.inner.qp).post_send(self.batch.drain(..)) {
            self.inner.close(err.to_string());
            return Err(err);
        }
        Ok(())
    }

    /// Waits for credit (and large buffers), then moves the longest run of ready messages at the
    /// front of the queue they allow into `self.batch`, as work requests (never an empty batch).
    async fn reserve(&mut self) -> Result<(), RdmaError> {
        loop {
            let notified = self.inner.credit_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.is_closed() {
                return Err(self.inner.closed_error());
            }
            if fill_batch(&self.inner, &mut self.queue, &mut self.batch) {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Flushes, waits until every send completed, then closes the TCP control connection (the
    /// peer sees the end there).
    pub async fn close(&mut self) -> Result<(), RdmaError> {
        let flushed = self.flush().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let notified = self.inner.credit_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.inner.qp).sends_in_flight() == 0 || self.inner.is_closed() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let _ = self.tcp.shutdown().await;
        self.inner.close("closed locally".into());
        flushed
    }
}

/// Moves the longest run of ready messages at the front of `queue` that the peer's credit
/// and large buffers allow now into `batch`; false when not even one can go.
fn fill_batch(inner: &Inner, queue: &mut VecDeque<Queued>, batch: &mut Vec<SendRequest>) -> bool {
    let slot_size = inner.send_region.slot_size();
    batch.clear();
    let mut credits = lock(&inner.credits);
    // One credit stays for credit-only messages.
    let limit = (credits.available as usize).saturating_sub(1);
    let first = credits.posted;
    while batch.len() < limit {
        let Some(Queued::Ready(buf)) = queue.front() else { break };
        let remote = if buf.len() > slot_size {
            let Some(target) = credits.remote.take(buf.len()) else { break };
            Some(target)
        } else {
            None
        };
        if let Some(Queued::Ready(buf)) = queue.pop_front() {
            let seq = first + batch.len() as u64;
            batch.push(SendRequest {
                // A WRITE's immediate names its buffer; a SEND's is filled in below.
                imm: remote.map_or(0, |(_, imm)| imm),
                signaled: seq % SIGNAL_EVERY == SIGNAL_EVERY - 1 || remote.is_some(),
                remote: remote.map(|(target, _)| target),
                slot: Some(buf.slot),
            });
        }
    }
    let Some(last) = batch.last_mut() else { return false };
    last.signaled = true;
    let count = batch.len();
    credits.available -= count as u32;
    credits.posted += count as u64;
    // The first SEND of the batch announces the receives re-posted.
    if let Some(announcer) = batch.iter_mut().find(|request| request.remote.is_none()) {
        announcer.imm = std::mem::take(&mut credits.owed);
    }
    true
}

/// Copies a header and its payload into `joined`, one registered buffer.
fn join(mut joined: SlotWriter, head: &SlotWriter, payload: &Bytes) -> SlotWriter {
    joined.put_slice(head.written());
    joined.put_slice(payload);
    joined
}

impl Drop for RdmaSender {
    fn drop(&mut self) {
        self.inner.close("closed locally".into());
    }
}
