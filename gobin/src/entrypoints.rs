//! The runtime functions through which heap allocations enter, per Go version, and where and
//! how to probe each one.
//!
//! # The no-double-count rule
//!
//! [`COUNTING_RULE`] states it; in short, every heap allocation is counted exactly once, at
//! the outermost *counting* entry point it passes through:
//!
//! - Go 1.18–1.23: `runtime.mallocgc` is the funnel (`newobject`, `makeslice`, `growslice`,
//!   `makemap`, the string and `convT` helpers all call it).
//! - Go 1.24–1.26: `mallocgc` is still the funnel; it dispatches internally to `mallocgcTiny`,
//!   `mallocgcSmallNoscan`, `mallocgcSmallScanNoHeader`, `mallocgcSmallScanHeader` and
//!   `mallocgcLarge`, which are never probed (probing them as well would count twice).
//!   Nested calls inside the malloc implementation are excluded by the caller check too:
//!   `mallocgcTinySlowPath` (Go 1.27) calls `mallocgcSmallNoScanSC2` for the same allocation.
//! - Go 1.27 (the `sizespecializedmalloc` experiment, on by default; available but off in
//!   1.26): the compiler calls
//!   `runtime.mallocgc<Class>SC<n>` directly from user code for small `new(T)`
//!   (`specializedMallocSym` in `src/cmd/compile/internal/ssagen/ssa.go`), so those functions
//!   count too. `mallocgc` also reaches them, through `mallocNoScanTable`/`mallocScanTable`
//!   and a direct call to `mallocgcTinySC2` (`src/runtime/malloc.go`); those hits have a return
//!   address inside `mallocgc`, which already counted the allocation, and are skipped.
//!
//! Annotating entry points (`makeslice`, `makemap`, `growslice`, …) never count: they call
//! `mallocgc` themselves, but their arguments say what the allocation is for (a length and
//! capacity, a map size hint).
//!
//! # Sampling probe points
//!
//! Every hit on a counting probe costs a trap, so the sampled modes probe runtime functions
//! that run far less often than once per allocation, each standing for many allocations:
//!
//! - [`ProbeRole::GoSample`], `runtime.profilealloc`: the runtime's own heap-profile sampler
//!   calls it for about one allocation per `runtime.MemProfileRate` bytes (`mallocgc` and its
//!   helpers in `src/runtime/malloc.go`), with the sampled object's size.
//! - [`ProbeRole::SpanRefill`], `runtime.(*mcache).refill`: called when a P's cached span of
//!   one span class is used up (`src/runtime/mcache.go`); the span still in `c.alloc[spc]`
//!   tells how many objects the cache handed out from it (see
//!   [`crate::RuntimeLayout`]).
//! - [`ProbeRole::LargeAlloc`], `runtime.(*mcache).allocLarge`: objects over 32 KiB get a
//!   span each and never pass `refill`; there are few enough of them to count one by one.
//!
//! None of them is subject to the counting rule: they are separate modes, never attached
//! together with the counting probes.

use std::collections::HashMap;

use serde::Serialize;

use crate::arch::{Arch, Register};
use crate::dwarf::DwarfParam;
use crate::functions::{Function, FunctionTable};
use crate::prologue::{self, StackCheck};
use crate::version::GoVersion;

/// The rule that keeps any allocation from being counted twice, in words.
pub const COUNTING_RULE: &str = "each heap allocation is counted once, at the outermost \
counting probe it passes: a counting probe hit is ignored when its return address lies inside \
the runtime's malloc implementation (any runtime.mallocgc* function), because that call is \
nested in an allocation already counted: Go 1.27's mallocgc calls the size-specialised \
mallocgc*SC<n> functions through its size tables, and mallocgcTinySlowPath calls \
mallocgcSmallNoScanSC2. A mallocgc hit with size 0 is ignored too (it returns &zerobase and \
allocates nothing). Annotating probes never count.";

/// The prefix of the runtime's malloc implementation: `mallocgc` itself, its per-size-class
/// helpers (`mallocgcTiny`, `mallocgcSmallNoscan`, … in Go 1.24+), the size-specialised
/// `mallocgc*SC<n>` and their slow paths (Go 1.27). A counting probe entered from one of them
/// is a nested call.
pub const MALLOC_IMPLEMENTATION_PREFIX: &str = "runtime.mallocgc";

/// Whether hits on a probe count allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeRole {
    /// Every hit (not excluded by [`ProbePoint::skip_if_caller_in`]) is one heap allocation.
    Count,
    /// Hits add detail (length, capacity, hint) to an allocation counted elsewhere.
    Annotate,
    /// Hits are the runtime's heap-profile samples (`runtime.profilealloc`): each stands for
    /// about `MemProfileRate / size` allocations of its size.
    GoSample,
    /// Hits are used-up spans of one span class (`runtime.(*mcache).refill`): each stands for
    /// the objects the P's cache handed out from the span.
    SpanRefill,
    /// Hits are large allocations (over 32 KiB, `runtime.(*mcache).allocLarge`), one each.
    LargeAlloc,
    /// Hits hand every cached span of a P back (`runtime.(*mcache).releaseAll`, at each GC
    /// cycle and when a P goes away): the objects taken from the partly used spans never pass
    /// `refill`, so they are counted here.
    SpanRelease,
    /// Hits give a heap-profile sample its bucket (`runtime.setprofilebucket`, right after
    /// `profilealloc` on the same thread): the sampled object now has a profile special, so
    /// the runtime will report its death. Go-sampler mode's in-use tracking starts there.
    ProfileBucket,
    /// Hits free one special record of a dying object (`runtime.freeSpecial`, from the sweep):
    /// for a profile special, a sampled object is gone.
    SpecialFree,
    /// Hits mark the end of a GC cycle's marking (`runtime.gcMarkTermination`, once per
    /// cycle, the world stopped): in-use growth counts only objects older than the cycles
    /// whose sweeps are complete.
    GcCycle,
}

impl ProbeRole {
    /// The key used in reports.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Annotate => "annotate",
            Self::GoSample => "go_sample",
            Self::SpanRefill => "span_refill",
            Self::LargeAlloc => "large_alloc",
            Self::SpanRelease => "span_release",
            Self::ProfileBucket => "profile_bucket",
            Self::SpecialFree => "special_free",
            Self::GcCycle => "gc_cycle",
        }
    }

    /// Whether the role belongs to a sampled mode rather than to exact counting.
    #[must_use]
    pub fn is_sampling(self) -> bool {
        matches!(
            self,
            Self::GoSample
                | Self::SpanRefill
                | Self::LargeAlloc
                | Self::SpanRelease
                | Self::ProfileBucket
                | Self::SpecialFree
                | Self::GcCycle
        )
    }
}

/// What an argument means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgRole {
    /// Bytes requested.
    Size,
    /// `*abi.Type` of the object (or element, for slices and channels; the map type for maps).
    Type,
    /// Length (makeslice `len`, growslice `newLen`, makeslicecopy `tolen`, newarray `n`).
    Len,
    /// Capacity (makeslice `cap`).
    Cap,
    /// The capacity before growth (growslice `oldCap`).
    OldCap,
    /// Elements being appended (growslice `num`).
    Num,
    /// Size hint (makemap `hint`, makechan `size`).
    Hint,
    /// The `*runtime.mcache` receiver (`refill`, `allocLarge`).
    Mcache,
    /// The `runtime.spanClass` (size class << 1 | noscan) of `refill`. A `uint8`: only the
    /// register's low byte is the argument (see the catalogue entry).
    SpanClass,
    /// The address of a sampled object (`profilealloc`'s `x`, `setprofilebucket`'s and
    /// `freeSpecial`'s `p`): the same value at all three for one object.
    Object,
    /// The `*runtime.bucket` of a heap-profile sample (`setprofilebucket`'s `b`).
    Bucket,
    /// The `*runtime.special` being freed (`freeSpecial`'s `s`).
    Special,
}

impl ArgRole {
    /// The key used in reports.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Type => "type",
            Self::Len => "len",
            Self::Cap => "cap",
            Self::OldCap => "old_cap",
            Self::Num => "num",
            Self::Hint => "hint",
            Self::Mcache => "mcache",
            Self::SpanClass => "span_class",
            Self::Object => "object",
            Self::Bucket => "bucket",
            Self::Special => "special",
        }
    }
}

/// Where an argument's register assignment came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgSource {
    /// The DWARF location of the formal parameter at the probe address.
    Dwarf,
    /// gotrace's per-version signature table and the Go internal ABI's register order.
    AbiTable,
}

/// One argument at the probe point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgLocation {
    /// What it means.
    pub role: ArgRole,
    /// The Go parameter name (`size`, `typ`, `et`, …).
    pub param: String,
    /// The register that holds it at the probe address.
    pub register: Register,
    /// How gotrace knows.
    pub source: ArgSource,
}

/// Where the caller's return address is at the probe address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReturnAddress {
    /// In memory at `[register + offset]` (amd64: `[rsp]`, pushed by `CALL`).
    Stack {
        /// The base register.
        register: Register,
        /// Byte offset from it.
        offset: i64,
    },
    /// In a register (arm64: the link register `x30`, not yet saved by the frame set-up).
    Register {
        /// The register.
        register: Register,
    },
}

impl std::fmt::Display for ReturnAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stack { register, offset: 0 } => write!(f, "[{register}]"),
            Self::Stack { register, offset } => write!(f, "[{register}{offset:+}]"),
            Self::Register { register } => write!(f, "{register}"),
        }
    }
}

/// A function to put a uprobe on, fully resolved for this binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbePoint {
    /// The runtime function, e.g. `runtime.mallocgc`.
    pub function: String,
    /// Its first instruction (link-time address).
    pub address: u64,
    /// One past its last byte.
    pub end: u64,
    /// Where the probe goes: after the stack-bound check, or the entry for nosplit functions.
    pub probe_address: u64,
    /// File offset of `probe_address`, what `perf_event_open`'s uprobe PMU takes.
    pub file_offset: u64,
    /// The prologue that was skipped.
    pub stack_check: StackCheck,
    /// Whether hits count allocations.
    pub role: ProbeRole,
    /// The kind of allocation the function stands for (`malloc`, `makeslice`, …).
    pub kind: &'static str,
    /// Arguments in registers at the probe address.
    pub args: Vec<ArgLocation>,
    /// Where the return address is at the probe address.
    pub return_address: ReturnAddress,
    /// For counting probes: hits whose return address is inside one of these functions (the
    /// runtime's malloc implementation) are not counted (see [`COUNTING_RULE`]).
    pub skip_if_caller_in: Vec<Function>,
    /// For counting probes: hits with a zero `size` argument are not counted.
    pub skip_zero_size: bool,
}

impl ProbePoint {
    /// The register of the argument with this role.
    #[must_use]
    pub fn arg(&self, role: ArgRole) -> Option<Register> {
        self.args.iter().find(|a| a.role == role).map(|a| a.register)
    }
}

struct Param {
    name: &'static str,
    role: Option<ArgRole>,
}

const fn p(name: &'static str, role: ArgRole) -> Param {
    Param { name, role: Some(role) }
}

/// A parameter that occupies a register but is not reported.
const fn skip(name: &'static str) -> Param {
    Param { name, role: None }
}

enum NameMatch {
    Exact(&'static str),
    /// `runtime.mallocgc<Class>SC<n>`: Go 1.27's size-specialised mallocs.
    SizeClassSpecialized,
}

struct Spec {
    name: NameMatch,
    role: ProbeRole,
    kind: &'static str,
    since_minor: u32,
    /// The signature, receiver first for methods. It has been the same from `since_minor` to
    /// Go 1.27 for each function here (checked against each release's `src/runtime`); a
    /// change gets a new row with `since_minor`.
    params: &'static [Param],
}

const MALLOC_PARAMS: &[Param] = &[p("size", ArgRole::Size), p("typ", ArgRole::Type), skip("needzero")];

/// The catalogue. Order is the order of reports.
const SPECS: &[Spec] = &[
    // func mallocgc(size uintptr, typ *_type, needzero bool) unsafe.Pointer
    Spec {
        name: NameMatch::Exact("runtime.mallocgc"),
        role: ProbeRole::Count,
        kind: "malloc",
        since_minor: 18,
        params: MALLOC_PARAMS,
    },
    // func mallocgcSmallNoScanSC3(size uintptr, typ *_type, needzero bool) unsafe.Pointer
    // (src/runtime/malloc_generated.go). The experiment exists from Go 1.26 (off by default)
    // and is on by default from 1.27; the functions are linked exactly when it is on.
    Spec {
        name: NameMatch::SizeClassSpecialized,
        role: ProbeRole::Count,
        kind: "malloc",
        since_minor: 26,
        params: MALLOC_PARAMS,
    },
    // func newobject(typ *_type) unsafe.Pointer
    Spec {
        name: NameMatch::Exact("runtime.newobject"),
        role: ProbeRole::Annotate,
        kind: "new",
        since_minor: 18,
        params: &[p("typ", ArgRole::Type)],
    },
    // func newarray(typ *_type, n int) unsafe.Pointer
    Spec {
        name: NameMatch::Exact("runtime.newarray"),
        role: ProbeRole::Annotate,
        kind: "newarray",
        since_minor: 18,
        params: &[p("typ", ArgRole::Type), p("n", ArgRole::Len)],
    },
    // func makeslice(et *_type, len, cap int) unsafe.Pointer
    Spec {
        name: NameMatch::Exact("runtime.makeslice"),
        role: ProbeRole::Annotate,
        kind: "makeslice",
        since_minor: 18,
        params: &[p("et", ArgRole::Type), p("len", ArgRole::Len), p("cap", ArgRole::Cap)],
    },
    // func makeslicecopy(et *_type, tolen int, fromlen int, from unsafe.Pointer) unsafe.Pointer
    Spec {
        name: NameMatch::Exact("runtime.makeslicecopy"),
        role: ProbeRole::Annotate,
        kind: "makeslice",
        since_minor: 18,
        params: &[
            p("et", ArgRole::Type),
            p("tolen", ArgRole::Len),
            skip("fromlen"),
            skip("from"),
        ],
    },
    // func growslice(oldPtr unsafe.Pointer, newLen, oldCap, num int, et *_type) slice
    // (this signature since Go 1.20; 1.18–1.19 had growslice(et *_type, old slice, cap int))
    Spec {
        name: NameMatch::Exact("runtime.growslice"),
        role: ProbeRole::Annotate,
        kind: "growslice",
        since_minor: 20,
        params: &[
            skip("oldPtr"),
            p("newLen", ArgRole::Len),
            p("oldCap", ArgRole::OldCap),
            p("num", ArgRole::Num),
            p("et", ArgRole::Type),
        ],
    },
    // func makemap(t *maptype, hint int, h *hmap) *hmap   (maptype/SwissMapType/MapType)
    Spec {
        name: NameMatch::Exact("runtime.makemap"),
        role: ProbeRole::Annotate,
        kind: "makemap",
        since_minor: 18,
        params: &[p("t", ArgRole::Type), p("hint", ArgRole::Hint), skip("h")],
    },
    // func makechan(t *chantype, size int) *hchan
    Spec {
        name: NameMatch::Exact("runtime.makechan"),
        role: ProbeRole::Annotate,
        kind: "makechan",
        since_minor: 18,
        params: &[p("t", ArgRole::Type), p("size", ArgRole::Hint)],
    },
    // The sampling probe points. Their signatures were checked in the sources of Go 1.21 to
    // 1.27, the releases the fixtures cover; older releases get none rather than a guess
    // (allocLarge, for one, took a `needzero bool` before `noscan` in older runtimes).
    //
    // func profilealloc(mp *m, x unsafe.Pointer, size uintptr)   (src/runtime/malloc.go)
    Spec {
        name: NameMatch::Exact("runtime.profilealloc"),
        role: ProbeRole::GoSample,
        kind: "malloc",
        since_minor: 21,
        params: &[skip("mp"), p("x", ArgRole::Object), p("size", ArgRole::Size)],
    },
    // func setprofilebucket(p unsafe.Pointer, b *bucket)   (src/runtime/mheap.go)
    //
    // Called by mProf_Malloc through systemstack, on the thread that ran profilealloc for the
    // same object (the caller holds acquirem). From Go 1.23 mProf_Malloc may return before
    // it (an M without a profStack, GODEBUG=profstackdepth=0): that sample gets no special.
    Spec {
        name: NameMatch::Exact("runtime.setprofilebucket"),
        role: ProbeRole::ProfileBucket,
        kind: "malloc",
        since_minor: 21,
        params: &[p("p", ArgRole::Object), p("b", ArgRole::Bucket)],
    },
    // func freeSpecial(s *special, p unsafe.Pointer, size uintptr)   (src/runtime/mheap.go)
    //
    // Its only caller is the sweep ((*sweepLocked).sweep in src/runtime/mgcsweep.go), with
    // p = span base + the special's offset: for a profile special, the very address
    // profilealloc got.
    Spec {
        name: NameMatch::Exact("runtime.freeSpecial"),
        role: ProbeRole::SpecialFree,
        kind: "malloc",
        since_minor: 21,
        params: &[p("s", ArgRole::Special), p("p", ArgRole::Object), skip("size")],
    },
    // func gcMarkTermination()   (Go 1.21–1.22; gcMarkTermination(stw worldStop) from 1.23,
    // src/runtime/mgc.go). Its arguments are not read: a hit is the time of a cycle's mark
    // termination.
    Spec {
        name: NameMatch::Exact("runtime.gcMarkTermination"),
        role: ProbeRole::GcCycle,
        kind: "malloc",
        since_minor: 21,
        params: &[],
    },
    // func (c *mcache) refill(spc spanClass)   (src/runtime/mcache.go)
    //
    // spanClass is a uint8. Go's register ABI (src/cmd/compile/abi-internal.md) promises
    // nothing about the bits above a sub-word argument in its register, and the compiler
    // may set just the low byte, so whoever reads `spc` must mask it to its low byte.
    Spec {
        name: NameMatch::Exact("runtime.(*mcache).refill"),
        role: ProbeRole::SpanRefill,
        kind: "malloc",
        since_minor: 21,
        params: &[p("c", ArgRole::Mcache), p("spc", ArgRole::SpanClass)],
    },
    // func (c *mcache) allocLarge(size uintptr, noscan bool) *mspan   (src/runtime/mcache.go)
    Spec {
        name: NameMatch::Exact("runtime.(*mcache).allocLarge"),
        role: ProbeRole::LargeAlloc,
        kind: "malloc",
        since_minor: 21,
        params: &[p("c", ArgRole::Mcache), p("size", ArgRole::Size), skip("noscan")],
    },
    // func (c *mcache) releaseAll()   (src/runtime/mcache.go; the same from 1.21 to 1.27)
    Spec {
        name: NameMatch::Exact("runtime.(*mcache).releaseAll"),
        role: ProbeRole::SpanRelease,
        kind: "malloc",
        since_minor: 21,
        params: &[p("c", ArgRole::Mcache)],
    },
];

fn is_size_class_specialized(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("runtime.mallocgc") else {
        return false;
    };
    let Some((class, n)) = rest.rsplit_once("SC") else {
        return false;
    };
    !class.is_empty()
        && class.bytes().all(|b| b.is_ascii_alphabetic())
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// A function matched to a catalogue entry, before registers are known.
pub(crate) struct Candidate<'a> {
    spec: &'static Spec,
    pub function: &'a Function,
    pub probe_address: u64,
    pub stack_check: StackCheck,
}

/// Finds the entry points present in the binary and where to probe them.
pub(crate) fn candidates<'a>(
    arch: Arch,
    version: GoVersion,
    functions: &'a FunctionTable,
    code_of: impl Fn(&Function) -> Option<&'a [u8]>,
) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    for spec in SPECS.iter().filter(|s| version.at_least(s.since_minor)) {
        let matched: Vec<&Function> = match spec.name {
            NameMatch::Exact(name) => functions.by_name(name).into_iter().collect(),
            NameMatch::SizeClassSpecialized => {
                let mut v: Vec<&Function> = functions
                    .iter()
                    .filter(|f| is_size_class_specialized(&f.name))
                    .collect();
                v.sort_by(|a, b| natural_key(&a.name).cmp(&natural_key(&b.name)));
                v
            }
        };
        for function in matched {
            let placement = code_of(function).map_or(
                prologue::Placement {
                    probe_address: function.start,
                    stack_check: StackCheck::NoSplit,
                },
                |code| prologue::place(arch, code, function.start),
            );
            out.push(Candidate {
                spec,
                function,
                probe_address: placement.probe_address,
                stack_check: placement.stack_check,
            });
        }
    }
    out
}

/// Sorts `…SC2` before `…SC10`.
fn natural_key(name: &str) -> (&str, u32) {
    match name.rsplit_once("SC") {
        Some((head, n)) => (head, n.parse().unwrap_or(u32::MAX)),
        None => (name, 0),
    }
}

/// Resolves registers and the counting rule for each candidate.
pub(crate) fn resolve(
    arch: Arch,
    functions: &FunctionTable,
    candidates: &[Candidate<'_>],
    dwarf_params: Option<&HashMap<String, Vec<DwarfParam>>>,
    file_offset: impl Fn(u64) -> Option<u64>,
) -> Vec<ProbePoint> {
    // Merged into as few address ranges as the function table allows: the probe checks the
    // return address against each one.
    let malloc_implementation: Vec<Function> = functions
        .iter()
        .filter(|f| f.name.starts_with(MALLOC_IMPLEMENTATION_PREFIX))
        .cloned()
        .collect();
    candidates
        .iter()
        .filter_map(|c| {
            let args = resolve_args(arch, c.spec, dwarf_params.and_then(|d| d.get(&c.function.name)));
            let (skip_if_caller_in, skip_zero_size) = if c.spec.role == ProbeRole::Count {
                (malloc_implementation.clone(), true)
            } else {
                (Vec::new(), false)
            };
            Some(ProbePoint {
                function: c.function.name.clone(),
                address: c.function.start,
                end: c.function.end,
                probe_address: c.probe_address,
                file_offset: file_offset(c.probe_address)?,
                stack_check: c.stack_check,
                role: c.spec.role,
                kind: c.spec.kind,
                args,
                return_address: return_address(arch),
                skip_if_caller_in,
                skip_zero_size,
            })
        })
        .collect()
}

/// At the probe (after the stack check, before the frame is set up) the return address is
/// where `CALL` left it on amd64, and still in the link register on arm64.
fn return_address(arch: Arch) -> ReturnAddress {
    match arch {
        Arch::X86_64 => ReturnAddress::Stack {
            register: Register::Rsp,
            offset: 0,
        },
        Arch::Aarch64 => ReturnAddress::Register {
            register: Register::X(30),
        },
    }
}

fn resolve_args(arch: Arch, spec: &Spec, dwarf: Option<&Vec<DwarfParam>>) -> Vec<ArgLocation> {
    let int_regs = arch.int_arg_registers();
    spec.params
        .iter()
        .enumerate()
        .filter_map(|(i, param)| {
            let role = param.role?;
            let from_dwarf = dwarf.and_then(|params| {
                params
                    .iter()
                    .filter(|d| !d.is_result)
                    .find(|d| d.name == param.name)
                    .and_then(|d| d.register)
            });
            let (register, source) = match from_dwarf {
                Some(r) => (r, ArgSource::Dwarf),
                // Every parameter in the table is one integer-class word (pointer, int,
                // uintptr or bool), so the i-th one is in the i-th integer register
                // (src/cmd/compile/abi-internal.md, "Function call argument and result
                // passing").
                None => (*int_regs.get(i)?, ArgSource::AbiTable),
            };
            Some(ArgLocation {
                role,
                param: param.name.to_owned(),
                register,
                source,
            })
        })
        .collect()
}

/// The table's register for every reported parameter, ignoring DWARF (for cross-checks).
#[must_use]
pub fn table_registers(arch: Arch, version: GoVersion, function: &str) -> Option<Vec<(ArgRole, Register)>> {
    let spec = SPECS
        .iter()
        .filter(|s| version.at_least(s.since_minor))
        .find(|s| match s.name {
            NameMatch::Exact(n) => n == function,
            NameMatch::SizeClassSpecialized => is_size_class_specialized(function),
        })?;
    Some(
        resolve_args(arch, spec, None)
            .into_iter()
            .map(|a| (a.role, a.register))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_size_specialized_mallocs() {
        assert!(is_size_class_specialized("runtime.mallocgcSmallNoScanSC3"));
        assert!(is_size_class_specialized("runtime.mallocgcSmallScanNoHeaderSC12"));
        assert!(is_size_class_specialized("runtime.mallocgcTinySC2"));
        assert!(!is_size_class_specialized("runtime.mallocgc"));
        assert!(!is_size_class_specialized("runtime.mallocgcTinySlowPath"));
        assert!(!is_size_class_specialized("runtime.mallocgcSmallScanSlowPath"));
        assert!(!is_size_class_specialized("runtime.mallocgcSC"));
        assert!(!is_size_class_specialized("main.mallocgcTinySC2"));
    }

    #[test]
    fn table_follows_the_register_abi() {
        let v = GoVersion::new(1, 27, 0);
        let regs = table_registers(Arch::X86_64, v, "runtime.growslice").unwrap();
        assert_eq!(
            regs,
            vec![
                (ArgRole::Len, Register::Rbx),
                (ArgRole::OldCap, Register::Rcx),
                (ArgRole::Num, Register::Rdi),
                (ArgRole::Type, Register::Rsi),
            ]
        );
        let regs = table_registers(Arch::Aarch64, v, "runtime.mallocgcTinySC2").unwrap();
        assert_eq!(
            regs,
            vec![(ArgRole::Size, Register::X(0)), (ArgRole::Type, Register::X(1))]
        );
        assert!(table_registers(Arch::X86_64, GoVersion::new(1, 25, 0), "runtime.mallocgcTinySC2").is_none());
    }

    #[test]
    fn natural_order_of_size_classes() {
        let mut names = [
            "runtime.mallocgcTinySC10",
            "runtime.mallocgcTinySC2",
            "runtime.mallocgcTinySC3",
        ];
        names.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        assert_eq!(
            names,
            [
                "runtime.mallocgcTinySC2",
                "runtime.mallocgcTinySC3",
                "runtime.mallocgcTinySC10"
            ]
        );
    }
}
