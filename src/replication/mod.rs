//! Snapshot replication over rdma-rpc (zrepl's protocol, `proto/replication.proto`).
#![allow(missing_docs)]
pub mod chunk;
pub mod endpoint;
pub mod error;
pub mod limit;
pub mod names;
pub mod plan;
pub mod process;
pub mod progress;
pub mod push;
pub mod replicate;
pub mod resume;
pub mod service;
