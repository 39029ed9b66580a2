//! The completion poller of a connection (one tokio task) and the liveness watch on its TCP
//! control connection.
//!
//! The poller reaps (`reap.rs`) while completions keep coming and spins for a bounded budget after
//! the last one (`PollMode::Adaptive`), then arms notification, polls once more to close the race,
//! and sleeps on the non-blocking completion-channel fd through `AsyncFd`, or on a receive buffer
//! coming back, which it re-posts. `PollMode::BusyPoll` never sleeps. While the receiver spins on
//! the CQ itself (it holds the lease), the poller stays away, and takes over when the receiver
//! gives the lease up or stops renewing it. Spinning yields to other tasks without a system call
//! (`spin_once`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_rpc_transport_tcp::TcpReceiver;

use crate::PollMode;
use crate::connection::{Inner, lock};
use crate::reap::{Reaper, fail, received, step_or_fail};
use crate::verbs::{CompletionQueue, Reaped};

/// Runs until the connection closes; then moves the QP to error, reaps the flush, closes the
/// receiver's queue, and returns.
pub(crate) async fn run(inner: Arc<Inner>, mut cq: CompletionQueue) {
    if let Err(err) = cq.register() {
        fail(&inner, &lock(&inner.reaper), err);
        close_incoming(&inner);
        return;
    }
    let mut last_progress = Instant::now();
    loop {
        if inner.is_closed() {
            break;
        }
        // The receiver is spinning on the CQ itself: stay out of its way until it stops.
        if let Some(until) = inner.lease.held_until(Instant::now()) {
            tokio::select! {
                () = inner.lease.wait(until) => {}
                () = inner.closing.notified() => inner.closing.notify_one(),
            }
            last_progress = Instant::now();
            continue;
        }
        if step_or_fail(&inner) {
            last_progress = Instant::now();
            spin_once().await;
            continue;
        }
        if inner.is_closed() {
            break;
        }
        let spin = match inner.config.poll {
            PollMode::BusyPoll => true,
            PollMode::Adaptive(budget) => last_progress.elapsed() < budget,
        };
        if spin {
            spin_once().await;
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
            fail(&inner, &lock(&inner.reaper), err);
            break;
        }
        // A completion that arrived before the arm raises no event: look once more.
        if step_or_fail(&inner) || inner.is_closed() {
            continue;
        }
        tokio::select! {
            () = cq.wait_event() => {}
            () = inner.recv_region.wait_freed() => {}
            () = inner.closing.notified() => {}
        }
    }
    drain_after_close(&inner).await;
    close_incoming(&inner);
}

/// Ends the receiver's queue: it sees what was delivered, then the end.
fn close_incoming(inner: &Inner) {
    lock(&inner.reaper).incoming = None;
}

/// Lets the runtime's other ready tasks run, then comes back: the task wakes itself and is queued
/// behind them. Unlike `tokio::task::yield_now`, which hands its waker to the IO driver and so
/// costs an `epoll_wait` on every turn of an otherwise idle runtime, this polls the CQ without a
/// system call; the runtime still polls its IO driver and timers every `event_interval` tasks.
pub(crate) async fn spin_once() {
    let mut spun = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut spun, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// After a close: deliver what already completed, then flush the QP so every posted buffer comes
/// back before the QP is destroyed.
async fn drain_after_close(inner: &Inner) {
    // Successful completions queued before the close are still data the peer sent.
    {
        let mut reaper = lock(&inner.reaper);
        let Reaper { cq, completions, incoming, small, .. } = &mut *reaper;
        completions.clear();
        if cq.poll(completions).is_ok() {
            for completion in completions.iter() {
                let reaped = lock(&inner.qp).reap(completion);
                if let Ok(Reaped::Received { slot, imm, byte_len }) = reaped
                    && let Ok(Some(message)) = received(inner, slot, imm, byte_len, small)
                    && let Some(incoming) = incoming
                {
                    let _ = incoming.send(Ok(message));
                }
            }
        }
        small.release();
    }
    lock(&inner.qp).move_to_error();
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        let polled = {
            let mut reaper = lock(&inner.reaper);
            let Reaper { cq, completions, .. } = &mut *reaper;
            completions.clear();
            let polled = cq.poll(completions);
            for completion in completions.iter() {
                let _ = lock(&inner.qp).reap(completion); // flushed: slots go back to their pools
            }
            polled
        };
        match polled {
            Ok(0) => {
                if lock(&inner.qp).sends_in_flight() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(_) => {}
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
