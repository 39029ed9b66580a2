//! # rdma-rpc-transport-rdma
//!
//! The RDMA transport of rdma-rpc: a reliable-connected queue pair per connection over
//! InfiniBand / RoCE, registered buffers that prost encodes into and that received messages are
//! handed up in (as `Bytes`, re-posted when dropped), completion-queue polling that spins for a
//! bounded budget and then sleeps on the completion channel through tokio, and credit-based flow
//! control so a receiver-not-ready never happens. Messages larger than a slot go by RDMA WRITE
//! with immediate into large buffers the receiver lent in the handshake (one region per size
//! class, the only memory registered with remote access), handed back as the application drops
//! them.
//!
//! Connection setup follows brpc: the client opens a TCP connection first and offers RDMA in a
//! hello message; when both sides can, they exchange queue-pair details and move the data path to
//! the RC queue pair, keeping TCP for liveness. When either side cannot, the same TCP connection
//! carries the traffic instead (the caller decides whether that fallback is allowed).
//!
//! All `unsafe` code is in [`verbs`]; the crate root denies it.

#![deny(unsafe_code)]

mod config;
mod connection;
mod error;
mod handshake;
mod ipoib;
mod large;
mod poller;
mod reap;
mod receiver;
mod route;
mod sender;
pub mod verbs;

pub use config::{LargeClass, MAX_LARGE_CLASSES, PollMode, RdmaConfig};
pub use connection::RdmaConnection;
pub use error::RdmaError;
pub use handshake::{Accepted, Negotiated, accept, connect};
pub use receiver::RdmaReceiver;
pub use sender::{RdmaAlloc, RdmaSender};
pub use verbs::SlotWriter;
