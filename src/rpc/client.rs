//! The client: a cheap, cloneable handle to one connection. Calls encode their requests straight
//! into the transport's send buffers; a driver task (see `driver.rs`) runs the connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use tokio::sync::oneshot;

use super::call::{CallReceiver, CallSender};
use super::codec;
use super::command::{BufCommand, CallShared, MethodName};
use super::driver::{DriverSetup, drive};
use super::events::CallPool;
use super::mailbox::{Command, Ctl, Mailbox};
use super::{ConnectError, ConnectionConfig};
use crate::pb::rpc as pb;
use crate::session::Role;
use crate::status::Status;
use crate::transport::Transport;

/// Per-call options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Time allowed for the whole call; sent to the server, which stops its work when it passes.
    pub timeout: Option<Duration>,
    /// Metadata sent with every call.
    pub metadata: BTreeMap<String, String>,
}

struct Shared<T: Transport> {
    mailbox: Arc<Mailbox<T::Buf>>,
    ctl: Ctl,
    alloc: T::Alloc,
    next_id: AtomicU64,
    peer: String,
    transport: &'static str,
    peer_settings: pb::Settings,
    closed: Arc<CallShared>,
    /// Call states for reuse.
    calls: CallPool,
    driver: std::sync::Mutex<Option<tokio::task::JoinHandle<Status>>>,
    max_message: usize,
}

impl<T: Transport> Drop for Shared<T> {
    fn drop(&mut self) {
        // The last handle is gone: the driver finishes what is open, then closes.
        let _ = self.mailbox.push(Command::HandlesGone);
    }
}

/// A connection to a server. Clone it freely: clones share the connection. The connection
/// closes gracefully (GOAWAY, in-flight calls drain) when the last clone is dropped.
pub struct Client<T: Transport> {
    shared: Arc<Shared<T>>,
    options: Arc<CallOptions>,
}

impl<T: Transport> Clone for Client<T> {
    fn clone(&self) -> Self {
        Client { shared: self.shared.clone(), options: self.options.clone() }
    }
}

impl<T: Transport> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

impl<T: Transport> Client<T> {
    /// Starts a connection over an established transport and waits for the handshake (the
    /// server's SETTINGS).
    pub async fn connect(transport: T, config: ConnectionConfig) -> Result<Self, ConnectError> {
        let config = config.fitted_to(&transport.capabilities());
        config.session.validate()?;
        let peer = transport.peer();
        let name = transport.capabilities().name;
        let own_max_frame = config.session.max_frame_size;
        let (alloc, sender, receiver) = transport.split();
        let mailbox = Mailbox::new();
        let (ready_tx, ready_rx) = oneshot::channel();
        let closed = Arc::new(CallShared::default());
        let setup = DriverSetup::<T> {
            alloc: alloc.clone(),
            sender,
            receiver,
            peer: peer.as_str().into(),
            role: Role::Client,
            config: config.session,
            mailbox: mailbox.clone(),
            router: None,
            ready: Some(ready_tx),
            closed: closed.clone(),
        };
        let driver = tokio::spawn(drive(setup));
        let peer_settings = match ready_rx.await {
            Ok(Ok(settings)) => settings,
            Ok(Err(status)) => return Err(ConnectError::Handshake { peer, status }),
            Err(_) => return Err(ConnectError::Handshake { peer, status: Status::internal("driver stopped") }),
        };
        let max_message =
            own_max_frame.min(peer_settings.max_frame_size as usize).saturating_sub(crate::wire::HEADER_LEN);
        let shared = Shared {
            max_message,
            ctl: Ctl::new(&mailbox),
            mailbox,
            alloc,
            next_id: AtomicU64::new(1),
            peer,
            transport: name,
            peer_settings,
            closed,
            calls: CallPool::default(),
            driver: std::sync::Mutex::new(Some(driver)),
        };
        Ok(Client { shared: Arc::new(shared), options: Arc::new(CallOptions::default()) })
    }

    /// The same connection with other default call options.
    pub fn with_options(&self, options: CallOptions) -> Self {
        Client { shared: self.shared.clone(), options: Arc::new(options) }
    }

    /// The same connection with a timeout on every call.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        self.with_options(CallOptions { timeout: Some(timeout), ..(*self.options).clone() })
    }

    /// The server, as a URL.
    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// The transport's name ("tcp", "rdma", "mem").
    pub fn transport_name(&self) -> &'static str {
        self.shared.transport
    }

    /// The server's announced limits.
    pub fn peer_settings(&self) -> &pb::Settings {
        &self.shared.peer_settings
    }

    /// The largest message (or stream-data item) either side accepts on this connection.
    pub fn max_message_len(&self) -> usize {
        self.shared.max_message
    }

    /// Why the connection ended, once it has.
    pub fn closed_status(&self) -> Option<Status> {
        self.shared.closed.status.get().cloned()
    }

    /// Closes the connection gracefully for every clone: GOAWAY, calls in flight finish, then the
    /// transport closes. Returns how the connection ended.
    pub async fn close(&self) -> Status {
        let _ = self.shared.mailbox.push(Command::Shutdown);
        let driver = self.shared.driver.lock().ok().and_then(|mut d| d.take());
        match driver {
            Some(driver) => driver.await.unwrap_or_else(|err| Status::internal(format!("driver task failed: {err}"))),
            None => self.closed_status().unwrap_or_else(Status::ok),
        }
    }

    /// A unary call: one request, one reply.
    pub async fn unary<Req: Message, Res: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Res, Status> {
        self.open::<Req, Res>(method, Some(request), true).await?.response().await
    }

    /// A server-streaming call: one request, a stream of replies.
    pub async fn server_streaming<Req: Message, Res: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<CallReceiver<Res>, Status> {
        self.open::<Req, Res>(method, Some(request), true).await
    }

    /// A client-streaming or bidirectional call: the caller sends a stream and reads replies.
    pub async fn streaming<Req: Message, Res: Message + Default>(
        &self,
        method: &str,
    ) -> Result<(CallSender<T, Req>, CallReceiver<Res>), Status> {
        let receiver = self.open::<Req, Res>(method, None, false).await?;
        let sender = CallSender::new(self.clone(), receiver.id(), receiver.shared().clone());
        Ok((sender, receiver))
    }

    async fn open<Req: Message, Res: Message + Default>(
        &self,
        method: &str,
        first: Option<&Req>,
        end: bool,
    ) -> Result<CallReceiver<Res>, Status> {
        let header = codec::CallHeaderRef {
            method,
            timeout_micros: self.options.timeout.map_or(0, |t| t.as_micros().clamp(1, u64::MAX as u128) as u64),
            metadata: &self.options.metadata,
        };
        let body = codec::encode_call(&self.shared.alloc, header, first).await?;
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.calls.take();
        let open = BufCommand::Open {
            id,
            method: if tracing::enabled!(tracing::Level::DEBUG) {
                MethodName::Shared(method.into())
            } else {
                MethodName::Unrecorded
            },
            timeout: self.options.timeout,
            body,
            has_message: first.is_some(),
            end,
            events: super::events::EventSender::new(shared.clone()),
        };
        self.send_buf(open).map_err(|_| self.closed())?;
        Ok(CallReceiver::new(id, self.shared.ctl.clone(), shared, true))
    }

    pub(crate) fn alloc(&self) -> &T::Alloc {
        &self.shared.alloc
    }

    pub(crate) fn ctl(&self) -> &Ctl {
        &self.shared.ctl
    }

    pub(crate) fn send_buf(&self, cmd: BufCommand<T::Buf>) -> Result<(), ()> {
        self.shared.mailbox.push(Command::Buf(cmd)).map_err(|_| ())
    }

    fn closed(&self) -> Status {
        match self.shared.closed.status.get() {
            Some(status) if !status.is_ok() => Status::unavailable(format!("connection closed: {status}")),
            _ => Status::unavailable("connection closed (the server shut down gracefully); connect again"),
        }
    }
}
