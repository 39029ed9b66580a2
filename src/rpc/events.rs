//! A call's shared state: its final status and the queue of events the driver hands its handles,
//! in one allocation, reused from call to call.
//!
//! A channel per call (a tokio mpsc is two allocations) plus an `Arc` for the status cost three
//! allocations per call on each side; this is one, and reused. The queue keeps its first few events inline
//! (a unary call has at most three: the message, the half-close, the end), so the common call
//! allocates nothing more; a longer stream spills to a `VecDeque`. One producer (the driver, through
//! [`EventSender`]) and one consumer (the call's receiving handle) at a time.
//!
//! Handles and the driver hold it through [`CallRef`]s; when the last one drops, the state is
//! reset and goes back to its connection's [`CallPool`], so a connection in steady state opens
//! calls without allocating.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::status::Status;

/// Events kept without allocating.
const INLINE: usize = 3;

/// Call states a connection keeps for reuse.
const POOLED_CALLS: usize = 256;

/// What a call's handle receives.
#[derive(Debug)]
pub(crate) enum CallEvent {
    /// A protobuf message.
    Message(Bytes),
    /// Raw stream data.
    Data(Bytes),
    /// The peer half-closed.
    End,
    /// The call is over.
    Closed(Status),
}

/// State a call's handles share with the driver.
#[derive(Debug, Default)]
pub(crate) struct CallShared {
    /// How the call ended, once it did.
    pub(crate) status: OnceLock<Status>,
    queue: Mutex<Queue>,
}

/// What a [`CallRef`] reads once its state went back to the pool (only during its own drop).
static RELEASED: CallShared = CallShared {
    status: OnceLock::new(),
    queue: Mutex::new(Queue {
        inline: [const { None }; INLINE],
        head: 0,
        len: 0,
        overflow: VecDeque::new(),
        waker: None,
        closed: true,
    }),
};

#[derive(Debug, Default)]
struct Queue {
    /// The oldest events, a ring of `len` entries from `head`.
    inline: [Option<CallEvent>; INLINE],
    head: usize,
    len: usize,
    /// Newer events once the ring was full; everything here is newer than the ring's entries.
    overflow: VecDeque<CallEvent>,
    /// The handle waiting for an event.
    waker: Option<Waker>,
    /// The driver let go of the call: no more events.
    closed: bool,
}

impl Queue {
    fn push(&mut self, event: CallEvent) {
        if self.len < INLINE && self.overflow.is_empty() {
            let at = (self.head + self.len) % INLINE;
            if let Some(slot) = self.inline.get_mut(at) {
                *slot = Some(event);
                self.len += 1;
                return;
            }
        }
        self.overflow.push_back(event);
    }

    fn pop(&mut self) -> Option<CallEvent> {
        if self.len > 0 {
            let event = self.inline.get_mut(self.head).and_then(Option::take);
            self.head = (self.head + 1) % INLINE;
            self.len -= 1;
            return event;
        }
        self.overflow.pop_front()
    }

    /// The oldest event.
    fn front(&self) -> Option<&CallEvent> {
        if self.len > 0 { self.inline.get(self.head).and_then(Option::as_ref) } else { self.overflow.front() }
    }
}

/// What is queued right behind an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// More events may come.
    More,
    /// The peer's `End` was, and was taken along: the peer sends nothing more.
    Ended,
    /// The call's `Closed` was, and was taken along: the call is over, with the status in
    /// [`CallShared::status`] (always set before `Closed` is queued). A unary reply and the
    /// call's end then reach the caller in one look at the queue.
    Closed,
    /// An `End` or `Closed` is next, behind an event that is not a message.
    Closing,
}

impl CallShared {
    /// Back to the state of a new call, keeping the overflow queue's capacity.
    fn reset(&mut self) {
        self.status = OnceLock::new();
        let queue = self.queue.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        queue.inline = [const { None }; INLINE];
        queue.head = 0;
        queue.len = 0;
        queue.overflow.clear();
        queue.waker = None;
        queue.closed = false;
    }

    /// The final status, or `fallback` if the call has not ended (the connection went away).
    pub(crate) fn status_or(&self, fallback: impl FnOnce() -> Status) -> Status {
        self.status.get().cloned().unwrap_or_else(fallback)
    }

    /// The next event, or `None` once the driver let go of the call and every event was taken.
    #[cfg(test)]
    pub(crate) async fn next_event(&self) -> Option<CallEvent> {
        self.next_event_and_after().await.map(|(event, _)| event)
    }

    /// The next event and what is queued right behind it: whether the peer is known to send
    /// nothing more after it (a message's receiver then owes no flow-control credit). An `End`
    /// right behind a message or stream data is taken with it ([`After::Ended`]): a unary
    /// request's receiver then learns the end with the request, in one look at the queue.
    pub(crate) async fn next_event_and_after(&self) -> Option<(CallEvent, After)> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<(CallEvent, After)>> {
        let mut queue = self.lock();
        if let Some(event) = queue.pop() {
            let item = matches!(event, CallEvent::Message(_) | CallEvent::Data(_));
            let after = match queue.front() {
                Some(CallEvent::End) if item => After::Ended,
                Some(CallEvent::Closed(_)) if item => After::Closed,
                Some(CallEvent::End | CallEvent::Closed(_)) => After::Closing,
                _ => After::More,
            };
            if matches!(after, After::Ended | After::Closed) {
                queue.pop();
            }
            return Poll::Ready(Some((event, after)));
        }
        if queue.closed {
            return Poll::Ready(None);
        }
        match &mut queue.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (no step can unwind half-way).
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A connection's call states waiting for reuse; clones share them.
#[derive(Debug, Clone)]
pub(crate) struct CallPool(Arc<crossbeam::queue::ArrayQueue<Arc<CallShared>>>);

impl Default for CallPool {
    fn default() -> Self {
        CallPool(Arc::new(crossbeam::queue::ArrayQueue::new(POOLED_CALLS)))
    }
}

impl CallPool {
    /// A fresh call state: a reused one when one is free.
    pub(crate) fn take(&self) -> CallRef {
        let shared = self.0.pop().unwrap_or_default();
        CallRef { shared: Some(shared), pool: self.clone() }
    }
}

/// A reference to a call's shared state; the last one to drop returns it to its pool.
#[derive(Debug, Clone)]
pub(crate) struct CallRef {
    /// `None` only while dropping.
    shared: Option<Arc<CallShared>>,
    pool: CallPool,
}

impl std::ops::Deref for CallRef {
    type Target = CallShared;
    fn deref(&self) -> &CallShared {
        self.shared.as_deref().unwrap_or(&RELEASED)
    }
}

impl Drop for CallRef {
    fn drop(&mut self) {
        if let Some(mut shared) = self.shared.take()
            && let Some(state) = Arc::get_mut(&mut shared)
        {
            state.reset();
            // A full pool drops it instead.
            let _ = self.pool.0.push(shared);
        }
    }
}

/// The driver's end of a call's events; dropping it tells the handle no more will come.
#[derive(Debug)]
pub(crate) struct EventSender {
    shared: CallRef,
    /// [`close`](Self::close) already let go of the queue.
    closed: bool,
}

impl EventSender {
    pub(crate) fn new(shared: CallRef) -> Self {
        EventSender { shared, closed: false }
    }

    /// The call's shared state.
    pub(crate) fn shared(&self) -> &CallShared {
        &self.shared
    }

    /// Queues an event and wakes the handle.
    pub(crate) fn send(&self, event: CallEvent) {
        let waker = {
            let mut queue = self.shared.lock();
            queue.push(event);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues an event and the peer's half-close behind it, in one step.
    pub(crate) fn send_ending(&self, event: CallEvent) {
        let waker = {
            let mut queue = self.shared.lock();
            queue.push(event);
            queue.push(CallEvent::End);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues `first` if any (a client's reply), then the call's last event, and lets go of the
    /// queue, in one step: one lock and one wake-up (dropping the sender lets go too, with a step
    /// of its own).
    pub(crate) fn close_after(mut self, first: Option<CallEvent>, event: CallEvent) {
        self.closed = true;
        let waker = {
            let mut queue = self.shared.lock();
            if let Some(first) = first {
                queue.push(first);
            }
            queue.push(event);
            queue.closed = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let waker = {
            let mut queue = self.shared.lock();
            queue.closed = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u8) -> CallEvent {
        CallEvent::Data(Bytes::from(vec![n]))
    }

    fn as_byte(event: Option<CallEvent>) -> Option<u8> {
        match event {
            Some(CallEvent::Data(bytes)) => bytes.first().copied(),
            _ => None,
        }
    }

    #[tokio::test]
    async fn events_keep_their_order_across_the_ring_and_the_overflow() {
        let shared = CallPool::default().take();
        let tx = EventSender::new(shared.clone());
        let mut expected = 0u8;
        let mut next = 0u8;
        // Interleave pushes and pops so the ring wraps and the overflow fills and drains.
        for round in 0..20u8 {
            for _ in 0..(round % 7) {
                tx.send(data(next));
                next = next.wrapping_add(1);
            }
            for _ in 0..(round % 5) {
                if expected == next {
                    break;
                }
                assert_eq!(as_byte(shared.next_event().await), Some(expected));
                expected = expected.wrapping_add(1);
            }
        }
        drop(tx);
        while expected != next {
            assert_eq!(as_byte(shared.next_event().await), Some(expected));
            expected = expected.wrapping_add(1);
        }
        assert!(shared.next_event().await.is_none(), "closed after the last event");
    }

    #[tokio::test]
    async fn the_last_reference_returns_a_reset_state_to_the_pool() {
        let pool = CallPool::default();
        let handle = pool.take();
        let address = &*handle as *const CallShared;
        let driver = EventSender::new(handle.clone());
        driver.send(data(1));
        let _ = handle.status.set(Status::ok());
        drop(driver);
        assert!(pool.0.is_empty(), "the handle still holds it");
        drop(handle);
        assert_eq!(pool.0.len(), 1);
        let again = pool.take();
        assert_eq!(&*again as *const CallShared, address, "the same allocation");
        assert!(again.status.get().is_none(), "no status");
        let tx = EventSender::new(again.clone());
        tx.send(data(2));
        assert_eq!(as_byte(again.next_event().await), Some(2), "no event left from the last call");
    }

    #[tokio::test]
    async fn a_waiting_handle_is_woken_by_an_event_and_by_the_end() {
        let shared = CallPool::default().take();
        let tx = EventSender::new(shared.clone());
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { (as_byte(shared.next_event().await), shared.next_event().await.is_none()) }
        });
        tokio::task::yield_now().await;
        tx.send(data(7));
        drop(tx);
        assert_eq!(waiter.await.expect("waiter"), (Some(7), true));
    }

    #[tokio::test]
    async fn a_message_is_last_only_when_the_end_is_queued_behind_it() {
        let shared = CallPool::default().take();
        let tx = EventSender::new(shared.clone());
        let after = |event: Option<(CallEvent, After)>| event.map(|(event, after)| (as_byte(Some(event)), after));
        tx.send(data(1));
        tx.send_ending(data(2));
        assert_eq!(after(shared.next_event_and_after().await), Some((Some(1), After::More)), "another message follows");
        assert_eq!(after(shared.next_event_and_after().await), Some((Some(2), After::Ended)), "the end, taken along");
        tx.send(data(4));
        assert_eq!(
            after(shared.next_event_and_after().await),
            Some((Some(4), After::More)),
            "nothing queued behind it yet"
        );
        tx.send(data(5));
        tx.send(CallEvent::Closed(Status::ok()));
        assert_eq!(
            after(shared.next_event_and_after().await),
            Some((Some(5), After::Closed)),
            "the close, taken along"
        );
        tx.send(CallEvent::End);
        tx.send(CallEvent::End);
        assert_eq!(
            after(shared.next_event_and_after().await),
            Some((None, After::Closing)),
            "only a message takes the end along"
        );
    }

    #[tokio::test]
    async fn closing_queues_the_last_event_and_ends_the_queue_in_one_step() {
        let shared = CallPool::default().take();
        let tx = EventSender::new(shared.clone());
        let waiter = tokio::spawn({
            let shared = shared.clone();
            async move { (shared.next_event().await, shared.next_event().await.is_none()) }
        });
        tokio::task::yield_now().await;
        tx.close_after(None, CallEvent::Closed(Status::cancelled("gone")));
        let (last, ended) = waiter.await.expect("waiter");
        assert!(matches!(last, Some(CallEvent::Closed(status)) if status.code == Status::cancelled("").code));
        assert!(ended, "nothing follows a close");
    }
}
