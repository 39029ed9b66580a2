//! The server: routes incoming calls to services (the generated `<Service>Server` adapters) and
//! runs one driver task per connection. A connection that breaks the protocol is closed on its own;
//! the others keep being served.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::call::{CallReceiver, ResponseSender};
use super::command::{CallCommand, CallRef, CallShared};
use super::driver::{DriverSetup, drive};
use super::mailbox::{Ctl, Mailbox, StopHandle};
use super::router::Router;
use super::{ConnectionConfig, now};
use crate::pb::rpc as pb;
use crate::session::Role;
use crate::status::Status;
use crate::transport::ReplyAlloc;
use crate::transport::Transport;
use crate::transport::rdma::{Accepted, RdmaConfig, RdmaConnection};
use crate::transport::tcp::{TcpHalves, TcpListener};

/// A running handler.
pub type HandlerFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A set of methods under one service name. The code generator implements it for every service.
pub trait Service: Send + Sync + 'static {
    /// "package.Service".
    fn name(&self) -> &'static str;
    /// Full paths of the methods, "/package.Service/Method".
    fn methods(&self) -> &'static [&'static str];
    /// Starts handling `call` to `method`, or gives the call back if the method is not served.
    #[allow(clippy::result_large_err)] // the call is handed back by value, not boxed per call
    fn call(&self, method: &str, call: ServerCall) -> Result<HandlerFuture, ServerCall>;
    /// A reusable slot for `method`'s handlers (see [`handler_slot`](super::handler_slot)), or
    /// None to have [`call`](Self::call) box a future per call. Generated services return one:
    /// connections keep idle slots, so steady-state calls allocate no handler future.
    fn slot(&self, method: &str) -> Option<Box<dyn super::HandlerSlot>> {
        let _ = method;
        None
    }
    /// A reusable slot for `method`'s handlers when it is unary (see
    /// [`unary_slot`](super::unary_slot)), else None. A unary call whose request comes whole
    /// with it then runs to completion in the connection's driver: decoded, handled and answered
    /// in one step, with no task, call handles or queues; a handler that waits gets a task then.
    /// Generated services return one for every unary method.
    fn unary_slot(&self, method: &str) -> Option<Box<dyn super::UnarySlot>> {
        let _ = method;
        None
    }
}

/// What a handler knows about its call.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// "/package.Service/Method".
    pub method: MethodPath,
    /// The client, as a URL.
    pub peer: Arc<str>,
    /// When the caller gives up; the call is aborted then.
    pub deadline: Option<Instant>,
    /// The caller's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A call's method path, "/package.Service/Method": decoded as a view of the received CALL frame
/// (no copy; UTF-8 checked then), and the router's own static copy once the call was routed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodPath(bytes::Bytes);

impl MethodPath {
    /// The path as text.
    pub fn as_str(&self) -> &str {
        // Checked by `Frame::decode`; a path built otherwise that is not UTF-8 reads as empty.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The path as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<bytes::Bytes> for MethodPath {
    fn from(bytes: bytes::Bytes) -> Self {
        MethodPath(bytes)
    }
}

impl std::ops::Deref for MethodPath {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for MethodPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MethodPath {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl RequestContext {
    pub(crate) fn new(header: pb::CallHeader, peer: Arc<str>) -> Self {
        let deadline = (header.timeout_micros > 0).then(|| now() + Duration::from_micros(header.timeout_micros));
        RequestContext { method: MethodPath(header.method), peer, deadline, metadata: header.metadata }
    }
}

/// An incoming call, before a handler took it.
#[derive(Debug)]
pub struct ServerCall {
    id: u64,
    ctl: Ctl,
    ctx: RequestContext,
    shared: CallRef,
    replies: Arc<ReplyAlloc>,
}

impl ServerCall {
    pub(crate) fn new(id: u64, ctl: Ctl, ctx: RequestContext, shared: CallRef, replies: Arc<ReplyAlloc>) -> Self {
        ServerCall { id, ctl, ctx, shared, replies }
    }

    /// The call's context.
    pub fn context(&self) -> &RequestContext {
        &self.ctx
    }

    /// Names the call by the router's own copy of its path.
    pub(super) fn set_method(&mut self, method: &'static str) {
        self.ctx.method = MethodPath(bytes::Bytes::from_static(method.as_bytes()));
    }

    /// Splits into the request stream, the response sender and the context (for handlers that
    /// work with raw stream data).
    pub fn into_parts<Req: Message + Default, Res: Message>(
        self,
    ) -> (CallReceiver<Req>, ResponseSender<Res>, RequestContext, Finisher) {
        let receiver = CallReceiver::new(self.id, self.ctl.clone(), self.shared.clone(), false);
        let sender = ResponseSender::new(self.id, self.ctl.clone(), self.shared, self.replies.clone());
        (receiver, sender, self.ctx, Finisher { id: self.id, ctl: self.ctl, replies: self.replies })
    }

    /// As [`into_parts`](Self::into_parts), without a response stream: what a unary handler
    /// needs (a call's handles share its state by reference count, so building a sender only to
    /// drop it costs three counted references on every call).
    fn into_unary_parts<Req: Message + Default>(self) -> (CallReceiver<Req>, RequestContext, Finisher) {
        let receiver = CallReceiver::new(self.id, self.ctl.clone(), self.shared, false);
        (receiver, self.ctx, Finisher { id: self.id, ctl: self.ctl, replies: self.replies })
    }
}

/// Ends a server call: the final reply or status.
#[derive(Debug)]
pub struct Finisher {
    id: u64,
    ctl: Ctl,
    replies: Arc<ReplyAlloc>,
}

impl Finisher {
    /// Ends the call with a final message (success).
    pub fn reply<M: Message>(self, message: &M) {
        let body = self.replies.encode(message);
        let _ = self.ctl.send(CallCommand::Reply { id: self.id, body });
    }

    /// Ends the call with `status` (`Ok` after a response stream).
    pub fn status(self, status: Status) {
        let _ = self.ctl.send(CallCommand::Finish { id: self.id, status });
    }

    /// Ends the call from a handler's result.
    pub fn result<M: Message>(self, result: Result<M, Status>) {
        match result {
            Ok(message) => self.reply(&message),
            Err(status) => self.status(status),
        }
    }
}

async fn single_request<Req: Message + Default>(requests: &mut CallReceiver<Req>) -> Result<Req, Status> {
    let request = requests.message().await?.ok_or_else(|| Status::invalid_argument("the call carried no request"))?;
    if requests.message().await?.is_some() {
        return Err(Status::invalid_argument("more than one request on a unary call"));
    }
    Ok(request)
}

/// Serves a unary method (used by generated code).
pub async fn serve_unary<Req, Res, F, Fut>(call: ServerCall, handler: F)
where
    Req: Message + Default,
    Res: Message,
    F: FnOnce(Req, RequestContext) -> Fut,
    Fut: Future<Output = Result<Res, Status>>,
{
    let (mut requests, ctx, finish) = call.into_unary_parts::<Req>();
    match single_request(&mut requests).await {
        Ok(request) => finish.result(handler(request, ctx).await),
        Err(status) => finish.status(status),
    }
}

/// Serves a server-streaming method (used by generated code).
pub async fn serve_server_streaming<Req, Res, F, Fut>(call: ServerCall, handler: F)
where
    Req: Message + Default,
    Res: Message,
    F: FnOnce(Req, ResponseSender<Res>, RequestContext) -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let (mut requests, responses, ctx, finish) = call.into_parts::<Req, Res>();
    match single_request(&mut requests).await {
        Ok(request) => finish.status(handler(request, responses, ctx).await.err().unwrap_or_else(Status::ok)),
        Err(status) => finish.status(status),
    }
}

/// Serves a client-streaming method (used by generated code).
pub async fn serve_client_streaming<Req, Res, F, Fut>(call: ServerCall, handler: F)
where
    Req: Message + Default,
    Res: Message,
    F: FnOnce(CallReceiver<Req>, RequestContext) -> Fut,
    Fut: Future<Output = Result<Res, Status>>,
{
    let (requests, _, ctx, finish) = call.into_parts::<Req, Res>();
    finish.result(handler(requests, ctx).await);
}

/// Serves a bidirectional-streaming method (used by generated code).
pub async fn serve_streaming<Req, Res, F, Fut>(call: ServerCall, handler: F)
where
    Req: Message + Default,
    Res: Message,
    F: FnOnce(CallReceiver<Req>, ResponseSender<Res>, RequestContext) -> Fut,
    Fut: Future<Output = Result<(), Status>>,
{
    let (requests, responses, ctx, finish) = call.into_parts::<Req, Res>();
    finish.status(handler(requests, responses, ctx).await.err().unwrap_or_else(Status::ok));
}

/// Serves services on connections.
pub struct Server {
    router: Arc<Router>,
    config: ConnectionConfig,
    /// How to ask each connection to shut down.
    stops: Vec<StopHandle>,
    /// The same for connections run to completion in threads of their own.
    direct_stops: Vec<Weak<AtomicBool>>,
    /// RDMA connections get a thread each that runs their calls to completion.
    run_to_completion: bool,
    connections: JoinSet<Status>,
}

impl Server {
    /// A server with these services.
    pub fn new(router: Router, config: ConnectionConfig) -> Self {
        Server {
            router: Arc::new(router),
            config,
            stops: Vec::new(),
            direct_stops: Vec::new(),
            run_to_completion: false,
            connections: JoinSet::new(),
        }
    }

    /// Serves each RDMA connection in a thread of its own that polls the connection's CQ and runs
    /// its unary handlers to completion ([`direct`](super::direct), eRPC's model): the lowest
    /// latency, for one busy core per connection. Such connections serve unary methods only
    /// (streaming calls get `Unimplemented`); TCP connections are served as always. Each holds one
    /// of the runtime's blocking threads while it lives (tokio allows 512 by default; connections
    /// past that wait for one): size `max_blocking_threads` for the connections expected.
    pub fn run_to_completion(mut self) -> Self {
        self.run_to_completion = true;
        self
    }

    /// Serves one RDMA connection in a thread of its own, its calls run to completion there
    /// (see [`run_to_completion`](Self::run_to_completion)).
    pub fn serve_connection_direct(&mut self, connection: RdmaConnection) {
        let stop = Arc::new(AtomicBool::new(false));
        self.direct_stops.retain(|stop| stop.strong_count() > 0);
        self.direct_stops.push(Arc::downgrade(&stop));
        let (router, config) = (self.router.clone(), self.config.clone());
        let runtime = tokio::runtime::Handle::current();
        while self.connections.try_join_next().is_some() {}
        self.connections.spawn_blocking(move || {
            super::direct::serve_connection_direct(&router, &config, connection, &stop, Some(runtime))
        });
    }

    /// Serves one established connection in a task of its own.
    pub fn serve_connection<T: Transport>(&mut self, transport: T) {
        let peer: Arc<str> = transport.peer().into();
        let config = self.config.fitted_to(&transport.capabilities());
        let (alloc, sender, receiver) = transport.split();
        let mailbox = Mailbox::new();
        // Forget connections that are over, so the list does not grow with every client served.
        self.stops.retain(StopHandle::is_live);
        self.stops.push(StopHandle::new(&mailbox));
        let setup = DriverSetup::<T> {
            alloc,
            sender,
            receiver,
            peer,
            role: Role::Server,
            config: config.session,
            mailbox,
            router: Some(self.router.clone()),
            ready: None,
            closed: Arc::new(CallShared::default()),
        };
        // Reap finished connections so the set does not grow with every client ever served.
        while self.connections.try_join_next().is_some() {}
        self.connections.spawn(drive(setup));
    }

    /// Serves TCP clients only (an RDMA offer is refused, and that client falls back to TCP).
    /// See [`Server::serve`].
    pub async fn serve_tcp(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        self.serve(listener, None, shutdown, drain).await
    }

    /// Accepts connections on one TCP port until `shutdown` resolves: a client that offers RDMA
    /// gets an RDMA data path when `rdma` is set and this host can (else a refusal with the
    /// reason, and the connection stays on TCP); any other client is served over TCP. Then shuts
    /// down gracefully: GOAWAY on every connection, in-flight calls drain for up to `drain`, the
    /// rest are aborted.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        rdma: Option<RdmaConfig>,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<(String, Accepted)>();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(connection) => {
                        let (ready_tx, rdma) = (ready_tx.clone(), rdma.clone());
                        // The handshake reads the first message: a task of its own, so a slow
                        // client cannot hold up the accept loop.
                        tokio::spawn(async move {
                            let peer = format!("tcp://{}", connection.peer_addr());
                            match crate::transport::rdma::accept(connection, rdma.as_ref()).await {
                                Ok(accepted) => {
                                    let _ = ready_tx.send((peer, accepted));
                                }
                                Err(err) => tracing::warn!(%peer, %err, "connection setup failed"),
                            }
                        });
                    }
                    Err(err) => tracing::warn!(%err, "accept failed"),
                },
                Some((peer, accepted)) = ready.recv() => match accepted {
                    Accepted::Rdma(connection) if self.run_to_completion => self.serve_connection_direct(connection),
                    Accepted::Rdma(connection) => self.serve_connection(connection),
                    Accepted::Tcp { sender, receiver, first, reason } => {
                        if let Some(reason) = reason {
                            tracing::info!(%peer, %reason, "client offered RDMA; serving it over TCP");
                        }
                        self.serve_connection(TcpHalves { sender, receiver, first, peer });
                    }
                },
                () = &mut shutdown => break,
            }
        }
        self.shutdown(drain).await;
        Ok(())
    }

    /// Sends GOAWAY on every connection and waits up to `drain` for their calls to finish.
    pub async fn shutdown(mut self, drain: Duration) {
        for stop in self.stops.drain(..) {
            stop.stop();
        }
        for stop in self.direct_stops.drain(..).filter_map(|stop| stop.upgrade()) {
            stop.store(true, Ordering::Relaxed);
        }
        let all = async { while self.connections.join_next().await.is_some() {} };
        if tokio::time::timeout(drain, all).await.is_err() {
            tracing::warn!(?drain, "calls still running after the drain period; aborting them");
            self.connections.abort_all();
        }
    }
}
