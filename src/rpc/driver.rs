//! The connection driver: one tokio task per connection that owns the IO-free [`Session`] and
//! moves frames between it, the transport and the call handles. It is deliberately thin: every
//! protocol decision is the session's.
//!
//! The driver also writes: frames the session releases go to the [`Outbox`] and are flushed from
//! inside the driver's `select!`, cancel-safely, so it never blocks on a full socket and can always
//! read (two peers sending at once cannot deadlock), without a writer task's hop per frame.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::command::{BufCommand, CallCommand, CallEvent, CallShared, MethodName, Outgoing};
use super::events::EventSender;
use super::now;
use super::outbox::Outbox;
use super::server::{HandlerFuture, RequestContext, Router, ServerCall};
use crate::pb::rpc as pb;
use crate::session::{Event, IdMap, Role, Session, SessionConfig, Transmit};
use crate::status::Status;
use crate::transport::{FrameReceiver, ReplyAlloc, ReplyBody, Transport};
use crate::wire::{Frame, Kind, WireLimits};

/// Commands, or received frames, taken in one pass of the driver before its frames are written.
const BATCH: usize = 64;

/// Received bytes after which a pass stops taking frames: batching 64 frames of 64 KiB held
/// their replies back until 4 MiB had been read, and cut such calls at 64 in flight to a third.
const RECV_BATCH_BYTES: usize = 16 * 1024;

/// Per-call bookkeeping in the driver.
struct Slot {
    events: EventSender,
    /// One entry per queued MESSAGE/DATA frame, in order; `Some` when a handle waits for it.
    acks: VecDeque<Option<oneshot::Sender<()>>>,
    handler: Option<tokio::task::AbortHandle>,
    method: MethodName,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
}

/// What a driver is started with.
pub(crate) struct DriverSetup<T: Transport> {
    pub(crate) alloc: T::Alloc,
    pub(crate) sender: T::Sender,
    pub(crate) receiver: T::Receiver,
    pub(crate) peer: Arc<str>,
    pub(crate) role: Role,
    pub(crate) config: SessionConfig,
    pub(crate) buf_rx: Option<mpsc::UnboundedReceiver<BufCommand<T::Buf>>>,
    pub(crate) ctl_tx: mpsc::UnboundedSender<CallCommand>,
    pub(crate) ctl_rx: mpsc::UnboundedReceiver<CallCommand>,
    pub(crate) router: Option<Arc<Router>>,
    /// Told the peer's SETTINGS once the handshake finished, or why it failed.
    pub(crate) ready: Option<oneshot::Sender<Result<pb::Settings, Status>>>,
    /// Set to true to start a graceful shutdown.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Where the connection's final status is published.
    pub(crate) closed: Arc<CallShared>,
}

/// Runs a connection to its end. Returns how it ended.
pub(crate) async fn drive<T: Transport>(setup: DriverSetup<T>) -> Status {
    let DriverSetup {
        alloc,
        sender,
        mut receiver,
        peer,
        role,
        config,
        mut buf_rx,
        ctl_tx,
        mut ctl_rx,
        router,
        mut ready,
        mut shutdown,
        closed,
    } = setup;
    let limits = WireLimits { max_frame_size: config.max_frame_size };
    // Where a server's unary replies are encoded (TCP: buffers the sender hands back once written).
    let serving = Serving {
        router: router.as_deref(),
        ctl: &ctl_tx,
        peer: &peer,
        replies: Arc::new(crate::transport::BufferAlloc::reply_alloc(&alloc)),
    };
    let mut outbox = Outbox::new(alloc, sender);
    let mut session: Session<Outgoing<T::Buf>> = match Session::new(role, config, now()) {
        Ok(session) => session,
        Err(err) => return Status::internal(err.to_string()),
    };
    let mut slots: IdMap<Slot> = IdMap::default();
    // Handlers routed in this pass, polled once inline before any is given a task of its own.
    let mut fresh: Vec<Fresh> = Vec::new();
    let sleep = tokio::time::sleep_until(now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let mut send_failed = false;
    // One future for the whole connection: a fresh `changed()` per pass would join and leave the
    // watch's waiter list every time.
    let stop = shutdown.wait_for(|stop| *stop);
    tokio::pin!(stop);
    let mut stopping = false;
    let mut final_status = Status::ok();

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
                if let Event::ConnectionClosed(status) = &event {
                    final_status = status.clone();
                }
                dispatch(event, &mut session, &mut slots, &serving, &mut fresh);
            }
            if !fresh.is_empty() {
                for handler in fresh.drain(..) {
                    run_fresh(handler, &mut slots, &ctl_tx);
                }
                // What they sent (a unary reply) goes out in this pass, not after another select.
                // Only a server runs handlers, and a server has no buffer queue whose order the
                // control queue would have to keep.
                if buf_rx.is_none() {
                    while let Ok(cmd) = ctl_rx.try_recv() {
                        apply_ctl(cmd, &mut session, &mut slots);
                    }
                }
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if session.is_closed() {
            break;
        }
        // Re-arming the timer costs about as much as a session step: only when the deadline moved.
        if let Some(at) = session.poll_timeout()
            && armed != Some(at)
        {
            sleep.as_mut().reset(at.into());
            armed = Some(at);
        }

        tokio::select! {
            biased;
            // First: what this pass queued goes out before more input is taken.
            sent = outbox.drive(), if !send_failed && outbox.wants_drive() => {
                if let Err(err) = sent {
                    send_failed = true;
                    session.handle_error(Status::unavailable(format!("send failed: {err}")));
                }
            }
            cmd = recv_opt(&mut buf_rx) => match cmd {
                Some(cmd) => {
                    apply_buf(cmd, &mut session, &mut slots);
                    // Whatever else is queued joins this pass (one flush for the batch).
                    if let Some(rx) = buf_rx.as_mut() {
                        for _ in 1..BATCH {
                            let Ok(cmd) = rx.try_recv() else { break };
                            apply_buf(cmd, &mut session, &mut slots);
                        }
                    }
                }
                None => {
                    // Every client handle is gone: finish what is open, then close.
                    buf_rx = None;
                    session.shutdown(Status::ok());
                }
            },
            Some(cmd) = ctl_rx.recv() => {
                apply_ctl(cmd, &mut session, &mut slots);
                // A client's handles also queue buffers, which must stay ahead of their later
                // commands here: take one command per select then. A server has only this queue.
                for _ in 1..if buf_rx.is_none() { BATCH } else { 1 } {
                    let Ok(cmd) = ctl_rx.try_recv() else { break };
                    apply_ctl(cmd, &mut session, &mut slots);
                }
            }
            msg = receiver.recv() => {
                let now = now();
                let mut bytes = received_len(&msg);
                let mut more = handle_received(msg, now, &mut session, &limits, &peer);
                // Small frames already read join this pass (one write for their replies); large
                // ones do not, so replies start going out while the rest is still arriving.
                let mut frames = 1;
                while more && frames < BATCH && bytes < RECV_BATCH_BYTES {
                    let Some(msg) = receiver.recv().now_or_never() else { break };
                    bytes += received_len(&msg);
                    frames += 1;
                    more = handle_received(msg, now, &mut session, &limits, &peer);
                }
            }
            _ = &mut sleep => {
                armed = None;
                session.handle_timeout(now());
            }
            // Set to true, or its sender gone: either way the connection winds down.
            _ = &mut stop, if !stopping => {
                stopping = true;
                let reason = match role {
                    Role::Server => "server shutting down",
                    Role::Client => "client closing the connection",
                };
                session.shutdown(Status::unavailable(reason));
            }
        }
    }

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
    tracing::debug!(%peer, status = %final_status, "connection closed");
    final_status
}

/// Bytes of a received message.
fn received_len(msg: &Result<Option<bytes::Bytes>, crate::transport::TransportError>) -> usize {
    match msg {
        Ok(Some(bytes)) => bytes.len(),
        _ => 0,
    }
}

/// Feeds one received message to the session; false once the connection is over.
fn handle_received<B: crate::transport::SendBuffer>(
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

async fn recv_opt<C>(rx: &mut Option<mpsc::UnboundedReceiver<C>>) -> Option<C> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn apply_buf<B: crate::transport::SendBuffer>(
    cmd: BufCommand<B>,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
) {
    match cmd {
        BufCommand::Open { id, method, timeout, body, has_message, end, shared } => {
            let len = body.len() as u64;
            match session.open_call(now(), id, timeout, Outgoing::Buf(body), has_message, end) {
                Ok(()) => {
                    let slot = Slot {
                        events: EventSender::new(shared),
                        acks: VecDeque::new(),
                        handler: None,
                        method,
                        started: now(),
                        bytes_in: 0,
                        bytes_out: len,
                    };
                    slots.insert(id, slot);
                }
                Err(status) => {
                    let _ = shared.status.set(status.clone());
                    EventSender::new(shared).send(CallEvent::Closed(status));
                }
            }
        }
        BufCommand::Send { id, kind, body, end, ack } => {
            let len = body.len() as u64;
            queue_send(session, slots, id, kind, Outgoing::Buf(body), end, ack, len);
        }
    }
}

fn apply_ctl<B: crate::transport::SendBuffer>(
    cmd: CallCommand,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
) {
    match cmd {
        CallCommand::SendBytes { id, kind, body, end, ack } => {
            let len = body.len() as u64;
            queue_send(session, slots, id, kind, Outgoing::Bytes(body), end, ack, len);
            if end && session.role() == Role::Server {
                finish_slot(slots, id, Status::ok());
            }
        }
        CallCommand::SendReply { id, body, ack } => {
            let len = body.message_len() as u64;
            queue_send(session, slots, id, Kind::Message, reply_outgoing(body), false, Some(ack), len);
        }
        CallCommand::Reply { id, body } => {
            let len = body.message_len() as u64;
            queue_send(session, slots, id, Kind::Message, reply_outgoing(body), true, None, len);
            if session.role() == Role::Server {
                finish_slot(slots, id, Status::ok());
            }
        }
        CallCommand::End { id } => {
            let _ = session.end_stream(id);
        }
        CallCommand::Finish { id, status } => {
            session.finish(id, status.clone());
            finish_slot(slots, id, status);
        }
        CallCommand::Consumed { id, len } => session.release(id, len),
    }
}

/// How a reply encoded by a handler travels.
fn reply_outgoing<B: crate::transport::SendBuffer>(body: ReplyBody) -> Outgoing<B> {
    match B::from_reply(body) {
        // Encoded in this transport's own memory: sent as it is, as a client's request is.
        Ok(buf) => Outgoing::Buf(buf),
        Err(ReplyBody::Heap(heap)) => Outgoing::Framed(heap),
        // Registered memory on a transport that is not RDMA: cannot be, but copy rather than
        // lose the reply.
        Err(ReplyBody::Registered(slot)) => Outgoing::Framed(BytesMut::from(slot.written())),
    }
}

#[allow(clippy::too_many_arguments)]
fn queue_send<B: crate::transport::SendBuffer>(
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    id: u64,
    kind: Kind,
    body: Outgoing<B>,
    end: bool,
    ack: Option<oneshot::Sender<()>>,
    len: u64,
) {
    let Some(slot) = slots.get_mut(&id) else { return };
    match session.send(id, kind, body, end) {
        Ok(()) => {
            // The last frame of a call needs no entry when nobody waits for it: nothing is
            // queued behind it whose ack it could take. (Saves an allocation per unary reply.)
            if ack.is_some() || !end {
                slot.acks.push_back(ack);
            }
            slot.bytes_out += len;
        }
        Err(status) => {
            // Too large, or the call already ended: the handle learns it from its ack being
            // dropped and the call's status.
            session.finish(id, status.clone());
            finish_slot(slots, id, status);
        }
    }
}

/// Ends a call's bookkeeping and tells its handle.
fn finish_slot(slots: &mut IdMap<Slot>, id: u64, status: Status) {
    if let Some(slot) = slots.remove(&id) {
        close_slot(slot, id, status);
    }
}

fn close_slot(slot: Slot, id: u64, status: Status) {
    let _ = slot.events.shared().status.set(status.clone());
    slot.events.send(CallEvent::Closed(status.clone()));
    if !status.is_ok()
        && let Some(handler) = &slot.handler
    {
        handler.abort();
    }
    tracing::debug!(
        call = id,
        method = %slot.method,
        duration_us = slot.started.elapsed().as_micros() as u64,
        bytes_in = slot.bytes_in,
        bytes_out = slot.bytes_out,
        code = %status.code,
        "call finished"
    );
}

/// A handler routed but not polled yet.
struct Fresh {
    id: u64,
    future: HandlerFuture,
    span: tracing::Span,
}

/// Polls a new handler once, inline, with the events dispatched so far already in its queue: a
/// unary handler that answers at once (an echo) then needs no task, no wake-up and no hop back to
/// the driver. One that is not done is spawned as before; its task polls it again at once, so
/// the no-op waker of the inline poll is never the one it waits on. A panic ends the call as the
/// spawned guard would.
fn run_fresh(handler: Fresh, slots: &mut IdMap<Slot>, ctl: &mpsc::UnboundedSender<CallCommand>) {
    let Fresh { id, mut future, span } = handler;
    // Closed in the same pass (cancelled, connection failed): never started, as an aborted task.
    let Some(slot) = slots.get_mut(&id) else { return };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled =
        span.in_scope(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(&mut cx))));
    match polled {
        Ok(std::task::Poll::Ready(())) => {}
        Ok(std::task::Poll::Pending) => {
            let panic_ctl = ctl.clone();
            let guarded = async move {
                if std::panic::AssertUnwindSafe(future).catch_unwind().await.is_err() {
                    let status = Status::internal("the server's handler panicked");
                    let _ = panic_ctl.send(CallCommand::Finish { id, status });
                }
            };
            slot.handler = Some(tokio::spawn(guarded.instrument(span)).abort_handle());
        }
        Err(_) => {
            let status = Status::internal("the server's handler panicked");
            let _ = ctl.send(CallCommand::Finish { id, status });
        }
    }
}

/// What dispatching needs to start server calls.
struct Serving<'a> {
    router: Option<&'a Router>,
    ctl: &'a mpsc::UnboundedSender<CallCommand>,
    peer: &'a Arc<str>,
    /// Where unary replies are encoded (the transport's own memory, or a heap pool).
    replies: Arc<ReplyAlloc>,
}

fn dispatch<B: crate::transport::SendBuffer>(
    event: Event,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    serving: &Serving<'_>,
    fresh: &mut Vec<Fresh>,
) {
    let Serving { router, ctl, peer, .. } = *serving;
    match event {
        Event::Incoming { id, header } => {
            let shared = Arc::new(CallShared::default());
            let ctx = RequestContext::new(header, peer.clone());
            let call = ServerCall::new(id, ctl.clone(), ctx, shared.clone(), serving.replies.clone());
            let routed = match router {
                Some(router) => router.route(call),
                None => Err(call),
            };
            match routed {
                Ok((method, future)) => {
                    let span = tracing::info_span!("rpc", method = %method, peer = %peer, call = id);
                    fresh.push(Fresh { id, future, span });
                    let slot = Slot {
                        events: EventSender::new(shared),
                        acks: VecDeque::new(),
                        handler: None,
                        method: MethodName::Static(method),
                        started: now(),
                        bytes_in: 0,
                        bytes_out: 0,
                    };
                    slots.insert(id, slot);
                }
                Err(call) => {
                    let method = &call.context().method;
                    tracing::debug!(%peer, %method, "unknown method");
                    let known = router.map(Router::describe).unwrap_or_default();
                    session.finish(
                        id,
                        Status::unimplemented(format!(
                            "method {method} is not served here; this server serves: {known}"
                        )),
                    );
                }
            }
        }
        Event::Message { id, body, end } => deliver(slots, session.role(), id, CallEvent::Message(body), end),
        Event::Data { id, body, end } => deliver(slots, session.role(), id, CallEvent::Data(body), end),
        Event::RemoteEnd { id } => {
            if let Some(slot) = slots.get(&id) {
                slot.events.send(CallEvent::End);
            }
        }
        Event::Closed { id, status } => finish_slot(slots, id, status),
        Event::GoAway { last_call_id, status } => {
            tracing::debug!(%peer, last_call_id, %status, "peer sent GOAWAY");
        }
        _ => {}
    }
}

fn deliver(slots: &mut IdMap<Slot>, role: Role, id: u64, event: CallEvent, end: bool) {
    if let Some(slot) = slots.get_mut(&id) {
        if let CallEvent::Message(body) | CallEvent::Data(body) = &event {
            slot.bytes_in += body.len() as u64;
        }
        slot.events.send(event);
        // A client learns the end from `Closed`; a server's handler needs the half-close.
        if end && role == Role::Server {
            slot.events.send(CallEvent::End);
        }
    }
}
