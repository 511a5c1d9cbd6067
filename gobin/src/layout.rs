//! Where the span-refill probe finds what it reads in the runtime's own structures.
//!
//! On `runtime.(*mcache).refill(c, spc)` the span being given back is still cached in
//! `c.alloc[spc]`, and the objects the cache handed out from it are
//! `allocCount - allocCountBeforeCache` (refill's `slotsUsed`, `src/runtime/mcache.go`). The
//! probe reads `*(c + mcache_alloc + 8 * spc)` for the span, then its two counts.
//!
//! DWARF describes the structures exactly (`DW_TAG_member` with
//! `DW_AT_data_member_location`); binaries built with `-ldflags=-w` (or `-s -w`) fall back to
//! a table per Go release, itself checked against the DWARF of every fixture (amd64 and arm64
//! alike: both are 64-bit, and the structures have no architecture-dependent fields before
//! these members).

use std::collections::HashMap;

use serde::Serialize;

use crate::sizeclasses::{CLASS_TO_SIZE, NUM_SIZE_CLASSES};
use crate::version::GoVersion;

/// The DWARF name of the per-P allocation cache (`src/runtime/mcache.go`).
pub(crate) const MCACHE: &str = "runtime.mcache";
/// The DWARF name of a span (`src/runtime/mheap.go`).
pub(crate) const MSPAN: &str = "runtime.mspan";

/// Where a [`RuntimeLayout`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutSource {
    /// The binary's own DWARF.
    Dwarf,
    /// gotrace's table for the binary's Go release.
    VersionTable,
}

/// Byte offsets of the runtime structure members the span-refill probe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct RuntimeLayout {
    /// `alloc [numSpanClasses]*mspan` in `runtime.mcache`: the cached span of each span class.
    pub mcache_alloc: u32,
    /// `allocCount uint16` in `runtime.mspan`: objects allocated from the span.
    pub mspan_alloc_count: u32,
    /// `allocCountBeforeCache uint16` in `runtime.mspan`: `allocCount` when the span was
    /// cached, so the difference is what this cache handed out.
    pub mspan_alloc_count_before_cache: u32,
    /// `elemsize uintptr` in `runtime.mspan`: bytes per object.
    pub mspan_elemsize: u32,
    /// How gotrace knows.
    pub source: LayoutSource,
}

impl RuntimeLayout {
    /// The layout of a Go release's 64-bit runtime (amd64 and arm64 alike), from gotrace's
    /// table: `None` for a release it does not cover (before Go 1.21, or after 1.27).
    ///
    /// What moved them (`src/runtime/mcache.go`, `src/runtime/mheap.go`):
    /// - Go 1.22 shrank `mspan.freeindex` and `nelems` from `uintptr` to `uint16` and moved
    ///   `freeIndexForScan` next to them: the counts moved 8 bytes down;
    /// - Go 1.24 inserted `memProfRate int` before `alloc` in `mcache` (and made `nextSample`
    ///   an `int64`): `alloc` moved 8 bytes up.
    ///
    /// Go 1.25's new `mspan.scanIdx uint16` went into padding and moved nothing.
    #[must_use]
    pub fn from_version_table(version: GoVersion) -> Option<Self> {
        if version.major != 1 {
            return None;
        }
        let (mcache_alloc, mspan_alloc_count, mspan_alloc_count_before_cache, mspan_elemsize) = match version.minor {
            21 => (40, 104, 110, 112),
            22 | 23 => (40, 96, 102, 104),
            24..=27 => (48, 96, 102, 104),
            _ => return None,
        };
        Some(Self {
            mcache_alloc,
            mspan_alloc_count,
            mspan_alloc_count_before_cache,
            mspan_elemsize,
            source: LayoutSource::VersionTable,
        })
    }

    /// The layout from DWARF member offsets (see `DwarfInfo::struct_members`); `None` when a
    /// structure or member is missing or an offset is out of range.
    pub(crate) fn from_dwarf(structs: &HashMap<String, HashMap<String, u64>>) -> Option<Self> {
        let offset = |structure: &str, member: &str| -> Option<u32> {
            u32::try_from(*structs.get(structure)?.get(member)?).ok()
        };
        Some(Self {
            mcache_alloc: offset(MCACHE, "alloc")?,
            mspan_alloc_count: offset(MSPAN, "allocCount")?,
            mspan_alloc_count_before_cache: offset(MSPAN, "allocCountBeforeCache")?,
            mspan_elemsize: offset(MSPAN, "elemsize")?,
            source: LayoutSource::Dwarf,
        })
    }
}

/// The DWARF name of a special record (`src/runtime/mheap.go`).
pub(crate) const SPECIAL: &str = "runtime.special";

/// What the in-use probe on `runtime.freeSpecial(s *special, p, size)` reads to tell a profile
/// special (a sampled object dying) from the other kinds (finalizers, cleanups, weak handles,
/// ...), all of which the sweep frees through the same function.
///
/// `special` is `{_ NotInHeap; next *special; offset; kind byte}` (`src/runtime/mheap.go`):
/// `offset` was a `uint16` up to Go 1.23 and became a `uintptr` in 1.24, which moved `kind`
/// from byte 10 to byte 16. `_KindSpecialProfile` was 2 in 1.21–1.22, 3 once 1.23 put
/// `_KindSpecialWeakHandle` before it, and 4 once 1.25 put `_KindSpecialTinyBlock` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SpecialLayout {
    /// Byte offset of `kind` in `runtime.special`.
    pub kind_offset: u32,
    /// The value of `_KindSpecialProfile`.
    pub profile_kind: u8,
    /// Where the offset came from (the kind is always from the table: DWARF has no constants
    /// of the runtime's).
    pub source: LayoutSource,
}

impl SpecialLayout {
    /// The layout of a Go release from gotrace's table, checked against each release's
    /// `src/runtime/mheap.go`: `None` outside Go 1.21–1.27, where the kinds may have moved again.
    #[must_use]
    pub fn from_version_table(version: GoVersion) -> Option<Self> {
        if version.major != 1 {
            return None;
        }
        let (kind_offset, profile_kind) = match version.minor {
            21 | 22 => (10, 2),
            23 => (10, 3),
            24 => (16, 3),
            25..=27 => (16, 4),
            _ => return None,
        };
        Some(Self {
            kind_offset,
            profile_kind,
            source: LayoutSource::VersionTable,
        })
    }

    /// The table's layout with `kind`'s offset from DWARF member offsets, when they have it.
    pub(crate) fn with_dwarf(self, structs: &HashMap<String, HashMap<String, u64>>) -> Self {
        match structs
            .get(SPECIAL)
            .and_then(|members| members.get("kind"))
            .and_then(|&offset| u32::try_from(offset).ok())
        {
            Some(kind_offset) => Self {
                kind_offset,
                source: LayoutSource::Dwarf,
                ..self
            },
            None => self,
        }
    }
}

/// The DWARF name of the runtime's statistics (`src/runtime/mstats.go`), the type of
/// `runtime.memstats`.
pub(crate) const MSTATS: &str = "runtime.mstats";
/// The DWARF name of `mstats.heapStats`'s type: `stats [3]heapStatsDelta` first.
pub(crate) const CONSISTENT_HEAP_STATS: &str = "runtime.consistentHeapStats";
/// The DWARF name of one generation of the heap statistics.
pub(crate) const HEAP_STATS_DELTA: &str = "runtime.heapStatsDelta";
/// The symbol of the runtime's statistics.
pub(crate) const MEMSTATS_SYMBOL: &str = "runtime.memstats";

/// Where the runtime keeps its count of the heap allocations, which span mode's duty cycle
/// reads to know what share of them its probes saw.
///
/// `runtime.memstats.heapStats` is a `consistentHeapStats`: three generations of
/// `heapStatsDelta`, whose sum is the running total (`unsafeRead` in `src/runtime/mstats.go`
/// adds them up the same way). The counts move at exactly the events span mode's probes count:
/// `smallAllocCount[sizeclass]` grows by a span's used slots when `runtime.(*mcache).refill`
/// gives the span back and when `releaseAll` flushes the cache, and `largeAlloc` by the span's
/// bytes in `allocLarge` (`src/runtime/mcache.go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct HeapStatsLayout {
    /// Offset of the first `heapStatsDelta` in `runtime.mstats` (`heapStats.stats[0]`).
    pub generations: u32,
    /// Bytes per `heapStatsDelta`: the stride of the three generations.
    pub generation_size: u32,
    /// `largeAlloc uint64` in `heapStatsDelta`: bytes of large-object spans allocated.
    pub large_alloc: u32,
    /// `smallAllocCount [NUM_SIZE_CLASSES]uint64` in `heapStatsDelta`: objects allocated, by
    /// size class.
    pub small_alloc_count: u32,
    /// How gotrace knows.
    pub source: LayoutSource,
}

impl HeapStatsLayout {
    /// The layout of a Go release's 64-bit runtime, from gotrace's table; `None` outside Go
    /// 1.21–1.27. Go 1.25 removed `heapStatsDelta.inPtrScalarBits` (with the GC programs it
    /// counted), moving the allocation counts 8 bytes down. `heapStats` is the first member of
    /// `mstats` and `stats` the first of `consistentHeapStats` in every release.
    #[must_use]
    pub fn from_version_table(version: GoVersion) -> Option<Self> {
        if version.major != 1 {
            return None;
        }
        // Six (five from 1.25) int64 byte deltas, then tinyAllocCount, largeAlloc,
        // largeAllocCount and smallAllocCount.
        let deltas = match version.minor {
            21..=24 => 6,
            25..=27 => 5,
            _ => return None,
        };
        Some(Self::from_leading_words(deltas, LayoutSource::VersionTable))
    }

    fn from_leading_words(deltas: u32, source: LayoutSource) -> Self {
        let large_alloc = 8 * (deltas + 1);
        let small_alloc_count = large_alloc + 16;
        Self {
            generations: 0,
            generation_size: Self::size_after(small_alloc_count),
            large_alloc,
            small_alloc_count,
            source,
        }
    }

    /// A `heapStatsDelta`'s size from where `smallAllocCount` is: it, `largeFree`,
    /// `largeFreeCount` and `smallFreeCount` follow, all 8-byte words.
    #[expect(clippy::cast_possible_truncation, reason = "NUM_SIZE_CLASSES is 68")]
    const fn size_after(small_alloc_count: u32) -> u32 {
        small_alloc_count + 2 * 8 * NUM_SIZE_CLASSES as u32 + 16
    }

    /// The layout from DWARF member offsets (see `DwarfInfo::struct_members`); `None` when a
    /// structure or member is missing or an offset is out of range.
    pub(crate) fn from_dwarf(structs: &HashMap<String, HashMap<String, u64>>) -> Option<Self> {
        let offset = |structure: &str, member: &str| -> Option<u32> {
            u32::try_from(*structs.get(structure)?.get(member)?).ok()
        };
        let small_alloc_count = offset(HEAP_STATS_DELTA, "smallAllocCount")?;
        let small_free_count = offset(HEAP_STATS_DELTA, "smallFreeCount")?;
        #[expect(clippy::cast_possible_truncation, reason = "NUM_SIZE_CLASSES is 68")]
        let generation_size = small_free_count.checked_add(8 * NUM_SIZE_CLASSES as u32)?;
        Some(Self {
            generations: offset(MSTATS, "heapStats")?.checked_add(offset(CONSISTENT_HEAP_STATS, "stats")?)?,
            generation_size,
            large_alloc: offset(HEAP_STATS_DELTA, "largeAlloc")?,
            small_alloc_count,
            source: LayoutSource::Dwarf,
        })
    }

    /// Bytes to read at `runtime.memstats` + [`Self::generations`] for all three generations.
    #[must_use]
    pub fn read_size(&self) -> usize {
        3 * self.generation_size as usize
    }

    /// The bytes the runtime has counted as allocated, from the three generations read at
    /// `runtime.memstats` + [`Self::generations`]: each small size class's objects times its
    /// size, plus the large-object bytes. `None` when `generations` is shorter than
    /// [`Self::read_size`].
    #[must_use]
    pub fn allocated_bytes(&self, generations: &[u8]) -> Option<u64> {
        if generations.len() < self.read_size() {
            return None;
        }
        let word = |at: usize| -> Option<u64> {
            let bytes = generations.get(at..at + 8)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let mut total = 0_u64;
        for generation in 0..3 {
            let base = generation * self.generation_size as usize;
            total = total.wrapping_add(word(base + self.large_alloc as usize)?);
            for (class, &size) in CLASS_TO_SIZE.iter().enumerate().skip(1) {
                let count = word(base + self.small_alloc_count as usize + 8 * class)?;
                total = total.wrapping_add(count.wrapping_mul(u64::from(size)));
            }
        }
        Some(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_go_1_21_to_1_27() {
        for minor in 21..=27 {
            let layout = RuntimeLayout::from_version_table(GoVersion::new(1, minor, 3)).unwrap();
            assert_eq!(layout.source, LayoutSource::VersionTable);
            // allocCount uint16, then spanclass, state, needzero and isUserArenaChunk (a byte
            // each), allocCountBeforeCache uint16, and elemsize in the next word.
            assert_eq!(layout.mspan_alloc_count_before_cache, layout.mspan_alloc_count + 6);
            assert_eq!(layout.mspan_elemsize, layout.mspan_alloc_count + 8);
        }
        assert!(RuntimeLayout::from_version_table(GoVersion::new(1, 20, 14)).is_none());
        assert!(RuntimeLayout::from_version_table(GoVersion::new(1, 28, 0)).is_none());
        assert!(RuntimeLayout::from_version_table(GoVersion::new(2, 24, 0)).is_none());
    }

    #[test]
    fn dwarf_members_make_a_layout() {
        let mut structs = HashMap::new();
        structs.insert(MCACHE.to_owned(), HashMap::from([("alloc".to_owned(), 48)]));
        let mspan = HashMap::from([
            ("allocCount".to_owned(), 96),
            ("allocCountBeforeCache".to_owned(), 102),
            ("elemsize".to_owned(), 104),
        ]);
        structs.insert(MSPAN.to_owned(), mspan);
        let layout = RuntimeLayout::from_dwarf(&structs).unwrap();
        assert_eq!(
            layout,
            RuntimeLayout {
                source: LayoutSource::Dwarf,
                ..RuntimeLayout::from_version_table(GoVersion::new(1, 27, 0)).unwrap()
            }
        );
        structs.get_mut(MSPAN).unwrap().remove("elemsize");
        assert!(RuntimeLayout::from_dwarf(&structs).is_none());
    }

    #[test]
    fn heap_stats_table_covers_go_1_21_to_1_27() {
        let old = HeapStatsLayout::from_version_table(GoVersion::new(1, 24, 0)).unwrap();
        assert_eq!(
            (old.large_alloc, old.small_alloc_count, old.generation_size),
            (56, 72, 1176)
        );
        let new = HeapStatsLayout::from_version_table(GoVersion::new(1, 25, 0)).unwrap();
        assert_eq!(
            (new.large_alloc, new.small_alloc_count, new.generation_size),
            (48, 64, 1168)
        );
        assert!(HeapStatsLayout::from_version_table(GoVersion::new(1, 20, 0)).is_none());
        assert!(HeapStatsLayout::from_version_table(GoVersion::new(1, 28, 0)).is_none());
    }

    #[test]
    fn allocated_bytes_sums_the_three_generations() {
        let layout = HeapStatsLayout::from_version_table(GoVersion::new(1, 27, 0)).unwrap();
        let mut memory = vec![0_u8; layout.read_size()];
        let mut put = |at: usize, value: u64| memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
        let size = layout.generation_size as usize;
        // 3 objects of class 1 (8 bytes) in generation 0, 2 of class 67 (32 KiB) in generation
        // 2, and a 40 KiB large span in generation 1.
        put(layout.small_alloc_count as usize + 8, 3);
        put(2 * size + layout.small_alloc_count as usize + 8 * 67, 2);
        put(size + layout.large_alloc as usize, 40_960);
        assert_eq!(layout.allocated_bytes(&memory), Some(3 * 8 + 2 * 32_768 + 40_960));
        assert_eq!(layout.allocated_bytes(&memory[..memory.len() - 1]), None);
    }
}
