//! From raw probe counts to an allocation profile: full stacks with inlined frames expanded,
//! the callsite (the first frame outside the runtime), the kind of allocation, and a histogram
//! of sizes per (callsite, type, kind).
//!
//! Pure computation over a [`Symbols`] source, so it is tested without a kernel.

use std::collections::HashMap;
use std::sync::Arc;

use gobin::{Frame, Unwind};
use hdrhistogram::Histogram;
use serde::Serialize;
use tracer_common::{AllocKey, NO_STACK, ProbeStats};

use crate::mode::Mode;

/// How an allocation was asked for, judged by the runtime function the callsite called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `new(T)`, `&T{}`, a variable moved to the heap (`runtime.newobject`, Go 1.27's
    /// `runtime.mallocgc*SC<n>` called directly).
    New,
    /// `make([]T, n)` (`runtime.makeslice`, `makeslicecopy`).
    Makeslice,
    /// `make(map…)` and map growth (`runtime.makemap*`, `mapassign*`, `internal/runtime/maps`).
    Makemap,
    /// `append` beyond capacity (`runtime.growslice`).
    Growslice,
    /// String building and conversions (`runtime.concatstrings`, `slicebytetostring`, …).
    String,
    /// Boxing a value in an interface (`runtime.convT*`).
    ConvT,
    /// Anything else (`reflect.New`, channels, closures the runtime allocates, …).
    Other,
}

impl Kind {
    /// The name in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Makeslice => "makeslice",
            Self::Makemap => "makemap",
            Self::Growslice => "growslice",
            Self::String => "string",
            Self::ConvT => "convT",
            Self::Other => "other",
        }
    }

    /// The kind a runtime function stands for, if it is one of the allocation front doors.
    ///
    /// By the name after the package: some runtime functions are linked into other packages
    /// under their names there (`//go:linkname`: `reflect.unsafe_New`,
    /// `internal/bytealg.MakeNoZero`, `reflect.growslice`, …).
    fn of_runtime_function(function: &str) -> Option<Self> {
        let package = package_of(function);
        if package.starts_with("internal/runtime/maps") {
            return Some(Self::Makemap);
        }
        let name = function.get(package.len() + 1..)?;
        let kind = match name {
            "newobject" | "newarray" | "unsafe_New" => Self::New,
            n if n.starts_with("mallocgc") && n.contains("SC") => Self::New,
            "makeslice" | "makeslicecopy" | "makeslice64" | "unsafe_NewArray" | "MakeNoZero" => Self::Makeslice,
            "growslice" => Self::Growslice,
            n if n.starts_with("makemap") || n.starts_with("mapassign") || n == "hashGrow" || n == "growWork" => {
                Self::Makemap
            }
            n if n.starts_with("convT") => Self::ConvT,
            n if n.starts_with("concatstring")
                || n.starts_with("rawstring")
                || n.starts_with("rawbyteslice")
                || n.starts_with("rawruneslice")
                || n.starts_with("slicebytetostring")
                || n.starts_with("slicerunetostring")
                || n.starts_with("stringtoslice")
                || n == "intstring"
                || n == "concatbytes" =>
            {
                Self::String
            }
            _ => return None,
        };
        Some(kind)
    }
}

#[cfg(test)]
use gobin::is_runtime_function as is_runtime;
pub use gobin::package_of;

/// The type shown by modes that cannot know it.
pub const UNKNOWN_TYPE: &str = "unknown";

/// Where symbols come from: the traced binary and the process's address map.
pub trait Symbols {
    /// Logical frames at a process address, innermost first. `return_address` says the address
    /// follows a call, so the lookup must use the call instruction (`pc - 1`).
    fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]>;
    /// The name of the type whose descriptor is at this process address.
    fn type_name(&mut self, address: u64) -> Option<Arc<str>>;

    /// What Go's own unwinder does at the frame of a process address (see [`Unwind`]); the
    /// default knows no binary and walks on.
    fn unwind(&mut self, _pc: u64) -> Unwind {
        Unwind::Continue
    }

    /// The logical frames of a whole allocation stack (see [`expand`]); `stack_id` names the
    /// content of `stack`, so an implementation may cache by (`stack_id`, `return_address`).
    fn locations(&mut self, _stack_id: u64, stack: &[u64], return_address: u64) -> Locations {
        expand(stack, return_address, self).into()
    }

    /// Called at the end of each [`build`]: a cache may drop what that build did not use.
    fn build_done(&mut self) {}

    /// Whether a function is the program's own code, its main module (see
    /// [`gobin::GoBinary::main_module`]); the default knows only package `main`.
    fn in_main_module(&self, function: &str) -> bool {
        gobin::in_main_module(function, None)
    }
}

/// Which frame of an allocation's stack names its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Grouping {
    /// The first frame outside the runtime, as Go's heap profile names it: the line that
    /// allocates, in the standard library or a dependency if that is where it is (the first
    /// frame of the main module is shown next to it).
    #[default]
    First,
    /// The first frame in the program's own code (its main module): rows of the same line of
    /// yours add up, whichever library call allocated for it (that callsite is shown next to
    /// it). Allocations with no frame of the main module keep the first frame.
    User,
}

/// A source position: function, file, line.
pub type Position = (Arc<str>, Arc<str>, u32);

/// A stack's pcs, each with its logical frames (innermost first).
pub type Locations = Arc<[(u64, Arc<[Frame]>)]>;

/// One allocating line with everything known about it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallsiteKey {
    /// Function of the allocating line (after inline expansion).
    pub function: Arc<str>,
    /// Source file.
    pub file: Arc<str>,
    /// Line.
    pub line: u32,
    /// The allocated type; `None` for untyped memory.
    pub type_name: Option<Arc<str>>,
    /// How it was allocated.
    pub kind: Kind,
}

/// Totals and size distribution of one callsite.
#[derive(Debug, Clone)]
pub struct Callsite {
    /// What and where.
    pub key: CallsiteKey,
    /// Heap allocations.
    pub allocations: u64,
    /// Bytes requested.
    pub bytes: u64,
    /// Requested sizes, one count per allocation (3 significant figures).
    pub sizes: Histogram<u64>,
    /// The smallest size asked for, exactly.
    pub min_size: u64,
    /// The largest size asked for, exactly.
    pub max_size: u64,
    /// When the callsite's code was inlined: the lines it was inlined at (function, file,
    /// line of the outermost frame of the same instruction), at most [`MAX_INLINED_INTO`].
    /// The compiler reports its escape decisions for inlined code at those lines.
    pub inlined_into: Vec<(Arc<str>, Arc<str>, u32)>,
    /// With [`Grouping::First`]: the first frame of the main module, when the row's line is
    /// outside it (the most frequent one, when the row's allocations came from several).
    pub user: Option<Position>,
    /// With [`Grouping::User`]: the first frame outside the runtime (the line that allocated),
    /// when it is not the main module's (the most frequent one).
    pub via: Option<Position>,
    /// Allocations per candidate of [`Self::user`] or [`Self::via`] while the profile is built.
    pub(crate) also_counts: HashMap<Position, u64>,
}

/// How many inlining positions a callsite keeps.
pub const MAX_INLINED_INTO: usize = 4;

impl Callsite {
    /// Sets [`Self::user`] or [`Self::via`] (by `grouping`) to the most frequent candidate.
    fn with_other_frame(mut self, grouping: Grouping) -> Self {
        let most = std::mem::take(&mut self.also_counts)
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(at, _)| at);
        match grouping {
            Grouping::First => self.user = most,
            Grouping::User => self.via = most,
        }
        self
    }

    /// The size at quantile `q`: the histogram's value, within the exact range of sizes seen,
    /// so a callsite that always asks for the same size reports exactly that size.
    #[must_use]
    pub fn size_at_quantile(&self, q: f64) -> u64 {
        self.sizes.value_at_quantile(q).clamp(self.min_size, self.max_size)
    }
}

/// One distinct full stack, type and size, with its count: what pprof and flame graphs need.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The stack, innermost first, the runtime's included: each pc (an address in the
    /// process) with its logical frames, inlined ones first (shared with the symbol cache, not
    /// copied).
    pub locations: Locations,
    /// How many logical frames at the top of the stack are the runtime's, above the callsite
    /// (0 when the whole stack is the runtime's). Go's own heap profiles leave them out.
    pub runtime_frames: usize,
    /// The allocated type; `None` for untyped memory.
    pub type_name: Option<Arc<str>>,
    /// How it was allocated.
    pub kind: Kind,
    /// Bytes requested per allocation.
    pub size: u64,
    /// Allocations.
    pub count: u64,
}

/// Allocations and bytes recorded, and allocations the probes saw but could not record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Heap allocations recorded.
    pub allocations: u64,
    /// Bytes requested by them.
    pub bytes: u64,
    /// Allocations seen but not recorded (map full, stack unreadable, …).
    pub dropped: u64,
}

/// The allocation profile of a traced process so far.
#[derive(Debug, Clone)]
pub struct Profile {
    /// How the counts were obtained.
    pub mode: Mode,
    /// What the probes did.
    pub stats: ProbeStats,
    /// Sums.
    pub totals: Totals,
    /// By bytes, largest first.
    pub callsites: Vec<Callsite>,
    /// Full stacks.
    pub samples: Vec<Sample>,
    /// Which frame names the rows.
    pub grouping: Grouping,
}

/// Builds the profile from cumulative counts. `stack_of` gives the user stack of a stack key
/// (innermost first, starting at the probed pc).
///
/// `size_sigfigs` is the precision of each callsite's size histogram (1 to 5 significant
/// figures): 3 for reports; a sidecar that shows no quantiles keeps it at 1, since a
/// 3-figure histogram takes tens of KiB per callsite.
pub fn build(
    mode: Mode,
    stats: ProbeStats,
    counts: &[(AllocKey, u64)],
    mut stack_of: impl FnMut(u64) -> Option<Vec<u64>>,
    symbols: &mut dyn Symbols,
    size_sigfigs: u8,
    grouping: Grouping,
) -> Profile {
    let mut by_callsite: HashMap<CallsiteKey, Callsite> = HashMap::new();
    let mut samples = Vec::with_capacity(counts.len());
    let mut totals = Totals {
        dropped: stats.dropped(),
        ..Totals::default()
    };
    for &(key, count) in counts {
        let stack = if key.stack == NO_STACK {
            Vec::new()
        } else {
            stack_of(key.stack).unwrap_or_default()
        };
        let locations = symbols.locations(key.stack, &stack, key.return_address);
        // The sampled modes' probes sit where the type is no longer known.
        let type_name = if mode.is_sampled() {
            Some(Arc::from(UNKNOWN_TYPE))
        } else {
            (key.type_address != 0).then(|| {
                symbols
                    .type_name(key.type_address)
                    // A type made at run time (reflect.StructOf, …) has its descriptor in the heap.
                    .unwrap_or_else(|| format!("<unknown type at {:#x}>", key.type_address).into())
            })
        };
        let (callsite, kind, runtime_frames) = callsite_and_kind(&locations);
        let user = first_main_module_frame(&locations, runtime_frames, symbols);
        let (site, also) = match (grouping, user) {
            (Grouping::User, Some(user)) => (user, Some(callsite)),
            (_, user) => (callsite, user),
        };
        let callsite_key = CallsiteKey {
            function: site.function.as_str().into(),
            file: site.file.as_str().into(),
            line: site.line,
            type_name: type_name.clone(),
            kind,
        };
        let bytes = key.size.saturating_mul(count);
        totals.allocations = totals.allocations.saturating_add(count);
        totals.bytes = totals.bytes.saturating_add(bytes);
        let entry = by_callsite.entry(callsite_key.clone()).or_insert_with(|| Callsite {
            key: callsite_key,
            allocations: 0,
            bytes: 0,
            sizes: Histogram::new(size_sigfigs.clamp(1, 5))
                .unwrap_or_else(|_| unreachable!("1 to 5 significant figures is valid")),
            min_size: u64::MAX,
            max_size: 0,
            inlined_into: Vec::new(),
            user: None,
            via: None,
            also_counts: HashMap::new(),
        });
        if let Some(also) = also {
            let at = (also.function.as_str().into(), also.file.as_str().into(), also.line);
            *entry.also_counts.entry(at).or_default() += count;
        }
        if let Some(outer) = inlined_into(&locations, runtime_frames) {
            let at = (outer.function.as_str().into(), outer.file.as_str().into(), outer.line);
            if entry.inlined_into.len() < MAX_INLINED_INTO && !entry.inlined_into.contains(&at) {
                entry.inlined_into.push(at);
            }
        }
        entry.allocations = entry.allocations.saturating_add(count);
        entry.bytes = entry.bytes.saturating_add(bytes);
        entry.min_size = entry.min_size.min(key.size);
        entry.max_size = entry.max_size.max(key.size);
        // Auto-resizing histograms accept any value; a failure would only lose the sizes.
        let _ = entry.sizes.record_n(key.size, count);
        samples.push(Sample {
            locations,
            runtime_frames,
            type_name,
            kind,
            size: key.size,
            count,
        });
    }
    symbols.build_done();
    let mut callsites: Vec<Callsite> = by_callsite
        .into_values()
        .map(|c| c.with_other_frame(grouping))
        .collect();
    callsites.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.allocations.cmp(&a.allocations))
            .then_with(|| a.key.cmp(&b.key))
    });
    Profile {
        mode,
        stats,
        totals,
        callsites,
        samples,
        grouping,
    }
}

impl Profile {
    /// What was added between `earlier` and this profile (both cumulative, of the same
    /// process): each full stack's count minus what it was then. Callsites are left empty; the
    /// totals are the samples' sums. For pprof deltas (`/debug/pprof/allocs?seconds=N`).
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        fn key(s: &Sample) -> (Vec<u64>, Option<&str>, Kind, u64) {
            (
                s.locations.iter().map(|(pc, _)| *pc).collect(),
                s.type_name.as_deref(),
                s.kind,
                s.size,
            )
        }
        let mut before: HashMap<_, u64> = HashMap::new();
        for s in &earlier.samples {
            *before.entry(key(s)).or_insert(0) += s.count;
        }
        let mut totals = Totals {
            dropped: self.totals.dropped.saturating_sub(earlier.totals.dropped),
            ..Totals::default()
        };
        let mut samples = Vec::new();
        for s in &self.samples {
            let then = before.get(&key(s)).copied().unwrap_or(0);
            let count = s.count.saturating_sub(then);
            if count == 0 {
                continue;
            }
            totals.allocations = totals.allocations.saturating_add(count);
            totals.bytes = totals.bytes.saturating_add(count.saturating_mul(s.size));
            samples.push(Sample { count, ..s.clone() });
        }
        Self {
            mode: self.mode,
            stats: self.stats,
            totals,
            callsites: Vec::new(),
            samples,
            grouping: self.grouping,
        }
    }
}

/// Logical frames of an allocation, innermost first, as the frames of each pc: the probed
/// function (from the stack's first pc), then its caller (from the return address the probe
/// read, which the frame-pointer walk misses at function entry), then the rest of the walk.
///
/// The walk ends where Go's own heap-profile unwinder ends (`runtime.callers`, see
/// [`Unwind`]), so that stacks and callsites agree with Go's profile: after the frame of a
/// function that switches stacks or tops one (`runtime.systemstack`, `mcall`, `mstart`), and
/// before the first pc that is not Go code. The frame-pointer chain goes on past
/// `systemstack` into the goroutine that called it, but what runs on the system stack (the
/// `runtime.g` that `gcStart` allocates for its mark workers, say) is the runtime's doing, not
/// that goroutine's line.
pub fn expand<S: Symbols + ?Sized>(stack: &[u64], return_address: u64, symbols: &mut S) -> Vec<(u64, Arc<[Frame]>)> {
    let mut locations = Vec::with_capacity(stack.len() + 1);
    if let Some(&probed) = stack.first() {
        locations.push((probed, symbols.frames(probed, false)));
    }
    // The probed function's caller, always Go: it called an allocation entry point.
    locations.push((return_address, symbols.frames(return_address, true)));
    if symbols.unwind(return_address.saturating_sub(1)) == Unwind::StopAfter {
        return locations;
    }
    for &pc in stack.iter().skip(1) {
        // A return address belongs to the call before it.
        let unwind = symbols.unwind(pc.saturating_sub(1));
        if unwind == Unwind::NotGo {
            break;
        }
        locations.push((pc, symbols.frames(pc, true)));
        if unwind == Unwind::StopAfter {
            break;
        }
    }
    locations
}

/// The frame the callsite (logical frame number `callsite_depth`, innermost first) was inlined
/// into: the outermost logical frame of the same instruction, when that is not the callsite.
fn inlined_into(locations: &[(u64, Arc<[Frame]>)], callsite_depth: usize) -> Option<&Frame> {
    let mut depth = 0;
    for (_, frames) in locations {
        if callsite_depth < depth + frames.len() {
            return (callsite_depth + 1 < depth + frames.len())
                .then(|| frames.last())
                .flatten();
        }
        depth += frames.len();
    }
    None
}

/// The first frame outside the runtime, the kind named by the runtime function it called, and
/// how many logical frames above it are the runtime's. Allocations the runtime makes for itself
/// (no frame outside it) are attributed to their outermost frame, with nothing left out.
/// The first frame of the main module from the callsite (logical frame `callsite_depth`)
/// outwards, when the callsite itself is not in it.
fn first_main_module_frame(
    locations: &[(u64, Arc<[Frame]>)],
    callsite_depth: usize,
    symbols: &dyn Symbols,
) -> Option<Frame> {
    let mut frames = locations.iter().flat_map(|(_, f)| f.iter()).skip(callsite_depth);
    let callsite = frames.next()?;
    if callsite.runtime || symbols.in_main_module(&callsite.function) {
        return None;
    }
    frames
        .find(|f| !f.runtime && symbols.in_main_module(&f.function))
        .cloned()
}

fn callsite_and_kind(locations: &[(u64, Arc<[Frame]>)]) -> (Frame, Kind, usize) {
    let mut kind = None;
    let mut outermost = None;
    // Set once the walk passes a second malloc frame: what lies beyond is an allocation that
    // was in progress when this one was made for the runtime's own needs (a `runtime.sudog`
    // to wait on `work.startSema` when `mallocgc` starts a GC cycle), so its front doors do
    // not name this allocation's kind.
    let mut kind_settled = false;
    for (depth, frame) in locations.iter().flat_map(|(_, f)| f.iter()).enumerate() {
        if !frame.runtime {
            return (frame.clone(), kind.unwrap_or(Kind::Other), depth);
        }
        if depth > 0 && frame.function.starts_with(gobin::MALLOC_IMPLEMENTATION_PREFIX) {
            kind_settled = true;
        }
        // The runtime frames between the probe and the callsite: the one nearest the
        // callsite that is an allocation front door names the kind (`makemap` rather than
        // the `newobject` it calls).
        if !kind_settled && let Some(k) = Kind::of_runtime_function(&frame.function) {
            kind = Some(k);
        }
        outermost = Some(frame);
    }
    let site = outermost.cloned().unwrap_or_else(|| Frame {
        function: "?".to_owned(),
        file: "?".to_owned(),
        line: 0,
        inlined: false,
        runtime: false,
    });
    (site, Kind::Other, 0)
}

impl Sample {
    /// The logical frames from the callsite outwards (all of them when the whole stack is the
    /// runtime's), with the pc each belongs to: what Go's own heap profiles show.
    pub fn user_frames(&self) -> impl Iterator<Item = (u64, &Frame)> {
        self.locations
            .iter()
            .flat_map(|(pc, frames)| frames.iter().map(move |f| (*pc, f)))
            .skip(self.runtime_frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: u32) -> Frame {
        Frame {
            function: function.to_owned(),
            file: format!("/src/{}.go", package_of(function)),
            line,
            inlined: false,
            runtime: is_runtime(function),
        }
    }

    /// One pc per frame, no inlining.
    fn stack(frames: Vec<Frame>) -> Vec<(u64, Arc<[Frame]>)> {
        frames
            .into_iter()
            .zip(1..)
            .map(|(f, pc)| (pc, Arc::from(vec![f])))
            .collect()
    }

    #[test]
    fn callsite_is_the_first_frame_outside_the_runtime() {
        let frames = stack(vec![
            frame("runtime.mallocgc", 1),
            frame("runtime.growslice", 2),
            frame("main.build", 16),
            frame("main.main", 30),
        ]);
        let (site, kind, runtime_frames) = callsite_and_kind(&frames);
        assert_eq!(
            (site.function.as_str(), site.line, kind, runtime_frames),
            ("main.build", 16, Kind::Growslice, 2)
        );
    }

    #[test]
    fn kinds_follow_the_runtime_front_door() {
        let kind = |names: &[&str]| {
            let mut frames: Vec<Frame> = names.iter().map(|n| frame(n, 1)).collect();
            frames.push(frame("main.f", 9));
            callsite_and_kind(&stack(frames)).1
        };
        assert_eq!(kind(&["runtime.mallocgc", "runtime.newobject"]), Kind::New);
        assert_eq!(kind(&["runtime.mallocgcSmallNoScanSC3"]), Kind::New);
        assert_eq!(kind(&["runtime.mallocgc", "runtime.makeslice"]), Kind::Makeslice);
        assert_eq!(
            kind(&[
                "runtime.mallocgc",
                "runtime.newarray",
                "internal/runtime/maps.newarray",
                "internal/runtime/maps.(*Map).growToSmall",
                "runtime.mapassign_faststr"
            ]),
            Kind::Makemap
        );
        assert_eq!(
            kind(&[
                "runtime.mallocgc",
                "runtime.rawstring",
                "runtime.concatstrings",
                "runtime.concatstring2"
            ]),
            Kind::String
        );
        assert_eq!(kind(&["runtime.mallocgc", "runtime.convT"]), Kind::ConvT);
        assert_eq!(kind(&["runtime.mallocgc"]), Kind::Other);
        assert_eq!(kind(&["runtime.mallocgc", "runtime.makechan"]), Kind::Other);
        // Made for the runtime while another allocation was in progress (a sudog to wait on
        // work.startSema when that allocation starts a GC cycle): charged to the same line, as
        // Go's profile does, but its own kind.
        assert_eq!(
            kind(&[
                "runtime.mallocgc",
                "runtime.newobject",
                "runtime.acquireSudog",
                "runtime.semacquire1",
                "runtime.gcStart",
                "runtime.mallocgc",
                "runtime.makeslice"
            ]),
            Kind::New
        );
    }

    /// Runtime functions linked into other packages keep those packages' names; gobin marks
    /// them as the runtime's ([`Frame::runtime`]), and the callsite is their caller.
    #[test]
    fn linknamed_runtime_functions_are_runtime_frames() {
        let at = |function: &str, runtime: bool| Frame {
            function: function.to_owned(),
            file: "runtime/malloc.go".to_owned(),
            line: 1,
            inlined: false,
            runtime,
        };
        let frames = stack(vec![
            at("runtime.mallocgc", true),
            at("internal/bytealg.MakeNoZero", true),
            at("strings.(*Builder).grow", false),
            at("main.f", false),
        ]);
        let (site, kind, _) = callsite_and_kind(&frames);
        assert_eq!(
            (site.function.as_str(), kind),
            ("strings.(*Builder).grow", Kind::Makeslice)
        );
        for (linknamed, caller, want) in [
            ("reflect.unsafe_New", "reflect.New", Kind::New),
            ("reflect.unsafe_NewArray", "reflect.MakeSlice", Kind::Makeslice),
            ("reflect.makemap", "reflect.MakeMapWithSize", Kind::Makemap),
            ("reflect.mapassign_faststr0", "reflect.Value.SetMapIndex", Kind::Makemap),
        ] {
            let frames = stack(vec![
                at("runtime.mallocgc", true),
                at(linknamed, true),
                at(caller, false),
            ]);
            let (site, kind, runtime_frames) = callsite_and_kind(&frames);
            assert_eq!((site.function.as_str(), kind, runtime_frames), (caller, want, 2));
        }
    }

    /// Go's unwinder stops after `systemstack`: what the runtime allocates on the system stack
    /// is not charged to the goroutine below it.
    #[test]
    fn the_walk_stops_where_go_stops() {
        struct Stops(FakeSymbols);
        impl Symbols for Stops {
            fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
                self.0.frames(pc, return_address)
            }
            fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
                self.0.type_name(address)
            }
            fn unwind(&mut self, pc: u64) -> Unwind {
                match pc {
                    0x4ff => Unwind::StopAfter,
                    0x7ff => Unwind::NotGo,
                    _ => Unwind::Continue,
                }
            }
        }
        let mut symbols = Stops(FakeSymbols(HashMap::from([
            (0x100, vec![frame("runtime.mallocgc", 1)]),
            (0x1ff, vec![frame("runtime.newobject", 2)]),
            (0x2ff, vec![frame("runtime.malg", 3)]),
            (0x3ff, vec![frame("runtime.newproc1", 4)]),
            (0x4ff, vec![frame("runtime.systemstack", 5)]),
            (0x5ff, vec![frame("main.grow", 64)]),
            (0x6ff, vec![frame("main.cgoCallback", 7)]),
            (0x9ff, vec![frame("main.main", 9)]),
        ])));
        let names = |locations: Vec<(u64, Arc<[Frame]>)>| -> Vec<String> {
            locations
                .iter()
                .flat_map(|(_, f)| f.iter())
                .map(|f| f.function.clone())
                .collect()
        };
        let on_system_stack = expand(&[0x100, 0x300, 0x400, 0x500, 0x600], 0x200, &mut symbols);
        assert_eq!(
            names(on_system_stack.clone()),
            [
                "runtime.mallocgc",
                "runtime.newobject",
                "runtime.malg",
                "runtime.newproc1",
                "runtime.systemstack"
            ]
        );
        let (site, kind, _) = callsite_and_kind(&on_system_stack);
        assert_eq!((site.function.as_str(), kind), ("runtime.systemstack", Kind::Other));
        // C code below a cgo callback ends the stack before it.
        let through_c = expand(&[0x100, 0x800, 0xa00], 0x700, &mut symbols);
        assert_eq!(names(through_c), ["runtime.mallocgc", "main.cgoCallback"]);
    }

    /// Symbols of a made-up process: pcs map to fixed frames.
    struct FakeSymbols(HashMap<u64, Vec<Frame>>);

    impl Symbols for FakeSymbols {
        fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
            let pc = if return_address { pc - 1 } else { pc };
            self.0.get(&pc).cloned().unwrap_or_default().into()
        }
        fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
            (address == 0x5000).then(|| "main.Point".into())
        }
    }

    #[test]
    fn rows_by_the_first_frame_or_by_the_main_modules() {
        // render (main) → WriteString → grow (strings) → growslice → mallocgc; and, from
        // another line of main, the same grow.
        let mut symbols = FakeSymbols(HashMap::from([
            (0x100, vec![frame("runtime.mallocgc", 1)]),
            (0x1ff, vec![frame("runtime.growslice", 2)]),
            (0x2ff, vec![frame("strings.(*Builder).grow", 3)]),
            (0x3ff, vec![frame("strings.(*Builder).WriteString", 4)]),
            (0x4ff, vec![frame("main.render", 40)]),
            (0x5ff, vec![frame("main.render", 50)]),
            (0x6ff, vec![frame("main.main", 9)]),
        ]));
        let key = |stack| AllocKey {
            stack,
            return_address: 0x200,
            type_address: 0,
            size: 16,
        };
        let counts = [(key(1), 10), (key(2), 3)];
        let stack_of = |id| {
            Some(if id == 1 {
                vec![0x100, 0x300, 0x400, 0x500, 0x700]
            } else {
                vec![0x100, 0x300, 0x400, 0x600, 0x700]
            })
        };
        let first = build(
            Mode::Exact,
            ProbeStats::default(),
            &counts,
            stack_of,
            &mut symbols,
            3,
            Grouping::First,
        );
        assert_eq!(first.callsites.len(), 1);
        let row = &first.callsites[0];
        assert_eq!(
            (&*row.key.function, row.key.line, row.allocations),
            ("strings.(*Builder).grow", 3, 13)
        );
        let user = row.user.as_ref().expect("the main module's frame");
        assert_eq!((&*user.0, user.2), ("main.render", 40), "the most frequent one");
        assert_eq!(row.via, None);

        let by_user = build(
            Mode::Exact,
            ProbeStats::default(),
            &counts,
            stack_of,
            &mut symbols,
            3,
            Grouping::User,
        );
        let rows: Vec<(&str, u32, u64)> = by_user
            .callsites
            .iter()
            .map(|c| (&*c.key.function, c.key.line, c.allocations))
            .collect();
        assert_eq!(rows, [("main.render", 40, 10), ("main.render", 50, 3)]);
        for c in &by_user.callsites {
            let via = c.via.as_ref().expect("the library line");
            assert_eq!((&*via.0, via.2), ("strings.(*Builder).grow", 3));
            assert_eq!(c.key.kind, Kind::Growslice);
            assert_eq!(c.user, None);
        }
    }

    #[test]
    fn profile_joins_stack_return_address_and_type() {
        let mut symbols = FakeSymbols(HashMap::from([
            (0x100, vec![frame("runtime.mallocgc", 1)]),
            (0x1ff, vec![frame("runtime.newobject", 2)]),
            (0x2ff, vec![frame("main.build", 16)]),
            (0x3ff, vec![frame("main.main", 30)]),
        ]));
        let key = |size, type_address| AllocKey {
            stack: 7,
            return_address: 0x200,
            type_address,
            size,
        };
        let counts = [
            (key(24, 0x5000), 10),
            (key(24, 0), 5),
            (key(48, 0x5000), 1),
            (key(100_001, 0x6000), 3),
        ];
        let stats = ProbeStats {
            dropped_counts_map: 2,
            ..ProbeStats::default()
        };
        let profile = build(
            Mode::Exact,
            stats,
            &counts,
            |_| Some(vec![0x100, 0x300, 0x400]),
            &mut symbols,
            3,
            Grouping::First,
        );
        assert_eq!(
            profile.totals,
            Totals {
                allocations: 19,
                bytes: 24 * 15 + 48 + 300_003,
                dropped: 2
            }
        );
        assert_eq!(profile.callsites.len(), 3);
        // Sizes the histogram cannot hold exactly are still reported exactly when constant.
        let big = &profile.callsites[0];
        assert_eq!(big.key.type_name.as_deref(), Some("<unknown type at 0x6000>"));
        assert_eq!(
            (big.min_size, big.size_at_quantile(0.5), big.max_size),
            (100_001, 100_001, 100_001)
        );
        let typed = &profile.callsites[1];
        assert_eq!(&*typed.key.function, "main.build");
        assert_eq!(typed.key.line, 16);
        assert_eq!(typed.key.type_name.as_deref(), Some("main.Point"));
        assert_eq!(typed.key.kind, Kind::New);
        assert_eq!((typed.allocations, typed.bytes), (11, 24 * 10 + 48));
        assert_eq!((typed.min_size, typed.max_size), (24, 48));
        assert_eq!(typed.size_at_quantile(0.5), 24);
        assert_eq!(profile.callsites[2].key.type_name, None);
        let sample = &profile.samples[0];
        let names: Vec<&str> = sample
            .locations
            .iter()
            .flat_map(|(_, f)| f.iter())
            .map(|f| f.function.as_str())
            .collect();
        assert_eq!(
            names,
            ["runtime.mallocgc", "runtime.newobject", "main.build", "main.main"]
        );
        let user: Vec<(u64, &str)> = sample.user_frames().map(|(pc, f)| (pc, f.function.as_str())).collect();
        assert_eq!(user, [(0x300, "main.build"), (0x400, "main.main")]);
    }
}
