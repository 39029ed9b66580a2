//! One RDMA connection driven by the thread that polls it: the IO-free session, the outbox, and
//! the transport's non-waiting halves (`RdmaReceiver::poll_now` with the CQ claimed,
//! `RdmaSender::try_flush`). No runtime, task, waker or queue between the CQ and the session:
//! each [`DirectConn::turn`] sends what the session released and feeds it what the CQ holds.

use std::sync::Arc;
use std::time::Instant;

use crate::rpc::ConnectionConfig;
use crate::rpc::command::Outgoing;
use crate::rpc::driver::handle_received;
use crate::rpc::outbox::Outbox;
use crate::session::{Role, Session};
use crate::status::Status;
use crate::transport::rdma::{RdmaAlloc, RdmaConnection, RdmaReceiver, RdmaSender, SlotWriter};
use crate::transport::{Transport, TransportError};
use crate::wire::WireLimits;

/// Received messages fed to the session per turn, at most: a peer that keeps sending cannot keep
/// the thread from writing.
const RECV_BATCH: usize = 64;

/// Turns between two reads of the clock: a read costs more than a turn that finds nothing, and
/// a round trip takes a few turns. The session's clock (what a frame was heard at, keepalive,
/// deadline checks) is that coarse: a few microseconds natively. A call with a deadline reads
/// the clock for its start itself.
const TURNS_PER_CLOCK: u32 = 64;

/// A connection and its session, run by one thread.
pub(super) struct DirectConn {
    pub(super) session: Session<Outgoing<SlotWriter>>,
    outbox: Outbox<RdmaAlloc, RdmaSender>,
    receiver: RdmaReceiver,
    limits: WireLimits,
    pub(super) peer: Arc<str>,
    /// The largest frame this side sends or takes (the session's limit, within the transport's).
    pub(super) max_frame: usize,
    /// The transport failed to send: the session was told, nothing more is written.
    send_failed: bool,
    /// Turns since the clock was last read, and what it said.
    turns: u32,
    now: Instant,
}

impl DirectConn {
    /// Takes `connection`'s CQ for the calling thread and starts a session on it.
    pub(super) fn new(connection: RdmaConnection, role: Role, config: &ConnectionConfig) -> Result<Self, Status> {
        let peer: Arc<str> = connection.peer().into();
        let config = config.fitted_to(&connection.capabilities());
        let limits = WireLimits { max_frame_size: config.session.max_frame_size };
        let session =
            Session::new(role, config.session, Instant::now()).map_err(|err| Status::internal(err.to_string()))?;
        let (alloc, sender, mut receiver) = connection.split();
        receiver.claim_cq();
        Ok(DirectConn {
            session,
            outbox: Outbox::new(alloc, sender),
            receiver,
            limits,
            peer,
            max_frame: limits.max_frame_size,
            send_failed: false,
            turns: 0,
            now: Instant::now(),
        })
    }

    /// The connection's registered send memory.
    pub(super) fn alloc(&self) -> &RdmaAlloc {
        self.outbox.alloc()
    }

    /// One turn: what the session released goes out (as far as credit allows now), then what
    /// arrived goes into the session, up to the first message that gives the caller an event;
    /// every [`TURNS_PER_CLOCK`] turns, the clock is read and the session's deadlines checked.
    /// True if a message arrived.
    pub(super) fn turn(&mut self) -> bool {
        self.transmit();
        let mut received = 0;
        while received < RECV_BATCH {
            let Some(message) = self.receiver.poll_now() else { break };
            received += 1;
            let message = message.map_err(TransportError::from);
            if !handle_received(message, self.now, &mut self.session, &self.limits, &self.peer) {
                break;
            }
            // What the message brought (a request to run, a reply to return) is handled before
            // the CQ is looked at again: that look re-posts the message's receive buffer and
            // returns credit (`reap.rs`), work that can wait until the reply or the next request
            // is posted.
            if self.session.has_events() {
                break;
            }
        }
        self.turns += 1;
        if self.turns >= TURNS_PER_CLOCK {
            self.turns = 0;
            self.now = Instant::now();
            if self.session.poll_timeout().is_some_and(|at| at <= self.now) {
                self.session.handle_timeout(self.now);
            }
        }
        received > 0
    }

    /// The time as of the last clock read: at most [`TURNS_PER_CLOCK`] turns old.
    pub(super) fn now(&self) -> Instant {
        self.now
    }

    /// Hands every frame the session releases to the transport and posts what credit allows.
    pub(super) fn transmit(&mut self) {
        if self.send_failed {
            return;
        }
        let mut result = Ok(());
        while result.is_ok()
            && self.outbox.accepts()
            && let Some(transmit) = self.session.poll_transmit()
        {
            result = self.outbox.push(transmit);
        }
        if result.is_ok() {
            result = self.outbox.drive_now(|sender| sender.try_flush().map_err(TransportError::from));
        }
        if let Err(err) = result {
            self.send_failed = true;
            self.session.handle_error(Status::unavailable(format!("send failed: {err}")));
        }
    }

    /// Turns until the session has sent everything it queued (a GOAWAY, trailers) or `grace` is
    /// over: what a closing connection does before it is dropped.
    pub(super) fn flush_for(&mut self, grace: std::time::Duration) {
        let until = Instant::now() + grace;
        while !self.send_failed && Instant::now() < until {
            self.transmit();
            if !self.outbox.wants_drive() {
                break;
            }
            // Reaping brings the credit the rest may wait for; what arrives now is not read.
            let _ = self.receiver.poll_now();
        }
    }
}
