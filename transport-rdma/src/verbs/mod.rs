//! Every `unsafe` verbs call of rdma-rpc lives here, one file per object, behind wrappers that keep
//! their parents alive (sideway holds `Arc`s to parents; our own types hold the rest).
//!
//! - `device.rs`: finding the device, port and GID for an address (RoCE v2 GID, or the IPoIB
//!   interface of an InfiniBand port, found with `getifaddrs`); the locked-memory limit.
//! - `region.rs`: registered memory split into fixed-size slots (local, or remote-writable for the
//!   large receive buffers), and the writer prost encodes into.
//! - `cq.rs`: the completion queue and its completion channel (poll, arm, events).
//! - `qp.rs`: the reliable-connected queue pair: state transitions, batched SEND / WRITE posting;
//!   `work_request.rs`: the chained work-request arrays it posts from the stack.
//!
//! sideway loads libibverbs at run time, so a binary built with this crate starts on hosts without
//! rdma-core and reports RDMA as unavailable there.

#![allow(unsafe_code)]

mod cq;
mod device;
mod qp;
mod region;
mod work_request;

pub(crate) use cq::{Completion, CompletionQueue, CqPoller};
pub use device::{DeviceSummary, GidSummary, PortSummary, list_devices};
pub(crate) use device::{OpenDevice, check_memlock, open_for_address};
pub(crate) use qp::{QpEndpoint, RcQueuePair, Reaped, RemoteTarget, SendRequest};
pub use region::SlotWriter;
pub(crate) use region::{Access, Region, Slot};
