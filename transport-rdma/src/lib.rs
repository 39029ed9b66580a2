//! # rdma-rpc-transport-rdma
//!
//! The RDMA transport of rdma-rpc: reliable-connected queue pairs over InfiniBand / RoCE, pools of
//! registered memory, completion-queue polling, and zero-copy send streams. **Not built yet**: this
//! crate is the skeleton the RDMA issue fills in. Until then `rdma://` URLs are answered with an
//! error that says so (or fall back to TCP), and `rdma-rpc devices` reads the kernel's RDMA devices
//! from sysfs.
//!
//! The plan, fixed by the design:
//! - `src/verbs/`: the only `unsafe` code, one file per verbs object (device, pd, mr, cq, qp,
//!   channel, srq), RAII wrappers that keep their parent alive, over `sideway` and
//!   `rdma-mummy-sys` (libibverbs loaded at run time, so one binary serves RDMA and TCP hosts);
//! - the handshake rides the TCP connection (brpc's design): capabilities, then queue-pair details,
//!   then the data path moves to an RC queue pair while TCP stays for liveness;
//! - registered send buffers implement the root crate's `SendBuffer`, so prost encodes into memory
//!   the NIC reads; received messages are `Bytes` over registered receive buffers, re-posted on drop.

#![deny(unsafe_code)]

/// Why this build cannot open RDMA connections yet; shown by `rdma-rpc` for `rdma://` URLs.
pub const UNAVAILABLE_REASON: &str = "this build of rdma-rpc has no RDMA transport yet (transport-rdma is a skeleton)";
