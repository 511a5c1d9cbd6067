//! The probes' side of the stack walkers (`tracer_ebpf::window` and `tracer_ebpf::paged`):
//! the reads of user memory, the per-CPU map slots the copies live in, and the registers the
//! walks start from.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_buf},
    programs::ProbeContext,
};
use tracer_common::UserStack;
use tracer_ebpf::{
    StackWalk, UserMemory,
    frames::{STACK_PAGE_BYTES, walk_depth},
    paged::{PAGE_WORDS, PagedStack, WalkState},
    window::{Goroutine, StackWindow},
};

use crate::{
    maps::{GOROUTINES, STACK_PAGE, STACK_SCRATCH},
    regs,
};

/// The traced process's memory, read with `bpf_probe_read_user`.
pub struct ProbeRead;

impl UserMemory for ProbeRead {
    #[inline(always)]
    fn read(&self, at: u64, into: &mut [u8]) -> Result<(), i32> {
        // SAFETY: the helper checks the user address and fails cleanly.
        unsafe { bpf_probe_read_user_buf(at as *const u8, into) }
    }
}

/// The current goroutine's slot in [`GOROUTINES`].
#[inline(always)]
pub fn goroutine_slot(ctx: &ProbeContext) -> Option<&'static mut Goroutine> {
    let g = regs::current_goroutine(ctx);
    let slot = GOROUTINES.get_ptr_mut(Goroutine::slot_index(g))?;
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    Some(unsafe { &mut *slot })
}

/// The top (`hi`) of the goroutine stack `sp` is on, remembered in `slot` or read from `g`.
#[inline(always)]
fn stack_top(ctx: &ProbeContext, sp: u64, slot: &mut Goroutine) -> Option<u64> {
    let g = regs::current_goroutine(ctx);
    if slot.g == g && sp >= slot.lo && sp < slot.hi {
        return Some(slot.hi);
    }
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let [lo, hi] = unsafe { bpf_probe_read_user(g as *const [u64; 2]) }.ok()?;
    if sp < lo || sp >= hi {
        return None;
    }
    slot.g = g;
    slot.lo = lo;
    slot.hi = hi;
    Some(hi)
}

/// Copies the live stack into `window`, from the stack pointer up to the goroutine's stack top
/// (at most `WINDOW_BYTES`), or to the end of the stack pointer's page when the top is unknown;
/// returns the return address into the caller (see [`regs::caller_return_address`]).
#[inline(always)]
pub fn load_window(window: &mut StackWindow, ctx: &ProbeContext, slot: &mut Goroutine) -> Option<u64> {
    let sp = regs::stack_pointer(ctx);
    let from = sp - regs::CALLER_RECORD_BELOW_SP;
    let to_page_end = STACK_PAGE_BYTES - from % STACK_PAGE_BYTES;
    let copied = match stack_top(ctx, sp, slot) {
        Some(hi) if window.copy(&ProbeRead, from, hi - from) => true,
        Some(_) => {
            // A stale `hi` (see GOROUTINES): forget it, so that the next allocation reads
            // `g.stack` again rather than fault again.
            slot.g = 0;
            window.copy(&ProbeRead, from, to_page_end)
        }
        None => window.copy(&ProbeRead, from, to_page_end),
    };
    // On amd64 the window starts at the stack pointer, where CALL left the return address.
    if regs::RETURN_ADDRESS_AT_SP && copied {
        return Some(window.words[0]);
    }
    regs::caller_return_address(ctx)
}

/// Copies the top of the stack into [`STACK_PAGE`] for `pages`, and returns the return address
/// into the caller: on amd64 at the stack pointer, where `CALL` left it; on arm64 in the link
/// register, which the frame set-up saves only after the probe.
#[inline(always)]
pub fn load_pages(pages: &mut PagedStack, ctx: &ProbeContext) -> Option<u64> {
    let sp = regs::stack_pointer(ctx);
    let copied = copy_top(pages, sp);
    // With the early return, as the probes always had it: returning the `Option` itself lays
    // the branches out in another order, and the verifier then prunes less (1.4k → 2.8k
    // processed instructions per sampling program).
    let return_address = match copied {
        Some(words) if regs::RETURN_ADDRESS_AT_SP => words[0],
        _ => regs::return_address(ctx, sp)?,
    };
    Some(return_address)
}

/// [`PagedStack::load_top`] into this CPU's [`STACK_PAGE`].
#[inline(always)]
fn copy_top(pages: &mut PagedStack, sp: u64) -> Option<&'static [u64; PAGE_WORDS]> {
    let page = STACK_PAGE.get_ptr_mut(0)?;
    // SAFETY: this CPU's page, valid for the run of the program.
    pages.load_top(unsafe { &mut *page }, &ProbeRead, sp)
}

/// The sampling programs' walk of Go's frame-pointer chain, as exact mode's `walk_window`
/// but from a short first copy: records beyond it are read a page at a time ([`PagedStack`]),
/// since their stacks are deep (a refill happens inside `mallocgc`,
/// under the allocating code's own frames), and the steps run in `bpf_loop`: the verifier
/// checks the step once, where the loop of `MAX_STACK_DEPTH` steps, each with a read that
/// may fail, took these programs past its budget of a million instructions. (The kernel
/// inlines `bpf_loop` into a plain loop with a direct call, `inline_bpf_loop`.)
#[inline(always)]
pub fn walk_stack_paged(
    ctx: &ProbeContext,
    depth: u32,
    pages: PagedStack,
    out: *mut UserStack,
    generation: u64,
) -> StackWalk {
    let depth = walk_depth(depth);
    let (fp, pc) = regs::frame_pointer_and_pc(ctx);
    // SAFETY: the caller's scratch slot, valid for the run of the program.
    let mut walk = WalkState::start(fp, pc, pages, unsafe { &mut *out });
    // SAFETY: bpf_loop calls `walk_step` with `walk`, which outlives the call.
    unsafe {
        bpf_loop(depth - 1, walk_step as *mut c_void, (&raw mut walk).cast::<c_void>(), 0);
    }
    StackWalk {
        hash: walk.hash(),
        generation,
    }
}

/// [`WalkState::step`] as a `bpf_loop` callback: returns 0 to go on, 1 when the walk is over.
#[inline(never)]
extern "C" fn walk_step(_index: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes walk_stack_paged's state, which lives until bpf_loop returns.
    let walk = unsafe { &mut *state.cast::<WalkState>() };
    let Some(out) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    let page = || STACK_PAGE.get_ptr_mut(0).map(|page| unsafe { &mut *page });
    // SAFETY: as above.
    i64::from(!walk.step(page, &ProbeRead, unsafe { &mut *out }))
}
