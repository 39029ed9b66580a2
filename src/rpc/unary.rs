//! Unary calls run to completion: when a CALL frame carries the whole request (its message and
//! the end of the client's stream, which is how every rdma-rpc client sends a unary call), the
//! driver decodes it, runs the handler, and queues the encoded reply on the session in one step
//! of its pass, as eRPC's dispatch thread runs a request handler. No shared call state, event
//! queue, request or reply handle, mailbox command or driver bookkeeping exists for such a call
//! (the session keeps its protocol state: credit, deadline, the reply's queue).
//!
//! The handler is an ordinary async method of the generated service trait, polled once with a
//! no-op waker. One that is not finished then (it awaits IO, a timer, a lock) moves, with its
//! [`UnarySlot`], into a task of its own, which the call's deadline and cancellation abort, and
//! which sends its reply through the connection's mailbox like any other handler. A call whose
//! request comes in frames of its own goes the general way (`dispatch.rs`).

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt as _;
use prost::Message;
use tracing::Instrument as _;

use super::codec;
use super::command::{CallCommand, MethodName, Outgoing};
use super::dispatch::{Serving, Slot, log_finished, reply_outgoing};
use super::handler::SlotPool;
use super::server::{MethodPath, RequestContext};
use crate::pb::rpc as pb;
use crate::session::{IdMap, Session};
use crate::status::Status;
use crate::transport::{ReplyAlloc, ReplyBody, SendBuffer};
use crate::wire::Kind;

/// Runs one unary method's handler at a time, on requests given whole (used by generated code:
/// see [`Service::unary_slot`](super::Service::unary_slot)).
pub trait UnarySlot: Send + 'static {
    /// Decodes `request` and starts the handler on it; a request that does not decode is the
    /// call's status. A handler still running is dropped first.
    fn start(&mut self, request: Bytes, ctx: RequestContext) -> Result<(), Status>;
    /// Polls the running handler; its reply, once it has one, encoded by `replies`.
    fn poll_reply(&mut self, cx: &mut Context<'_>, replies: &ReplyAlloc) -> Poll<Result<ReplyBody, Status>>;
    /// Drops the last reply's message, kept since it was encoded: it may hold views of the
    /// request's receive buffer (an echo does), and returning that buffer is work the caller
    /// can do after the reply is on its way rather than before. Also done by the next `start`.
    fn release(&mut self) {}
}

/// A unary slot whose handlers `make` builds; the future lives in one pinned allocation, replaced
/// in place for every call.
struct UnaryOf<Req, Res, M, F> {
    make: M,
    running: Pin<Box<Option<F>>>,
    /// The last reply, encoded already, until `release`.
    replied: Option<Res>,
    types: PhantomData<fn(Req) -> Res>,
}

/// A reusable unary slot for the handlers `make` returns (used by generated code).
pub fn unary_slot<Req, Res, M, F>(make: M) -> Box<dyn UnarySlot>
where
    Req: Message + Default + 'static,
    Res: Message + 'static,
    M: Fn(Req, RequestContext) -> F + Send + 'static,
    F: Future<Output = Result<Res, Status>> + Send + 'static,
{
    Box::new(UnaryOf { make, running: Box::pin(None), replied: None, types: PhantomData })
}

impl<Req, Res, M, F> UnarySlot for UnaryOf<Req, Res, M, F>
where
    Req: Message + Default + 'static,
    Res: Message + 'static,
    M: Fn(Req, RequestContext) -> F + Send + 'static,
    F: Future<Output = Result<Res, Status>> + Send + 'static,
{
    fn start(&mut self, request: Bytes, ctx: RequestContext) -> Result<(), Status> {
        self.running.set(None);
        self.replied = None;
        let request = codec::decode::<Req>(request)?;
        self.running.set(Some((self.make)(request, ctx)));
        Ok(())
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>, replies: &ReplyAlloc) -> Poll<Result<ReplyBody, Status>> {
        let Some(handler) = self.running.as_mut().as_pin_mut() else {
            return Poll::Ready(Err(Status::internal("the unary handler was not started")));
        };
        let result = ready!(handler.poll(cx));
        // Done: its state is dropped now, not when the slot is next started.
        self.running.set(None);
        Poll::Ready(result.map(|reply| {
            let body = replies.encode(&reply);
            self.replied = Some(reply);
            body
        }))
    }

    fn release(&mut self) {
        self.replied = None;
    }
}

/// A unary call whose request came whole with it, and the slot of its method.
pub(super) struct WholeCall {
    pub(super) id: u64,
    pub(super) method: &'static str,
    pub(super) header: pb::CallHeader,
    pub(super) request: Bytes,
    pub(super) slot: Box<dyn UnarySlot>,
}

/// Runs `call`'s handler now: its reply (or status) is queued on the session before this returns,
/// unless the handler waits for something, and then a task finishes it. `heard` is when its
/// frame was read (the call's start, for its log line).
pub(super) fn run_unary<B: SendBuffer>(
    call: WholeCall,
    session: &mut Session<Outgoing<B>>,
    slots: &mut IdMap<Slot>,
    serving: &Serving<'_>,
    pool: &mut SlotPool,
    heard: Instant,
) {
    let WholeCall { id, method, header, request, mut slot } = call;
    let bytes_in = request.len();
    let mut ctx = RequestContext::new(header, serving.peer.clone());
    // The router's own copy: a view of the frame would hold its receive buffer for the handler.
    ctx.method = MethodPath::from(Bytes::from_static(method.as_bytes()));
    let span = tracing::info_span!("rpc", method = %method, peer = %serving.peer, call = id);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let polled = span.in_scope(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| match slot.start(request, ctx) {
            Ok(()) => slot.poll_reply(&mut cx, &serving.replies),
            Err(status) => Poll::Ready(Err(status)),
        }))
    });
    let (status, bytes_out) = match polled {
        Ok(Poll::Ready(result)) => {
            slot.release();
            pool.give_unary(method, slot);
            match result {
                Ok(reply) => {
                    let bytes_out = reply.message_len();
                    match session.send(id, Kind::Message, reply_outgoing(reply), true) {
                        Ok(()) => (Status::ok(), bytes_out),
                        Err(status) => (status, 0),
                    }
                }
                Err(status) => (status, 0),
            }
        }
        Ok(Poll::Pending) => {
            let (ctl, replies) = (serving.ctl.clone(), serving.replies.clone());
            let finish = async move {
                let running = std::future::poll_fn(|cx| slot.poll_reply(cx, &replies));
                let command = match AssertUnwindSafe(running).catch_unwind().await {
                    Ok(Ok(body)) => CallCommand::Reply { id, body },
                    Ok(Err(status)) => CallCommand::Finish { id, status },
                    Err(_) => CallCommand::Finish { id, status: Status::internal("the server's handler panicked") },
                };
                let _ = ctl.send(command);
            };
            let mut record = Slot::server(serving.calls.take(), MethodName::Static(method), heard, bytes_in);
            record.set_handler(tokio::spawn(finish.instrument(span)).abort_handle());
            slots.insert(id, record);
            return;
        }
        // The slot is dropped: its handler's state is unknown.
        Err(_) => (Status::internal("the server's handler panicked"), 0),
    };
    if !status.is_ok() {
        session.finish(id, status.clone());
    }
    log_finished(id, &method, heard, bytes_in as u64, bytes_out as u64, &status);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::echo::{EchoReply, EchoRequest};

    fn ctx() -> RequestContext {
        RequestContext::new(pb::CallHeader::default(), "test://peer".into())
    }

    fn request(payload: &'static [u8]) -> Bytes {
        EchoRequest { payload: Bytes::from_static(payload) }.encode_to_vec().into()
    }

    fn reply_of(body: ReplyBody) -> EchoReply {
        match body {
            ReplyBody::Heap(heap) => EchoReply::decode(&heap[crate::wire::HEADER_LEN..]).expect("decodes"),
            _ => panic!("a heap reply was expected"),
        }
    }

    /// An encoded `EchoRequest { payload: "abc" }` that says when its last view is gone (as a
    /// receive slot returns to its pool).
    struct Watched(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl AsRef<[u8]> for Watched {
        fn as_ref(&self) -> &[u8] {
            b"\x0a\x03abc"
        }
    }

    impl Drop for Watched {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_reply_keeps_its_request_buffer_until_released() {
        use std::sync::atomic::Ordering::SeqCst;
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut slot =
            unary_slot(|request: EchoRequest, _ctx| async move { Ok(EchoReply { payload: request.payload }) });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        slot.start(Bytes::from_owner(Watched(dropped.clone())), ctx()).expect("starts");
        match slot.poll_reply(&mut cx, &ReplyAlloc::Heap) {
            Poll::Ready(Ok(body)) => assert_eq!(reply_of(body).payload, &b"abc"[..]),
            other => panic!("a reply was expected: {:?}", other.map(|r| r.err())),
        }
        // The reply's payload is a view of the request's buffer: kept until released.
        assert!(!dropped.load(SeqCst), "the request's buffer went back before `release`");
        slot.release();
        assert!(dropped.load(SeqCst), "`release` did not let the request's buffer go");
    }

    #[test]
    fn a_slot_answers_call_after_call_and_waits_when_its_handler_does() {
        // The handler is pending as many times as its payload is long.
        let mut slot = unary_slot(|request: EchoRequest, _ctx| async move {
            for _ in 0..request.payload.len() {
                tokio::task::yield_now().await;
            }
            Ok(EchoReply { payload: request.payload })
        });
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let replies = ReplyAlloc::Heap;
        for payload in [&b""[..], b"ab", b""] {
            slot.start(request(payload), ctx()).expect("starts");
            for _ in 0..payload.len() {
                assert!(slot.poll_reply(&mut cx, &replies).is_pending());
            }
            match slot.poll_reply(&mut cx, &replies) {
                Poll::Ready(Ok(body)) => assert_eq!(reply_of(body).payload, payload),
                other => panic!("a reply was expected: {:?}", other.map(|r| r.err())),
            }
        }
    }

    #[test]
    fn a_request_that_does_not_decode_is_the_calls_status() {
        let mut slot =
            unary_slot(|request: EchoRequest, _ctx| async move { Ok(EchoReply { payload: request.payload }) });
        let status = slot.start(Bytes::from_static(&[0xff, 0xff]), ctx()).expect_err("garbage");
        assert_eq!(status.code, crate::status::Code::InvalidArgument);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            matches!(slot.poll_reply(&mut cx, &ReplyAlloc::Heap), Poll::Ready(Err(_))),
            "nothing runs after a failed start"
        );
    }

    #[test]
    fn the_driver_answers_a_whole_unary_request_in_the_step_that_reads_it() {
        use crate::rpc::dispatch::dispatch;
        use crate::rpc::events::CallPool;
        use crate::rpc::mailbox::{Ctl, Mailbox};
        use crate::session::{Event, Role, SessionConfig, Transmit};
        use crate::wire::{FLAG_END_STREAM, Frame};

        type Buf = crate::transport::mem::MemBuf;
        let now = Instant::now();
        let config = SessionConfig::default();
        let mut session = Session::<Outgoing<Buf>>::new(Role::Server, config.clone(), now).expect("config");
        session.handle_frame(now, Frame::Settings(config.to_settings())).expect("settings");
        let header = pb::CallHeader { method: Bytes::from_static(b"/rdmarpc.echo.Echo/Echo"), ..Default::default() };
        let call = Frame::Call { id: 1, header, message: Some(request(b"ping")), end: true };
        session.handle_frame(now, call).expect("call");
        let mut router = crate::rpc::Router::default();
        router.add(crate::echo::EchoService::server());
        let mailbox = Mailbox::<Buf>::new();
        let ctl = Ctl::new(&mailbox);
        let peer: std::sync::Arc<str> = "test://peer".into();
        let serving = Serving {
            router: Some(&router),
            ctl: &ctl,
            peer: &peer,
            replies: std::sync::Arc::new(ReplyAlloc::Heap),
            calls: CallPool::default(),
        };
        let (mut slots, mut fresh, mut pool) = (IdMap::default(), Vec::new(), SlotPool::default());
        let incoming = session.poll_event().expect("the call");
        assert!(matches!(incoming, Event::Incoming { id: 1, .. }));
        dispatch(incoming, &mut session, &mut slots, &serving, &mut fresh, &mut pool, now);
        // Answered in that step: nothing left to dispatch, to poll, to track, or in the mailbox.
        assert_eq!(session.poll_event(), None, "the request was taken with its call");
        assert!(slots.is_empty() && fresh.is_empty(), "no bookkeeping and no handler left to poll");
        assert!(mailbox.pop().is_none(), "the reply did not go through the mailbox");
        let reply = std::iter::from_fn(|| session.poll_transmit())
            .find_map(|transmit| match transmit {
                Transmit::Data { header, body: Outgoing::Framed(body) } if header.call_id == 1 => Some((header, body)),
                _ => None,
            })
            .expect("the reply is queued on the session");
        assert!(reply.0.flags & FLAG_END_STREAM != 0, "the reply ends the call");
        assert_eq!(reply_of(ReplyBody::Heap(reply.1)).payload, Bytes::from_static(b"ping"));
    }

    #[test]
    fn a_handlers_error_is_the_calls_status() {
        let mut slot =
            unary_slot(
                |_: EchoRequest, _ctx| async move { Err::<EchoReply, _>(Status::not_found("no such snapshot")) },
            );
        slot.start(request(b"x"), ctx()).expect("starts");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match slot.poll_reply(&mut cx, &ReplyAlloc::Heap) {
            Poll::Ready(Err(status)) => assert_eq!(status.message, "no such snapshot"),
            _ => panic!("the handler's status was expected"),
        }
    }
}
