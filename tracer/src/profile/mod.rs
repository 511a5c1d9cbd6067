//! From raw probe counts to an allocation profile: full stacks with inlined frames expanded,
//! the callsite (the first frame outside the runtime), the kind of allocation, and a histogram
//! of sizes per (callsite, type, kind).
//!
//! Pure computation over a [`Symbols`] source, so it is tested without a kernel.

use std::collections::HashMap;
use std::sync::Arc;

use gobin::{Frame, Unwind};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tracer_common::{AllocKey, NO_STACK, ProbeStats};

mod kind;

pub use self::kind::Kind;
use crate::mode::Mode;

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

/// Which frame of an allocation's stack names its row (`--callsite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grouping {
    /// The first frame outside the runtime, as Go's heap profile names it.
    #[default]
    First,
    /// The first frame in the program's own code (its main module), else the first frame.
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
    /// Objects of this callsite alive now (estimated; 0 where in-use is not tracked, see
    /// [`Profile::inuse`]).
    pub inuse_objects: u64,
    /// Their bytes.
    pub inuse_bytes: u64,
    /// Of those, the bytes of objects known to have outlived a complete GC cycle (sampled
    /// before the mark termination two cycles back): no unswept garbage among them.
    pub inuse_settled_bytes: u64,
}

/// How many inlining positions a callsite keeps.
pub const MAX_INLINED_INTO: usize = 4;

impl Callsite {
    /// A row with nothing counted yet, its size histogram to `size_sigfigs` figures.
    pub(crate) fn empty(key: CallsiteKey, size_sigfigs: u8) -> Self {
        Self {
            key,
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
            inuse_objects: 0,
            inuse_bytes: 0,
            inuse_settled_bytes: 0,
        }
    }

    /// Sets [`Self::user`] or [`Self::via`] (by `grouping`) to the most frequent candidate.
    fn with_other_frame(mut self, grouping: Grouping) -> Self {
        // A row with only in-use objects (their allocations were not counted) has no sizes.
        if self.min_size > self.max_size {
            self.min_size = 0;
        }
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
    /// Of those, and of earlier ones, the objects alive now (0 where in-use is not tracked).
    pub inuse: u64,
}

/// Allocations and bytes recorded, and allocations the probes saw but could not record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Heap allocations recorded.
    pub allocations: u64,
    /// Bytes requested by them.
    pub bytes: u64,
    /// Allocations seen but not recorded (map full, stack unreadable, …).
    pub dropped: u64,
}

/// In-use heap: the objects alive now, as go-sampler's tracked samples tell it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inuse {
    /// Whether in-use figures are known; when not, every in-use figure is 0 and `note` says
    /// why.
    pub available: bool,
    /// What the figures cover, or why there are none, in one sentence.
    pub note: String,
    /// Estimated objects alive now, over all callsites.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Go heap-profile samples alive now, as tracked: what the estimates are scaled from.
    pub tracked_samples: u64,
    /// GC cycles that ended their marking since attach.
    #[serde(default)]
    pub gc_cycles: u64,
    /// What the in-use probes did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<InuseCounters>,
}

/// [`tracer_common::InuseStats`], for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InuseCounters {
    /// Sampled objects that started being tracked.
    pub tracked: u64,
    /// Tracked objects the runtime freed.
    pub freed: u64,
    /// Profile specials freed whose object was not tracked (sampled before attach, or not
    /// tracked because the map was full).
    pub freed_untracked: u64,
    /// Sampled objects not tracked because gotrace's map of live objects was full.
    pub dropped_full: u64,
    /// Samples whose special could not be paired with go-sampler's hit on the same thread.
    pub unpaired: u64,
    /// Tracked objects replaced by a new one at the same address (their free was missed).
    pub replaced: u64,
    /// Frees of other specials (finalizers, cleanups, weak handles), ignored.
    pub other_specials: u64,
}

impl From<tracer_common::InuseStats> for InuseCounters {
    fn from(s: tracer_common::InuseStats) -> Self {
        Self {
            tracked: s.tracked,
            freed: s.freed,
            freed_untracked: s.freed_untracked,
            dropped_full: s.dropped_full,
            unpaired: s.unpaired,
            replaced: s.replaced,
            other_specials: s.other_specials,
        }
    }
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
    /// In-use heap; its totals are the callsites' sums.
    pub inuse: Inuse,
}

/// Builds the profile from cumulative counts. `stack_of` gives the user stack of a stack key
/// (innermost first, starting at the probed pc).
///
/// `size_sigfigs` is the precision of each callsite's size histogram (1 to 5 significant
/// figures): 3 for reports; a sidecar that shows no quantiles keeps it at 1, since a
/// 3-figure histogram takes tens of KiB per callsite.
///
/// `inuse` holds the estimated objects alive now per key (empty where in-use is not tracked);
/// a key may be in either or both.
#[expect(clippy::too_many_arguments, reason = "the inputs of a profile, each different")]
pub fn build(
    mode: Mode,
    stats: ProbeStats,
    counts: &[(AllocKey, u64)],
    inuse: &InuseInput<'_>,
    mut stack_of: impl FnMut(u64) -> Option<Vec<u64>>,
    symbols: &mut dyn Symbols,
    size_sigfigs: u8,
    grouping: Grouping,
) -> Profile {
    let mut rows = Rows {
        by_callsite: HashMap::new(),
        samples: Vec::with_capacity(counts.len() + inuse.untracked.len()),
        totals: Totals {
            dropped: stats.dropped(),
            ..Totals::default()
        },
        inuse: Inuse::default(),
        grouping,
        size_sigfigs,
    };
    for (key, count, alive) in with_inuse(counts, inuse.by_key) {
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
        rows.add(locations, type_name, key.size, count, alive, symbols);
    }
    for untracked in inuse.untracked {
        let type_name = Some(Arc::from(UNKNOWN_TYPE));
        rows.add(
            untracked.locations.clone(),
            type_name,
            untracked.size,
            0,
            // Objects from before attach are known only as the runtime counts them: as alive
            // until swept, like the tracked ones; they count as settled.
            (untracked.objects, untracked.objects),
            symbols,
        );
    }
    symbols.build_done();
    let mut callsites: Vec<Callsite> = rows
        .by_callsite
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
        totals: rows.totals,
        callsites,
        samples: rows.samples,
        grouping,
        inuse: rows.inuse,
    }
}

/// The locations of a stack as the runtime's own records keep it: one logical frame per pc
/// (inlined calls already expanded, each as its call pc + 1), so each pc is symbolized to its
/// innermost frame only.
pub fn logical_frames(stack: &[u64], symbols: &mut dyn Symbols) -> Locations {
    stack
        .iter()
        .map(|&pc| {
            let frames = symbols.frames(pc, true);
            let innermost: Arc<[Frame]> = frames.iter().take(1).cloned().collect();
            (pc, innermost)
        })
        .collect()
}

/// What in-use heap adds to a profile: per key of the counts, the estimated objects alive now
/// (tracked by the probes), and the objects alive that the probes did not track.
#[derive(Debug, Default, Clone, Copy)]
pub struct InuseInput<'a> {
    /// Per key (which may or may not be among the counts), the estimated objects alive now
    /// and, of them, those known to have outlived a complete GC cycle.
    pub by_key: &'a [(AllocKey, u64, u64)],
    /// Alive but not tracked: sampled before gotrace attached, from the runtime's records.
    pub untracked: &'a [UntrackedInuse],
}

/// Objects alive now that the probes did not track (see [`InuseInput::untracked`]).
#[derive(Debug, Clone)]
pub struct UntrackedInuse {
    /// Their stack, one logical frame per pc (the runtime's own records expand inlining).
    pub locations: Locations,
    /// Bytes per object.
    pub size: u64,
    /// Estimated objects.
    pub objects: u64,
}

/// The rows of a profile while it is built.
struct Rows {
    by_callsite: HashMap<CallsiteKey, Callsite>,
    samples: Vec<Sample>,
    totals: Totals,
    inuse: Inuse,
    grouping: Grouping,
    size_sigfigs: u8,
}

impl Rows {
    /// Adds `count` allocations and `alive` objects alive now (and, of them, settled: known to
    /// have outlived a complete GC cycle), of `object_size` bytes, with this stack.
    fn add(
        &mut self,
        locations: Locations,
        type_name: Option<Arc<str>>,
        object_size: u64,
        count: u64,
        (alive, settled): (u64, u64),
        symbols: &dyn Symbols,
    ) {
        let (callsite, kind, runtime_frames) = callsite_and_kind(&locations);
        let user = first_main_module_frame(&locations, runtime_frames, symbols);
        let (site, also) = match (self.grouping, user) {
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
        let bytes = object_size.saturating_mul(count);
        self.totals.allocations = self.totals.allocations.saturating_add(count);
        self.totals.bytes = self.totals.bytes.saturating_add(bytes);
        let size_sigfigs = self.size_sigfigs;
        let entry = self
            .by_callsite
            .entry(callsite_key.clone())
            .or_insert_with(|| Callsite::empty(callsite_key, size_sigfigs));
        let alive_bytes = object_size.saturating_mul(alive);
        entry.inuse_objects = entry.inuse_objects.saturating_add(alive);
        entry.inuse_bytes = entry.inuse_bytes.saturating_add(alive_bytes);
        entry.inuse_settled_bytes = entry
            .inuse_settled_bytes
            .saturating_add(object_size.saturating_mul(settled));
        self.inuse.objects = self.inuse.objects.saturating_add(alive);
        self.inuse.bytes = self.inuse.bytes.saturating_add(alive_bytes);
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
        if count > 0 {
            entry.min_size = entry.min_size.min(object_size);
            entry.max_size = entry.max_size.max(object_size);
            // Auto-resizing histograms accept any value; a failure would only lose the sizes.
            let _ = entry.sizes.record_n(object_size, count);
        }
        self.samples.push(Sample {
            locations,
            runtime_frames,
            type_name,
            kind,
            size: object_size,
            count,
            inuse: alive,
        });
    }
}

/// Each key with its count and its objects alive now: the counted keys, then the keys only
/// alive (their allocations were counted under a key since folded away, or not at all).
fn with_inuse(counts: &[(AllocKey, u64)], inuse: &[(AllocKey, u64, u64)]) -> Vec<(AllocKey, u64, (u64, u64))> {
    if inuse.is_empty() {
        return counts.iter().map(|&(key, count)| (key, count, (0, 0))).collect();
    }
    let mut alive: HashMap<AllocKey, (u64, u64)> = inuse.iter().map(|&(key, n, settled)| (key, (n, settled))).collect();
    let mut out: Vec<(AllocKey, u64, (u64, u64))> = counts
        .iter()
        .map(|&(key, count)| (key, count, alive.remove(&key).unwrap_or((0, 0))))
        .collect();
    out.extend(alive.into_iter().map(|(key, n)| (key, 0, n)));
    out
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
            if count == 0 && s.inuse == 0 {
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
            // In-use is a level, not a flow: the later profile's stands.
            inuse: self.inuse.clone(),
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
mod tests;
