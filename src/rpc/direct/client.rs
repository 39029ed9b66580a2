//! The client side of a run-to-completion connection: [`DirectClient`] makes blocking unary calls
//! from the caller's own thread. The caller encodes its request into registered memory, posts it,
//! and polls the CQ until the reply is there (perftest's loop, with the session and protobuf in
//! it): no driver task, mailbox or wake-up between the caller and the NIC.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message;

use super::conn::DirectConn;
use crate::rpc::codec::{self, CallHeaderRef};
use crate::rpc::command::Outgoing;
use crate::rpc::{CallOptions, ConnectError, ConnectionConfig};
use crate::session::{Event, Role};
use crate::status::{Code, Status};
use crate::transport::TransportError;
use crate::transport::rdma::{self, Negotiated, RdmaConfig, RdmaConnection};
use crate::transport::tcp::{TcpConfig, TcpConnection};

/// A connection whose calls run in the caller's thread, one at a time, busy-polling the CQ.
///
/// Made in an async context ([`connect`](Self::connect): the RDMA handshake uses tokio, and the
/// connection's liveness watch stays a task of that runtime, which must outlive the client), then
/// used from any one thread. Calls block that thread and keep one core busy while they wait. The
/// server's keepalive is answered only during calls: a client idle for longer than the server's
/// keepalive timeout (20 s by default) should call [`keep_alive`](Self::keep_alive) meanwhile,
/// or expect `Unavailable` and connect again.
pub struct DirectClient {
    conn: DirectConn,
    next_id: u64,
    options: CallOptions,
}

impl std::fmt::Debug for DirectClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectClient").field("peer", &self.conn.peer).field("next_id", &self.next_id).finish()
    }
}

impl DirectClient {
    /// Connects to an rdma-rpc server at `addr` (`host:port`) over RDMA; there is no TCP
    /// fallback here (a run-to-completion client polls a CQ).
    pub async fn connect(addr: &str, rdma: &RdmaConfig, config: ConnectionConfig) -> Result<Self, ConnectError> {
        let tcp = TcpConnection::connect(addr, TcpConfig::default()).await.map_err(TransportError::from)?;
        match rdma::connect(tcp, rdma).await.map_err(TransportError::from)? {
            Negotiated::Rdma(connection) => Self::new(connection, config),
            Negotiated::Tcp { reason, .. } => Err(ConnectError::RdmaRequired { reason }),
        }
    }

    /// A client on an established RDMA connection. Its SETTINGS go out with the first call.
    pub fn new(connection: RdmaConnection, config: ConnectionConfig) -> Result<Self, ConnectError> {
        config.session.validate()?;
        let conn = DirectConn::new(connection, Role::Client, &config)
            .map_err(|status| ConnectError::Handshake { peer: "rdma".into(), status })?;
        Ok(DirectClient { conn, next_id: 1, options: CallOptions::default() })
    }

    /// The server, as a URL.
    pub fn peer(&self) -> &str {
        &self.conn.peer
    }

    /// Every later call is given `timeout` (`None`: no deadline).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.options.timeout = timeout;
    }

    /// Metadata sent with every later call.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.options.metadata = metadata;
    }

    /// Answers what the server sent meanwhile (its keepalive pings) without making a call.
    pub fn keep_alive(&mut self) {
        self.conn.turn();
        while self.conn.session.poll_event().is_some() {}
    }

    /// A unary call to `method` ("/package.Service/Method"): blocks this thread until the reply,
    /// an error status, or the deadline.
    pub fn unary<Req: Message, Res: Message + Default>(&mut self, method: &str, request: &Req) -> Result<Res, Status> {
        let id = self.open(method, request)?;
        let mut reply = None;
        loop {
            self.conn.turn();
            while let Some(event) = self.conn.session.poll_event() {
                match event {
                    Event::Message { id: of, body, end } if of == id => {
                        reply = Some(body);
                        if end && let Some(status) = self.conn.session.take_closed(id) {
                            return finish(reply, status);
                        }
                    }
                    Event::Closed { id: of, status } if of == id => return finish(reply, status),
                    Event::ConnectionClosed(status) => return Err(closed(status)),
                    // Events of calls that ended before (a deadline) come no more after Closed.
                    _ => {}
                }
            }
            if self.conn.session.is_closed() {
                return Err(Status::unavailable("connection closed; connect again"));
            }
        }
    }

    /// Encodes the CALL frame into registered memory and opens the call on the session.
    fn open<Req: Message>(&mut self, method: &str, request: &Req) -> Result<u64, Status> {
        let timeout = self.options.timeout;
        let timeout_micros = timeout.map_or(0, |t| t.as_micros().clamp(1, u64::MAX as u128) as u64);
        let metadata = &self.options.metadata;
        let len = codec::call_len(&CallHeaderRef { method, timeout_micros, metadata }, Some(request));
        let mut buf = self.send_buffer(len, timeout)?;
        let metadata = &self.options.metadata;
        codec::write_call(&mut buf, CallHeaderRef { method, timeout_micros, metadata }, Some(request))?;
        let id = self.next_id;
        self.next_id += 1;
        // A deadline counts from now; otherwise the connection's coarse clock will do.
        let now = if timeout.is_some() { Instant::now() } else { self.conn.now() };
        self.conn.session.open_call(now, id, timeout, Outgoing::Buf(buf), true, true)?;
        Ok(id)
    }

    /// A registered buffer of `len` bytes: while all are in flight, turns (reaping frees them)
    /// until one is free or `timeout` passes.
    fn send_buffer(
        &mut self,
        len: usize,
        timeout: Option<Duration>,
    ) -> Result<crate::transport::rdma::SlotWriter, Status> {
        if len > self.conn.max_frame {
            return Err(Status::resource_exhausted(format!(
                "a request of {len} bytes exceeds the largest frame of {} bytes",
                self.conn.max_frame
            )));
        }
        let give_up = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(found) = self.conn.alloc().try_alloc_data(len) {
                return Ok(found);
            }
            if self.conn.session.is_closed() {
                return Err(Status::unavailable("connection closed; connect again"));
            }
            if give_up.is_some_and(|at| Instant::now() >= at) {
                return Err(Status::deadline_exceeded("no send buffer came free before the deadline"));
            }
            self.keep_alive();
        }
    }
}

/// A call's result from its reply and final status.
pub(super) fn finish<Res: Message + Default>(reply: Option<bytes::Bytes>, status: Status) -> Result<Res, Status> {
    if !status.is_ok() {
        return Err(status);
    }
    match reply {
        Some(body) => codec::decode(body),
        None => Err(Status::new(Code::Internal, "the server ended the call without a reply")),
    }
}

/// What a call sees when its connection ended.
pub(super) fn closed(status: Status) -> Status {
    if status.is_ok() {
        Status::unavailable("connection closed (the server shut down gracefully); connect again")
    } else {
        Status::unavailable(format!("connection closed: {status}"))
    }
}

impl Drop for DirectClient {
    fn drop(&mut self) {
        // Tell the server this side is done (GOAWAY) before the connection goes.
        self.conn.session.shutdown(Status::ok());
        self.conn.flush_for(Duration::from_millis(100));
    }
}
