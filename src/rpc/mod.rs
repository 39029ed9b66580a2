//! Clients and servers over a [`Session`](crate::session::Session) and a
//! [`Transport`](crate::transport::Transport).
//!
//! - [`Client`] opens calls: `unary`, `server_streaming`, `streaming` (client-streaming and
//!   bidirectional). Generated `<Service>Client<T>` types wrap it with typed methods.
//! - [`Server`] routes calls to [`Service`]s (generated `<Service>Server<S>` adapters around the
//!   trait you implement) and runs one driver task per connection.
//! - Handlers and callers exchange messages through [`CallReceiver`], [`CallSender`] and
//!   [`ResponseSender`]; raw stream data (bulk bytes) goes through their `*_data` methods.
//!
//! Each connection's driver (`driver.rs`) is a thin async shell around the IO-free session; it
//! also writes, through its `Outbox`. Server handlers run in reusable [`HandlerSlot`]s
//! (`handler.rs`); a unary call whose request comes whole with it runs to completion inside the
//! driver's pass ([`UnarySlot`], `unary.rs`). Calls get tracing spans with method, peer,
//! duration and bytes.

mod call;
mod client;
mod codec;
mod command;
mod connect;
pub mod direct;
mod dispatch;
mod driver;
mod events;
mod handler;
mod mailbox;
mod outbox;
mod router;
mod server;
mod unary;

pub use call::{CallReceiver, CallSender, DataBuffer, Incoming, ResponseSender};
pub use client::{CallOptions, Client};
pub use connect::{ConnectOptions, Connection, connect};
pub(crate) use connect::{Established, establish, within};
pub use handler::{HandlerSlot, handler_slot};
pub use router::Router;
pub use server::{
    Finisher, HandlerFuture, RequestContext, Server, ServerCall, Service, serve_client_streaming,
    serve_server_streaming, serve_streaming, serve_unary,
};
pub use unary::{UnarySlot, unary_slot};

use crate::session::{ConfigError, SessionConfig};
use crate::status::Status;

/// Settings of a connection, client or server side.
#[derive(Debug, Clone, Default)]
pub struct ConnectionConfig {
    /// Limits, windows and keepalive.
    pub session: SessionConfig,
}

impl ConnectionConfig {
    /// The same configuration with frames no larger than the transport carries.
    pub fn fitted_to(&self, capabilities: &crate::transport::Capabilities) -> ConnectionConfig {
        let mut fitted = self.clone();
        fitted.session.max_frame_size = fitted.session.max_frame_size.min(capabilities.max_message_size);
        fitted
    }
}

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The transport could not connect.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// RDMA was required (no fallback) but is not possible.
    #[error("RDMA required but not possible: {reason}; fix that, or allow the TCP fallback (drop --no-fallback)")]
    RdmaRequired {
        /// Why RDMA is not possible.
        reason: String,
    },
    /// Connecting took too long.
    #[error("connecting to {addr} took longer than {timeout:?}: is the server up and reachable?")]
    Timeout {
        /// The address.
        addr: String,
        /// The limit.
        timeout: std::time::Duration,
    },
    /// The peer did not complete the rdma-rpc handshake.
    #[error("handshake with {peer} failed: {status}")]
    Handshake {
        /// The peer.
        peer: String,
        /// Why.
        status: Status,
    },
}

/// The clock the drivers pass to the session: tokio's, so tests with a paused runtime clock run
/// deadlines and keepalive in virtual time.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
