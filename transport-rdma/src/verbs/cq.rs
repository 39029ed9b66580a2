//! The completion queue of a connection and its completion channel.
//!
//! The basic CQ (`ibv_poll_cq`) is used on purpose: the extended CQ of rdma-core 44's rxe provider
//! advances its consumer index twice per batch (rdma-core PR #1512), which returns garbage
//! completions on Debian 12's soft-RoCE. Notification (arm, event, ack) is not wrapped by sideway
//! 0.4.3, so those three calls go through rdma-mummy-sys here, and so does polling: sideway's
//! `start_poll` allocates a completion array per call, and the poller calls it in a spin loop.

use std::os::fd::{AsRawFd, RawFd};
use std::ptr::null_mut;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use rdma_mummy_sys::{ibv_poll_cq, ibv_wc};
use sideway::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, CompletionQueue as _, GenericCompletionQueue, WorkCompletionStatus,
};

use super::device::OpenDevice;
use crate::RdmaError;

/// Completions taken per `ibv_poll_cq` call.
const POLL_BATCH: usize = 32;

/// One work completion, copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) wr_id: u64,
    pub(crate) status: WorkCompletionStatus,
    pub(crate) byte_len: u32,
    /// Host order.
    pub(crate) imm: u32,
}

impl Completion {
    pub(crate) fn ok(&self) -> bool {
        self.status == WorkCompletionStatus::Success
    }
}

/// The completion channel as tokio watches it; holding the channel keeps its fd open.
struct ChannelFd(Arc<CompletionChannel>);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Polls a CQ from wherever reaping happens (the receiver, inline, or the poller task), with its
/// own completion array: `ibv_poll_cq` is thread-safe, and the caller serialises what it does
/// with the completions. Keeps the CQ alive.
pub(crate) struct CqPoller {
    cq: Arc<BasicCompletionQueue>,
    /// Where the provider writes completions: zeroed once and reused, so a spinning poll neither
    /// allocates nor clears it again (entries keep what the provider last wrote: always defined).
    wcs: Box<[ibv_wc; POLL_BATCH]>,
}

impl CqPoller {
    fn new(cq: Arc<BasicCompletionQueue>) -> Self {
        // SAFETY: `ibv_wc` is a C struct of integers (and a union of two u32), for which
        // all-zero bytes are a valid value.
        let wcs = Box::new(unsafe { std::mem::zeroed::<[ibv_wc; POLL_BATCH]>() });
        CqPoller { cq, wcs }
    }

    /// Appends every available completion to `out`; returns how many. Allocates nothing once
    /// `out` has grown to a batch (sideway's poller allocates an array per call, even on an empty
    /// CQ).
    pub(crate) fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, RdmaError> {
        let before = out.len();
        loop {
            // SAFETY: the CQ pointer is valid while `self.cq` (an Arc) lives; `wcs` has room for
            // the `POLL_BATCH` entries the provider may write, and `&mut self` makes it ours.
            let rc = unsafe { ibv_poll_cq(self.cq.cq().as_ptr(), POLL_BATCH as i32, self.wcs.as_mut_ptr()) };
            let polled = usize::try_from(rc)
                .map_err(|_| RdmaError::verbs("ibv_poll_cq", std::io::Error::other(format!("returned {rc}"))))?
                .min(POLL_BATCH);
            out.extend(self.wcs.iter().take(polled).map(|wc| Completion {
                wr_id: wc.wr_id,
                status: WorkCompletionStatus::from(wc.status),
                byte_len: wc.byte_len,
                // SAFETY: both members of the union are u32, so reading either is defined (the
                // value means something only for completions with an immediate).
                imm: u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data }),
            }));
            if polled < POLL_BATCH {
                return Ok(out.len() - before);
            }
        }
    }
}

/// A CQ with a non-blocking completion channel.
pub(crate) struct CompletionQueue {
    /// Dropped first: deregisters the fd from tokio before anything closes it.
    events: Option<AsyncFd<ChannelFd>>,
    cq: Arc<BasicCompletionQueue>,
    channel: Arc<CompletionChannel>,
    unacked: u32,
}

impl CompletionQueue {
    pub(crate) fn new(device: &OpenDevice, entries: u32) -> Result<Self, RdmaError> {
        let channel = device
            .context
            .create_comp_channel()
            .map_err(|e| RdmaError::verbs("ibv_create_comp_channel", std::io::Error::other(e)))?;
        channel.set_nonblocking(true).map_err(|e| RdmaError::verbs("set completion channel non-blocking", e))?;
        let mut builder = device.context.create_cq_builder();
        builder.setup_cqe(entries).setup_comp_channel(&channel, 0);
        let cq = builder.build().map_err(|e| RdmaError::verbs("ibv_create_cq", std::io::Error::other(e)))?;
        Ok(CompletionQueue { events: None, cq, channel, unacked: 0 })
    }

    /// The CQ as the queue-pair builder takes it.
    pub(crate) fn generic(&self) -> GenericCompletionQueue {
        self.cq.clone().into()
    }

    /// Registers the completion channel with tokio (inside a runtime).
    pub(crate) fn register(&mut self) -> Result<(), RdmaError> {
        // SAFETY: the AsyncFd owns an Arc of the channel, so the fd stays open and the same for
        // the AsyncFd's whole life; `as_raw_fd` always returns the channel's fd.
        let events = unsafe { AsyncFd::register_with_interest(ChannelFd(self.channel.clone()), Interest::READABLE) }
            .map_err(|e| RdmaError::verbs("register the completion channel with tokio", e.into_parts().1))?;
        self.events = Some(events);
        Ok(())
    }

    /// Waits until the armed CQ raises an event, and consumes it.
    pub(crate) async fn wait_event(&mut self) {
        if let Some(events) = &self.events
            && let Ok(mut ready) = events.readable().await
        {
            ready.clear_ready();
        }
        self.take_events();
    }

    /// A handle that polls this CQ from elsewhere (the receiver, inline); it keeps the CQ alive.
    pub(crate) fn poller(&self) -> CqPoller {
        CqPoller::new(self.cq.clone())
    }

    /// Asks for an event on the next completion.
    pub(crate) fn arm(&self) -> Result<(), RdmaError> {
        // SAFETY: the CQ pointer is valid while `self.cq` (an Arc) lives; arming has no other
        // precondition.
        let rc = unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.cq.cq().as_ptr(), 0) };
        if rc != 0 {
            return Err(RdmaError::verbs("ibv_req_notify_cq", std::io::Error::from_raw_os_error(rc.abs())));
        }
        Ok(())
    }

    /// Consumes pending events from the (non-blocking) channel; true if there was one.
    pub(crate) fn take_events(&mut self) -> bool {
        let mut got = false;
        loop {
            let mut ev_cq = null_mut();
            let mut ev_ctx = null_mut();
            // SAFETY: the channel pointer is valid while `self.channel` lives; the out-pointers
            // are locals; the channel is non-blocking, so this returns -1/EAGAIN when empty.
            let rc = unsafe {
                rdma_mummy_sys::ibv_get_cq_event(self.channel.comp_channel().as_ptr(), &mut ev_cq, &mut ev_ctx)
            };
            if rc != 0 {
                break;
            }
            got = true;
            self.unacked += 1;
        }
        if self.unacked >= 64 {
            self.ack();
        }
        got
    }

    fn ack(&mut self) {
        if self.unacked > 0 {
            // SAFETY: every counted event came from this CQ; acking them is required before the
            // CQ is destroyed, and acks in batches are allowed.
            unsafe { rdma_mummy_sys::ibv_ack_cq_events(self.cq.cq().as_ptr(), self.unacked) };
            self.unacked = 0;
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // ibv_destroy_cq blocks until every event is acked.
        self.take_events();
        self.ack();
    }
}
