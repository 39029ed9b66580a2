//! Snapshot replication over rdma-rpc: zrepl's protocol (`proto/replication.proto`, the messages
//! of zrepl's `pdu.proto`) with the bulk stream as checksummed chunks of a streaming call, so it
//! runs unchanged over TCP and RDMA.
//!
//! - [`endpoint`]: where snapshots live: `btrfs:`, `zfs:` and `dir:` (a stream store);
//! - [`chunk`]: stream chunks encoded in place around data read straight into transport buffers,
//!   and checked (offset, CRC32C, size, digest) on arrival;
//! - [`plan`]: the newest common snapshot and the incrementals after it, zrepl style;
//! - [`push`] and [`replicate`]: the sending side, with resume, retries and back-off;
//! - [`service`]: the receiving (and pull-mode sending) server;
//! - [`resume`]: resume tokens, ours (byte offsets) and ZFS's (decoded and cross-checked);
//! - [`progress`], [`limit`]: progress/ETA reporting and `--bwlimit`;
//! - [`names`], [`process`], [`error`]: name validation, child commands, typed errors.

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
