//! Span-refill mode's reads of the runtime's spans, and `span_release`, on
//! `runtime.(*mcache).releaseAll`, which charges the partly used spans a P hands back to the
//! refills that brought them in.

use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};
use tracer_common::{CacheClass, NUM_SPAN_CLASSES, ProbeConfig};
use tracer_ebpf::{
    UserMemory,
    mspan::{SPAN_CLASSES, objects_taken_from},
};

use crate::{
    maps::{CACHED_SPANS, CONFIG, LAST_REFILL, STATS, paused},
    regs::go_int_arg,
    stats::{Outcome, account, bump, bump_by},
    store::increment,
    walker::ProbeRead,
};

pub fn try_span_release(ctx: &ProbeContext) -> Result<u32, u32> {
    if paused() {
        return Ok(0);
    }
    let config = CONFIG.get(0).ok_or(0_u32)?;
    let stats = STATS.get_ptr_mut(0).ok_or(0_u32)?;
    let spans = CACHED_SPANS.get_ptr_mut(0).ok_or(0_u32)?;
    let mcache = go_int_arg::<0>(ctx);
    // `mcache.alloc`, all span classes in one read rather than one read per class.
    let alloc = mcache.wrapping_add(u64::from(config.mcache_alloc_offset));
    // SAFETY: this CPU's slot, valid for the run of the program; the helper checks the user
    // address and fails cleanly.
    let copied = unsafe {
        let bytes = core::slice::from_raw_parts_mut((*spans).words.as_mut_ptr().cast::<u8>(), SPAN_CLASSES * 8);
        ProbeRead.read(alloc, bytes)
    };
    if copied.is_err() {
        return account(Outcome::SpanUnreadable);
    }
    // A span is cached in one class of one P at a time, so a pointer seen twice is the
    // runtime's placeholder `emptymspan` (uncached classes point at it, `src/runtime/mcache.go`),
    // which has nothing to count: remembering the last span that had nothing taken skips most
    // of the placeholder's reads.
    let mut idle_span = 0;
    for span_class in 0..NUM_SPAN_CLASSES {
        // SAFETY: as above; span_class < NUM_SPAN_CLASSES, the words' length.
        let span = unsafe { (*spans).words[usize::try_from(span_class).unwrap_or(0)] };
        if span == idle_span {
            continue;
        }
        let Some(used) = span_objects_taken(span, config) else {
            continue;
        };
        if used == 0 {
            idle_span = span;
            continue;
        }
        let class = CacheClass { mcache, span_class };
        // SAFETY: a value of the map, copied out at once.
        let key = unsafe { LAST_REFILL.get(class) }.copied();
        // SAFETY: this CPU's slot of the per-CPU array, valid for the whole run.
        unsafe {
            match key {
                Some(key) if increment(&key, used).is_ok() => {}
                Some(_) => bump_by(&raw mut (*stats).dropped_counts_map, used),
                None => bump_by(&raw mut (*stats).unattributed_release, used),
            }
        }
    }
    // SAFETY: as above.
    unsafe { bump(&raw mut (*stats).hits) };
    Ok(0)
}

/// The objects the cache `mcache` took from its current span of `span_class` since that span
/// was cached: `allocCount - allocCountBeforeCache`, as `refill` and `releaseAll` compute it.
#[inline(always)]
pub fn objects_taken(mcache: u64, span_class: u64, config: &ProbeConfig) -> Option<u64> {
    let slot = mcache
        .checked_add(u64::from(config.mcache_alloc_offset))?
        .checked_add(span_class * 8)?;
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly on a bad one.
    let span: u64 = unsafe { bpf_probe_read_user(slot as *const u64) }.ok()?;
    span_objects_taken(span, config)
}

/// `allocCount - allocCountBeforeCache` of the `mspan` at `span` ([`objects_taken_from`]).
#[inline(always)]
fn span_objects_taken(span: u64, config: &ProbeConfig) -> Option<u64> {
    objects_taken_from(
        config.span_alloc_count_offset,
        config.span_alloc_count_before_cache_offset,
        |offset: u32| -> Option<u64> {
            let at = span.checked_add(u64::from(offset))?;
            // SAFETY: bpf_probe_read_user checks the user address and fails cleanly on a bad one.
            unsafe { bpf_probe_read_user(at as *const u64) }.ok()
        },
    )
}
