//! What reaches the session from outside: frames from the peer ([`Session::handle_frame`] and
//! the `on_*` handler of each kind) and the clock ([`Session::handle_timeout`]: deadlines and
//! keepalive). Receiving is where the peer's flow-control limits are enforced and where a broken
//! peer becomes a [`SessionError`].

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;

use super::{Session, State};
use crate::pb::rpc as pb;
use crate::session::{Body, Event, Role, SessionError};
use crate::status::{Code, Status};
use crate::wire::{Frame, HEADER_LEN};

impl<B: Body> Session<B> {
    /// Feeds one decoded frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, frame: Frame) -> Result<(), SessionError> {
        self.last_heard = now;
        self.ping_sent = None;
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state == State::Handshake && !matches!(frame, Frame::Settings(_)) {
            return Err(SessionError::Protocol("first frame must be SETTINGS"));
        }
        match frame {
            Frame::Settings(settings) => self.on_settings(settings)?,
            Frame::Call { id, header, message, end } => self.on_call(now, id, header, message, end)?,
            Frame::Message { id, body, end } => self.on_data(id, body, end, false)?,
            Frame::Data { id, body, end } => self.on_data(id, body, end, true)?,
            Frame::StreamEnd { id } => self.on_end(id),
            Frame::Trailer { id, status } => {
                if self.remove_call(id).is_some() {
                    self.events.push_back(Event::Closed { id, status: Status::from_proto(status) });
                    self.check_drained();
                }
            }
            Frame::Credit { id: 0, bytes, .. } => {
                self.conn_send.grant(bytes);
                let blocked: Vec<u64> =
                    self.calls.iter().filter(|(_, c)| !c.queue.is_empty()).map(|(id, _)| *id).collect();
                for id in blocked {
                    self.make_ready(id);
                }
            }
            Frame::Credit { id, bytes, .. } => {
                if let Some(call) = self.calls.get_mut(&id) {
                    call.send.grant(bytes);
                    self.make_ready(id);
                }
            }
            Frame::Ping(v) => self.control.push_back(Frame::Pong(v)),
            Frame::Pong(_) => {}
            Frame::GoAway(goaway) => self.on_goaway(goaway),
        }
        Ok(())
    }

    /// Advances timers: deadlines and keepalive.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if self.remove_call(id).is_some() {
                self.unsend(id);
                let status = Status::deadline_exceeded("deadline exceeded before the call finished");
                self.control.push_back(Frame::Trailer { id, status: status.to_proto() });
                self.events.push_back(Event::Closed { id, status });
                self.check_drained();
            }
        }
        if self.state == State::Closed {
            return;
        }
        let timeout = self.config.keepalive_timeout;
        if self.state == State::Handshake && now.duration_since(self.created) >= timeout {
            self.handle_error(Status::unavailable(format!(
                "no SETTINGS from the peer within {timeout:?}: is it an rdma-rpc server of a compatible version?"
            )));
        } else if let Some(sent) = self.ping_sent {
            if now.duration_since(sent) >= timeout {
                self.handle_error(Status::unavailable(format!(
                    "peer silent for {:?} (keepalive timeout): it died or the network is cut",
                    now.duration_since(self.last_heard)
                )));
            }
        } else if now.duration_since(self.last_heard) >= self.config.keepalive_interval {
            self.ping_seq += 1;
            self.ping_sent = Some(now);
            self.control.push_back(Frame::Ping(self.ping_seq));
        }
    }

    fn on_settings(&mut self, settings: pb::Settings) -> Result<(), SessionError> {
        if self.peer.is_some() {
            return Err(SessionError::Protocol("SETTINGS sent twice"));
        }
        let frame = u64::from(settings.max_frame_size);
        if (settings.max_frame_size as usize) < HEADER_LEN
            || settings.initial_call_window < frame
            || settings.connection_window < frame
        {
            return Err(SessionError::Settings(format!(
                "windows ({} per call, {} per connection) must hold one frame of {} bytes",
                settings.initial_call_window, settings.connection_window, settings.max_frame_size
            )));
        }
        self.conn_send.grant(settings.connection_window);
        for call in self.calls.values_mut() {
            call.send.grant(settings.initial_call_window);
        }
        self.peer = Some(settings);
        if self.state == State::Handshake {
            self.state = State::Open;
        }
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            self.make_ready(id);
        }
        Ok(())
    }

    fn on_call(
        &mut self,
        now: Instant,
        id: u64,
        header: pb::CallHeader,
        message: Option<Bytes>,
        end: bool,
    ) -> Result<(), SessionError> {
        if self.role != Role::Server {
            return Err(SessionError::Protocol("a server opened a call"));
        }
        if self.calls.contains_key(&id) {
            return Err(SessionError::Protocol("CALL for a call id already open"));
        }
        let len = message.as_ref().map_or(0, Bytes::len);
        // The sender charged its connection window for the whole CALL body, call header
        // included: count (and return) the same, or every call leaks its header's size of
        // credit until the connection stalls. (The call header is encoded canonically by prost
        // on the client, so its length is recomputed exactly.)
        let header_len = header.encoded_len();
        let body_len = prost::encoding::encoded_len_varint(header_len as u64) + header_len + len;
        self.receive_connection_bytes(id, body_len)?;
        self.release_connection_bytes(body_len);
        let refusal = if self.goaway_limit.is_some_and(|limit| id > limit) {
            Some(Status::unavailable("server is shutting down (GOAWAY); retry on a new connection"))
        } else if self.calls.len() >= self.config.max_concurrent_calls as usize {
            Some(Status::resource_exhausted(format!(
                "server allows {} concurrent calls per connection",
                self.config.max_concurrent_calls
            )))
        } else {
            None
        };
        if let Some(status) = refusal {
            self.control.push_back(Frame::Trailer { id, status: status.to_proto() });
            return Ok(());
        }
        self.last_call_id = self.last_call_id.max(id);
        let timeout = (header.timeout_micros > 0).then(|| Duration::from_micros(header.timeout_micros));
        let peer_window = self.peer.as_ref().map_or(0, |p| p.initial_call_window);
        let mut call = self.new_call(peer_window, now, timeout, id);
        if !call.recv.receive(len) {
            return Err(SessionError::FlowControl { id, len, credit: call.recv.remaining() });
        }
        call.remote_end = end;
        self.calls.insert(id, call);
        self.events.push_back(Event::Incoming { id, header });
        match message {
            Some(body) => self.events.push_back(Event::Message { id, body, end }),
            None if end => self.events.push_back(Event::RemoteEnd { id }),
            None => {}
        }
        Ok(())
    }

    fn on_data(&mut self, id: u64, body: Bytes, end: bool, raw: bool) -> Result<(), SessionError> {
        let len = body.len();
        self.receive_connection_bytes(id, len)?;
        self.release_connection_bytes(len);
        let Some(call) = self.calls.get_mut(&id) else {
            // A call this side already ended (cancelled, deadline): its data is dropped.
            return Ok(());
        };
        if call.remote_end {
            return Err(SessionError::Protocol("data after the peer ended its stream"));
        }
        if !call.recv.receive(len) {
            return Err(SessionError::FlowControl { id, len, credit: call.recv.remaining() });
        }
        call.remote_end = end;
        self.events.push_back(if raw { Event::Data { id, body, end } } else { Event::Message { id, body, end } });
        if end && self.role == Role::Client {
            self.complete_client_call(id);
        }
        Ok(())
    }

    fn on_end(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.remote_end = true;
        self.events.push_back(Event::RemoteEnd { id });
        if self.role == Role::Client {
            self.complete_client_call(id);
        }
    }

    fn on_goaway(&mut self, goaway: pb::GoAway) {
        let status = goaway.status.map(Status::from_proto).unwrap_or_else(|| Status::unavailable("peer going away"));
        if self.role == Role::Client {
            let unprocessed: Vec<u64> = self.calls.keys().copied().filter(|&id| id > goaway.last_call_id).collect();
            for id in unprocessed {
                self.remove_call(id);
                self.unsend(id);
                self.events.push_back(Event::Closed {
                    id,
                    status: Status::new(
                        Code::Unavailable,
                        format!("not processed: server going away ({status}); retry"),
                    ),
                });
            }
        }
        self.events.push_back(Event::GoAway { last_call_id: goaway.last_call_id, status: status.clone() });
        if status.code != Code::Ok && status.code != Code::Unavailable {
            self.handle_error(status);
            return;
        }
        if self.state != State::Closed {
            self.state = State::Draining;
            self.goaway_limit.get_or_insert(self.last_call_id);
        }
        self.check_drained();
    }

    /// A server ended the call successfully (END on its last frame).
    fn complete_client_call(&mut self, id: u64) {
        self.remove_call(id);
        self.events.push_back(Event::Closed { id, status: Status::ok() });
        self.check_drained();
    }

    fn receive_connection_bytes(&mut self, id: u64, len: usize) -> Result<(), SessionError> {
        if self.conn_recv.receive(len) {
            Ok(())
        } else {
            Err(SessionError::FlowControl { id, len, credit: self.conn_recv.remaining() })
        }
    }

    /// Connection credit is returned on receipt: what one connection can make this side buffer is
    /// bounded by the per-call windows, which return only as the application consumes.
    fn release_connection_bytes(&mut self, len: usize) {
        if let Some(bytes) = self.conn_recv.release(len) {
            self.control.push_back(Frame::Credit { id: 0, bytes, frames: 0 });
        }
    }
}
