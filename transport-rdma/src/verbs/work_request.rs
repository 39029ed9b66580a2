//! Work requests as the post verbs take them: zero-initialised send requests, and arrays of
//! requests and scatter/gather entries chained into the linked list `ibv_post_send` /
//! `ibv_post_recv` walk. The queue pair (`qp.rs`) builds them on the stack, one array per
//! doorbell, so posting allocates nothing.

use std::ptr::null_mut;

use rdma_mummy_sys::{ibv_recv_wr, ibv_send_wr, ibv_sge};

/// A send work request with every field zero (no opcode, no flags, no SGE, no next).
pub(super) fn zeroed_send_wr() -> ibv_send_wr {
    // SAFETY: `ibv_send_wr` is a C struct of integers, raw pointers and unions of those, for all
    // of which all-zero bytes are a valid value (null pointers, zero counts).
    unsafe { std::mem::zeroed() }
}

/// A work request the post verbs take as a linked list, with its scatter/gather list.
pub(super) trait Chained: Sized {
    fn chain(&mut self, next: *mut Self, sge: *mut ibv_sge);
}

impl Chained for ibv_send_wr {
    fn chain(&mut self, next: *mut Self, sge: *mut ibv_sge) {
        self.next = next;
        self.sg_list = sge;
    }
}

impl Chained for ibv_recv_wr {
    fn chain(&mut self, next: *mut Self, sge: *mut ibv_sge) {
        self.next = next;
        self.sg_list = sge;
    }
}

/// Chains `wrs` into the list the post verbs take (each `next` the following request, the last
/// null), points request `i` at `sges[i]` (used only when its `num_sge` is 1), and returns the
/// head of the list. The pointers stay valid while neither array moves or is borrowed again: link
/// right before posting, and post the returned head.
pub(super) fn link<W: Chained>(wrs: &mut [W], sges: &mut [ibv_sge]) -> *mut W {
    // Callers pass one SGE per request; a request past the SGEs would get none (null, and the
    // provider would reject `num_sge` 1 with it rather than read anything).
    let count = wrs.len();
    let base = wrs.as_mut_ptr();
    let sge_base = sges.as_mut_ptr();
    for i in 0..count {
        let sge = if i < sges.len() { sge_base.wrapping_add(i) } else { null_mut() };
        let next = if i + 1 < count { base.wrapping_add(i + 1) } else { null_mut() };
        // SAFETY: i < count, so `base + i` is an element of `wrs`. Every pointer stored (`next`,
        // `sge`) and the one written through come from one raw pointer per array, taken once, so
        // no later reference to either array invalidates them before the post.
        unsafe { (*base.add(i)).chain(next, sge) };
    }
    base
}
