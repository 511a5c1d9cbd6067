//! What each hit did, counted per CPU in the `STATS` map, and the atomic add that counts.

use crate::maps::STATS;

/// What happened to one hit, for [`STATS`].
#[derive(Clone, Copy)]
pub enum Outcome {
    Recorded,
    RecordedWithoutStack,
    Nested,
    ZeroSize,
    NoReturnAddress,
    CountsMapRefused,
    SpanUnreadable,
}

/// Adds a hit's outcome to this CPU's [`STATS`] (user space adds the outcomes up into the hits:
/// `ProbeStats::with_outcome_hits`).
pub fn account(outcome: Outcome) -> Result<u32, u32> {
    let stats = STATS.get_ptr_mut(0).ok_or(0_u32)?;
    // SAFETY: this CPU's slot of the per-CPU array, valid for the whole run.
    unsafe {
        bump(match outcome {
            Outcome::Recorded => &raw mut (*stats).recorded,
            Outcome::RecordedWithoutStack => {
                bump(&raw mut (*stats).recorded);
                &raw mut (*stats).without_stack
            }
            Outcome::Nested => &raw mut (*stats).nested,
            Outcome::ZeroSize => &raw mut (*stats).zero_size,
            Outcome::NoReturnAddress => &raw mut (*stats).dropped_return_address,
            Outcome::CountsMapRefused => &raw mut (*stats).dropped_counts_map,
            Outcome::SpanUnreadable => &raw mut (*stats).dropped_span_read,
        });
    }
    Ok(0)
}

/// Adds `n` to a counter in map memory.
///
/// Atomically: uprobe programs run with migration disabled but, on preemptible kernels, not
/// with preemption disabled (`bpf_prog_run_array_uprobe`), so another task on this CPU can run
/// the same program in the middle of an update even on a per-CPU slot. The result is unused,
/// so this is the plain atomic add of the BPF instruction set.
///
/// # Safety
/// `counter` must point into map memory that stays valid for the run of the program.
pub unsafe fn bump(counter: *mut u64) {
    // SAFETY: as promised by the caller.
    unsafe { bump_by(counter, 1) }
}

/// [`bump`] by `n`.
///
/// # Safety
/// As for [`bump`].
pub unsafe fn bump_by(counter: *mut u64, n: u64) {
    // The bpf target declares no atomics to `core` (it has no compare-and-swap before v3), so
    // `AtomicU64` is missing there; the intrinsic lowers to BPF's atomic add all the same.
    // SAFETY: the caller promises a valid, aligned u64 in map memory.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, n);
    }
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
}
