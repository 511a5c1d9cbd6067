//! Exact mode: `alloc_count`, on every counting allocation entry point, counts each allocation
//! by (stack, caller, type, size) in the counts map of the current epoch.

use aya_ebpf::programs::ProbeContext;
use tracer_common::{AllocKey, FLAG_SKIP_ZERO_SIZE, NO_STACK, ProbeConfig};
use tracer_ebpf::{
    is_nested,
    window::{StackWindow, replay_walk, walk_window},
};

use crate::{
    maps::{CONFIG, COUNTS, COUNTS_ALT, EPOCH, STACK_WINDOW},
    regs,
    stats::{Outcome, account, bump},
    store::{increment, store_stack},
    walker::{ProbeRead, goroutine_slot, load_window},
};

pub fn try_alloc_count(ctx: &ProbeContext) -> Result<u32, u32> {
    account(count(ctx))
}

fn count(ctx: &ProbeContext) -> Outcome {
    // Index 0 of an array map always exists; this cannot fail.
    let Some(config) = CONFIG.get(0) else {
        return Outcome::CountsMapRefused;
    };
    let (size, type_address) = regs::go_size_and_type(ctx);
    if size == 0 && config.flags & FLAG_SKIP_ZERO_SIZE != 0 {
        return Outcome::ZeroSize;
    }
    let Some(window) = STACK_WINDOW.get_ptr_mut(0) else {
        return Outcome::CountsMapRefused;
    };
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    let window = unsafe { &mut *window };
    // The window and the goroutine slots serve one walk at a time on a CPU. Uprobe programs run
    // with migration disabled but, on kernels that preempt, not with preemption disabled
    // (`bpf_prog_run_array_uprobe`), so a run can start while another on this CPU is inside
    // its walk: it leaves their state alone and counts its allocation by its caller only, as
    // when the stack map is full (`without_stack` in the report).
    if window.busy != 0 {
        return count_without_stack(ctx, config, size, type_address);
    }
    window.busy = 1;
    let outcome = count_with_stack(ctx, config, size, type_address, window);
    window.busy = 0;
    outcome
}

/// Counts an allocation by its caller, type and size, without its stack.
#[inline(always)]
fn count_without_stack(ctx: &ProbeContext, config: &ProbeConfig, size: u64, type_address: u64) -> Outcome {
    let Some(return_address) = regs::caller_return_address(ctx) else {
        return Outcome::NoReturnAddress;
    };
    if is_nested(config, return_address) {
        return Outcome::Nested;
    }
    let key = AllocKey {
        stack: NO_STACK,
        return_address,
        type_address,
        size,
    };
    match increment(&key, 1) {
        Ok(()) => Outcome::RecordedWithoutStack,
        Err(_) => Outcome::CountsMapRefused,
    }
}

/// Counts an allocation with its stack, walked (or replayed) in `window`, which this run holds.
#[inline(always)]
fn count_with_stack(
    ctx: &ProbeContext,
    config: &ProbeConfig,
    size: u64,
    type_address: u64,
    window: &mut StackWindow,
) -> Outcome {
    let Some(slot) = goroutine_slot(ctx) else {
        return Outcome::CountsMapRefused;
    };
    let Some(return_address) = load_window(window, ctx, slot) else {
        return Outcome::NoReturnAddress;
    };
    if is_nested(config, return_address) {
        return Outcome::Nested;
    }
    let start = regs::frame_pointer_and_pc(ctx);
    let walk = match replay_walk(window, slot, start) {
        Some(walk) => walk,
        None => walk_window(window, slot, &ProbeRead, start, config.max_stack_depth),
    };
    let mut key = AllocKey {
        stack: walk.hash,
        return_address,
        type_address,
        size,
    };
    // The common case, a key seen before in this interval, costs one lookup: its stack went
    // into STACKS when the key was created. (If user space emptied STACKS since, before it
    // read the stack, the key's counts of this interval come out without a stack; the next
    // interval's map starts empty and stores it again.)
    // One call site per map (not one call on a map chosen at run time): the verifier inlines
    // a lookup only where the map is known (`htab_percpu_map_gen_lookup`), sparing the
    // helper's indirect call.
    let found = if EPOCH.get(0).copied() == Some(1) {
        COUNTS_ALT.get_ptr_mut(key)
    } else {
        COUNTS.get_ptr_mut(key)
    };
    if let Some(count) = found {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump(count) };
        return Outcome::Recorded;
    }
    key.stack = store_stack(walk, &slot.stack);
    match increment(&key, 1) {
        Ok(()) if key.stack == NO_STACK => Outcome::RecordedWithoutStack,
        Ok(()) => Outcome::Recorded,
        Err(_) => Outcome::CountsMapRefused,
    }
}
