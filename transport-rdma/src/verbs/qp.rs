//! The reliable-connected queue pair of one connection, and the ownership of what is posted to it:
//! a `Slot` posted for receive or send moves into this wrapper's tables and comes back out only when
//! its completion is reaped, so a dropped future can never free memory the NIC still uses.
//! Sends are SEND-with-immediate, or RDMA WRITE-with-immediate into a large buffer the peer lent us.

use std::collections::VecDeque;

use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::device_context::Mtu;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard as _, QueuePair as _, QueuePairAttribute, QueuePairAttributeMask, QueuePairState,
    SetScatterGatherEntry as _, WorkRequestFlags,
};

use super::cq::{Completion, CompletionQueue};
use super::device::OpenDevice;
use super::region::Slot;
use crate::RdmaError;
use crate::route::{Link, address_vector};

/// Work request ids with this bit are receives; the low bits are the slot index.
const RECV_FLAG: u64 = 1 << 63;

/// What the peer needs to connect its queue pair to ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QpEndpoint {
    pub(crate) qpn: u32,
    pub(crate) psn: u32,
    pub(crate) gid: [u8; 16],
    pub(crate) mtu: u32,
    /// The port's LID (InfiniBand; 0 on RoCE).
    pub(crate) lid: u16,
    pub(crate) link: Link,
}

/// Where an RDMA WRITE goes: a buffer of the peer's, registered with remote write access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RemoteTarget {
    pub(crate) addr: u64,
    pub(crate) rkey: u32,
}

/// One send: a filled slot (or none, for a credit-only message) and the immediate value; with a
/// `remote` target it is a WRITE-with-immediate there instead of a SEND.
#[derive(Debug)]
pub(crate) struct SendRequest {
    pub(crate) slot: Option<Slot>,
    pub(crate) imm: u32,
    pub(crate) signaled: bool,
    pub(crate) remote: Option<RemoteTarget>,
}

/// What a reaped completion gave back.
#[derive(Debug)]
pub(crate) enum Reaped {
    /// A received message (its slot, with the length the NIC wrote) and the peer's immediate.
    /// `byte_len` is the completion's own count: for a WRITE-with-immediate it is the length
    /// written into the large buffer, and nothing was written into `slot`.
    Received { slot: Slot, imm: u32, byte_len: u32 },
    /// Sends completed; their slots went back to the pool.
    Sent,
}

/// An RC queue pair plus the slots posted to it. Field order matters: the QP is destroyed first,
/// so the NIC is done with the slots before they return to their pools.
pub(crate) struct RcQueuePair {
    qp: BasicQueuePair,
    recv_posted: Vec<Option<Slot>>,
    /// How many entries of `recv_posted` are occupied (read on every receive).
    recv_posted_count: usize,
    send_inflight: VecDeque<(u64, Option<Slot>)>,
    next_wr: u64,
    port: u8,
    gid_index: u8,
    max_inline: u32,
}

fn mtu_from_bytes(bytes: u32) -> Mtu {
    match bytes {
        0..=256 => Mtu::Mtu256,
        257..=512 => Mtu::Mtu512,
        513..=1024 => Mtu::Mtu1024,
        1025..=2048 => Mtu::Mtu2048,
        _ => Mtu::Mtu4096,
    }
}

impl RcQueuePair {
    /// Creates the QP on `cq` and moves it to INIT (receives can be posted from then on).
    pub(crate) fn new(
        device: &OpenDevice,
        cq: &CompletionQueue,
        send_depth: u32,
        recv_depth: u32,
        max_inline: u32,
    ) -> Result<Self, RdmaError> {
        let mut builder = device.pd.create_qp_builder();
        builder
            .setup_max_send_wr(send_depth + 1)
            .setup_max_recv_wr(recv_depth)
            .setup_max_send_sge(1)
            .setup_max_recv_sge(1)
            .setup_max_inline_data(max_inline)
            .setup_send_cq(cq.generic())
            .setup_recv_cq(cq.generic());
        let mut qp = builder.build().map_err(|e| RdmaError::verbs("ibv_create_qp", std::io::Error::other(e)))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(device.port)
            // Remote write for the peer's WRITEs into the large receive buffers; every other
            // region is registered without it, so that is all the peer can reach. No read/atomic.
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite);
        qp.modify(&attr).map_err(|e| RdmaError::verbs("modify QP to INIT", std::io::Error::other(e)))?;
        // What the device granted, which may differ from what was asked (a query failure means
        // no inline sends: always correct, just slower).
        let max_inline = if max_inline == 0 {
            0
        } else {
            qp.query(QueuePairAttributeMask::Capabilities).map_or(0, |(_, init)| init.max_inline_data().min(max_inline))
        };
        Ok(RcQueuePair {
            qp,
            recv_posted: (0..recv_depth).map(|_| None).collect(),
            recv_posted_count: 0,
            send_inflight: VecDeque::new(),
            next_wr: 1,
            port: device.port,
            gid_index: device.gid_index,
            max_inline,
        })
    }

    /// This side's connection details.
    pub(crate) fn endpoint(&self, device: &OpenDevice, psn: u32) -> QpEndpoint {
        QpEndpoint {
            qpn: self.qp.qp_number(),
            psn,
            gid: device.gid.raw,
            mtu: super::device::mtu_bytes(device.mtu),
            lid: device.lid,
            link: device.link,
        }
    }

    /// Largest message sent inline (what the device granted of `RdmaConfig::max_inline`).
    pub(crate) fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// The QP number, for errors and logs.
    pub(crate) fn qp_num(&self) -> u32 {
        self.qp.qp_number()
    }

    /// INIT → RTR → RTS against the peer. `local` is what this side announced.
    pub(crate) fn connect(&mut self, local: &QpEndpoint, remote: &QpEndpoint) -> Result<(), RdmaError> {
        let qpn = self.qp_num();
        // RoCE: a GRH to the peer's GID; InfiniBand: the peer's LID, plus a GRH across subnets.
        let vector = address_vector(local, remote, self.gid_index).map_err(RdmaError::Handshake)?;
        let mut ah = AddressHandleAttribute::new();
        ah.setup_port(self.port).setup_dest_lid(vector.dlid);
        if let Some(grh) = vector.grh {
            ah.setup_grh(&Gid { raw: grh.dgid }, 0, grh.sgid_index, grh.hop_limit, 0);
        }
        let mut rtr = QueuePairAttribute::new();
        rtr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(mtu_from_bytes(local.mtu.min(remote.mtu)))
            .setup_dest_qp_num(remote.qpn)
            .setup_rq_psn(remote.psn)
            .setup_max_dest_read_atomic(0)
            .setup_min_rnr_timer(12)
            .setup_address_vector(&ah);
        self.qp
            .modify(&rtr)
            .map_err(|e| RdmaError::verbs(format!("modify QP {qpn} to RTR"), std::io::Error::other(e)))?;
        let mut rts = QueuePairAttribute::new();
        rts.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(local.psn)
            // ACK timeout 4.096 µs × 2^17 ≈ 0.5 s: a slow peer (emulated guests, loaded hosts)
            // must not trigger spurious retransmission, which Debian 12's rxe does not always
            // handle (a retransmitted SEND can be delivered twice; the session detects it).
            .setup_timeout(17)
            .setup_retry_cnt(7)
            .setup_rnr_retry(7)
            .setup_max_read_atomic(0);
        self.qp.modify(&rts).map_err(|e| RdmaError::verbs(format!("modify QP {qpn} to RTS"), std::io::Error::other(e)))
    }

    /// Posts receive slots (one doorbell).
    pub(crate) fn post_recv(&mut self, slots: Vec<Slot>) -> Result<(), RdmaError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut guard = self.qp.start_post_recv();
        for slot in &slots {
            let handle = guard.construct_wr(RECV_FLAG | u64::from(slot.index()));
            let len = u32::try_from(slot.capacity()).unwrap_or(u32::MAX);
            // SAFETY: the slot's memory is registered under `lkey`, and the Slot moves into
            // `recv_posted` below before the doorbell rings, staying there until its completion is
            // reaped (or the QP is destroyed), so nothing else touches it while the NIC may.
            unsafe { handle.setup_sge(slot.lkey(), slot.addr(), len) };
        }
        for slot in slots {
            let index = slot.index() as usize;
            if let Some(entry) = self.recv_posted.get_mut(index) {
                if entry.replace(slot).is_none() {
                    self.recv_posted_count += 1;
                }
            }
        }
        // On failure some requests may be posted already: their slots stay in the table; the
        // caller closes the connection and the flush (or the QP's destruction) gives them back.
        guard.post().map_err(|e| RdmaError::verbs("ibv_post_recv", std::io::Error::other(e)))
    }

    /// Posts sends (SEND with immediate) in one doorbell; their slots are held until completion.
    pub(crate) fn post_send(&mut self, requests: Vec<SendRequest>) -> Result<(), RdmaError> {
        if requests.is_empty() {
            return Ok(());
        }
        let first = self.next_wr;
        let qp_num = self.qp.qp_number();
        let mut guard = self.qp.start_post_send();
        for (i, request) in requests.iter().enumerate() {
            let mut flags = if request.signaled { WorkRequestFlags::Signaled } else { WorkRequestFlags::none() };
            let len = request.slot.as_ref().map_or(0, Slot::len);
            if len > 0 && len <= self.max_inline as usize {
                // The device copies the bytes at post time (where it supports inline at all).
                flags |= WorkRequestFlags::Inline;
            }
            let handle = guard.construct_wr(first + i as u64, flags);
            let handle = match request.remote {
                Some(target) => handle.setup_write_imm(target.rkey, target.addr, request.imm.to_be()),
                None => handle.setup_send_imm(request.imm.to_be()),
            };
            if let Some(slot) = &request.slot {
                let len = u32::try_from(slot.len()).unwrap_or(u32::MAX);
                // SAFETY: the slot is registered under `lkey`, filled to `len`, and moves into
                // `send_inflight` below before the doorbell rings; it stays there until a completion
                // at or after it is reaped (or the QP is destroyed).
                unsafe { handle.setup_sge(slot.lkey(), slot.addr(), len) };
            }
        }
        let count = requests.len() as u64;
        for (i, request) in requests.into_iter().enumerate() {
            self.send_inflight.push_back((first + i as u64, request.slot));
        }
        self.next_wr = first + count;
        // On failure the slots stay in flight (some requests may have been posted); the caller
        // closes the connection, and the flush or the QP's destruction gives them back.
        guard.post().map_err(|e| RdmaError::verbs(format!("ibv_post_send on QP {qp_num}"), std::io::Error::other(e)))
    }

    /// Receives posted and not yet completed.
    pub(crate) fn recvs_posted(&self) -> usize {
        self.recv_posted_count
    }

    /// Sends posted and not yet completed.
    pub(crate) fn sends_in_flight(&self) -> usize {
        self.send_inflight.len()
    }

    /// Accounts one completion. A failed one is an error naming the QP; its slots are reclaimed.
    pub(crate) fn reap(&mut self, completion: &Completion) -> Result<Reaped, RdmaError> {
        let reaped = if completion.wr_id & RECV_FLAG != 0 {
            let index = (completion.wr_id & !RECV_FLAG) as usize;
            let slot = self.recv_posted.get_mut(index).and_then(Option::take);
            if slot.is_some() {
                self.recv_posted_count -= 1;
            }
            match slot {
                Some(mut slot) if completion.ok() => {
                    slot.set_len(completion.byte_len as usize);
                    Reaped::Received { slot, imm: completion.imm, byte_len: completion.byte_len }
                }
                _ => Reaped::Sent, // a flushed receive: its slot (if any) is dropped back to the pool
            }
        } else {
            // RC completes in order: everything up to this wr_id is done.
            while self.send_inflight.front().is_some_and(|(id, _)| *id <= completion.wr_id) {
                self.send_inflight.pop_front();
            }
            Reaped::Sent
        };
        if completion.ok() {
            Ok(reaped)
        } else {
            Err(RdmaError::Completion {
                qp_num: self.qp_num(),
                status: format!("{:?}", completion.status),
                wr_id: completion.wr_id,
            })
        }
    }

    /// Moves the QP to the error state: every posted request is flushed with an error completion.
    pub(crate) fn move_to_error(&mut self) {
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Error);
        if let Err(err) = self.qp.modify(&attr) {
            tracing::debug!(qp = self.qp_num(), %err, "moving QP to error failed");
        }
    }
}
