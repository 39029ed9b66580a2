//! The server side of a run-to-completion connection: one thread per RDMA connection polls its
//! CQ, feeds the session, and runs each unary handler right where its request was found, as
//! eRPC's dispatch thread does. A handler that answers at once never meets a runtime, a task or
//! a waker; one that waits (IO, a timer) holds the thread until it is done, parked, with the
//! server's runtime entered so its timers and IO work. Streaming methods are refused with a
//! status that says where they are served.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::conn::DirectConn;
use crate::pb::rpc as pb;
use crate::rpc::dispatch::log_finished;
use crate::rpc::handler::SlotPool;
use crate::rpc::server::{MethodPath, RequestContext};
use crate::rpc::{ConnectionConfig, Router, UnarySlot};
use crate::session::{Event, Role};
use crate::status::Status;
use crate::transport::rdma::RdmaConnection;
use crate::transport::{ReplyAlloc, ReplyBody};
use crate::wire::Kind;

/// How long a closing connection keeps sending its GOAWAY and trailers.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Runs `connection` to its end in the calling thread, serving `router`'s unary methods; returns
/// how it ended. `stop` asks for a graceful shutdown (GOAWAY, then the calls in flight finish).
/// Handlers that wait need a multi-thread tokio runtime: pass its handle as `runtime`.
pub fn serve_connection_direct(
    router: &Router,
    config: &ConnectionConfig,
    connection: RdmaConnection,
    stop: &AtomicBool,
    runtime: Option<tokio::runtime::Handle>,
) -> Status {
    let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
    let mut conn = match DirectConn::new(connection, Role::Server, config) {
        Ok(conn) => conn,
        Err(status) => return status,
    };
    let replies = ReplyAlloc::Registered(conn.alloc().clone());
    let mut pool = SlotPool::default();
    let mut replied = Replied::new();
    let mut stopping = false;
    let mut final_status = Status::ok();
    tracing::debug!(peer = %conn.peer, "serving a connection to completion in its own thread");
    loop {
        conn.turn();
        while let Some(event) = conn.session.poll_event() {
            match event {
                Event::Incoming { id, header } => {
                    start(&mut conn, router, &mut pool, &replies, &mut replied, id, header)
                }
                Event::ConnectionClosed(status) => final_status = status,
                Event::GoAway { last_call_id, status } => {
                    tracing::debug!(peer = %conn.peer, last_call_id, %status, "peer sent GOAWAY");
                }
                // Calls run to completion keep no state here: nothing to end or deliver.
                _ => {}
            }
        }
        if !replied.is_empty() {
            // The replies go out now; then what they kept of their requests goes back.
            conn.transmit();
            for (method, mut slot) in replied.drain(..) {
                slot.release();
                pool.give_unary(method, slot);
            }
        }
        if conn.session.is_closed() {
            break;
        }
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
            conn.session.shutdown(Status::unavailable("server shutting down"));
        }
    }
    conn.flush_for(CLOSE_GRACE);
    tracing::debug!(peer = %conn.peer, status = %final_status, "connection closed");
    final_status
}

/// Starts a call: a unary call whose request came whole runs now; anything else is answered
/// with why it is not served here.
fn start(
    conn: &mut DirectConn,
    router: &Router,
    pool: &mut SlotPool,
    replies: &ReplyAlloc,
    replied: &mut Replied,
    id: u64,
    header: pb::CallHeader,
) {
    let heard = conn.now();
    let Some((method, service)) = router.find(&header.method) else {
        let path = MethodPath::from(header.method);
        let status = Status::unimplemented(format!(
            "method {path} is not served here; this server serves: {}",
            router.describe()
        ));
        return conn.session.finish(id, status);
    };
    let Some(mut slot) = pool.take_unary(method, service) else {
        return conn.session.finish(
            id,
            Status::unimplemented(format!(
                "{method} is a streaming method, and this connection runs unary calls to completion only; \
             serve streaming methods with `Server::serve` (not in run-to-completion mode)"
            )),
        );
    };
    let Some(request) = conn.session.take_request(id) else {
        pool.give_unary(method, slot);
        return conn.session.finish(
            id,
            Status::unimplemented(format!(
                "{method}: the request did not come with the call; this connection runs unary calls to \
             completion only, and takes them as rdma-rpc clients send them (one CALL frame)"
            )),
        );
    };
    let bytes_in = request.len();
    let mut ctx = RequestContext::new(header, conn.peer.clone());
    let deadline = ctx.deadline;
    // The router's own copy: a view of the frame would hold its receive buffer for the handler.
    ctx.method = MethodPath::from(bytes::Bytes::from_static(method.as_bytes()));
    let span = tracing::info_span!("rpc", method = %method, peer = %conn.peer, call = id);
    let outcome = span.in_scope(|| run(&mut slot, request, ctx, replies, deadline));
    let (status, bytes_out) = match outcome {
        Outcome::Replied(reply) => {
            // Back to the pool once the reply is posted: see `Replied`.
            replied.push((method, slot));
            let bytes_out = reply.message_len();
            match conn.session.send(id, Kind::Message, crate::rpc::dispatch::reply_outgoing(reply), true) {
                Ok(()) => (Status::ok(), bytes_out),
                Err(status) => (status, 0),
            }
        }
        Outcome::Failed(status) => {
            pool.give_unary(method, slot);
            (status, 0)
        }
        // The slot is dropped: its handler's state is unknown.
        Outcome::Panicked => (Status::internal("the server's handler panicked"), 0),
    };
    if !status.is_ok() {
        conn.session.finish(id, status.clone());
    }
    log_finished(id, &method, heard, bytes_in as u64, bytes_out as u64, &status);
}

/// The slots of the calls answered in this pass, with their replies' messages: an echo's reply
/// is a view of its request's receive buffer, and returning that buffer (the last view dropped,
/// the slot pushed back to its pool) waits until the replies are posted, off the round trip.
type Replied = Vec<(&'static str, Box<dyn UnarySlot>)>;

/// How a handler ended.
enum Outcome {
    Replied(ReplyBody),
    Failed(Status),
    Panicked,
}

/// Runs a handler to its end: polled once with a no-op waker (an echo is done then, and costs no
/// waker); one that waits goes on in [`finish_waiting`].
fn run(
    slot: &mut Box<dyn UnarySlot>,
    request: bytes::Bytes,
    ctx: RequestContext,
    replies: &ReplyAlloc,
    deadline: Option<Instant>,
) -> Outcome {
    let mut cx = Context::from_waker(Waker::noop());
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| match slot.start(request, ctx) {
        Ok(()) => slot.poll_reply(&mut cx, replies),
        Err(status) => Poll::Ready(Err(status)),
    }));
    if let Ok(Poll::Pending) = first { finish_waiting(slot, replies, deadline) } else { outcome(first) }
}

/// What a poll that is not pending means.
fn outcome(polled: std::thread::Result<Poll<Result<ReplyBody, Status>>>) -> Outcome {
    match polled {
        Ok(Poll::Ready(Ok(reply))) => Outcome::Replied(reply),
        Ok(Poll::Ready(Err(status))) => Outcome::Failed(status),
        Ok(Poll::Pending) => Outcome::Failed(Status::internal("the handler was still running")),
        Err(_) => Outcome::Panicked,
    }
}

/// Polls a handler that waits each time its waker unparks this thread, until it is done or
/// `deadline` passes. The first poll's waker was a no-op: this polls again at once with one
/// that unparks.
fn finish_waiting(slot: &mut Box<dyn UnarySlot>, replies: &ReplyAlloc, deadline: Option<Instant>) -> Outcome {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| slot.poll_reply(&mut cx, replies)));
        if !matches!(polled, Ok(Poll::Pending)) {
            return outcome(polled);
        }
        match deadline {
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    // The client's session ends the call at its deadline too; this one stops the work.
                    return Outcome::Failed(Status::deadline_exceeded("the call's deadline passed in its handler"));
                }
                std::thread::park_timeout(deadline - now);
            }
            None => std::thread::park(),
        }
    }
}

/// Wakes a handler's thread.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
