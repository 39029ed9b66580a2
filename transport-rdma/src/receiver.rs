//! The receiving half of a connection: [`RdmaReceiver`] yields received messages in order, from
//! the queue the poller task fills, or by reaping the CQ itself while it spins within its polling
//! window (`reap.rs`), or, once it claimed the CQ, in the calling thread alone (run to completion).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::RdmaError;
use crate::connection::{Inner, lock};
use crate::poller;

/// The receiving half.
pub struct RdmaReceiver {
    inner: Arc<Inner>,
    incoming: mpsc::UnboundedReceiver<Result<Bytes, RdmaError>>,
    /// While spinning, the receiver reaps the CQ itself (see `reap.rs`).
    spin: Spin,
}

/// The polling window after the last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spin {
    /// Wait for the poller task.
    Off,
    /// A message was taken; the window starts at the first look that finds nothing (so taking a
    /// message costs no clock read: that is the round trip's path).
    Armed,
    /// Spin until then.
    Until(Instant),
    /// The CQ belongs to the thread that polls this receiver, for good (`claim_cq`).
    Claimed,
}

impl RdmaReceiver {
    pub(crate) fn new(inner: Arc<Inner>, incoming: mpsc::UnboundedReceiver<Result<Bytes, RdmaError>>) -> Self {
        RdmaReceiver { inner, incoming, spin: Spin::Off }
    }

    /// The next message, `None` once the connection closed cleanly. Cancel-safe: messages wait in
    /// the queue until taken.
    ///
    /// Within the polling budget after the last message (`PollMode`), it spins on the CQ itself
    /// rather than wait for the poller task to hand the message over: one task hop less per
    /// message.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, RdmaError> {
        loop {
            if self.spin == Spin::Claimed {
                match self.poll_now() {
                    Some(message) => return message,
                    None => {
                        poller::spin_once().await;
                        continue;
                    }
                }
            }
            match self.incoming.try_recv() {
                Ok(message) => return self.taken(message),
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            let end = match self.spin {
                Spin::Off => break,
                Spin::Until(end) => end,
                Spin::Claimed => unreachable!("a claimed receiver is polled above"),
                Spin::Armed => {
                    let end = match self.inner.config.poll {
                        crate::PollMode::Adaptive(budget) => now + budget,
                        // Far enough to never end; the lease is renewed for a millisecond at a time.
                        crate::PollMode::BusyPoll => now + std::time::Duration::from_secs(86_400 * 365),
                    };
                    self.spin = Spin::Until(end);
                    end
                }
            };
            if now >= end || self.inner.is_closed() {
                break;
            }
            self.inner.lease.hold(now, end);
            if !self.reap_here() {
                poller::spin_once().await;
            }
        }
        // Out of budget: the poller task takes over, and this waits for it.
        self.spin = Spin::Off;
        self.inner.lease.release();
        match self.incoming.recv().await {
            Some(message) => self.taken(message),
            None => Ok(None),
        }
    }

    fn taken(&mut self, message: Result<Bytes, RdmaError>) -> Result<Option<Bytes>, RdmaError> {
        if self.spin != Spin::Claimed {
            self.spin = Spin::Armed;
        }
        message.map(Some)
    }

    /// Makes this receiver the CQ's only poller until it is dropped: the poller task stays
    /// asleep (it still ends the connection when the peer goes), and [`poll_now`](Self::poll_now)
    /// reaps in the calling thread. For a thread that runs a connection to completion with no
    /// runtime between the CQ and the handler; nothing is received unless it polls.
    pub fn claim_cq(&mut self) {
        self.spin = Spin::Claimed;
        self.inner.lease.hold_for_good();
        // Under the reaper's lock nothing new enters the channel: what it holds now goes first.
        let mut reaper = lock(&self.inner.reaper);
        let claimed = reaper.claimed.get_or_insert_with(std::collections::VecDeque::new);
        while let Ok(message) = self.incoming.try_recv() {
            claimed.push_back(message);
        }
    }

    /// The next message if one has arrived, reaping the CQ in the calling thread: never waits.
    /// `Some(Ok(None))` once the connection closed cleanly. Meant for a receiver that
    /// [claimed](Self::claim_cq) the CQ; otherwise it reaps only when the poller task is not.
    pub fn poll_now(&mut self) -> Option<Result<Option<Bytes>, RdmaError>> {
        if self.spin == Spin::Claimed {
            // The poller task reaps only to drain a closed connection, into the channel, after
            // what is queued here: the channel is looked at once this queue is empty.
            let mut reaper = self.inner.reaper.try_lock().ok()?;
            if let Some(message) = reaper.claimed.as_mut().and_then(std::collections::VecDeque::pop_front) {
                return Some(message.map(Some));
            }
            if let Err(err) = crate::reap::step(&self.inner, &mut reaper) {
                crate::reap::fail(&self.inner, &reaper, err);
            }
            if let Some(message) = reaper.claimed.as_mut().and_then(std::collections::VecDeque::pop_front) {
                return Some(message.map(Some));
            }
            drop(reaper);
            // Errors and the end come through the channel, and only once the connection closed.
            return if self.inner.is_closed() { self.try_take() } else { None };
        }
        if let Some(taken) = self.try_take() {
            return Some(taken);
        }
        self.reap_here();
        self.try_take()
    }

    /// A message already reaped (the end, or an error), without reaping: never waits, never
    /// polls the CQ. What a driver batching the messages of one pass takes when it expects no
    /// more: the reaping step after a message re-posts that message's receive buffer and returns
    /// credit (`reap.rs`), work that can wait until its reply is posted.
    pub fn try_recv_reaped(&mut self) -> Option<Result<Option<Bytes>, RdmaError>> {
        if self.spin == Spin::Claimed {
            let mut reaper = self.inner.reaper.try_lock().ok()?;
            if let Some(message) = reaper.claimed.as_mut().and_then(std::collections::VecDeque::pop_front) {
                return Some(message.map(Some));
            }
            drop(reaper);
            return if self.inner.is_closed() { self.try_take() } else { None };
        }
        match self.incoming.try_recv() {
            Ok(message) => Some(self.taken(message)),
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Ok(None)),
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }

    /// A message already reaped, the end, or `None`.
    fn try_take(&mut self) -> Option<Result<Option<Bytes>, RdmaError>> {
        match self.incoming.try_recv() {
            Ok(message) => Some(message.map(Some)),
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Ok(None)),
            Err(mpsc::error::TryRecvError::Empty) => None,
        }
    }

    /// One reaping step in this task or thread, unless the poller task is reaping right now
    /// (what it finds lands in the queue). True if anything happened.
    fn reap_here(&self) -> bool {
        match self.inner.reaper.try_lock() {
            Ok(mut reaper) => match crate::reap::step(&self.inner, &mut reaper) {
                Ok(progressed) => progressed,
                Err(err) => {
                    crate::reap::fail(&self.inner, &reaper, err);
                    true
                }
            },
            Err(_) => false,
        }
    }
}

impl Drop for RdmaReceiver {
    fn drop(&mut self) {
        self.inner.lease.release();
        self.inner.close("closed locally".into());
    }
}
