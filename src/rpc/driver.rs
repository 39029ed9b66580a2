//! The connection driver: one tokio task per connection that owns the IO-free [`Session`] and
//! moves frames between it, the transport and the call handles. It is deliberately thin: every
//! protocol decision is the session's.
//!
//! The driver also writes: frames the session releases go to the [`Outbox`] and are flushed from
//! inside the driver's `select!`, cancel-safely, so it never blocks on a full socket and can always
//! read (two peers sending at once cannot deadlock), without a writer task's hop per frame.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::command::{CallShared, Outgoing};
use super::dispatch::{Fresh, Serving, Slot, apply_buf, apply_ctl, dispatch, finish_replied, run_fresh};
use super::handler::SlotPool;
use super::mailbox::{Command, Ctl, Mailbox};
use super::now;
use super::outbox::Outbox;
use super::router::Router;
use crate::pb::rpc as pb;
use crate::session::{Event, IdMap, Role, Session, SessionConfig, Transmit};
use crate::status::Status;
use crate::transport::{FrameReceiver, Transport};
use crate::wire::{Frame, Kind, WireLimits};

/// Commands, or received frames, taken in one pass of the driver before its frames are written.
const BATCH: usize = 64;

/// Received bytes after which a pass stops taking frames: batching 64 frames of 64 KiB held
/// their replies back until 4 MiB had been read, and cut such calls at 64 in flight to a third.
/// 64 KiB (one read's worth) still lets a 64 KiB frame go alone, and takes 16 frames of 4 KiB a
/// pass: at 16 KiB (four), 4 KiB calls at 64 in flight made 0.53× the raw pipelined echo's calls
/// per second, 0.70× at 64 KiB (3 runs each; 256 KiB did no better).
const RECV_BATCH_BYTES: usize = 64 * 1024;

/// What a driver is started with.
pub(crate) struct DriverSetup<T: Transport> {
    pub(crate) alloc: T::Alloc,
    pub(crate) sender: T::Sender,
    pub(crate) receiver: T::Receiver,
    pub(crate) peer: Arc<str>,
    pub(crate) role: Role,
    pub(crate) config: SessionConfig,
    /// What call handles tell the driver.
    pub(crate) mailbox: Arc<Mailbox<T::Buf>>,
    pub(crate) router: Option<Arc<Router>>,
    /// Told the peer's SETTINGS once the handshake finished, or why it failed.
    pub(crate) ready: Option<oneshot::Sender<Result<pb::Settings, Status>>>,
    /// Where the connection's final status is published.
    pub(crate) closed: Arc<CallShared>,
}

/// Runs a connection to its end. Returns how it ended.
pub(crate) async fn drive<T: Transport>(setup: DriverSetup<T>) -> Status {
    let DriverSetup { alloc, sender, mut receiver, peer, role, config, mailbox, router, mut ready, closed } = setup;
    let limits = WireLimits { max_frame_size: config.max_frame_size };
    // What starting a server call needs; replies are encoded in the transport's own send memory.
    let ctl = Ctl::new(&mailbox);
    let serving = Serving {
        router: router.as_deref(),
        ctl: &ctl,
        peer: &peer,
        replies: Arc::new(crate::transport::BufferAlloc::reply_alloc(&alloc)),
        calls: super::events::CallPool::default(),
    };
    let mut outbox = Outbox::new(alloc, sender);
    let mut session: Session<Outgoing<T::Buf>> = match Session::new(role, config, now()) {
        Ok(session) => session,
        Err(err) => return Status::internal(err.to_string()),
    };
    let mut slots: IdMap<Slot> = IdMap::default();
    // Server calls whose last reply is queued: their slots close after the pass's write.
    let mut replied: Vec<u64> = Vec::new();
    // Handlers routed in this pass, polled once inline before any is given a task of its own.
    let mut fresh: Vec<Fresh> = Vec::new();
    // Idle handler slots, reused call after call.
    let mut pool = SlotPool::default();
    let sleep = tokio::time::sleep_until(now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    // When frames were last read.
    let mut heard = now();
    let mut send_failed = false;
    let mut final_status = Status::ok();
    // This pass handed client handles something (a reply, stream data, a call's end): their
    // callers are runnable now.
    let mut woke_callers = false;

    loop {
        // Everything the session decided: frames out, events to handles. Handling an event can
        // queue frames (an unknown method's trailer), so repeat until both are empty.
        loop {
            let mut progressed = false;
            while !send_failed
                && outbox.accepts()
                && let Some(transmit) = session.poll_transmit()
            {
                progressed = true;
                ack_transmit(&transmit, &mut slots);
                if let Err(err) = outbox.push(transmit) {
                    send_failed = true;
                    session.handle_error(Status::unavailable(format!("send failed: {err}")));
                }
            }
            if ready.is_some()
                && session.is_ready()
                && let (Some(ready), Some(settings)) = (ready.take(), session.peer_settings())
            {
                let _ = ready.send(Ok(settings.clone()));
            }
            while let Some(event) = session.poll_event() {
                progressed = true;
                match &event {
                    Event::ConnectionClosed(status) => final_status = status.clone(),
                    Event::Message { .. } | Event::Data { .. } | Event::RemoteEnd { .. } | Event::Closed { .. }
                        if role == Role::Client =>
                    {
                        woke_callers = true;
                    }
                    _ => {}
                }
                dispatch(event, &mut session, &mut slots, &serving, &mut fresh, &mut pool, heard);
            }
            if !fresh.is_empty() {
                // Their replies are taken just below: a handler's push must not wake this task.
                mailbox.disarm();
                for handler in fresh.drain(..) {
                    run_fresh(handler, &mut slots, &ctl, &mut pool);
                }
                // What they sent (a unary reply) goes out in this pass, not after another select.
                take_commands(&mailbox, role, &mut session, &mut slots, &mut replied);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if session.is_closed() {
            break;
        }
        if woke_callers {
            // Callers this pass woke run before the driver touches the socket again. Going on
            // would first poll the socket (a read that finds nothing, a syscall on the caller's
            // path) and, with several woken, send the first one's next call alone. Stepping aside
            // lets them all queue their next calls (the mailbox does not wake this task meanwhile:
            // it is not armed), and one write carries them. The step aside is a wake of this task
            // by itself, which tokio queues behind the tasks already runnable, not a `yield_now`,
            // which waits for the worker to park and poll epoll first.
            woke_callers = false;
            // This task wakes itself: the callers' pushes need not wake it again.
            mailbox.disarm();
            run_others_first().await;
            take_commands(&mailbox, role, &mut session, &mut slots, &mut replied);
            continue;
        }
        // Re-arming the timer costs about as much as a session step, and the keepalive deadline
        // moves with every frame heard: re-arm only when the deadline came closer. A timer that
        // fires early wakes the driver once for nothing (the session then finds nothing due).
        if let Some(at) = session.poll_timeout()
            && armed.is_none_or(|armed| at < armed)
        {
            sleep.as_mut().reset(at.into());
            armed = Some(at);
        }
        if send_failed || !outbox.wants_drive() {
            finish_replied(&mut slots, &mut replied);
        }

        tokio::select! {
            biased;
            // First: what this pass queued goes out before more input is taken.
            sent = outbox.drive(), if !send_failed && outbox.wants_drive() => {
                // The replies are out: now their calls' bookkeeping.
                finish_replied(&mut slots, &mut replied);
                if let Err(err) = sent {
                    send_failed = true;
                    session.handle_error(Status::unavailable(format!("send failed: {err}")));
                }
            }
            // Whatever is queued joins this pass (one flush for the batch).
            () = mailbox.ready() => take_commands(&mailbox, role, &mut session, &mut slots, &mut replied),
            msg = receiver.recv() => {
                let now = now();
                heard = now;
                let mut bytes = received_len(&msg);
                let mut more = handle_received(msg, now, &mut session, &limits, &peer);
                // Small frames already read join this pass (one write for their replies); large
                // ones do not, so replies start going out while the rest is still arriving.
                let mut frames = 1;
                while more && frames < BATCH && bytes < RECV_BATCH_BYTES {
                    // A peer that pipelines (several frames in this pass) has likely sent more
                    // meanwhile: read again, to batch. One in lockstep (a single frame) waits for
                    // the answer: a read would find nothing, a syscall on the round trip's path.
                    let Some(msg) = receiver.try_recv_now(frames > 1) else { break };
                    bytes += received_len(&msg);
                    frames += 1;
                    more = handle_received(msg, now, &mut session, &limits, &peer);
                }
            }
            _ = &mut sleep => {
                armed = None;
                session.handle_timeout(now());
            }
        }
    }

    finish_replied(&mut slots, &mut replied);
    // Write what the session still has (the GOAWAY, trailers), then close the sending side.
    if !send_failed {
        let grace = std::time::Duration::from_secs(1);
        let _ = tokio::time::timeout(grace, async {
            loop {
                while outbox.accepts()
                    && let Some(transmit) = session.poll_transmit()
                {
                    outbox.push(transmit)?;
                }
                if !outbox.wants_drive() {
                    break;
                }
                outbox.drive().await?;
            }
            outbox.close().await
        })
        .await;
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Err(final_status.clone()));
    }
    let _ = closed.status.set(final_status.clone());
    // Commands still queued, or pushed from now on, are dropped: their calls end.
    mailbox.close();
    tracing::debug!(%peer, status = %final_status, "connection closed");
    final_status
}

/// Steps aside once: wakes its own task and is pending, and tokio queues a task that woke itself
/// behind the tasks already runnable on its worker, so those run first (no park, no epoll).
async fn run_others_first() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Bytes of a received message.
fn received_len(msg: &Result<Option<bytes::Bytes>, crate::transport::TransportError>) -> usize {
    match msg {
        Ok(Some(bytes)) => bytes.len(),
        _ => 0,
    }
}

/// Feeds one received message to the session; false once the connection is over.
pub(super) fn handle_received<B: crate::transport::SendBuffer>(
    msg: Result<Option<bytes::Bytes>, crate::transport::TransportError>,
    now: Instant,
    session: &mut Session<Outgoing<B>>,
    limits: &WireLimits,
    peer: &str,
) -> bool {
    match msg {
        Ok(Some(bytes)) => match Frame::decode(bytes, limits) {
            Ok(frame) => {
                if let Err(err) = session.handle_frame(now, frame) {
                    tracing::warn!(%peer, %err, "closing connection: peer broke the protocol");
                    session.handle_error(err.to_status());
                    return false;
                }
                true
            }
            Err(err) => {
                tracing::warn!(%peer, %err, "closing connection: bad frame");
                session.handle_error(Status::internal(format!("bad frame from peer: {err}")));
                false
            }
        },
        Ok(None) => {
            session.handle_error(Status::unavailable("connection closed by the peer"));
            false
        }
        Err(err) => {
            tracing::warn!(%peer, %err, "closing connection: transport error");
            session.handle_error(Status::unavailable(format!("transport error: {err}")));
            false
        }
    }
}

/// Wakes the handle waiting for this frame to pass flow control.
fn ack_transmit<B>(transmit: &Transmit<B>, slots: &mut IdMap<Slot>) {
    if let Transmit::Data { header, .. } = transmit
        && matches!(header.kind, Kind::Message | Kind::Data)
        && let Some(slot) = slots.get_mut(&header.call_id)
        && let Some(Some(ack)) = slot.acks.pop_front()
    {
        let _ = ack.send(());
    }
}

/// Applies up to [`BATCH`] queued commands, in the order they were queued.
fn take_commands<B: crate::transport::SendBuffer>(
    mailbox: &Mailbox<B>,
    role: Role,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    replied: &mut Vec<u64>,
) {
    for _ in 0..BATCH {
        match mailbox.pop() {
            Some(Command::Buf(cmd)) => apply_buf(cmd, session, slots),
            Some(Command::Ctl(cmd)) => apply_ctl(cmd, session, slots, replied),
            // Every client handle is gone: finish what is open, then close.
            Some(Command::HandlesGone) => session.shutdown(Status::ok()),
            Some(Command::Shutdown) => {
                let reason = match role {
                    Role::Server => "server shutting down",
                    Role::Client => "client closing the connection",
                };
                session.shutdown(Status::unavailable(reason));
            }
            None => break,
        }
    }
}
