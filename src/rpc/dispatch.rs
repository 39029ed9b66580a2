//! What the driver does with commands from call handles and events from the session: per-call
//! bookkeeping ([`Slot`]), starting server calls (routing, the handler polled once inline),
//! delivering messages to handles, queueing their frames. Synchronous helpers of `driver.rs`;
//! nothing here awaits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::FutureExt as _;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::command::{BufCommand, CallCommand, CallEvent, CallRef, MethodName, Outgoing};
use super::events::{CallPool, EventSender};
use super::handler::{SlotPool, Started};
use super::mailbox::Ctl;
use super::now;
use super::router::Router;
use super::server::{RequestContext, ServerCall};
use super::unary::{WholeCall, run_unary};
use crate::session::{Event, IdMap, Role, Session};
use crate::status::Status;
use crate::transport::{ReplyAlloc, ReplyBody};
use crate::wire::Kind;

/// Per-call bookkeeping in the driver.
pub(super) struct Slot {
    pub(super) events: EventSender,
    /// One entry per queued MESSAGE/DATA frame, in order; `Some` when a handle waits for it.
    pub(super) acks: VecDeque<Option<oneshot::Sender<()>>>,
    handler: Option<tokio::task::AbortHandle>,
    method: MethodName,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
}

impl Slot {
    /// The bookkeeping of a server call started at `started`, with `bytes_in` received so far.
    pub(super) fn server(shared: CallRef, method: MethodName, started: Instant, bytes_in: usize) -> Self {
        Slot {
            events: EventSender::new(shared),
            acks: VecDeque::new(),
            handler: None,
            method,
            started,
            bytes_in: bytes_in as u64,
            bytes_out: 0,
        }
    }

    /// The task that runs the call's handler, aborted when the call ends early.
    pub(super) fn set_handler(&mut self, handler: tokio::task::AbortHandle) {
        self.handler = Some(handler);
    }
}

pub(super) fn apply_buf<B: crate::transport::SendBuffer>(
    cmd: BufCommand<B>,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
) {
    match cmd {
        BufCommand::Open { id, method, timeout, body, has_message, end, events } => {
            let len = body.len() as u64;
            let started = now();
            match session.open_call(started, id, timeout, Outgoing::Buf(body), has_message, end) {
                Ok(()) => {
                    let slot = Slot {
                        events,
                        acks: VecDeque::new(),
                        handler: None,
                        method,
                        started,
                        bytes_in: 0,
                        bytes_out: len,
                    };
                    slots.insert(id, slot);
                }
                Err(status) => {
                    let _ = events.shared().status.set(status.clone());
                    events.send(CallEvent::Closed(status));
                }
            }
        }
        BufCommand::Send { id, kind, body, end, ack } => {
            let len = body.len() as u64;
            queue_send(session, slots, id, kind, Outgoing::Buf(body), end, ack, len);
        }
    }
}

/// Applies a command from a call handle. A server's unary reply leaves its call's bookkeeping
/// to [`finish_replied`], which the driver runs after the pass's write (at once when nothing
/// waits to be written, e.g. the reply is held back by flow control): closing the slot (its
/// status, the handle's `Closed`, the log line) is then not on the round trip's path.
pub(super) fn apply_ctl<B: crate::transport::SendBuffer>(
    cmd: CallCommand,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    replied: &mut Vec<u64>,
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
            if session.role() == Role::Server && slots.contains_key(&id) {
                replied.push(id);
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
pub(super) fn reply_outgoing<B: crate::transport::SendBuffer>(body: ReplyBody) -> Outgoing<B> {
    match B::from_reply(body) {
        // Encoded in this transport's own memory: sent as it is, as a client's request is.
        Ok(buf) => Outgoing::Buf(buf),
        Err(ReplyBody::Heap(heap)) => Outgoing::Framed(heap),
        // Registered memory on a transport that is not RDMA: cannot be, but copy rather than
        // lose the reply.
        Err(ReplyBody::Registered(slot)) => Outgoing::Framed(BytesMut::from(slot.written())),
        // A TCP send buffer on another transport: cannot be either.
        Err(ReplyBody::Pooled(buf)) => Outgoing::Framed(BytesMut::from(buf.as_slice())),
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

/// Ends the bookkeeping of the calls whose last reply was queued (see [`apply_ctl`]).
pub(super) fn finish_replied(slots: &mut IdMap<Slot>, replied: &mut Vec<u64>) {
    for id in replied.drain(..) {
        finish_slot(slots, id, Status::ok());
    }
}

/// Ends a call's bookkeeping and tells its handle.
fn finish_slot(slots: &mut IdMap<Slot>, id: u64, status: Status) {
    if let Some(slot) = slots.remove(&id) {
        close_slot(slot, id, status);
    }
}

fn close_slot(slot: Slot, id: u64, status: Status) {
    close_slot_after(slot, id, None, status);
}

/// Ends a call's bookkeeping; its handle gets `last` (a client's reply), then the call's end.
fn close_slot_after(slot: Slot, id: u64, last: Option<CallEvent>, status: Status) {
    let Slot { events, handler, method, started, mut bytes_in, bytes_out, .. } = slot;
    if let Some(CallEvent::Message(body) | CallEvent::Data(body)) = &last {
        bytes_in += body.len() as u64;
    }
    let _ = events.shared().status.set(status.clone());
    if !status.is_ok()
        && let Some(handler) = &handler
    {
        handler.abort();
    }
    log_finished(id, &method, started, bytes_in, bytes_out, &status);
    events.close_after(last, CallEvent::Closed(status));
}

/// A call's last log line (debug level: its fields are computed only when it is enabled).
pub(super) fn log_finished(
    id: u64,
    method: &dyn std::fmt::Display,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
    status: &Status,
) {
    tracing::debug!(
        call = id,
        method = %method,
        duration_us = started.elapsed().as_micros() as u64,
        bytes_in,
        bytes_out,
        code = %status.code,
        "call finished"
    );
}

/// A handler routed but not polled yet.
pub(super) struct Fresh {
    id: u64,
    method: &'static str,
    handler: Started,
    span: tracing::Span,
}

/// Polls a new handler once, inline, with the events dispatched so far already in its queue: a
/// unary handler that answers at once (an echo) then needs no task, no wake-up and no hop back to
/// the driver, and its slot goes back to `pool` for the next call. One that is not done is
/// spawned as before (taking its slot along); its task polls it again at once, so the no-op waker
/// of the inline poll is never the one it waits on. A panic ends the call as the spawned guard
/// would, and the slot it left in an unknown state is dropped.
pub(super) fn run_fresh(handler: Fresh, slots: &mut IdMap<Slot>, ctl: &Ctl, pool: &mut SlotPool) {
    let Fresh { id, method, mut handler, span } = handler;
    // Closed in the same pass (cancelled, connection failed): never started, as an aborted task.
    let Some(slot) = slots.get_mut(&id) else { return };
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let polled = span.in_scope(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.poll(&mut cx))));
    match polled {
        Ok(std::task::Poll::Ready(())) => {
            if let Started::Slot(done) = handler {
                pool.give(method, done);
            }
        }
        Ok(std::task::Poll::Pending) => {
            let panic_ctl = ctl.clone();
            let guarded = async move {
                let running = std::future::poll_fn(move |cx| handler.poll(cx));
                if std::panic::AssertUnwindSafe(running).catch_unwind().await.is_err() {
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
pub(super) struct Serving<'a> {
    pub(super) router: Option<&'a Router>,
    pub(super) ctl: &'a Ctl,
    pub(super) peer: &'a Arc<str>,
    /// Where unary replies are encoded (the transport's own memory, or a heap pool).
    pub(super) replies: Arc<ReplyAlloc>,
    /// Call states for reuse.
    pub(super) calls: CallPool,
}

/// Hands a session event to its call. `heard` is when the frames of this pass were read: a new
/// server call's start, for its log line (no clock read of its own on the round trip's path).
pub(super) fn dispatch<B: crate::transport::SendBuffer>(
    event: Event,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    serving: &Serving<'_>,
    fresh: &mut Vec<Fresh>,
    pool: &mut SlotPool,
    heard: Instant,
) {
    let Serving { router, ctl, peer, .. } = *serving;
    match event {
        Event::Incoming { id, header } => {
            let found = router.and_then(|router| router.find(&header.method));
            // A unary call whose request came with it runs to completion right here.
            if let Some((method, service)) = found
                && let Some(slot) = pool.take_unary(method, service)
            {
                match session.take_request(id) {
                    Some(request) => {
                        let call = WholeCall { id, method, header, request, slot };
                        return run_unary(call, session, slots, serving, pool, heard);
                    }
                    None => pool.give_unary(method, slot),
                }
            }
            let shared = serving.calls.take();
            let ctx = RequestContext::new(header, peer.clone());
            let call = ServerCall::new(id, ctl.clone(), ctx, shared.clone(), serving.replies.clone());
            let routed = match found {
                Some((method, service)) => {
                    let mut call = call;
                    call.set_method(method);
                    pool.start(method, service, call).map(|handler| (method, handler))
                }
                None => Err(call),
            };
            match routed {
                Ok((method, handler)) => {
                    let span = tracing::info_span!("rpc", method = %method, peer = %peer, call = id);
                    fresh.push(Fresh { id, method, handler, span });
                    slots.insert(id, Slot::server(shared, MethodName::Static(method), heard, 0));
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
        Event::Message { id, body, end } => {
            // A client's reply that ended its call: the reply and the call's end reach the caller
            // in one step (one lock, one wake-up, one look-up of the call).
            if end
                && session.role() == Role::Client
                && let Some(status) = session.take_closed(id)
            {
                if let Some(slot) = slots.remove(&id) {
                    close_slot_after(slot, id, Some(CallEvent::Message(body)), status);
                }
                return;
            }
            deliver(slots, session.role(), id, CallEvent::Message(body), end)
        }
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
        // A client learns the end from `Closed`; a server's handler needs the half-close.
        if end && role == Role::Server {
            slot.events.send_ending(event);
        } else {
            slot.events.send(event);
        }
    }
}
