//! A call's shared state: its final status and the queue of events the driver hands its handles,
//! in one allocation per call.
//!
//! A channel per call (a tokio mpsc is two allocations) plus an `Arc` for the status cost three
//! allocations per call on each side; this is one. The queue keeps its first few events inline
//! (a unary call has at most three: the message, the half-close, the end), so the common call
//! allocates nothing more; a longer stream spills to a `VecDeque`. One producer (the driver, through
//! [`EventSender`]) and one consumer (the call's receiving handle) at a time.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use crate::status::Status;

/// Events kept without allocating.
const INLINE: usize = 3;

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
}

impl CallShared {
    /// The final status, or `fallback` if the call has not ended (the connection went away).
    pub(crate) fn status_or(&self, fallback: impl FnOnce() -> Status) -> Status {
        self.status.get().cloned().unwrap_or_else(fallback)
    }

    /// The next event, or `None` once the driver let go of the call and every event was taken.
    pub(crate) async fn next_event(&self) -> Option<CallEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<CallEvent>> {
        let mut queue = self.lock();
        if let Some(event) = queue.pop() {
            return Poll::Ready(Some(event));
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

/// The driver's end of a call's events; dropping it tells the handle no more will come.
#[derive(Debug)]
pub(crate) struct EventSender(std::sync::Arc<CallShared>);

impl EventSender {
    pub(crate) fn new(shared: std::sync::Arc<CallShared>) -> Self {
        EventSender(shared)
    }

    /// The call's shared state.
    pub(crate) fn shared(&self) -> &CallShared {
        &self.0
    }

    /// Queues an event and wakes the handle.
    pub(crate) fn send(&self, event: CallEvent) {
        let waker = {
            let mut queue = self.0.lock();
            queue.push(event);
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let waker = {
            let mut queue = self.0.lock();
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
    use std::sync::Arc;

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
        let shared = Arc::new(CallShared::default());
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
    async fn a_waiting_handle_is_woken_by_an_event_and_by_the_end() {
        let shared = Arc::new(CallShared::default());
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
}
