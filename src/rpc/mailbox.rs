//! The driver's mailbox: one queue of everything call handles (and the client's last handle) tell
//! a connection's driver, and one doorbell to wake it.
//!
//! It replaced two tokio channels (one for commands carrying transport buffers, one for the rest)
//! whose receivers the driver polled on every pass, each registering its waker, and whose order
//! across the two queues the driver had to restore. Here:
//! - order is the queue's: a stream's End or cancel can never overtake its Open or last message;
//! - the driver's poll registers one waker, and only the first push after the driver armed the
//!   doorbell ([`Mailbox::ready`], before it sleeps) rings it. The driver does not disarm it when
//!   something else wakes it (its socket). Disarming then saved about 1 k instructions per call,
//!   but a caller that queues a call while the driver runs must wake it: tokio then queues the
//!   driver behind the other runnable callers, and their calls share one write. Disarmed when
//!   woken, `calls_woken_together_share_one_write` failed: one write per call. It does disarm
//!   it ([`Mailbox::disarm`]) where it takes the queue again before it could sleep: before it
//!   polls new handlers inline (their replies), and when it steps aside behind the callers it
//!   woke (it has woken itself). A push there used to wake it for a second, empty poll of its
//!   task: 1.0 k instructions per round trip (19.9 k → 18.9 k, callgrind, `--no-spin`);
//! - handles that know nothing of the transport's buffer type push control commands through
//!   [`Ctl`], a type-erased handle on the same queue;
//! - the queue is a `VecDeque` behind a mutex, held for one push or pop: it keeps its capacity,
//!   so a connection in steady state allocates nothing here. (A lock-free `SegQueue` allocated a
//!   3.7 KiB block every 31 commands: 0.03 allocations per unary call on each side.)
//!
//! When the driver ends it [closes](Mailbox::close) the mailbox: a command pushed after that is
//! dropped at once (by whoever sees the close last), which ends its call: dropping an `Open`
//! drops its `EventSender`, which closes the call; dropping an ack sender fails the wait on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use super::command::{BufCommand, CallCommand};

/// One entry of the mailbox.
#[derive(Debug)]
pub(crate) enum Command<B> {
    /// A command carrying a transport buffer (client calls).
    Buf(BufCommand<B>),
    /// Any other call command (both sides).
    Ctl(CallCommand),
    /// The client's last handle was dropped: finish what is open, then close.
    HandlesGone,
    /// Close gracefully (GOAWAY; calls in flight finish): a client's `close`, a server's
    /// shutdown. Queued rather than watched, so the driver's pass polls nothing for it.
    Shutdown,
}

/// What the driver is woken by.
#[derive(Debug)]
pub(crate) struct Mailbox<B> {
    queue: Mutex<VecDeque<Command<B>>>,
    bell: AtomicWaker,
    /// Set by the driver just before it sleeps on the doorbell; the first push after that rings.
    armed: AtomicBool,
    closed: AtomicBool,
}

impl<B: Send + 'static> Mailbox<B> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Mailbox {
            queue: Mutex::new(VecDeque::new()),
            bell: AtomicWaker::new(),
            armed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        })
    }

    /// Queues `cmd` and wakes the driver if it sleeps. `Err` gives it back when the connection
    /// is over.
    pub(crate) fn push(&self, cmd: Command<B>) -> Result<(), Command<B>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(cmd);
        }
        self.lock().push_back(cmd);
        // Pairs with the fence in `poll_ready` and in `close`: either the driver sees this
        // command, or this push sees it armed (or closed).
        fence(Ordering::SeqCst);
        if self.armed.swap(false, Ordering::AcqRel) {
            self.bell.wake();
        }
        if self.closed.load(Ordering::Acquire) {
            // The driver may have drained the queue before this command landed in it.
            self.drain();
        }
        Ok(())
    }

    /// Pushes a control command.
    pub(crate) fn push_ctl(&self, cmd: CallCommand) -> Result<(), CallCommand> {
        self.push(Command::Ctl(cmd)).map_err(|cmd| match cmd {
            Command::Ctl(cmd) => cmd,
            // `push` hands back what it was given.
            Command::Buf(_) | Command::HandlesGone | Command::Shutdown => {
                unreachable!("push_ctl pushed a control command")
            }
        })
    }

    /// The next command, if any. Only the driver takes.
    pub(crate) fn pop(&self) -> Option<Command<B>> {
        self.lock().pop_front()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Command<B>>> {
        // Nothing panics while holding it: a push or a pop leaves the queue consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ready once the queue holds a command; otherwise arms the doorbell with `cx`'s waker.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_empty() {
            return Poll::Ready(());
        }
        self.bell.register(cx.waker());
        self.armed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.is_empty() {
            Poll::Pending
        } else {
            self.armed.store(false, Ordering::Relaxed);
            Poll::Ready(())
        }
    }

    /// Disarms the doorbell: pushes from now on do not wake the driver. For a driver that takes
    /// the queue again before it next sleeps (it runs handlers inline, or steps aside behind the
    /// callers it woke): a push then would only wake it for a second, empty poll of its task.
    /// [`ready`](Self::ready) re-arms it and finds anything queued meanwhile.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// Waits until the queue holds a command. Cancel-safe: it takes nothing.
    pub(crate) async fn ready(&self) {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await
    }

    /// Refuses further commands and drops those queued (the driver calls it as it ends).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        self.drain();
    }

    fn drain(&self) {
        // Dropped outside the lock: dropping a command wakes the handle waiting on its call.
        let dropped = std::mem::take(&mut *self.lock());
        drop(dropped);
    }
}

/// The control half of a mailbox, without its buffer type: what server handles and a client's
/// call handles send `CallCommand`s through. Cloning it is one reference count.
#[derive(Clone)]
pub(crate) struct Ctl(Arc<dyn CtlQueue>);

impl Ctl {
    pub(crate) fn new<B: Send + 'static>(mailbox: &Arc<Mailbox<B>>) -> Self {
        Ctl(mailbox.clone())
    }

    /// Queues `cmd`; `Err` gives it back when the connection is over.
    pub(crate) fn send(&self, cmd: CallCommand) -> Result<(), CallCommand> {
        self.0.push_ctl(cmd)
    }
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ctl")
    }
}

trait CtlQueue: Send + Sync {
    fn push_ctl(&self, cmd: CallCommand) -> Result<(), CallCommand>;
    fn push_shutdown(&self);
}

impl<B: Send + 'static> CtlQueue for Mailbox<B> {
    fn push_ctl(&self, cmd: CallCommand) -> Result<(), CallCommand> {
        Mailbox::push_ctl(self, cmd)
    }

    fn push_shutdown(&self) {
        // Refused only when the connection is already over.
        let _ = self.push(Command::Shutdown);
    }
}

/// What a server keeps of each connection it serves: enough to ask it to shut down, without
/// keeping its mailbox alive once the connection and its handles are gone.
pub(crate) struct StopHandle(Weak<dyn CtlQueue>);

impl StopHandle {
    pub(crate) fn new<B: Send + 'static>(mailbox: &Arc<Mailbox<B>>) -> Self {
        let queue: Arc<dyn CtlQueue> = mailbox.clone();
        StopHandle(Arc::downgrade(&queue))
    }

    /// Queues a graceful shutdown, if the connection may still be running.
    pub(crate) fn stop(&self) {
        if let Some(queue) = self.0.upgrade() {
            queue.push_shutdown();
        }
    }

    /// False once nothing holds the connection's mailbox: its driver and every handle are gone.
    pub(crate) fn is_live(&self) -> bool {
        self.0.strong_count() > 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;
    use crate::status::Status;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker that counts its wakes.
    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (counter.clone(), Waker::from(counter))
    }

    fn finish(id: u64) -> Command<()> {
        Command::Ctl(CallCommand::Finish { id, status: Status::ok() })
    }

    fn id_of(cmd: Command<()>) -> u64 {
        match cmd {
            Command::Ctl(CallCommand::Finish { id, .. }) => id,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rings_only_when_the_driver_sleeps() {
        let mailbox = Mailbox::<()>::new();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(mailbox.poll_ready(&mut cx).is_pending());
        mailbox.push(finish(1)).expect("the mailbox is open");
        mailbox.push(finish(2)).expect("the mailbox is open");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "one ring for two pushes");
        assert!(mailbox.poll_ready(&mut cx).is_ready());
        assert_eq!(mailbox.pop().map(id_of), Some(1));
        assert_eq!(mailbox.pop().map(id_of), Some(2));
        // Not armed: pushes while the driver runs do not wake it.
        mailbox.push(finish(3)).expect("the mailbox is open");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(mailbox.poll_ready(&mut cx).is_ready());
    }

    #[test]
    fn a_disarmed_mailbox_does_not_ring_and_ready_still_finds_the_push() {
        let mailbox = Mailbox::<()>::new();
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(mailbox.poll_ready(&mut cx).is_pending(), "armed");
        mailbox.disarm();
        mailbox.push(finish(1)).expect("the mailbox is open");
        assert_eq!(counter.0.load(Ordering::SeqCst), 0, "no ring while disarmed");
        assert!(mailbox.poll_ready(&mut cx).is_ready(), "the push is found");
        assert_eq!(mailbox.pop().map(id_of), Some(1));
        assert!(mailbox.poll_ready(&mut cx).is_pending(), "armed again");
        mailbox.push(finish(2)).expect("the mailbox is open");
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "rings once re-armed");
    }

    #[test]
    fn a_closed_mailbox_refuses_and_drops() {
        let mailbox = Mailbox::<()>::new();
        mailbox.push(finish(1)).expect("the mailbox is open");
        mailbox.close();
        assert!(mailbox.pop().is_none(), "close drops what was queued");
        assert!(mailbox.push(finish(2)).is_err());
        let ctl = Ctl::new(&mailbox);
        assert!(ctl.send(CallCommand::End { id: 3 }).is_err());
    }

    #[test]
    fn no_push_is_missed_by_a_driver_that_sleeps_between_them() {
        // Ping-pong: the pusher queues the next command as soon as the driver took the last one,
        // which races the push against the driver's going to sleep on every round. The driver
        // sleeps (spins on its waker's count) whenever `poll_ready` is pending, so one missed
        // wake-up leaves it asleep for good and the test fails at its deadline.
        const ROUNDS: u64 = 100_000;
        let mailbox = Mailbox::<()>::new();
        let taken = Arc::new(AtomicUsize::new(0));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let pusher = {
            let (mailbox, taken) = (mailbox.clone(), taken.clone());
            std::thread::spawn(move || {
                for id in 0..ROUNDS {
                    mailbox.push(finish(id)).expect("the mailbox is open");
                    while taken.load(Ordering::SeqCst) as u64 == id {
                        assert!(std::time::Instant::now() < deadline, "round {id} never taken");
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let (counter, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        for round in 0..ROUNDS {
            loop {
                let rings = counter.0.load(Ordering::SeqCst);
                if mailbox.poll_ready(&mut cx).is_ready() {
                    break;
                }
                while counter.0.load(Ordering::SeqCst) == rings {
                    assert!(std::time::Instant::now() < deadline, "asleep in round {round}");
                    std::hint::spin_loop();
                }
            }
            assert_eq!(mailbox.pop().map(id_of), Some(round));
            taken.fetch_add(1, Ordering::SeqCst);
        }
        pusher.join().expect("the pusher does not panic");
    }
}
