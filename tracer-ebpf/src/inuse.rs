//! In-use heap (go-sampler mode): each of Go's heap-profile samples is followed from its
//! allocation to its death, by address.
//!
//! The runtime samples an object in `profilealloc(mp, x, size)`, then gives it a profile
//! special in `setprofilebucket(x, b)` (`mProf_Malloc`, `src/runtime/mprof.go`); when a sweep
//! finds the object dead it frees that special with `freeSpecial(s, x, size)`
//! (`src/runtime/mgcsweep.go`, `src/runtime/mheap.go`). Objects without a special die with no
//! call at all, which is why only sampled objects can be followed. So:
//!
//! - `go_sample` notes the key it recorded and `x` under its thread ([`note_sample`]);
//! - `inuse_bucket` moves that note into `LIVE` under `x` once the special exists (from Go 1.23
//!   `mProf_Malloc` may return without one: then nothing is tracked, as nothing will be freed);
//! - `inuse_free` removes `x` from `LIVE` when a profile special is freed.
//!
//! What is in `LIVE` is, per key, the sampled objects alive now; user space scales them as it
//! scales allocations.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user};
use aya_ebpf::programs::ProbeContext;
use tracer_common::{AllocKey, GC_TIMES_SLOTS, InuseStats, LiveObject, PendingSample};

use crate::{
    maps::{CONFIG, GC_TIMES, INUSE_STATS, LIVE, PENDING},
    regs::go_int_arg,
    stats::bump,
};

/// The calling thread's id (the low half of `bpf_get_current_pid_tgid`).
#[inline(always)]
fn thread_id() -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "the thread id is the low 32 bits")]
    let tid = bpf_get_current_pid_tgid() as u32;
    tid
}

/// What an in-use hit did, one field of [`InuseStats`] each.
#[derive(Clone, Copy)]
enum Event {
    Tracked,
    Unpaired,
    Replaced,
    DroppedFull,
    Freed,
    FreedUntracked,
    OtherSpecial,
    Unreadable,
}

/// Counts one event in this CPU's [`INUSE_STATS`].
#[inline(always)]
fn count(event: Event) {
    let Some(stats) = INUSE_STATS.get_ptr_mut(0) else {
        return;
    };
    let stats: *mut InuseStats = stats;
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    unsafe {
        bump(match event {
            Event::Tracked => &raw mut (*stats).tracked,
            Event::Unpaired => &raw mut (*stats).unpaired,
            Event::Replaced => &raw mut (*stats).replaced,
            Event::DroppedFull => &raw mut (*stats).dropped_full,
            Event::Freed => &raw mut (*stats).freed,
            Event::FreedUntracked => &raw mut (*stats).freed_untracked,
            Event::OtherSpecial => &raw mut (*stats).other_specials,
            Event::Unreadable => &raw mut (*stats).unreadable,
        });
    }
}

/// Called by `go_sample` once its key is final: the sample at `address` waits under this
/// thread for its `setprofilebucket`. `rate` is `MemProfileRate` as the probe read it (0:
/// unknown).
#[inline(always)]
pub fn note_sample(key: AllocKey, address: u64, rate: u64) {
    let pending = PendingSample {
        address,
        object: LiveObject {
            key,
            bucket: 0,
            rate,
            // SAFETY: a helper with no arguments.
            sampled_ns: unsafe { bpf_ktime_get_ns() },
        },
    };
    // A full LRU map evicts its oldest entry; an error leaves this sample untracked, which
    // `inuse_bucket` counts as unpaired.
    let _ = PENDING.insert(thread_id(), pending, 0);
}

/// `runtime.setprofilebucket(p unsafe.Pointer, b *bucket)`.
pub fn try_inuse_bucket(ctx: &ProbeContext) -> Result<u32, u32> {
    let object = go_int_arg::<0>(ctx);
    let bucket = go_int_arg::<1>(ctx);
    let tid = thread_id();
    // SAFETY: the map's value, copied out at once.
    let pending = unsafe { PENDING.get(tid) }.copied();
    let _ = PENDING.remove(tid);
    let pending = pending.filter(|p| p.address == object).ok_or_else(|| {
        count(Event::Unpaired);
        0_u32
    })?;
    if LIVE.get_ptr(object).is_some() {
        count(Event::Replaced);
    }
    let live = LiveObject {
        bucket,
        ..pending.object
    };
    if LIVE.insert(object, live, 0).is_ok() {
        count(Event::Tracked);
    } else {
        count(Event::DroppedFull);
    }
    Ok(0)
}

/// `runtime.freeSpecial(s *special, p unsafe.Pointer, size uintptr)`.
pub fn try_inuse_free(ctx: &ProbeContext) -> Result<u32, u32> {
    // Index 0 of an array map always exists.
    let config = CONFIG.get(0).ok_or(0_u32)?;
    let special = go_int_arg::<0>(ctx);
    let object = go_int_arg::<1>(ctx);
    // SAFETY: a read of the target's memory through the helper, which fails rather than faults.
    let kind = unsafe { bpf_probe_read_user((special + u64::from(config.special_kind_offset)) as *const u8) };
    let Ok(kind) = kind else {
        count(Event::Unreadable);
        return Ok(0);
    };
    if u32::from(kind) != config.special_profile_kind {
        count(Event::OtherSpecial);
        return Ok(0);
    }
    if LIVE.remove(object).is_ok() {
        count(Event::Freed);
    } else {
        count(Event::FreedUntracked);
    }
    Ok(0)
}

/// `runtime.gcMarkTermination`: one GC cycle's marking ends (the world is stopped, so no two
/// runs overlap). Its time goes into the next slot of `GC_TIMES`, then the count.
pub fn try_inuse_gc(_ctx: &ProbeContext) -> Result<u32, u32> {
    let count = GC_TIMES.get_ptr_mut(0).ok_or(0_u32)?;
    // SAFETY: slot 0 of the array, valid for the run of the program.
    let n = unsafe { *count };
    let slot = 1 + (n % u64::from(GC_TIMES_SLOTS - 1));
    #[expect(clippy::cast_possible_truncation, reason = "below GC_TIMES_SLOTS")]
    let time = GC_TIMES.get_ptr_mut(slot as u32).ok_or(0_u32)?;
    // SAFETY: both are slots of the array, valid for the run of the program.
    unsafe {
        *time = bpf_ktime_get_ns();
        *count = n + 1;
    }
    Ok(0)
}
