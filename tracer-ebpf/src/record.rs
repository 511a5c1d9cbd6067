//! The sampling programs (`go_sample`, `span_refill`, `large_alloc`): each hit records a key
//! like exact mode's, with a weight, and walks the stack a page at a time (`walker.rs`).

use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};
use tracer_common::{AllocKey, CacheClass, NO_STACK, NUM_SPAN_CLASSES, ProbeConfig, SIZE_IS_SPAN_CLASS};
use tracer_ebpf::{frames::claim, paged::PagedStack};

use crate::{
    inuse::note_sample,
    maps::{CONFIG, COUNTS, COUNTS_ALT, EPOCH, LAST_REFILL, SAMPLER_RATE, STACK_SCRATCH, paused},
    regs::go_int_arg,
    release::objects_taken,
    stats::{Outcome, account, bump_by},
    store::{increment, store_stack},
    walker::{load_pages, walk_stack_paged},
};

/// Which function a sampling probe sits on.
#[derive(Clone, Copy)]
pub enum Source {
    ProfileAlloc,
    Refill,
    LargeAlloc,
}

/// What a sampling probe records: the size field of the key and the weight to add.
struct Sample {
    size: u64,
    weight: u64,
}

/// Records one hit of a sampling probe. Inlined into each program so that `source` is a
/// constant there: otherwise LLVM turns the register reads into one load at a computed offset
/// from the context pointer, which the verifier refuses ("dereference of modified ctx ptr").
#[inline(always)]
pub fn try_record(ctx: &ProbeContext, source: Source) -> Result<u32, u32> {
    if paused() {
        return Ok(0);
    }
    account(record(ctx, source))
}

// Inlined, like the readers below: BPF-to-BPF calls cannot return a struct.
#[inline(always)]
fn record(ctx: &ProbeContext, source: Source) -> Outcome {
    let Some(config) = CONFIG.get(0) else {
        return Outcome::CountsMapRefused;
    };
    let rate = if matches!(source, Source::ProfileAlloc) {
        note_sampler_rate(config)
    } else {
        0
    };
    let sample = match source {
        Source::ProfileAlloc => Some(sample_of_profilealloc(ctx)),
        Source::Refill => sample_of_refill(ctx, config),
        Source::LargeAlloc => Some(sample_of_large_alloc(ctx)),
    };
    let Some(Sample { size, weight }) = sample else {
        return Outcome::SpanUnreadable;
    };
    // For a refill: the P's cache and the class whose span it replaces.
    let refilled = matches!(source, Source::Refill).then(|| CacheClass {
        mcache: go_int_arg::<0>(ctx),
        span_class: size & !SIZE_IS_SPAN_CLASS,
    });
    // A refill that hands out nothing (the P's placeholder `emptymspan` was "used up") still
    // brings a span in, which releaseAll may later charge to it.
    if weight == 0 && refilled.is_none() {
        return Outcome::ZeroSize;
    }
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return Outcome::CountsMapRefused;
    };
    // Claimed before the stack is copied into STACK_PAGE: a run that preempts this one and
    // copies its own stack there claims the slot after, and this walk's stack is not stored.
    // (The slot stays a raw pointer through the walk: the bpf_loop step writes it too.)
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    let generation = unsafe { claim(scratch) };
    let mut pages = PagedStack::EMPTY;
    let walked = load_pages(&mut pages, ctx).map(|return_address| {
        let walk = walk_stack_paged(ctx, config.max_stack_depth, pages, scratch, generation);
        (return_address, walk)
    });
    let Some((return_address, walk)) = walked else {
        if let Some(class) = refilled {
            // The span brought in now has no known owner: its leftovers go unattributed
            // rather than to whoever brought in the previous one.
            let _ = LAST_REFILL.remove(class);
        }
        return Outcome::NoReturnAddress;
    };
    let mut key = AllocKey {
        stack: walk.hash,
        return_address,
        type_address: 0,
        size,
    };
    // As in exact mode, a key counted before in this interval has its stack in STACKS already:
    // its count is found with one lookup, and STACKS is not looked at. Each lookup in a big
    // map is a cache miss or two in a target that keeps the caches busy (a third of the
    // refill program's time went to `lookup_nulls_elem_raw`, `perf record` on the HTTP
    // workload). One call site per map, as in `count`.
    let counted = if EPOCH.get(0).copied() == Some(1) {
        COUNTS_ALT.get_ptr_mut(key)
    } else {
        COUNTS.get_ptr_mut(key)
    };
    if counted.is_none() {
        // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
        key.stack = store_stack(walk, unsafe { &*scratch });
    }
    // In-use tracking, when user space configured it: the object `x` waits for its special.
    if matches!(source, Source::ProfileAlloc) && config.special_profile_kind != 0 {
        note_sample(key, go_int_arg::<1>(ctx), rate);
    }
    // Who brought the used-up span in, for refills: its objects were taken between that
    // allocation and this one.
    let mut started_by = None;
    if let Some(class) = refilled {
        // Updated in place: an entry exists for every (P, class) after its first refill, and
        // rewriting it costs a lookup where an insert would allocate. No other run of this
        // probe touches the same entry meanwhile: an mcache belongs to one P, and the P stays
        // with the thread that is in `refill`.
        match LAST_REFILL.get_ptr_mut(class) {
            Some(slot) => {
                // SAFETY: the map's value for this key, valid for the run of the program.
                unsafe {
                    started_by = Some(*slot);
                    *slot = key;
                }
            }
            // A full map (more than LAST_REFILL_MAP_ENTRIES Ps × classes) leaves this span's
            // leftovers unattributed; nothing else is lost.
            None => {
                let _ = LAST_REFILL.insert(class, key, 0);
            }
        }
    }
    if weight == 0 {
        return Outcome::ZeroSize;
    }
    // A span used by one callsite is started and finished by it. One started by another
    // callsite was shared at some point unknown here: half to each is the unbiased guess,
    // where charging all of it to the one that finished it would favour whoever allocates
    // right after a switch (a periodic program would see the same callsite win every time).
    let weight = match started_by {
        Some(starter) if starter != key => {
            let half = weight / 2;
            if half > 0 && increment(&starter, half).is_err() {
                return Outcome::CountsMapRefused;
            }
            weight - half
        }
        _ => weight,
    };
    if let Some(count) = counted {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump_by(count, weight) };
        return Outcome::Recorded;
    }
    match increment(&key, weight) {
        Ok(()) if key.stack == NO_STACK => Outcome::RecordedWithoutStack,
        Ok(()) => Outcome::Recorded,
        Err(_) => Outcome::CountsMapRefused,
    }
}

#[inline(always)]
fn sample_of_profilealloc(ctx: &ProbeContext) -> Sample {
    Sample {
        size: go_int_arg::<2>(ctx),
        weight: 1,
    }
}

#[inline(always)]
fn sample_of_large_alloc(ctx: &ProbeContext) -> Sample {
    Sample {
        size: go_int_arg::<1>(ctx),
        weight: 1,
    }
}

#[inline(always)]
fn sample_of_refill(ctx: &ProbeContext, config: &ProbeConfig) -> Option<Sample> {
    let mcache = go_int_arg::<0>(ctx);
    // spanClass is a uint8: Go's register ABI leaves the upper bits of its register undefined.
    let span_class = go_int_arg::<1>(ctx) & 0xff;
    if span_class >= NUM_SPAN_CLASSES {
        return None;
    }
    Some(Sample {
        size: SIZE_IS_SPAN_CLASS | span_class,
        weight: objects_taken(mcache, span_class, config)?,
    })
}

/// Copies the target's `runtime.MemProfileRate` into [`SAMPLER_RATE`]: the rate this sample was
/// taken at, which user space scales by. One read of user memory per sample, and go-sampler's
/// samples are rare (one per `MemProfileRate` bytes).
/// Returns the rate, 0 when unknown.
#[inline(always)]
fn note_sampler_rate(config: &ProbeConfig) -> u64 {
    if config.mem_profile_rate_address == 0 {
        return 0;
    }
    // SAFETY: a read of the target's memory through the helper, which fails rather than faults.
    let Ok(rate) = (unsafe { bpf_probe_read_user(config.mem_profile_rate_address as *const u64) }) else {
        return 0;
    };
    if let Some(slot) = SAMPLER_RATE.get_ptr_mut(0) {
        // SAFETY: the map's one slot, valid for the run of the program; a racing store from
        // another CPU writes the same rate, or a newer one.
        unsafe { *slot = rate };
    }
    rate
}
