//! Registered memory: one page-aligned allocation registered once as a memory region and split into
//! fixed-size slots. A [`Slot`] is the exclusive handle of one slot; dropping it returns the slot
//! to its pool. While a slot is posted to the NIC its `Slot` lives inside the queue pair's tables
//! (`qp.rs`), so no other code can reach the memory until the completion is reaped.
//!
//! Slots for SENDs and posted receives get local access only. The large receive buffers (see
//! `large.rs`) are the one kind registered with remote write access: their address and key go to
//! the peer, and a buffer is the peer's to write only while its `Slot` sits in the lent table.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::buf::UninitSlice;
use sideway::ibverbs::AccessFlags;
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use tokio::sync::Notify;

use crate::RdmaError;

/// Who may access a region's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// This host only (send slots, posted receives, large send buffers).
    Local,
    /// This host, and the peer by RDMA WRITE with the region's rkey (large receive buffers).
    RemoteWrite,
}

/// Registered memory split into `slots` slots of `slot_size` bytes, with a free list.
pub(crate) struct Region {
    /// Deregistered first in `Drop`, before the memory is freed.
    mr: Option<Arc<MemoryRegion>>,
    base: NonNull<u8>,
    layout: Layout,
    slot_size: usize,
    lkey: u32,
    rkey: u32,
    /// Free slot indices, a stack: the slot taken next is the one returned last, whose memory was
    /// touched last and is still in the CPU's cache. A queue handed out the least recently
    /// returned slot instead, cycling through the whole region (its cold cache lines cost
    /// about 0.2 µs per message under QEMU: BENCHMARKING.md, finding 26).
    free: Mutex<Vec<u32>>,
    slots: u32,
    /// Slots in `free` not yet claimed: a taker claims one here (only while more than its reserve
    /// are left) before it pops, so checking the reserve and taking are one atomic step.
    unclaimed: AtomicUsize,
    freed: Arc<Notify>,
    /// Whether a returned slot wakes every waiter of `take`, not just one (see `with_mixed_waiters`).
    wake_all: bool,
}

// SAFETY: the memory behind `base` is only reached through `Slot`s, each of which is the unique
// owner of its slot (the free list hands out every index once), so sharing the region between
// threads shares no unsynchronised access. The MR handle is Send + Sync in sideway.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives no access to slot memory by itself.
unsafe impl Sync for Region {}

impl Region {
    /// Allocates and registers `slots * slot_size` bytes for local access only.
    pub(crate) fn new(pd: &Arc<ProtectionDomain>, slot_size: usize, slots: u32) -> Result<Arc<Region>, RdmaError> {
        Region::with_access(pd, slot_size, slots, Access::Local, Arc::new(Notify::new()))
    }

    /// Like `new`, for a region whose `take` waiters keep different reserves (the large send
    /// buffers: the application keeps one back, the sender's join does not). One wake-up could
    /// reach a waiter whose reserve forbids taking and be lost to the one that could, so every
    /// returned slot wakes them all.
    pub(crate) fn with_mixed_waiters(
        pd: &Arc<ProtectionDomain>,
        slot_size: usize,
        slots: u32,
    ) -> Result<Arc<Region>, RdmaError> {
        let mut region = Region::with_access(pd, slot_size, slots, Access::Local, Arc::new(Notify::new()))?;
        // A region just made has no other owner, so this always applies.
        if let Some(region) = Arc::get_mut(&mut region) {
            region.wake_all = true;
        }
        Ok(region)
    }

    /// Allocates and registers `slots * slot_size` bytes with `access`; `freed` is notified
    /// (one permit) whenever a slot comes back, so one waiter can watch several regions.
    pub(crate) fn with_access(
        pd: &Arc<ProtectionDomain>,
        slot_size: usize,
        slots: u32,
        access: Access,
        freed: Arc<Notify>,
    ) -> Result<Arc<Region>, RdmaError> {
        let total = slot_size
            .checked_mul(slots as usize)
            .filter(|&t| t > 0)
            .ok_or_else(|| RdmaError::Handshake("buffer size and count must be non-zero".into()))?;
        super::device::check_memlock(total)?;
        let layout = Layout::from_size_align(total, 4096)
            .map_err(|e| RdmaError::Handshake(format!("cannot lay out {total} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size (checked above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).ok_or_else(|| RdmaError::Handshake(format!("out of memory for {total} bytes")))?;
        // Local access unless asked: only the large receive buffers' rkey ever leaves this host,
        // so a peer gets no way to read or write any other memory on its own.
        let access = match access {
            Access::Local => AccessFlags::LocalWrite,
            Access::RemoteWrite => AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
        };
        // SAFETY: `base..base+total` is a live allocation owned by this Region, which frees it only
        // after deregistering the MR (Drop below), and never moves it.
        let mr = match unsafe { pd.reg_mr(base.as_ptr() as usize, total, access) } {
            Ok(mr) => mr,
            Err(err) => {
                // SAFETY: allocated above with this layout and not registered.
                unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
                return Err(RdmaError::verbs(format!("ibv_reg_mr({total} bytes)"), std::io::Error::other(err)));
            }
        };
        // Exactly `slots` long: a push never grows it (every index is in it or held by one Slot).
        let free = Mutex::new((0..slots).rev().collect::<Vec<u32>>());
        let (lkey, rkey) = (mr.lkey(), mr.rkey());
        let unclaimed = AtomicUsize::new(slots as usize);
        Ok(Arc::new(Region {
            lkey,
            rkey,
            mr: Some(mr),
            base,
            layout,
            slot_size,
            free,
            slots,
            unclaimed,
            freed,
            wake_all: false,
        }))
    }

    /// The address of slot 0, as the peer addresses it in RDMA WRITEs.
    pub(crate) fn base_addr(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    /// The remote key (meaningful to the peer only for `Access::RemoteWrite` regions).
    pub(crate) fn rkey(&self) -> u32 {
        self.rkey
    }

    /// Slots free now.
    pub(crate) fn free_count(&self) -> usize {
        self.unclaimed.load(Ordering::Acquire)
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// The free list. Its critical sections only push or pop an index and cannot panic, so a
    /// poisoned lock still guards a consistent list.
    fn free_list(&self) -> MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes per slot.
    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// A free slot, if any.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.try_take_above(0)
    }

    /// A free slot if more than `reserve` are free, atomically: concurrent takers cannot both
    /// pass the check and dip into the reserve together.
    pub(crate) fn try_take_above(self: &Arc<Self>, reserve: usize) -> Option<Slot> {
        let claimed =
            self.unclaimed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n > reserve).then(|| n - 1));
        claimed.ok()?;
        // Every unit of `unclaimed` was counted after its index was pushed, and this claim is
        // ours alone, so the pop finds one; should it not, the claim is given back.
        match self.free_list().pop() {
            Some(index) => Some(Slot { region: self.clone(), index, len: 0 }),
            None => {
                self.unclaimed.fetch_add(1, Ordering::AcqRel);
                None
            }
        }
    }

    /// A free slot, waiting while no more than `reserve` are free (those are kept for control
    /// frames, so the application filling every buffer cannot stop credit and pings).
    pub(crate) async fn take(self: &Arc<Self>, reserve: usize) -> Slot {
        loop {
            // Registered as a waiter before looking, so a slot freed in between wakes us.
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(slot) = self.try_take_above(reserve) {
                return slot;
            }
            notified.await;
        }
    }

    /// All free slots now.
    pub(crate) fn take_all(self: &Arc<Self>) -> Vec<Slot> {
        std::iter::from_fn(|| self.try_take()).collect()
    }

    /// Waits until a slot is returned (a permit is stored if none waits).
    pub(crate) async fn wait_freed(&self) {
        self.freed.notified().await;
    }

    fn slot_ptr(&self, index: u32) -> *mut u8 {
        // Within the allocation: index < slots, and slots * slot_size == layout.size().
        self.base.as_ptr().wrapping_add(index as usize * self.slot_size)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        drop(self.mr.take()); // ibv_dereg_mr: the NIC can no longer reach the memory
        // SAFETY: allocated in `new` with `self.layout`; every Slot holds an Arc<Region>, so none
        // is alive, and the MR is gone.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// The exclusive handle of one registered slot; back to the free list on drop.
pub(crate) struct Slot {
    region: Arc<Region>,
    index: u32,
    len: usize,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("index", &self.index).field("len", &self.len).finish()
    }
}

impl Slot {
    /// The slot's index in its region.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// Bytes filled.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Sets the filled length (after the NIC wrote `len` bytes).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len.min(self.region.slot_size);
    }

    /// Address for a scatter/gather entry.
    pub(crate) fn addr(&self) -> u64 {
        self.region.slot_ptr(self.index) as u64
    }

    /// Local key for a scatter/gather entry.
    pub(crate) fn lkey(&self) -> u32 {
        self.region.lkey
    }

    /// Capacity in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.region.slot_size
    }

    /// The filled bytes.
    pub(crate) fn filled(&self) -> &[u8] {
        // SAFETY: this Slot is the only handle of its slot (free-list invariant), and it is not
        // posted (a posted Slot lives in the queue pair's tables, out of reach); `len` never
        // exceeds the slot size.
        unsafe { std::slice::from_raw_parts(self.region.slot_ptr(self.index), self.len) }
    }

    /// The whole slot, writable.
    fn whole_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `filled`, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.region.slot_ptr(self.index), self.region.slot_size) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Counted only once pushed, so a claim always finds an index to pop.
        self.region.free_list().push(self.index);
        self.region.unclaimed.fetch_add(1, Ordering::AcqRel);
        if self.region.wake_all {
            self.region.freed.notify_waiters();
        }
        self.region.freed.notify_one();
    }
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        self.filled()
    }
}

/// A registered send buffer that prost encodes straight into.
#[derive(Debug)]
pub struct SlotWriter {
    pub(crate) slot: Slot,
}

impl SlotWriter {
    pub(crate) fn new(mut slot: Slot) -> Self {
        slot.set_len(0);
        SlotWriter { slot }
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.slot.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.slot.len == 0
    }

    /// Keeps only the first `len` bytes written.
    pub fn truncate(&mut self, len: usize) {
        if len < self.slot.len {
            self.slot.len = len;
        }
    }

    /// The bytes written.
    pub fn written(&self) -> &[u8] {
        self.slot.filled()
    }

    /// The bytes written, to back-patch a header.
    pub fn written_mut(&mut self) -> &mut [u8] {
        let len = self.slot.len;
        &mut self.slot.whole_mut()[..len]
    }
}

// SAFETY: `chunk_mut` exposes exactly the unwritten tail of this writer's own slot, and
// `advance_mut` only moves `len` forward within the slot (it panics past the end, as BufMut
// requires), so the written prefix is always initialised.
unsafe impl bytes::BufMut for SlotWriter {
    fn remaining_mut(&self) -> usize {
        self.slot.capacity() - self.slot.len
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining_mut(), "advance past the end of a registered buffer");
        self.slot.len += cnt;
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        let len = self.slot.len;
        UninitSlice::new(&mut self.slot.whole_mut()[len..])
    }

    // The provided `put_slice` and `put_u8` go through `chunk_mut` and `advance_mut` per call;
    // prost writes every key, length and varint byte with them. One bounds check and a copy each.
    fn put_slice(&mut self, src: &[u8]) {
        let len = self.slot.len;
        let end = len.checked_add(src.len()).filter(|&end| end <= self.slot.capacity());
        let end = end.unwrap_or_else(|| {
            panic!("{} bytes do not fit a registered buffer's {} left", src.len(), self.remaining_mut())
        });
        self.slot.whole_mut()[len..end].copy_from_slice(src);
        self.slot.len = end;
    }

    fn put_u8(&mut self, n: u8) {
        self.put_slice(&[n]);
    }
}
