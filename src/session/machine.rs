//! The session state machine itself: its state, the calls it tracks, and what the driver asks of
//! it (opening calls, sending, `poll_*`). What arrives from the peer and the clock is handled in
//! [`inbound`]. See the module overview in `session/mod.rs`.

mod inbound;
mod outbound;
mod taken;

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::flow::{RecvWindow, SendWindow};
use super::queue::SendQueue;
use super::{Body, ConfigError, Event, Role, SessionConfig, Transmit};
use crate::pb::rpc as pb;
use crate::status::Status;
use crate::wire::{FLAG_END_STREAM, FLAG_HAS_MESSAGE, Frame, FrameHeader, HEADER_LEN, Kind};

/// An item waiting in a call's send queue, in order. Kept small (no `Frame`, whose largest
/// variant is over 100 bytes): a call's record is moved into and out of the call map once per
/// call, and moves past 128 bytes are `memcpy` calls.
#[derive(Debug)]
enum Pending<B> {
    /// Needs credit.
    Data { header: FrameHeader, body: B },
    /// Half-close without data; ordered after the data before it, needs no credit.
    StreamEnd,
    /// The server's status for the call; ordered after the data before it, needs no credit.
    Trailer(pb::Status),
}

#[derive(Debug)]
struct Call<B> {
    queue: SendQueue<Pending<B>>,
    send: SendWindow,
    recv: RecvWindow,
    deadline: Option<Instant>,
    /// This side sent its last frame (or queued it).
    local_end: bool,
    /// The peer sent its last frame.
    remote_end: bool,
    /// Queued in `ready`.
    ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's SETTINGS; call data is held back.
    Handshake,
    Open,
    /// GOAWAY sent or received: no new calls, open ones drain.
    Draining,
    Closed,
}

/// One connection's protocol state. `B` is the driver's outgoing body type.
#[derive(Debug)]
pub struct Session<B> {
    role: Role,
    config: SessionConfig,
    state: State,
    peer: Option<pb::Settings>,
    calls: super::IdMap<Call<B>>,
    deadlines: BTreeSet<(Instant, u64)>,
    ready: VecDeque<u64>,
    /// Data frames that passed flow control as they were queued: see `outbound.rs`.
    sendable: VecDeque<Transmit<B>>,
    control: VecDeque<Frame>,
    events: VecDeque<Event>,
    conn_send: SendWindow,
    conn_recv: RecvWindow,
    /// Highest call id the peer opened (server) or this side opened (client).
    last_call_id: u64,
    /// Calls above this id are refused (set by GOAWAY).
    goaway_limit: Option<u64>,
    created: Instant,
    last_heard: Instant,
    ping_sent: Option<Instant>,
    ping_seq: u64,
}

impl<B: Body> Session<B> {
    /// A new session that has queued its SETTINGS.
    pub fn new(role: Role, config: SessionConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let settings = config.to_settings();
        let conn_recv = RecvWindow::new(config.connection_window);
        Ok(Session {
            role,
            state: State::Handshake,
            peer: None,
            calls: super::IdMap::default(),
            deadlines: BTreeSet::new(),
            ready: VecDeque::new(),
            sendable: VecDeque::new(),
            control: VecDeque::from([Frame::Settings(settings)]),
            events: VecDeque::new(),
            conn_send: SendWindow::new(0),
            conn_recv,
            last_call_id: 0,
            goaway_limit: None,
            created: now,
            last_heard: now,
            ping_sent: None,
            ping_seq: 0,
            config,
        })
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer's SETTINGS, once received.
    pub fn peer_settings(&self) -> Option<&pb::Settings> {
        self.peer.as_ref()
    }

    /// Whether the handshake finished and calls can flow.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Open | State::Draining)
    }

    /// Whether the connection is over; the driver flushes what is left and closes the transport.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Calls open now.
    pub fn open_calls(&self) -> usize {
        self.calls.len()
    }

    /// Largest frame the peer accepts (header included); before its SETTINGS, this side's own.
    pub fn max_send_frame(&self) -> usize {
        self.peer.as_ref().map_or(self.config.max_frame_size, |p| p.max_frame_size as usize)
    }

    /// Client: opens call `id` with an encoded CALL body (length-delimited `CallHeader`, then the
    /// first message when `has_message`). Ids must grow; the driver allocates them.
    pub fn open_call(
        &mut self,
        now: Instant,
        id: u64,
        timeout: Option<Duration>,
        body: B,
        has_message: bool,
        end: bool,
    ) -> Result<(), Status> {
        if self.role != Role::Client {
            return Err(Status::internal("only a client opens calls"));
        }
        match self.state {
            State::Closed => return Err(Status::unavailable("connection closed")),
            State::Draining => {
                return Err(Status::unavailable("connection is shutting down (GOAWAY); retry on a new connection"));
            }
            _ => {}
        }
        if id == 0 || self.calls.contains_key(&id) {
            return Err(Status::internal(format!("call id {id} is not fresh")));
        }
        self.check_frame_len(body.body_len())?;
        let peer_window = self.peer.as_ref().map_or(0, |p| p.initial_call_window);
        let mut call = self.new_call(peer_window, now, timeout, id);
        let header =
            FrameHeader::new(Kind::Call, id).with_flag(FLAG_HAS_MESSAGE, has_message).with_flag(FLAG_END_STREAM, end);
        call.local_end = end;
        self.queue_data(&mut call, header, body);
        self.calls.insert(id, call);
        self.last_call_id = self.last_call_id.max(id);
        Ok(())
    }

    /// Queues a MESSAGE or DATA frame on call `id`. `end` half-closes (for a server: the call
    /// succeeded).
    pub fn send(&mut self, id: u64, kind: Kind, body: B, end: bool) -> Result<(), Status> {
        if !matches!(kind, Kind::Message | Kind::Data) {
            return Err(Status::internal("send takes MESSAGE or DATA"));
        }
        self.check_frame_len(body.body_len())?;
        // Out of the map while its frame is queued, so the session's other fields stay free.
        let mut call = self.calls.remove(&id).ok_or_else(|| Status::cancelled(format!("call {id} is over")))?;
        if call.local_end {
            self.calls.insert(id, call);
            return Err(Status::internal(format!("call {id} already ended its stream")));
        }
        call.local_end = end;
        let header = FrameHeader::new(kind, id).with_flag(FLAG_END_STREAM, end);
        let sent = self.queue_data(&mut call, header, body);
        if sent && end && self.role == Role::Server {
            // The reply that ends the call is on its way: nothing more to track.
            if let Some(deadline) = call.deadline {
                self.deadlines.remove(&(deadline, id));
            }
            self.check_drained();
        } else {
            self.calls.insert(id, call);
        }
        Ok(())
    }

    /// Half-closes call `id` without data.
    pub fn end_stream(&mut self, id: u64) -> Result<(), Status> {
        let call = self.open_call_mut(id)?;
        call.local_end = true;
        call.queue.push_back(Pending::StreamEnd);
        self.make_ready(id);
        Ok(())
    }

    /// Ends call `id` with `status`. Server: the trailer goes after the call's queued data.
    /// Client: cancels the call at once; queued data is dropped and the server is told.
    pub fn finish(&mut self, id: u64, status: Status) {
        match self.role {
            Role::Server => {
                if let Some(call) = self.calls.get_mut(&id).filter(|c| !c.local_end) {
                    call.local_end = true;
                    call.queue.push_back(Pending::Trailer(status.to_proto()));
                    self.make_ready(id);
                }
            }
            Role::Client => {
                if self.remove_call(id).is_some() {
                    self.unsend(id);
                    self.control.push_back(Frame::Trailer { id, status: status.to_proto() });
                    self.check_drained();
                }
            }
        }
    }

    /// The application consumed `len` bytes of call `id`'s data: grant the peer more credit.
    pub fn release(&mut self, id: u64, len: usize) {
        if let Some(call) = self.calls.get_mut(&id).filter(|c| !c.remote_end)
            && let Some(bytes) = call.recv.release(len)
        {
            self.control.push_back(Frame::Credit { id, bytes, frames: 0 });
        }
    }

    /// Starts a graceful shutdown: GOAWAY, no new calls, open calls drain.
    pub fn shutdown(&mut self, status: Status) {
        if matches!(self.state, State::Closed | State::Draining) {
            return;
        }
        self.state = State::Draining;
        let last_call_id = if self.role == Role::Server { self.last_call_id } else { 0 };
        self.goaway_limit = Some(last_call_id);
        self.control.push_back(Frame::GoAway(pb::GoAway { last_call_id, status: Some(status.to_proto()) }));
        self.check_drained();
    }

    /// The transport failed or the peer broke the protocol: every call ends with `status`.
    pub fn handle_error(&mut self, status: Status) {
        if self.state == State::Closed {
            return;
        }
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            self.remove_call(id);
            self.events.push_back(Event::Closed { id, status: status.clone() });
        }
        self.control.clear();
        self.sendable.clear();
        self.control
            .push_back(Frame::GoAway(pb::GoAway { last_call_id: self.last_call_id, status: Some(status.to_proto()) }));
        self.close(status);
    }

    /// When `handle_timeout` must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let keepalive = match (self.state, self.ping_sent) {
            (State::Handshake, _) => self.created + self.config.keepalive_timeout,
            (_, Some(sent)) => sent + self.config.keepalive_timeout,
            (_, None) => self.last_heard + self.config.keepalive_interval,
        };
        Some(self.deadlines.first().map_or(keepalive, |&(d, _)| d.min(keepalive)))
    }

    /// Credit this side holds for the connection, for diagnostics.
    pub fn connection_credit(&self) -> u64 {
        self.conn_send.available()
    }

    fn new_call(&mut self, peer_window: u64, now: Instant, timeout: Option<Duration>, id: u64) -> Call<B> {
        let deadline = timeout.map(|t| now + t);
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, id));
        }
        Call {
            queue: SendQueue::default(),
            send: SendWindow::new(peer_window),
            recv: RecvWindow::new(self.config.initial_call_window),
            deadline,
            local_end: false,
            remote_end: false,
            ready: false,
        }
    }

    fn open_call_mut(&mut self, id: u64) -> Result<&mut Call<B>, Status> {
        match self.calls.get_mut(&id) {
            Some(call) if !call.local_end => Ok(call),
            Some(_) => Err(Status::internal(format!("call {id} already ended its stream"))),
            None => Err(Status::cancelled(format!("call {id} is over"))),
        }
    }

    fn check_frame_len(&self, body_len: usize) -> Result<(), Status> {
        let max = self.max_send_frame().saturating_sub(HEADER_LEN);
        if body_len > max {
            return Err(Status::resource_exhausted(format!(
                "message of {body_len} bytes exceeds the peer's limit of {max}: raise max_frame_size on the peer or split the message"
            )));
        }
        Ok(())
    }

    fn remove_call(&mut self, id: u64) -> Option<Call<B>> {
        let call = self.calls.remove(&id)?;
        if let Some(deadline) = call.deadline {
            self.deadlines.remove(&(deadline, id));
        }
        Some(call)
    }

    fn check_drained(&mut self) {
        if self.state == State::Draining && self.calls.is_empty() {
            self.close(Status::ok());
        }
    }

    fn close(&mut self, status: Status) {
        self.state = State::Closed;
        self.ready.clear();
        self.events.push_back(Event::ConnectionClosed(status));
    }
}
