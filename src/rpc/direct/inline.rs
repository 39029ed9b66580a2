//! [`InlineClient`]: unary calls that run in the caller's own task, over any transport. The
//! caller's future encodes the request into the transport's send memory, writes it, and reads
//! until the reply is there, stepping the IO-free session itself: no driver task, mailbox, call
//! queue or wake-up between the caller and the socket (or the CQ). What [`DirectClient`] is to a
//! blocking thread over RDMA, this is to an async task over TCP or RDMA.
//!
//! The price is [`DirectClient`]'s: one call at a time (`&mut self`), and the connection is
//! serviced only while a call runs, so a client idle for longer than the server's keepalive
//! timeout (20 s by default) calls [`InlineClient::keep_alive`] meanwhile or connects again.
//! A call whose future is dropped before its reply is cancelled on the wire as the next call
//! starts (or when the client is closed).
//!
//! [`DirectClient`]: super::DirectClient

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::time::Sleep;

use super::client::{closed, finish};
use crate::pb::rpc as pb;
use crate::rpc::codec::{self, CallHeaderRef};
use crate::rpc::command::Outgoing;
use crate::rpc::driver::handle_received;
use crate::rpc::outbox::Outbox;
use crate::rpc::{CallOptions, ConnectError, ConnectionConfig, now};
use crate::session::{Event, Role, Session};
use crate::status::Status;
use crate::transport::{FrameReceiver, Transport};
use crate::wire::WireLimits;

/// Received messages fed to the session per step, at most, before what it released is written.
const RECV_BATCH: usize = 64;

/// How long [`InlineClient::close`] waits for its GOAWAY to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(100);

/// A connection whose unary calls run in the calling task, one at a time.
pub struct InlineClient<T: Transport> {
    session: Session<Outgoing<T::Buf>>,
    outbox: Outbox<T::Alloc, T::Sender>,
    receiver: T::Receiver,
    limits: WireLimits,
    peer: Arc<str>,
    transport: &'static str,
    next_id: u64,
    options: CallOptions,
    /// The call in progress; still set when a call's future was dropped before its end.
    current: Option<u64>,
    /// The transport failed to send: the session was told, nothing more is written.
    send_failed: bool,
    /// When the last step read the clock: a call without a deadline starts at it (the session
    /// needs a call's start only for its deadline).
    stepped: Instant,
    /// The session's next deadline (keepalive, a call's timeout), armed only when it moves closer.
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T: Transport> std::fmt::Debug for InlineClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineClient").field("peer", &self.peer).field("next_id", &self.next_id).finish()
    }
}

impl<T: Transport> InlineClient<T> {
    /// Starts a session over an established transport and waits for the handshake (the server's
    /// SETTINGS).
    pub async fn connect(transport: T, config: ConnectionConfig) -> Result<Self, ConnectError> {
        let capabilities = transport.capabilities();
        let config = config.fitted_to(&capabilities);
        config.session.validate()?;
        let peer: Arc<str> = transport.peer().into();
        let limits = WireLimits { max_frame_size: config.session.max_frame_size };
        let session = Session::new(Role::Client, config.session, now())?;
        let (alloc, sender, receiver) = transport.split();
        let mut client = InlineClient {
            session,
            outbox: Outbox::new(alloc, sender),
            receiver,
            limits,
            peer,
            transport: capabilities.name,
            next_id: 1,
            options: CallOptions::default(),
            current: None,
            send_failed: false,
            stepped: now(),
            timer: Box::pin(tokio::time::sleep_until(now().into())),
            armed: None,
        };
        while !client.session.is_ready() {
            client.step().await;
            // Before the handshake there are no calls: the one event is the connection's end.
            while let Some(event) = client.session.poll_event() {
                if let Event::ConnectionClosed(status) = event {
                    return Err(ConnectError::Handshake { peer: client.peer.to_string(), status });
                }
            }
            if let Some(status) = client.closed_status() {
                return Err(ConnectError::Handshake { peer: client.peer.to_string(), status });
            }
        }
        Ok(client)
    }

    /// The server, as the transport names it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The transport's name ("tcp", "rdma").
    pub fn transport_name(&self) -> &'static str {
        self.transport
    }

    /// What the server announced in its SETTINGS.
    pub fn peer_settings(&self) -> Option<&pb::Settings> {
        self.session.peer_settings()
    }

    /// Every later call is given `timeout` (`None`: no deadline).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.options.timeout = timeout;
    }

    /// Metadata sent with every later call.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.options.metadata = metadata;
    }

    /// Answers what the server sent meanwhile (its keepalive pings) without making a call:
    /// reads what has arrived, writes the answers, and returns without waiting for more.
    pub async fn keep_alive(&mut self) {
        self.abandon_current();
        while let Some(msg) = self.receiver.try_recv_now(true) {
            if !handle_received(msg, now(), &mut self.session, &self.limits, &self.peer) {
                break;
            }
        }
        self.transmit().await;
        while self.session.poll_event().is_some() {}
    }

    /// A unary call to `method` ("/package.Service/Method"): its reply, an error status, or
    /// `DeadlineExceeded` once the timeout passes.
    pub async fn unary<Req: Message, Res: Message + Default>(
        &mut self,
        method: &str,
        request: &Req,
    ) -> Result<Res, Status> {
        self.abandon_current();
        if let Some(status) = self.closed_status() {
            return Err(status);
        }
        let id = self.open(method, request).await?;
        let mut reply = None;
        loop {
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Message { id: of, body, end } if of == id => {
                        reply = Some(body);
                        if end && let Some(status) = self.session.take_closed(id) {
                            self.current = None;
                            return finish(reply, status);
                        }
                    }
                    Event::Closed { id: of, status } if of == id => {
                        self.current = None;
                        return finish(reply, status);
                    }
                    Event::ConnectionClosed(status) => {
                        self.current = None;
                        return Err(closed(status));
                    }
                    // Events of calls that ended before (dropped by their callers).
                    _ => {}
                }
            }
            if self.session.is_closed() {
                self.current = None;
                return Err(Status::unavailable("connection closed; connect again"));
            }
            self.step().await;
        }
    }

    /// Sends a GOAWAY and closes the sending side; calls are refused from then on.
    pub async fn close(mut self) {
        self.abandon_current();
        self.session.shutdown(Status::ok());
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            self.transmit().await;
            let _ = self.outbox.close().await;
        })
        .await;
    }

    /// Encodes the CALL frame into the transport's send memory and opens the call on the session.
    async fn open<Req: Message>(&mut self, method: &str, request: &Req) -> Result<u64, Status> {
        let timeout = self.options.timeout;
        let timeout_micros = timeout.map_or(0, |t| t.as_micros().clamp(1, u64::MAX as u128) as u64);
        let header = CallHeaderRef { method, timeout_micros, metadata: &self.options.metadata };
        let body = codec::encode_call(self.outbox.alloc(), header, Some(request)).await?;
        let id = self.next_id;
        self.next_id += 1;
        let start = if timeout.is_some() { now() } else { self.stepped };
        self.session.open_call(start, id, timeout, Outgoing::Buf(body), true, true)?;
        self.current = Some(id);
        Ok(id)
    }

    /// Cancels on the wire a call whose caller stopped waiting for it.
    fn abandon_current(&mut self) {
        if let Some(id) = self.current.take() {
            self.session.finish(id, Status::cancelled("the caller stopped waiting for the call"));
        }
    }

    /// Why the connection is over, once it is.
    fn closed_status(&self) -> Option<Status> {
        self.session.is_closed().then(|| Status::unavailable("connection closed; connect again"))
    }

    /// One step: what the session released is written, then what arrives (at least one message,
    /// or the session's next deadline) goes into the session.
    async fn step(&mut self) {
        self.transmit().await;
        if self.session.is_closed() {
            return;
        }
        if let Some(at) = self.session.poll_timeout()
            && self.armed.is_none_or(|armed| at < armed)
        {
            self.timer.as_mut().reset(at.into());
            self.armed = Some(at);
        }
        let received = match self.armed {
            Some(_) => tokio::select! {
                biased;
                msg = self.receiver.recv() => Some(msg),
                () = self.timer.as_mut() => None,
            },
            None => Some(self.receiver.recv().await),
        };
        let now = now();
        self.stepped = now;
        let Some(msg) = received else {
            self.armed = None;
            self.session.handle_timeout(now);
            return;
        };
        let mut more = handle_received(msg, now, &mut self.session, &self.limits, &self.peer);
        let mut taken = 1;
        while more && taken < RECV_BATCH {
            // Only what is already read: a call in lockstep waits for one reply.
            let Some(msg) = self.receiver.try_recv_now(false) else { break };
            taken += 1;
            more = handle_received(msg, now, &mut self.session, &self.limits, &self.peer);
        }
    }

    /// Hands every frame the session releases to the transport and writes them.
    async fn transmit(&mut self) {
        while !self.send_failed {
            let mut result = Ok(());
            while result.is_ok()
                && self.outbox.accepts()
                && let Some(transmit) = self.session.poll_transmit()
            {
                result = self.outbox.push(transmit);
            }
            if result.is_ok() && self.outbox.wants_drive() {
                result = self.outbox.drive().await;
            }
            if let Err(err) = result {
                self.send_failed = true;
                self.session.handle_error(Status::unavailable(format!("send failed: {err}")));
            } else if !self.outbox.wants_drive() && self.outbox.accepts() {
                return;
            }
        }
    }
}
