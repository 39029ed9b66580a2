//! Large messages: one-sided RDMA WRITE-with-immediate into buffers the receiver lent.
//!
//! Each side registers, per size class of `RdmaConfig::large_classes`, one region of receive
//! buffers with remote write access and sends its address and rkey in the handshake. From then on
//! every such buffer is in exactly one place:
//!
//! ```text
//!  lent to the peer ──WRITE-with-imm (class, index)──▶ held by the application (Bytes)
//!        ▲                                                   │ last view dropped
//!        └──── SEND-with-imm "returned (class, index)" ◀─────┘ (poller re-lends it)
//! ```
//!
//! The sender ([`RemoteBuffers`]) writes only into buffers the peer lent and has not had back
//! since, so a buffer the application still reads is never overwritten. The immediate value
//! carries what each message means (see [`Imm`]); the completion's byte count is the length.

use std::collections::VecDeque;
use std::sync::Arc;

use sideway::ibverbs::protection_domain::ProtectionDomain;
use tokio::sync::Notify;

use crate::verbs::{Access, Region, RemoteTarget, Slot};
use crate::{LargeClass, RdmaError};

const WRITTEN: u32 = 1 << 31;
const RETURNED: u32 = 1 << 30;
const CLASS_SHIFT: u32 = 24;
const CLASS_MASK: u32 = 0x3f;
const INDEX_MASK: u32 = 0x00ff_ffff;

/// What the immediate value of a received completion says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Imm {
    /// A SEND: the message is in the receive slot; the peer re-posted this many receives.
    Credit(u32),
    /// A WRITE-with-immediate: the message is in this side's large buffer `(class, index)`.
    Written { class: usize, index: u32 },
    /// A zero-length SEND: the peer hands its large buffer `(class, index)` back to this side.
    Returned { class: usize, index: u32 },
}

impl Imm {
    pub(crate) fn decode(imm: u32) -> Imm {
        let class = ((imm >> CLASS_SHIFT) & CLASS_MASK) as usize;
        let index = imm & INDEX_MASK;
        if imm & WRITTEN != 0 {
            Imm::Written { class, index }
        } else if imm & RETURNED != 0 {
            Imm::Returned { class, index }
        } else {
            Imm::Credit(imm)
        }
    }

    pub(crate) fn encode(self) -> u32 {
        let packed = |class: usize, index: u32| ((class as u32 & CLASS_MASK) << CLASS_SHIFT) | (index & INDEX_MASK);
        match self {
            Imm::Credit(count) => count & !(WRITTEN | RETURNED),
            Imm::Written { class, index } => WRITTEN | packed(class, index),
            Imm::Returned { class, index } => RETURNED | packed(class, index),
        }
    }
}

/// One class of receive buffers as the handshake announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) size: u32,
    pub(crate) count: u32,
    pub(crate) addr: u64,
    pub(crate) rkey: u32,
}

/// This side's large receive buffers: lent to the peer, held by the application, or freed and
/// waiting to be re-lent. Lives after the QP in `Inner`, so the QP is gone before a lent buffer
/// can be freed.
pub(crate) struct LargeRecv {
    regions: Vec<Arc<Region>>,
    lent: Vec<Vec<Option<Slot>>>,
    /// Re-lent buffers the peer has not been told about yet (each needs a credit to announce).
    unannounced: VecDeque<(usize, u32)>,
}

impl LargeRecv {
    /// Registers every class (remote write) and lends all buffers: the handshake announces them.
    pub(crate) fn new(
        pd: &Arc<ProtectionDomain>,
        classes: &[LargeClass],
        freed: &Arc<Notify>,
    ) -> Result<Self, RdmaError> {
        let mut regions = Vec::with_capacity(classes.len());
        let mut lent = Vec::with_capacity(classes.len());
        for class in classes {
            let region = Region::with_access(pd, class.size, class.count, Access::RemoteWrite, freed.clone())?;
            let mut table: Vec<Option<Slot>> = (0..class.count).map(|_| None).collect();
            for slot in region.take_all() {
                let index = slot.index() as usize;
                table[index] = Some(slot);
            }
            regions.push(region);
            lent.push(table);
        }
        Ok(LargeRecv { regions, lent, unannounced: VecDeque::new() })
    }

    /// The registered region of each class.
    pub(crate) fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// What the handshake tells the peer.
    pub(crate) fn advertised(&self) -> Vec<Advertised> {
        let size = |r: &Region| u32::try_from(r.slot_size()).unwrap_or(u32::MAX);
        self.regions
            .iter()
            .map(|r| Advertised { size: size(r), count: r.slots(), addr: r.base_addr(), rkey: r.rkey() })
            .collect()
    }

    /// The buffer the peer says it wrote `byte_len` bytes into; an error if it was not lent.
    pub(crate) fn take_written(&mut self, class: usize, index: u32, byte_len: u32) -> Result<Slot, RdmaError> {
        let slot = self.lent.get_mut(class).and_then(|table| table.get_mut(index as usize)).and_then(Option::take);
        let mut slot = slot.ok_or_else(|| {
            RdmaError::Protocol(format!(
                "the peer wrote into large buffer {index} of class {class}, which it did not hold"
            ))
        })?;
        if byte_len as usize > slot.capacity() {
            return Err(RdmaError::Protocol(format!(
                "the peer wrote {byte_len} bytes into a {} byte buffer",
                slot.capacity()
            )));
        }
        slot.set_len(byte_len as usize);
        Ok(slot)
    }

    /// Whether the application would hold every buffer of `class` if it kept this one: then the
    /// message is copied out, so the peer can always send the next one (no credit deadlock).
    pub(crate) fn must_copy(&self, class: usize) -> bool {
        let lent = self.lent.get(class).map_or(0, |table| table.iter().filter(|s| s.is_some()).count());
        lent + self.regions.get(class).map_or(0, |r| r.free_count()) == 0
    }

    /// Lends every buffer the application dropped again; true if there were any.
    pub(crate) fn relend_freed(&mut self) -> bool {
        let mut any = false;
        for (class, region) in self.regions.iter().enumerate() {
            while let Some(slot) = region.try_take() {
                let index = slot.index();
                if let Some(entry) = self.lent[class].get_mut(index as usize) {
                    *entry = Some(slot);
                    self.unannounced.push_back((class, index));
                    any = true;
                }
            }
        }
        any
    }

    /// The next re-lent buffer to announce, if any.
    pub(crate) fn next_unannounced(&mut self) -> Option<(usize, u32)> {
        self.unannounced.pop_front()
    }
}

struct RemoteClass {
    size: usize,
    addr: u64,
    rkey: u32,
    free: VecDeque<u32>,
    is_free: Vec<bool>,
}

/// The peer's large receive buffers as this side may write them: only those lent and not yet
/// used. Kept with the credits, so a batch takes credit and buffers under one lock.
pub(crate) struct RemoteBuffers {
    classes: Vec<RemoteClass>,
}

impl RemoteBuffers {
    /// Everything the peer advertised in the handshake is lent to us.
    pub(crate) fn new(advertised: &[Advertised]) -> Self {
        let classes = advertised
            .iter()
            .map(|a| RemoteClass {
                size: a.size as usize,
                addr: a.addr,
                rkey: a.rkey,
                free: (0..a.count).collect(),
                is_free: vec![true; a.count as usize],
            })
            .collect();
        RemoteBuffers { classes }
    }

    /// Takes a buffer of the smallest class that holds `len` bytes: where to write, and the
    /// immediate that names it. `None` while every buffer of that class is the peer's.
    pub(crate) fn take(&mut self, len: usize) -> Option<(RemoteTarget, u32)> {
        let (class, remote) = self.classes.iter_mut().enumerate().find(|(_, c)| c.size >= len)?;
        let index = remote.free.pop_front()?;
        remote.is_free[index as usize] = false;
        let addr = remote.addr + u64::from(index) * remote.size as u64;
        Some((RemoteTarget { addr, rkey: remote.rkey }, Imm::Written { class, index }.encode()))
    }

    /// The peer handed buffer `(class, index)` back; an error if it was not ours to get back.
    pub(crate) fn give_back(&mut self, class: usize, index: u32) -> Result<(), RdmaError> {
        let remote = self.classes.get_mut(class);
        match remote.and_then(|r| r.is_free.get_mut(index as usize).map(|free| (free, &mut r.free))) {
            Some((free @ false, queue)) => {
                *free = true;
                queue.push_back(index);
                Ok(())
            }
            _ => Err(RdmaError::Protocol(format!(
                "the peer returned large buffer {index} of class {class} twice or out of range"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediates_round_trip_and_credit_stays_plain() {
        for imm in [
            Imm::Credit(0),
            Imm::Credit(63),
            Imm::Written { class: 1, index: 7 },
            Imm::Returned { class: 63, index: 0x00ff_ffff },
        ] {
            assert_eq!(Imm::decode(imm.encode()), imm);
        }
        assert_eq!(Imm::Credit(5).encode(), 5, "credit immediates are what older code sent");
    }

    #[test]
    fn a_buffer_is_written_once_until_the_peer_returns_it() {
        let advertised = [
            Advertised { size: 1024, count: 2, addr: 0x1000, rkey: 7 },
            Advertised { size: 8192, count: 1, addr: 0x9000, rkey: 8 },
        ];
        let mut remote = RemoteBuffers::new(&advertised);
        let (first, imm) = remote.take(1000).expect("class 0 buffer");
        assert_eq!(
            (first, Imm::decode(imm)),
            (RemoteTarget { addr: 0x1000, rkey: 7 }, Imm::Written { class: 0, index: 0 })
        );
        let (second, _) = remote.take(1024).expect("the other class 0 buffer");
        assert_eq!(second.addr, 0x1400);
        assert!(remote.take(10).is_none(), "class 0 is exhausted: wait, do not overwrite");
        let (big, imm) = remote.take(5000).expect("class 1");
        assert_eq!((big.rkey, Imm::decode(imm)), (8, Imm::Written { class: 1, index: 0 }));
        assert!(remote.take(9000).is_none(), "larger than every class");
        remote.give_back(0, 1).expect("returned");
        assert!(remote.give_back(0, 1).is_err(), "returned twice");
        assert!(remote.give_back(2, 0).is_err(), "no such class");
        assert!(remote.give_back(0, 9).is_err(), "no such buffer");
        assert_eq!(remote.take(1).map(|(t, _)| t.addr), Some(0x1400));
    }
}
