//! Run-to-completion RDMA connections: the same session, router, generated handlers and wire
//! protocol as the rest of `rpc`, driven by a thread that polls its completion queue itself
//! instead of by a tokio task (eRPC's model). Between the CQ and the handler, and between the
//! caller and the NIC, there is no runtime, task, waker, channel or cross-thread hand-off.
//!
//! - [`DirectClient`]: blocking unary calls from the caller's thread, which busy-polls the CQ
//!   while it waits.
//! - [`serve_connection_direct`]: serves one RDMA connection in the calling thread, running each
//!   unary handler where its request was found; `Server::run_to_completion` gives every RDMA
//!   connection of a [`Server`](crate::rpc::Server) such a thread.
//!
//! The price: one busy core per connection on each side, unary calls only (streaming methods get
//! `Unimplemented` with where to serve them), one call at a time per connection, and a handler
//! that waits holds its connection's thread. Both ends interoperate with ordinary clients and
//! servers: the wire does not change.
//!
//! [`InlineClient`] brings the client half of this model to async code and to every transport:
//! its unary calls run in the caller's task, which writes the request and reads the reply itself
//! (no driver task, mailbox or hand-off), one call at a time.

mod client;
mod conn;
mod inline;
mod server;

pub use client::DirectClient;
pub use inline::InlineClient;
pub use server::serve_connection_direct;
