//! # rdma-rpc
//!
//! An RPC transport that carries protobuf messages and bulk replication streams over RDMA
//! (InfiniBand / RoCE: registered memory, completion-queue polling) and falls back to TCP.
//!
//! ```text
//!  application ── generated clients / server traits (pb, from proto/*.proto)
//!       │
//!   rpc::Client / rpc::Server      async drivers: one task per connection, tracing spans per call
//!       │
//!   session::Session               IO-free: calls, credits, deadlines, keepalive, goaway
//!       │
//!   wire::Frame                    IO-free: 16-byte header + body, limits checked before allocating
//!       │
//!   transport::Transport           message-oriented; hands out send buffers, delivers `Bytes`
//!       ├── transport-tcp          tokio TCP, length prefix, vectored writes
//!       ├── transport-rdma         verbs, registered memory (separate crate)
//!       └── transport::mem         in-memory pair, for protocol tests only
//! ```
//!
//! The root crate forbids `unsafe`; all verbs FFI lives in `transport-rdma/src/verbs/`.

#![forbid(unsafe_code)]

extern crate self as rdma_rpc;

pub mod cli;
pub mod echo;
pub mod pb;
pub mod replication;
pub mod rpc;
pub mod session;
mod status;
pub mod transport;
pub mod wire;

pub use status::{Code, Status};
