//! Reusable handler slots: a server call runs its handler's future in a pinned allocation that
//! the connection keeps and reuses, so a call that completes when first polled (a unary echo)
//! allocates no future.
//!
//! A [`HandlerSlot`] holds one method's handler future at a time. Generated services hand out
//! slots ([`Service::slot`](super::Service::slot), built with [`handler_slot`]); each connection's
//! driver keeps the idle ones in a [`SlotPool`]. A handler still pending after its inline poll
//! takes its slot into the task that finishes it, and the slot is dropped there. Services written
//! by hand that return no slot get a boxed future per call ([`Service::call`](super::Service::call)).
//! The pool keeps the unary slots of calls run to completion too ([`UnarySlot`](super::UnarySlot),
//! `unary.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::server::{HandlerFuture, ServerCall, Service};

/// Runs one handler at a time, for as many calls as it is started with.
pub trait HandlerSlot: Send + 'static {
    /// Starts the handler of `call`; a handler still running is dropped first.
    fn start(&mut self, call: ServerCall);
    /// Polls the running handler: `Ready` once it finished (or when none runs).
    fn poll_handler(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// A slot whose handlers `make` builds from their argument (a [`ServerCall`]): the future lives in
/// one pinned allocation, replaced in place for every call (`Pin::set`).
struct SlotOf<M, F> {
    make: M,
    running: Pin<Box<Option<F>>>,
}

impl<M, F: Future<Output = ()>> SlotOf<M, F> {
    fn new(make: M) -> Self {
        SlotOf { make, running: Box::pin(None) }
    }

    fn start_with<A>(&mut self, arg: A)
    where
        M: Fn(A) -> F,
    {
        let handler = (self.make)(arg);
        self.running.set(Some(handler));
    }

    fn poll_running(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(handler) = self.running.as_mut().as_pin_mut() else {
            return Poll::Ready(());
        };
        ready!(handler.poll(cx));
        // Done: its state is dropped now, not when the slot is next started.
        self.running.set(None);
        Poll::Ready(())
    }
}

/// A reusable slot for the handlers `make` returns (used by generated code).
pub fn handler_slot<M, F>(make: M) -> Box<dyn HandlerSlot>
where
    M: Fn(ServerCall) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    Box::new(SlotOf::new(make))
}

impl<M, F> HandlerSlot for SlotOf<M, F>
where
    M: Fn(ServerCall) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    fn start(&mut self, call: ServerCall) {
        self.start_with(call);
    }

    fn poll_handler(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_running(cx)
    }
}

/// A started handler: in a reusable slot, or boxed for this call alone.
pub(crate) enum Started {
    /// In a slot of the connection's pool (back to it once done, when done inline).
    Slot(Box<dyn HandlerSlot>),
    /// A future of its own.
    Boxed(HandlerFuture),
}

impl Started {
    /// Polls the handler.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Started::Slot(slot) => slot.poll_handler(cx),
            Started::Boxed(future) => future.as_mut().poll(cx),
        }
    }
}

/// Idle slots of one connection, by method path: handler slots, and the unary slots of calls
/// run to completion ([`UnarySlot`](super::UnarySlot)).
#[derive(Default)]
pub(crate) struct SlotPool {
    idle: Idle<Box<dyn HandlerSlot>>,
    unary: Idle<Box<dyn super::UnarySlot>>,
}

/// Idle slots kept per method: enough for the calls one pass of the driver starts. Only slots of
/// handlers that finished inline come back, so a connection holds at most this many of each
/// method's futures (an echo's is a few hundred bytes).
const IDLE_PER_METHOD: usize = 64;

impl SlotPool {
    /// Starts `call` to `method` of `service`: in an idle slot, a new one from the service, or as
    /// a boxed future when the service has no slots.
    #[allow(clippy::result_large_err)] // the call is handed back by value, as `Service::call` does
    pub(crate) fn start(
        &mut self,
        method: &'static str,
        service: &dyn Service,
        call: ServerCall,
    ) -> Result<Started, ServerCall> {
        match self.idle.take(method).or_else(|| service.slot(method)) {
            Some(mut slot) => {
                slot.start(call);
                Ok(Started::Slot(slot))
            }
            None => service.call(method, call).map(Started::Boxed),
        }
    }

    /// Keeps `slot` (idle: its handler finished) for the next call to `method`.
    pub(crate) fn give(&mut self, method: &'static str, slot: Box<dyn HandlerSlot>) {
        self.idle.give(method, slot);
    }

    /// An idle unary slot for `method`, or a new one; `None` when `method` is not unary.
    pub(crate) fn take_unary(
        &mut self,
        method: &'static str,
        service: &dyn Service,
    ) -> Option<Box<dyn super::UnarySlot>> {
        self.unary.take(method).or_else(|| service.unary_slot(method))
    }

    /// Keeps a unary slot whose handler finished (or never started).
    pub(crate) fn give_unary(&mut self, method: &'static str, slot: Box<dyn super::UnarySlot>) {
        self.unary.give(method, slot);
    }
}

/// Idle things by method path (compared by address: the router's own `&'static str`).
struct Idle<T>(Vec<(&'static str, Vec<T>)>);

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle(Vec::new())
    }
}

impl<T> Idle<T> {
    fn take(&mut self, method: &'static str) -> Option<T> {
        self.0.iter_mut().find(|(name, _)| std::ptr::eq(*name, method)).and_then(|(_, idle)| idle.pop())
    }

    fn give(&mut self, method: &'static str, item: T) {
        match self.0.iter_mut().find(|(name, _)| std::ptr::eq(*name, method)) {
            Some((_, idle)) if idle.len() < IDLE_PER_METHOD => idle.push(item),
            Some(_) => {}
            None => self.0.push((method, vec![item])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops.
    struct Dropped(Arc<AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn address<M, F>(slot: &SlotOf<M, F>) -> *const Option<F> {
        &*slot.running
    }

    #[test]
    fn a_slot_runs_handler_after_handler_in_one_allocation() {
        let runs = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (counter, drops) = (runs.clone(), dropped.clone());
        // Handler `n` is pending `n` times before it finishes.
        let mut slot = SlotOf::new(move |pending: usize| {
            let (counter, guard) = (counter.clone(), Dropped(drops.clone()));
            async move {
                let _guard = guard;
                for _ in 0..pending {
                    tokio::task::yield_now().await;
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let first = address(&slot);
        for pending in [0, 2, 0, 1] {
            slot.start_with(pending);
            for _ in 0..pending {
                assert!(slot.poll_running(&mut cx).is_pending());
            }
            assert!(slot.poll_running(&mut cx).is_ready());
            assert_eq!(address(&slot), first, "the same allocation runs every handler");
        }
        assert_eq!(runs.load(Ordering::Relaxed), 4);
        assert_eq!(dropped.load(Ordering::Relaxed), 4, "each handler's state is dropped when it finishes");
        assert!(slot.poll_running(&mut cx).is_ready(), "an idle slot is ready");
    }

    #[test]
    fn starting_a_busy_slot_drops_the_running_handler() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let drops = dropped.clone();
        let mut slot = SlotOf::new(move |()| {
            let guard = Dropped(drops.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        slot.start_with(());
        assert!(slot.poll_running(&mut cx).is_pending());
        slot.start_with(());
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        drop(slot);
        assert_eq!(dropped.load(Ordering::Relaxed), 2);
    }
}
