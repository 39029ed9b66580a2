//! Reaping completions: the one step that turns a connection's completions into received
//! messages, returned buffers and credit. The poller task runs it (`poller.rs`), and so does the
//! receiver, inline, while it spins waiting for a message: then a completion becomes the driver's
//! message without a hop through the poller task. The reaper's lock serialises the two, so
//! messages reach the receiver's queue in completion order.
//!
//! Who spins: the receiver, while it waits within its window, takes a short *lease*; the poller
//! task sleeps while a lease is held (two tasks spinning on one CQ would only take turns), and takes
//! over when the receiver gives it up or stops renewing it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc};

use crate::RdmaError;
use crate::connection::{Inner, lock};
use crate::large::Imm;
use crate::verbs::{Completion, CqPoller, Reaped, SendRequest, Slot};

/// Where received messages (or the error that ended the connection) go, in order.
pub(crate) type Incoming = mpsc::UnboundedSender<Result<Bytes, RdmaError>>;

/// What reaping needs, behind one lock.
pub(crate) struct Reaper {
    pub(crate) cq: CqPoller,
    /// Reused between passes.
    pub(crate) completions: Vec<Completion>,
    /// `None` once the poller finished: the receiver then sees the end of the queue.
    pub(crate) incoming: Option<Incoming>,
    /// Messages reaped for a receiver that claimed the CQ (`RdmaReceiver::claim_cq`), which
    /// takes them from here under this lock: no channel between its CQ and its caller. What the
    /// channel held at the claim moved here first; what the poller task sends once the
    /// connection closed (the drain, the error, the end) still goes through `incoming`, after.
    pub(crate) claimed: Option<std::collections::VecDeque<Result<Bytes, RdmaError>>>,
    /// A step skipped re-posting to hand its message over first: the next one re-posts whatever
    /// it finds.
    pub(crate) repost_due: bool,
    /// Where small received messages are copied (see [`deliver`]).
    pub(crate) small: Small,
}

/// Small received messages: the chunk they are copied into, and the receive buffers they came
/// in, which go back to their pool at the next step (right before it re-posts them) rather than
/// between the completion and the receiver: giving one back costs a queue push and a wake-up.
pub(crate) struct Small {
    chunk: BytesMut,
    spent: Vec<Slot>,
}

impl Small {
    pub(crate) fn new() -> Self {
        // Room for 64 buffers between two steps (a step reaps what the CQ holds, 32 at a time):
        // keeping them allocates only past that, once.
        Small { chunk: BytesMut::new(), spent: Vec::with_capacity(64) }
    }

    /// Gives the spent receive buffers back to their pool.
    pub(crate) fn release(&mut self) {
        self.spent.clear();
    }
}

/// Received messages up to this size are copied out of their receive buffer into
/// [`Reaper::small`], and the buffer goes back with the next step: a copy this small costs less
/// than the allocation a handle over the registered buffer takes (`Bytes::from_owner` boxes its
/// owner).
const COPY_AT_MOST: usize = 512;

/// The size of each chunk small messages are copied into. A chunk is reused once no view of it
/// is alive; a view the application keeps holds its chunk, so this bounds what one kept small
/// message can hold on to, as a TCP read buffer does for the frames split off it.
const SMALL_CHUNK: usize = 16 * 1024;

/// How long one renewal of the receiver's lease keeps the poller task away: if the receiver stops
/// being polled (its driver is busy elsewhere, or gone), the poller takes over after this.
const LEASE: Duration = Duration::from_millis(1);

/// The receiver's claim to spin on the CQ, as a deadline on a clock private to the connection.
pub(crate) struct Lease {
    epoch: Instant,
    /// Nanoseconds after `epoch`; 0 when not held.
    until: AtomicU64,
    /// Told when the receiver gives the lease up.
    released: Notify,
}

impl Lease {
    pub(crate) fn new() -> Self {
        Lease { epoch: Instant::now(), until: AtomicU64::new(0), released: Notify::new() }
    }

    /// Held (or renewed) until `now + LEASE`, and never past `end`.
    pub(crate) fn hold(&self, now: Instant, end: Instant) {
        let until = (now + LEASE).min(end);
        self.until.store(until.saturating_duration_since(self.epoch).as_nanos() as u64, Ordering::Release);
    }

    /// Held until given up: a thread that polls the CQ itself for good (`RdmaReceiver::claim_cq`).
    pub(crate) fn hold_for_good(&self) {
        // Thirty years: far enough never to end, near enough for any timer to take.
        let until = Instant::now() + Duration::from_secs(30 * 365 * 86_400);
        self.until.store(until.saturating_duration_since(self.epoch).as_nanos() as u64, Ordering::Release);
    }

    /// Given up: the poller task takes over at once.
    pub(crate) fn release(&self) {
        if self.until.swap(0, Ordering::AcqRel) != 0 {
            self.released.notify_one();
        }
    }

    /// When the current lease ends, if one is held at `now`.
    pub(crate) fn held_until(&self, now: Instant) -> Option<Instant> {
        let until = self.until.load(Ordering::Acquire);
        let until = self.epoch + Duration::from_nanos(until);
        (until > now && until > self.epoch).then_some(until)
    }

    /// Waits until the lease that ends at `until` ends or is given up.
    pub(crate) async fn wait(&self, until: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => {}
            () = self.released.notified() => {}
        }
    }
}

/// One pass: reap completions, re-post receives, return credit. True if anything happened.
/// Nothing once the connection closed: the poller's drain reaps the flush then.
pub(crate) fn step(inner: &Inner, reaper: &mut Reaper) -> Result<bool, RdmaError> {
    if inner.is_closed() {
        return Ok(false);
    }
    let Reaper { cq, completions, incoming, claimed, repost_due, small } = reaper;
    completions.clear();
    let reaped = cq.poll(completions)?;
    let mut handed = false;
    for completion in completions.iter() {
        let outcome = lock(&inner.qp).reap(completion)?;
        if let Reaped::Received { slot, imm, byte_len } = outcome
            && let Some(message) = received(inner, slot, imm, byte_len, small)?
        {
            match (claimed.as_mut(), incoming.as_ref()) {
                (Some(claimed), _) => {
                    claimed.push_back(Ok(message));
                    handed = true;
                }
                (None, Some(incoming)) => {
                    let _ = incoming.send(Ok(message));
                    handed = true;
                }
                (None, None) => {}
            }
        }
    }
    if reaped > 0 {
        inner.credit_changed.notify_waiters();
    } else if !*repost_due && !inner.buffers_freed() {
        // Nothing came and nothing was handed back: re-posting would find nothing to do (its
        // pending work, credit and large-buffer announcements, waits for credit, which comes
        // with a completion). What an idle spin turn costs is a CQ poll and this look.
        return Ok(false);
    }
    if handed && !*repost_due {
        // The receiver takes its message before re-posting, which is then done in the next step,
        // after the message was handled (and its reply sent): a small message's receive buffer
        // is free at once, and re-posting it here would come between the completion and the
        // receiver. The next step is never far: a claimed receiver's thread steps every turn; a
        // step that returns true makes the poller task step again (after the tasks it woke), and
        // a spinning receiver's lease, which keeps the poller away, lasts 1 ms at most.
        *repost_due = true;
        return Ok(true);
    }
    *repost_due = false;
    small.release();
    let reposted = repost(inner)?;
    Ok(reaped > 0 || reposted)
}

/// [`step`] under the reaper's lock, then [`fail`] on an error; false once failed.
pub(crate) fn step_or_fail(inner: &Inner) -> bool {
    let mut reaper = lock(&inner.reaper);
    match step(inner, &mut reaper) {
        Ok(progressed) => progressed,
        Err(err) => {
            fail(inner, &reaper, err);
            false
        }
    }
}

/// What a receive completion means (by its immediate): credit and maybe a message in the slot,
/// a message in a large buffer, or a large buffer of the peer's handed back. Errors are protocol
/// violations by the peer. `small` is where small messages go.
pub(crate) fn received(
    inner: &Inner,
    slot: Slot,
    imm: u32,
    byte_len: u32,
    small: &mut Small,
) -> Result<Option<Bytes>, RdmaError> {
    match Imm::decode(imm) {
        Imm::Credit(count) => {
            if count > 0 {
                lock(&inner.credits).available += count;
            }
            Ok((slot.len() > 0).then(|| deliver(inner, slot, small)))
        }
        Imm::Written { class, index } => {
            drop(slot); // a WRITE-with-immediate consumed the receive but wrote nothing into it
            let mut large = lock(&inner.large_recv);
            let buffer = large.take_written(class, index, byte_len)?;
            // As for slots: never let the application hold every buffer of a class.
            if large.must_copy(class) {
                return Ok(Some(Bytes::copy_from_slice(buffer.filled())));
            }
            Ok(Some(Bytes::from_owner(buffer)))
        }
        Imm::Returned { class, index } => {
            drop(slot);
            lock(&inner.credits).remote.give_back(class, index)?;
            Ok(None)
        }
    }
}

/// Hands a received message up. A small one (at most [`COPY_AT_MOST`] bytes) is copied into
/// `small`'s chunk and its buffer goes back with the next step. Otherwise the `Bytes` are the
/// registered buffer itself (the application holds it as long as it holds the bytes; dropping
/// them returns the slot, which the next step re-posts). When the application already holds
/// three quarters of the receive buffers — messages queued behind work that waits on the peer —
/// the message is copied out and its buffer re-posted by the next step: otherwise the peer could
/// run out of credit while this side waits on the peer, and both would stall.
fn deliver(inner: &Inner, slot: Slot, small: &mut Small) -> Bytes {
    if slot.len() <= COPY_AT_MOST {
        let message = copy_small(&mut small.chunk, slot.filled());
        small.spent.push(slot);
        return message;
    }
    let ready = lock(&inner.qp).recvs_posted() + inner.recv_region.free_count() + small.spent.len();
    if ready * 4 < inner.config.recv_buffers as usize {
        Bytes::copy_from_slice(slot.filled())
    } else {
        Bytes::from_owner(slot)
    }
}

/// `message` copied into the end of `chunk` and split off it. A chunk too full for it is
/// replaced, reusing its memory when no view of it is alive (`BytesMut::reserve` reclaims it).
fn copy_small(chunk: &mut BytesMut, message: &[u8]) -> Bytes {
    if chunk.capacity() < message.len() {
        chunk.reserve(SMALL_CHUNK);
    }
    chunk.extend_from_slice(message);
    chunk.split().freeze()
}

/// Re-posts returned receive buffers, lends dropped large buffers to the peer again, then returns
/// credit if the peer needs it.
fn repost(inner: &Inner) -> Result<bool, RdmaError> {
    let mut qp = lock(&inner.qp);
    let count = qp.post_recv(std::iter::from_fn(|| inner.recv_region.try_take()))?;
    let mut reposted = count > 0;
    if reposted {
        lock(&inner.credits).owed += count as u32;
    }
    // Send-queue entries this may use: the QP has 12 more than this bound, kept for the sender.
    let room = |qp: &crate::verbs::RcQueuePair| {
        (inner.config.send_buffers + inner.config.large_buffers() + 4).saturating_sub(qp.sends_in_flight() as u32)
    };
    {
        let mut room_left = room(&qp);
        let mut large = lock(&inner.large_recv);
        large.relend_freed();
        let mut credits = lock(&inner.credits);
        // Each announcement uses a credit (the last one stays for credit-only messages) and a
        // send-queue entry.
        let returns = std::iter::from_fn(|| {
            if credits.available < 2 || room_left == 0 {
                return None;
            }
            room_left -= 1;
            let (class, index) = large.next_unannounced()?;
            credits.available -= 1;
            credits.posted += 1;
            let imm = Imm::Returned { class, index }.encode();
            Some(SendRequest { slot: None, imm, signaled: true, remote: None })
        });
        reposted |= qp.post_send(returns)? > 0;
    }
    // Credit the peer can use now: what is posted minus what it has not been told about. When
    // that is down to the one kept for control, or half the window is owed, say so now in a
    // zero-length message (which uses that kept credit on our side) instead of waiting for a
    // send to carry it: otherwise two peers that each wait for the other's data would stall.
    let mut credits = lock(&inner.credits);
    let peer_available = (qp.recvs_posted() as u32).saturating_sub(credits.owed);
    let threshold = (inner.config.recv_buffers / 2).max(1);
    if credits.owed > 0 && credits.available >= 1 && room(&qp) > 0 && (credits.owed >= threshold || peer_available <= 1)
    {
        let imm = Imm::Credit(std::mem::take(&mut credits.owed)).encode();
        credits.available -= 1;
        credits.posted += 1;
        qp.post_send([SendRequest { slot: None, imm, signaled: true, remote: None }])?;
        return Ok(true);
    }
    Ok(reposted)
}

/// Closes the connection and hands the error to the receiver.
pub(crate) fn fail(inner: &Inner, reaper: &Reaper, err: RdmaError) {
    tracing::warn!(device = %inner.device, qp = inner.qp_num, peer = %inner.peer, %err, "RDMA connection failed");
    inner.close(err.to_string());
    if let Some(incoming) = &reaper.incoming {
        let _ = incoming.send(Err(err));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies (dropped at once) until less than one more fits in `chunk`: the next one needs room.
    fn fill(chunk: &mut BytesMut) {
        while chunk.capacity() >= 100 {
            drop(copy_small(chunk, &[0; 100]));
        }
    }

    #[test]
    fn small_copies_share_a_chunk_and_reuse_it_once_no_view_is_alive() {
        let mut chunk = BytesMut::new();
        let first = copy_small(&mut chunk, &[1; 100]);
        let second = copy_small(&mut chunk, &[2; 100]);
        assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(100), "one chunk, back to back");
        let start = first.as_ptr();
        drop((first, second));
        fill(&mut chunk);
        assert_eq!(copy_small(&mut chunk, &[3; 100]).as_ptr(), start, "the chunk's memory is reused");
    }

    #[test]
    fn a_kept_small_message_is_never_written_over() {
        let mut chunk = BytesMut::new();
        let kept = copy_small(&mut chunk, &[1; 100]);
        fill(&mut chunk);
        let next = copy_small(&mut chunk, &[2; 100]);
        assert_ne!(next.as_ptr(), kept.as_ptr(), "a chunk with a live view gets new memory");
        fill(&mut chunk);
        assert!(kept.iter().all(|&b| b == 1) && next.iter().all(|&b| b == 2));
    }
}
