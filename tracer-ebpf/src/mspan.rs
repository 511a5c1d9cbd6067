//! Span-refill mode's reading of the runtime's spans (`runtime.mspan`, `runtime.mcache`).

use tracer_common::NUM_SPAN_CLASSES;

/// [`NUM_SPAN_CLASSES`] as a length.
#[expect(clippy::cast_possible_truncation, reason = "136")]
pub const SPAN_CLASSES: usize = NUM_SPAN_CLASSES as usize;

/// A copy of `mcache.alloc`: the cached span of each span class.
#[repr(C)]
#[derive(Debug)]
pub struct CachedSpans {
    pub words: [u64; SPAN_CLASSES],
}

/// `allocCount - allocCountBeforeCache` of an `mspan`, given the byte offsets of the two
/// fields (`ProbeConfig::span_alloc_count_offset` and
/// `ProbeConfig::span_alloc_count_before_cache_offset`) and `read_u64`, which reads the 8
/// bytes at an offset into the span.
///
/// Both are `uint16`s 6 bytes apart in every release gotrace knows (`src/runtime/mheap.go`), so
/// one 8-byte read covers both: each read of user memory costs ~150 ns here.
#[inline(always)]
#[must_use]
pub fn objects_taken_from(count_at: u32, before_at: u32, mut read_u64: impl FnMut(u32) -> Option<u64>) -> Option<u64> {
    let first = count_at.min(before_at);
    let last = count_at.max(before_at);
    let (alloc_count, before_cache) = if last - first <= 6 {
        // Little-endian on amd64 and arm64: the field at `first + n` is `n` bytes up.
        let word = read_u64(first)?;
        let field = |offset: u32| (word >> ((offset - first) * 8)) & 0xffff;
        (field(count_at), field(before_at))
    } else {
        (read_u64(count_at)? & 0xffff, read_u64(before_at)? & 0xffff)
    };
    Some(alloc_count.saturating_sub(before_cache))
}
