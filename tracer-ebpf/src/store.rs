//! Storing what a hit found: counts by key in the counts map of the current epoch, stacks by
//! hash in the `STACKS` map.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use tracer_common::{AllocKey, NO_STACK, UserStack};
use tracer_ebpf::StackWalk;

use crate::{
    maps::{COUNTS, COUNTS_ALT, EPOCH, STACKS},
    stats::bump_by,
};

/// `-EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST`: another CPU inserted the key first.
const EEXIST: i32 = 17;
/// A missing map slot: the kernel's convention for a failed lookup.
const ENOENT: i32 = 2;

/// The counts map of the current epoch.
#[inline(always)]
fn counts_map() -> &'static PerCpuHashMap<AllocKey, u64> {
    // A missing slot cannot happen (index 0 of an array); it reads as epoch 0.
    if EPOCH.get(0).copied() == Some(1) {
        &COUNTS_ALT
    } else {
        &COUNTS
    }
}

/// Adds `weight` to the key's count in the counts map of the current epoch.
pub fn increment(key: &AllocKey, weight: u64) -> Result<(), i32> {
    increment_in(counts_map(), key, weight)
}

fn increment_in(counts: &PerCpuHashMap<AllocKey, u64>, key: &AllocKey, weight: u64) -> Result<(), i32> {
    if let Some(count) = counts.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump_by(count, weight) };
        return Ok(());
    }
    match counts.insert(key, weight, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another run created the key between the lookup and the insert: its per-CPU slots
        // start at zero, so this CPU's slot can be incremented now.
        Err(e) if e == -EEXIST => {
            let count = counts.get_ptr_mut(key).ok_or(-ENOENT)?;
            // SAFETY: as above.
            unsafe { bump_by(count, weight) };
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The key under which the stack just walked into `scratch` is in [`STACKS`], storing it if
/// it is new; [`NO_STACK`] when it cannot be stored.
///
/// Another run of a probe on this CPU (possible on kernels that preempt uprobe programs) may
/// have overwritten the scratch slot since the walk began: then the slot's generation moved
/// on, and the stack is not stored. The check is cheap but not complete (a run preempted
/// before this walk may write the slot again after it, and the claim is not atomic): user
/// space checks each stored stack against its hash before using it (`Probes::stack`).
pub fn store_stack(walk: StackWalk, scratch: &UserStack) -> u64 {
    let hash = walk.hash;
    if STACKS.get_ptr(hash).is_some() {
        return hash;
    }
    // Checked by generation here, and by content in user space, rather than by hashing the
    // frames again: a loop over `frames[..len]` made older verifiers (Debian's 6.1 arm64
    // kernel, `cargo xtask arm64`) lose the bound of the pointer, and a loop over the constant
    // depth made the sampling programs exceed the verifier's million-instruction budget.
    if scratch.generation != walk.generation {
        return NO_STACK;
    }
    match STACKS.insert(hash, scratch, u64::from(BPF_NOEXIST)) {
        // EEXIST: another CPU stored the same stack first.
        Ok(()) => hash,
        Err(e) if e == -EEXIST => hash,
        Err(_) => NO_STACK,
    }
}
