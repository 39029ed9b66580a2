//! The completion poller of a connection (one tokio task) and the liveness watch on its TCP
//! control connection.
//!
//! The poller spins on the CQ while completions keep coming and for a bounded budget after the
//! last one (`PollMode::Adaptive`), then arms notification, polls once more to close the race, and
//! sleeps on the non-blocking completion-channel fd through `AsyncFd` — or on a receive buffer
//! coming back, which it re-posts. `PollMode::BusyPoll` never sleeps. Receive buffers are re-posted
//! in batches, and credit is returned piggybacked on sends or, when enough piles up, in a
//! zero-length message that uses the credit kept for it. Large buffers the application dropped
//! are lent to the peer again, one zero-length SEND each (`large.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdma_rpc_transport_tcp::TcpReceiver;
use tokio::sync::mpsc;

use crate::connection::{Inner, lock};
use crate::large::Imm;
use crate::verbs::{Completion, CompletionQueue, Reaped, SendRequest, Slot};
use crate::{PollMode, RdmaError};

type Incoming = mpsc::UnboundedSender<Result<Bytes, RdmaError>>;

/// Runs until the connection closes; then moves the QP to error, reaps the flush, and returns.
pub(crate) async fn run(inner: Arc<Inner>, mut cq: CompletionQueue, incoming: Incoming) {
    if let Err(err) = cq.register() {
        fail(&inner, &incoming, err);
        return;
    }
    let mut completions = Vec::with_capacity(64);
    let mut last_progress = Instant::now();
    loop {
        if inner.closed_reason().is_some() {
            break;
        }
        let progressed = match step(&inner, &cq, &mut completions, &incoming) {
            Ok(progressed) => progressed,
            Err(err) => {
                fail(&inner, &incoming, err);
                break;
            }
        };
        if progressed {
            last_progress = Instant::now();
            tokio::task::yield_now().await;
            continue;
        }
        let spin = match inner.config.poll {
            PollMode::BusyPoll => true,
            PollMode::Adaptive(budget) => last_progress.elapsed() < budget,
        };
        if spin {
            tokio::task::yield_now().await;
            continue;
        }
        if tracing::enabled!(tracing::Level::TRACE) {
            let (available, owed) = {
                let c = lock(&inner.credits);
                (c.available, c.owed)
            };
            let (posted, in_flight) = {
                let qp = lock(&inner.qp);
                (qp.recvs_posted(), qp.sends_in_flight())
            };
            tracing::trace!(qp = inner.qp_num, available, owed, posted, in_flight, "poller idle");
        }
        if let Err(err) = cq.arm() {
            fail(&inner, &incoming, err);
            break;
        }
        // A completion that arrived before the arm raises no event: look once more.
        match step(&inner, &cq, &mut completions, &incoming) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(err) => {
                fail(&inner, &incoming, err);
                break;
            }
        }
        tokio::select! {
            () = cq.wait_event() => {}
            () = inner.recv_region.wait_freed() => {}
            () = inner.closing.notified() => {}
        }
    }
    drain_after_close(&inner, &cq, &mut completions, &incoming).await;
}

/// One pass: reap completions, re-post receives, return credit. True if anything happened.
fn step(
    inner: &Inner,
    cq: &CompletionQueue,
    completions: &mut Vec<Completion>,
    incoming: &Incoming,
) -> Result<bool, RdmaError> {
    completions.clear();
    let reaped = cq.poll(completions)?;
    for completion in completions.iter() {
        let outcome = lock(&inner.qp).reap(completion)?;
        if let Reaped::Received { slot, imm, byte_len } = outcome
            && let Some(message) = received(inner, slot, imm, byte_len)?
        {
            let _ = incoming.send(Ok(message));
        }
    }
    if reaped > 0 {
        inner.credit_changed.notify_waiters();
    }
    let reposted = repost(inner)?;
    Ok(reaped > 0 || reposted)
}

/// What a receive completion means (by its immediate): credit and maybe a message in the slot,
/// a message in a large buffer, or a large buffer of the peer's handed back. Errors are protocol
/// violations by the peer.
fn received(inner: &Inner, slot: Slot, imm: u32, byte_len: u32) -> Result<Option<Bytes>, RdmaError> {
    match Imm::decode(imm) {
        Imm::Credit(count) => {
            if count > 0 {
                lock(&inner.credits).available += count;
            }
            Ok((slot.len() > 0).then(|| deliver(inner, slot)))
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

/// Hands a received message up. Normally the `Bytes` are the registered buffer itself (the
/// application holds it as long as it holds the bytes; dropping them returns the slot, which this
/// poller re-posts). When the application already holds three quarters of the receive buffers —
/// messages queued behind work that waits on the peer — the message is copied out and its buffer
/// re-posted at once: otherwise the peer could run out of credit while this side waits on the
/// peer, and both would stall.
fn deliver(inner: &Inner, slot: crate::verbs::Slot) -> Bytes {
    let ready = lock(&inner.qp).recvs_posted() + inner.recv_region.free_count();
    if ready * 4 < inner.config.recv_buffers as usize {
        Bytes::copy_from_slice(slot.filled())
    } else {
        Bytes::from_owner(slot)
    }
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
    let room = |qp: &crate::verbs::RcQueuePair| {
        (qp.sends_in_flight() as u32) < inner.config.send_buffers + inner.config.large_buffers() + 4
    };
    {
        let has_room = room(&qp);
        let mut large = lock(&inner.large_recv);
        large.relend_freed();
        let mut credits = lock(&inner.credits);
        // Each announcement uses a credit; the last one stays for credit-only messages.
        let returns = std::iter::from_fn(|| {
            if credits.available < 2 || !has_room {
                return None;
            }
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
    if credits.owed > 0 && credits.available >= 1 && room(&qp) && (credits.owed >= threshold || peer_available <= 1) {
        let imm = Imm::Credit(std::mem::take(&mut credits.owed)).encode();
        credits.available -= 1;
        credits.posted += 1;
        qp.post_send([SendRequest { slot: None, imm, signaled: true, remote: None }])?;
        return Ok(true);
    }
    Ok(reposted)
}

fn fail(inner: &Inner, incoming: &Incoming, err: RdmaError) {
    tracing::warn!(device = %inner.device, qp = inner.qp_num, peer = %inner.peer, %err, "RDMA connection failed");
    inner.close(err.to_string());
    let _ = incoming.send(Err(err));
}

/// After a close: deliver what already completed, then flush the QP so every posted buffer comes
/// back before the QP is destroyed.
async fn drain_after_close(
    inner: &Inner,
    cq: &CompletionQueue,
    completions: &mut Vec<Completion>,
    incoming: &Incoming,
) {
    // Successful completions queued before the close are still data the peer sent.
    completions.clear();
    if cq.poll(completions).is_ok() {
        for completion in completions.iter() {
            let reaped = lock(&inner.qp).reap(completion);
            if let Ok(Reaped::Received { slot, imm, byte_len }) = reaped
                && let Ok(Some(message)) = received(inner, slot, imm, byte_len)
            {
                let _ = incoming.send(Ok(message));
            }
        }
    }
    lock(&inner.qp).move_to_error();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        completions.clear();
        match cq.poll(completions) {
            Ok(0) => {
                if lock(&inner.qp).sends_in_flight() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(_) => {
                for completion in completions.iter() {
                    let _ = lock(&inner.qp).reap(completion); // flushed: slots go back to their pools
                }
            }
            Err(_) => break,
        }
    }
    inner.credit_changed.notify_waiters();
}

/// Watches the TCP control connection: the peer closing it (or it failing) ends the connection.
pub(crate) async fn watch_liveness(inner: Arc<Inner>, mut tcp: TcpReceiver) {
    let reason = loop {
        tokio::select! {
            message = tcp.recv() => match message {
                Ok(Some(_)) => continue, // nothing is expected on TCP after the handshake
                Ok(None) => break "the peer closed the connection".to_string(),
                Err(err) => break format!("control connection failed: {err}"),
            },
            () = inner.closing.notified() => {
                // Someone else closed; re-arm the permit for the poller and stop watching.
                inner.closing.notify_one();
                return;
            }
        }
    };
    inner.close(reason);
}
