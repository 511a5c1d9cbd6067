//! What both stack walkers share.
//!
//! At the probe (after the stack check, before the probed function saved its frame pointer)
//! the frame-pointer register still holds the caller's frame. Each frame record on the chain
//! is two words: the caller's frame pointer, then the return address into the caller (Go's
//! layout on amd64 and arm64). Frames sit at increasing addresses.

use tracer_common::{MAX_STACK_DEPTH, UserStack};

/// Reads the traced process's memory: in the probes, the `bpf_probe_read_user` helper, which
/// fails cleanly on an address it cannot read; in the tests, a fake stack.
pub trait UserMemory {
    /// Copies `into.len()` bytes from the user address `at`.
    ///
    /// # Errors
    /// The helper's error (a negative errno), with `into` in an unknown state, when the bytes
    /// cannot be read. (A `Result` like the helper's rather than a `bool`: the callers test it
    /// as the probes always did, which keeps the branches, and so the verifier's walk through
    /// them, as they were.)
    fn read(&self, at: u64, into: &mut [u8]) -> Result<(), i32>;
}

/// A read of user memory never crosses a boundary of this size above its start: the page the
/// start is in is mapped, the next one need not be (a goroutine stack near the end of the heap's
/// mapped memory). A read that faults costs a page-fault exception, microseconds, and then
/// nothing is copied at all. 4 KiB is the smallest page size of `x86_64` and arm64.
pub const STACK_PAGE_BYTES: u64 = 4096;

/// A stack walked into the scratch slot: its hash (the key in the `STACKS` map), and the slot's
/// generation the walk claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackWalk {
    pub hash: u64,
    pub generation: u64,
}

/// How many frames a walk takes: the configured depth (`ProbeConfig::max_stack_depth`), at
/// most [`MAX_STACK_DEPTH`]; 0 means [`MAX_STACK_DEPTH`].
#[inline(always)]
#[must_use]
pub fn walk_depth(configured: u32) -> u32 {
    let max_depth = u32::try_from(MAX_STACK_DEPTH).unwrap_or(u32::MAX);
    if configured == 0 {
        max_depth
    } else {
        configured.min(max_depth)
    }
}

/// Claims the scratch slot `out` for a walk: a run that preempts this one on the same CPU
/// claims it again. Returns the claimed generation.
///
/// # Safety
/// `out` must point to a `UserStack` that is valid for the call (the caller's scratch slot,
/// valid for the run of the program).
#[inline(always)]
pub unsafe fn claim(out: *mut UserStack) -> u64 {
    // SAFETY: as promised by the caller.
    unsafe {
        let generation = (*out).generation.wrapping_add(1);
        (*out).generation = generation;
        generation
    }
}
