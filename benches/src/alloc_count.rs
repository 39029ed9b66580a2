//! A counting global allocator: how many heap allocations (and bytes) each side of a benchmark
//! makes, so the bench binary can report allocations per call in steady state.
//!
//! [`CountingAlloc`] wraps the system allocator and adds every `alloc`, `alloc_zeroed` and
//! `realloc` to the counters of the calling thread's [`Side`]. A thread names its side with
//! [`set_side`] (the bench binary does it in each runtime's `on_thread_start`); threads that never
//! do count as [`Side::Other`]. Frees are not counted: an allocation is the cost, and in steady
//! state every one is freed again.
//!
//! [`set_tracing`] makes it print the backtrace of every counted allocation to stderr, to find
//! where a count comes from (`rpc-bench` does it with `RPC_BENCH_TRACE_ALLOCS`). Capturing and
//! printing allocate; those allocations are neither counted nor traced.
//!
//! Install it in a binary with
//! `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;`. Without that, the counters
//! stay at zero.
//!
//! This is the only `unsafe` of the benches: `GlobalAlloc` is an unsafe trait and its methods are
//! unsafe functions. Each only forwards to [`System`] with the caller's arguments unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Which side of a benchmark a thread works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Side {
    /// A thread that never called [`set_side`].
    Other = 0,
    /// The client's runtime.
    Client = 1,
    /// The server's runtime.
    Server = 2,
}

const SIDES: usize = 3;

static ALLOCATIONS: [AtomicU64; SIDES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; SIDES] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static TRACING: AtomicBool = AtomicBool::new(false);

thread_local! {
    // `const` initialisation: reading it never allocates, so the allocator may use it.
    static SIDE: Cell<Side> = const { Cell::new(Side::Other) };
    /// Set while this thread captures a backtrace for [`set_tracing`]: its allocations are the
    /// tracer's own.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Counts this thread's allocations for `side` from now on.
pub fn set_side(side: Side) {
    SIDE.with(|cell| cell.set(side));
}

/// Prints the backtrace of every counted allocation (any thread) to stderr while `on`, each as
/// `alloc side=Client size=N`, the backtrace, then an empty line. Slow: for a few calls only.
pub fn set_tracing(on: bool) {
    TRACING.store(on, Ordering::SeqCst);
}

/// Allocations and bytes counted so far, per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocations (`alloc`, `alloc_zeroed`, `realloc`) per [`Side`], indexed by `Side as usize`.
    pub allocations: [u64; SIDES],
    /// Bytes requested by those allocations, per side.
    pub bytes: [u64; SIDES],
}

impl Counts {
    /// The counters now.
    pub fn now() -> Counts {
        let mut counts = Counts::default();
        for side in 0..SIDES {
            counts.allocations[side] = ALLOCATIONS[side].load(Ordering::Relaxed);
            counts.bytes[side] = BYTES[side].load(Ordering::Relaxed);
        }
        counts
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &Counts) -> Counts {
        let mut delta = Counts::default();
        for side in 0..SIDES {
            delta.allocations[side] = self.allocations[side].saturating_sub(earlier.allocations[side]);
            delta.bytes[side] = self.bytes[side].saturating_sub(earlier.bytes[side]);
        }
        delta
    }

    /// Allocations of one side.
    pub fn allocations(&self, side: Side) -> u64 {
        self.allocations[side as usize]
    }

    /// Bytes of one side.
    pub fn bytes(&self, side: Side) -> u64 {
        self.bytes[side as usize]
    }
}

/// The system allocator, counting.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

fn count(size: usize) {
    // `try_with`: during thread teardown the thread-locals may be gone; count as `Other` then.
    if IN_TRACE.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    let side = SIDE.try_with(Cell::get).unwrap_or(Side::Other);
    ALLOCATIONS[side as usize].fetch_add(1, Ordering::Relaxed);
    BYTES[side as usize].fetch_add(size as u64, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        trace(side, size);
    }
}

/// Prints where this allocation comes from; the allocations this makes are not counted.
fn trace(side: Side, size: usize) {
    if IN_TRACE.try_with(|flag| flag.replace(true)).unwrap_or(true) {
        return; // no thread-local left (teardown): nothing to trace with
    }
    let backtrace = std::backtrace::Backtrace::force_capture();
    eprintln!("alloc side={side:?} size={size}\n{backtrace}\n");
    IN_TRACE.with(|flag| flag.set(false));
}

// SAFETY: every method forwards to `System` with exactly the arguments it was given, so `System`'s
// guarantees (a block of at least `layout.size()` bytes aligned to `layout.align()`, or null) are
// this allocator's; counting touches only atomics and const-initialised thread-locals, neither of
// which allocates, and tracing (off unless asked) allocates only with a thread-local flag set
// that makes those nested calls skip counting and tracing, so it never recurses.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), which is
        // `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller guarantees `new_size` is
        // valid for `layout.align()`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_subtract_per_side() {
        let earlier = Counts { allocations: [1, 2, 3], bytes: [10, 20, 30] };
        let later = Counts { allocations: [1, 5, 4], bytes: [10, 80, 31] };
        let delta = later.since(&earlier);
        assert_eq!(delta.allocations(Side::Client), 3);
        assert_eq!(delta.bytes(Side::Client), 60);
        assert_eq!(delta.allocations(Side::Server), 1);
        assert_eq!(delta.allocations(Side::Other), 0);
    }
}
