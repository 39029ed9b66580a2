//! The reliable-connected queue pair of one connection, and the ownership of what is posted to it:
//! a `Slot` posted for receive or send moves into this wrapper's tables and comes back out only when
//! its completion is reaped, so a dropped future can never free memory the NIC still uses.
//! Sends are SEND-with-immediate, or RDMA WRITE-with-immediate into a large buffer the peer lent us.
//! Posting calls `ibv_post_send` / `ibv_post_recv` of rdma-mummy-sys with work requests built on
//! the stack: sideway's post guards allocate two vectors per doorbell.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::ptr::null_mut;

use rdma_mummy_sys::{
    ibv_post_recv, ibv_post_send, ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode, rdma_t,
};
use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::device_context::Mtu;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, QueuePair as _, QueuePairAttribute, QueuePairAttributeMask, QueuePairState,
};

use super::cq::{Completion, CompletionQueue};
use super::device::OpenDevice;
use super::region::Slot;
use super::work_request::{link, zeroed_send_wr};
use crate::RdmaError;
use crate::route::{Link, address_vector};

/// Work request ids with this bit are receives; the low bits are the slot index.
const RECV_FLAG: u64 = 1 << 63;

/// Work requests per doorbell. Posting builds them in arrays on the stack (about 4.5 KiB for
/// sends), so it allocates nothing; a longer batch rings once per chunk, in order.
const POST_CHUNK: usize = 32;

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

/// The first `count` entries of `array` as initialised values.
///
/// # Safety
/// Each of `array[..count]` must have been written.
unsafe fn initialized<T>(array: &mut [MaybeUninit<T>], count: usize) -> &mut [T] {
    let count = count.min(array.len());
    // SAFETY: the caller wrote the first `count` entries; `MaybeUninit<T>` has `T`'s layout, and
    // the slice borrows `array` mutably for as long as it lives.
    unsafe { std::slice::from_raw_parts_mut(array.as_mut_ptr().cast::<T>(), count) }
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
        // A device may refuse a QP with more inline room than it has (providers differ on
        // whether they clamp or fail): then the QP is made without inline sends, which is always
        // correct, only slower for small messages.
        let (mut qp, max_inline) = match builder.build() {
            Ok(qp) => (qp, max_inline),
            Err(err) if max_inline > 0 => {
                tracing::debug!(max_inline, %err, "the device refused inline sends: QP without them");
                builder.setup_max_inline_data(0);
                (builder.build().map_err(|e| RdmaError::verbs("ibv_create_qp", std::io::Error::other(e)))?, 0)
            }
            Err(err) => return Err(RdmaError::verbs("ibv_create_qp", std::io::Error::other(err))),
        };
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

    /// Posts receive slots, one doorbell per `POST_CHUNK`; returns how many were posted. The work
    /// requests are built on the stack: posting allocates nothing.
    pub(crate) fn post_recv(&mut self, slots: impl IntoIterator<Item = Slot>) -> Result<usize, RdmaError> {
        let mut slots = slots.into_iter().peekable();
        let mut posted = 0;
        while slots.peek().is_some() {
            // Written as slots come (see `post_send`).
            let mut sges = [const { MaybeUninit::<ibv_sge>::uninit() }; POST_CHUNK];
            let mut wrs = [const { MaybeUninit::<ibv_recv_wr>::uninit() }; POST_CHUNK];
            let mut count = 0;
            for slot in slots.by_ref().take(POST_CHUNK) {
                // The table has an entry per slot of the receive region (both are sized by
                // `recv_buffers`), so every slot has one; one without would be dropped here unposted
                // (back to the region, untouched by the NIC).
                debug_assert!((slot.index() as usize) < self.recv_posted.len(), "receive slot outside the table");
                let Some(entry) = self.recv_posted.get_mut(slot.index() as usize) else { continue };
                sges[count].write(ibv_sge {
                    addr: slot.addr(),
                    length: u32::try_from(slot.capacity()).unwrap_or(u32::MAX),
                    lkey: slot.lkey(),
                });
                wrs[count].write(ibv_recv_wr {
                    wr_id: RECV_FLAG | u64::from(slot.index()),
                    next: null_mut(),
                    sg_list: null_mut(),
                    num_sge: 1,
                });
                // The Slot moves into `recv_posted` before the doorbell rings and stays there
                // until its completion is reaped (or the QP is destroyed).
                if entry.replace(slot).is_none() {
                    self.recv_posted_count += 1;
                }
                count += 1;
            }
            if count == 0 {
                continue;
            }
            // SAFETY: the loop above wrote `wrs[..count]` and `sges[..count]`, and `MaybeUninit<T>`
            // has `T`'s layout.
            let (wrs, sges) = unsafe { (initialized(&mut wrs, count), initialized(&mut sges, count)) };
            let head = link(wrs, sges);
            let mut bad = null_mut();
            // SAFETY: the QP pointer is valid while `self.qp` lives. `head` starts the list of
            // `wrs[..count]`, linked within this stack frame (the last `next` is null), each with
            // one SGE in `sges`, which outlives the call; the provider copies the requests before
            // it returns. Each SGE names a slot registered under `lkey` that now sits in
            // `recv_posted`, so nothing else touches it while the NIC may.
            let rc = unsafe { ibv_post_recv(self.qp.qp().as_ptr(), head, &mut bad) };
            // On failure the requests before `bad` were posted: their slots stay in the table, and
            // the flush (or the QP's destruction) gives them back once the caller closes the
            // connection. From `bad` on, the NIC never saw them: they go back now.
            if rc != 0 {
                let unposted = wrs.iter().position(|wr| std::ptr::eq(wr, bad)).unwrap_or(count);
                for wr in &wrs[unposted..] {
                    let index = (wr.wr_id & !RECV_FLAG) as usize;
                    if self.recv_posted.get_mut(index).and_then(Option::take).is_some() {
                        self.recv_posted_count -= 1;
                    }
                }
                return Err(RdmaError::verbs("ibv_post_recv", std::io::Error::from_raw_os_error(rc.abs())));
            }
            posted += count;
        }
        Ok(posted)
    }

    /// Posts sends (SEND or WRITE, with immediate), one doorbell per `POST_CHUNK`; their slots are
    /// held until completion. Returns how many were posted. The work requests are built on the
    /// stack: posting allocates nothing.
    pub(crate) fn post_send(&mut self, requests: impl IntoIterator<Item = SendRequest>) -> Result<usize, RdmaError> {
        let mut requests = requests.into_iter().peekable();
        let mut posted = 0;
        while requests.peek().is_some() {
            // Written one by one as requests come: zeroing all `POST_CHUNK` (5 KiB with the SGEs)
            // for the one request a round trip posts cost more than the rest of building it.
            let mut sges = [const { MaybeUninit::<ibv_sge>::uninit() }; POST_CHUNK];
            let mut wrs = [const { MaybeUninit::<ibv_send_wr>::uninit() }; POST_CHUNK];
            let mut count = 0;
            for request in requests.by_ref().take(POST_CHUNK) {
                let wr = wrs[count].write(zeroed_send_wr());
                wr.wr_id = self.next_wr;
                wr.imm_data_invalidated_rkey_union.imm_data = request.imm.to_be();
                match request.remote {
                    Some(target) => {
                        wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                        wr.wr.rdma = rdma_t { remote_addr: target.addr, rkey: target.rkey };
                    }
                    None => wr.opcode = ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
                }
                let mut flags = if request.signaled { ibv_send_flags::IBV_SEND_SIGNALED.0 } else { 0 };
                let sge = match &request.slot {
                    Some(slot) => {
                        if slot.len() > 0 && slot.len() <= self.max_inline as usize {
                            // The device copies the bytes at post time (where it supports inline).
                            flags |= ibv_send_flags::IBV_SEND_INLINE.0;
                        }
                        wr.num_sge = 1;
                        ibv_sge {
                            addr: slot.addr(),
                            length: u32::try_from(slot.len()).unwrap_or(u32::MAX),
                            lkey: slot.lkey(),
                        }
                    }
                    // No slot, no SGE (`num_sge` 0): the entry is written but never read.
                    None => ibv_sge { addr: 0, length: 0, lkey: 0 },
                };
                sges[count].write(sge);
                wr.send_flags = flags;
                // The slot moves into `send_inflight` before the doorbell rings; it stays there
                // until a completion at or after it is reaped (or the QP is destroyed).
                self.send_inflight.push_back((self.next_wr, request.slot));
                self.next_wr += 1;
                count += 1;
            }
            // SAFETY: the loop above wrote `wrs[..count]` and `sges[..count]`, and `MaybeUninit<T>`
            // has `T`'s layout.
            let (wrs, sges) = unsafe { (initialized(&mut wrs, count), initialized(&mut sges, count)) };
            let head = link(wrs, sges);
            let mut bad = null_mut();
            // SAFETY: the QP pointer is valid while `self.qp` lives. `head` starts `wrs[..count]`, a list
            // linked within this stack frame (the last `next` is null), each with at most one SGE
            // in `sges`, which outlives the call; the provider copies the requests (and inline
            // data) before it returns. Each SGE names a slot registered under `lkey`, filled to
            // `length`, that now sits in `send_inflight`; a WRITE's target is a buffer the peer
            // lent under its rkey.
            let rc = unsafe { ibv_post_send(self.qp.qp().as_ptr(), head, &mut bad) };
            // On failure the requests before `bad` were posted: their slots stay in flight until
            // the flush (or the QP's destruction) after the caller closes the connection. From
            // `bad` on (the back of `send_inflight`), the NIC never saw them: they go back now.
            if rc != 0 {
                if let Some(first) = wrs.iter().find(|wr| std::ptr::eq(*wr, bad)).map(|wr| wr.wr_id) {
                    while self.send_inflight.back().is_some_and(|(id, _)| *id >= first) {
                        self.send_inflight.pop_back();
                    }
                }
                let qp_num = self.qp_num();
                return Err(RdmaError::verbs(
                    format!("ibv_post_send on QP {qp_num}"),
                    std::io::Error::from_raw_os_error(rc.abs()),
                ));
            }
            posted += count;
        }
        Ok(posted)
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
