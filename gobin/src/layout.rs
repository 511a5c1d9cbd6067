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
}
