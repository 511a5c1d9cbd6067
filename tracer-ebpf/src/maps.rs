//! Every map of the probes. User space (`tracer/src/probes.rs`) finds them by name (the
//! statics' names, `tracer_common::*_MAP`), so the names, types and sizes here are part of the
//! contract with it.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_common::{
    AllocKey, COUNTS_MAP_ENTRIES, CacheClass, GC_TIMES_SLOTS, InuseStats, LAST_REFILL_MAP_ENTRIES, LIVE_MAP_ENTRIES,
    LiveObject, PENDING_MAP_ENTRIES, PendingSample, ProbeConfig, ProbeStats, STACKS_MAP_ENTRIES, UserStack,
};
use tracer_ebpf::{
    mspan::CachedSpans,
    paged::StackCopy,
    window::{GOROUTINE_SLOTS, Goroutine, StackWindow},
};

/// Written once by user space before the probes are attached.
#[map]
pub static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// What the probe did, per CPU (one slot).
#[map]
pub static STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(1, 0);

/// User stacks by content hash; [`AllocKey::stack`] points here.
#[map]
pub static STACKS: HashMap<u64, UserStack> = HashMap::with_max_entries(STACKS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Where the probe walks the stack: too big for the 512-byte BPF stack, so a per-CPU slot.
#[map]
pub static STACK_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Allocation counts by (stack, caller, type, size). Per-CPU, so concurrent allocations on
/// different CPUs never contend for a value; user space sums the CPUs when it reads.
#[map]
pub static COUNTS: PerCpuHashMap<AllocKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// The same while [`EPOCH`] is 1; user space drains whichever map the probes are not writing.
#[map]
pub static COUNTS_ALT: PerCpuHashMap<AllocKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// The key of the latest refill of each P's cache and span class: whoever brought a span into
/// the cache is charged, at `releaseAll`, with the objects taken from it since.
#[map]
pub static LAST_REFILL: HashMap<CacheClass, AllocKey> =
    HashMap::with_max_entries(LAST_REFILL_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Which counts map the probes write to: 0 for [`COUNTS`], 1 for [`COUNTS_ALT`].
#[map]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// [`tracer_common::PAUSED_MAP`]: 1 while span mode's duty cycle has the sampling probes off.
#[map]
pub static PAUSED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the sampling probes are paused (see [`PAUSED`]): they then return at once, counting
/// nothing, not even their hit.
#[inline(always)]
pub fn paused() -> bool {
    PAUSED.get(0).copied() == Some(1)
}

/// [`tracer_common::SAMPLER_RATE_MAP`]: `runtime.MemProfileRate` at the latest Go sample.
#[map]
pub static SAMPLER_RATE: Array<u64> = Array::with_max_entries(1, 0);

/// Where `span_release` copies `mcache.alloc` (per CPU: 1 KiB is too big for the BPF stack).
/// A release that preempts another on the same CPU overwrites it, and the preempted one then
/// charges the other P's spans a second time: rare (uprobe programs are seldom preempted, and
/// releases come once per P per GC cycle), and bounded by one P's cached spans.
#[map]
pub static CACHED_SPANS: PerCpuArray<CachedSpans> = PerCpuArray::with_max_entries(1, 0);

/// Where a walk copies the stack: per CPU, a page is too big for the BPF stack. A run that
/// preempts a walk on the same CPU may copy its own stack here; it also claims the scratch slot
/// (see [`tracer_ebpf::frames::claim`]), so the preempted walk's stack is then not stored.
#[map]
pub static STACK_PAGE: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the goroutines that allocated there lately.
///
/// Nothing here is trusted: a slot may be stale (the stack moved, or a run of the probe that
/// preempted this one rewrote it), which costs speed, never a wrong count. A copy of the stack
/// that runs into unmapped memory because `hi` is stale fails and is redone a page at a time;
/// a replayed walk is checked against the stack as it is now, record by record.
#[map]
pub static GOROUTINES: PerCpuArray<Goroutine> = PerCpuArray::with_max_entries(GOROUTINE_SLOTS, 0);

/// Exact mode's copy of the live stack, one per CPU ([`StackWindow`]).
#[map]
pub static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);

/// [`tracer_common::LIVE_MAP`]: go-sampler's sampled objects still alive, by address. Never
/// emptied by user space: entries leave when the runtime frees their object.
#[map]
pub static LIVE: HashMap<u64, LiveObject> = HashMap::with_max_entries(LIVE_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// [`tracer_common::PENDING_MAP`]: per thread, the sample `go_sample` just recorded, until
/// `setprofilebucket` shows the runtime gave it a profile special. LRU: a thread that exits
/// with a sample pending must not keep its slot for good.
#[map]
pub static PENDING: LruHashMap<u32, PendingSample> = LruHashMap::with_max_entries(PENDING_MAP_ENTRIES, 0);

/// [`tracer_common::INUSE_STATS_MAP`]: what the in-use programs did, per CPU (one slot).
#[map]
pub static INUSE_STATS: PerCpuArray<InuseStats> = PerCpuArray::with_max_entries(1, 0);

/// [`tracer_common::GC_TIMES_MAP`]: the count of GC cycles seen and the latest ones' times.
#[map]
pub static GC_TIMES: Array<u64> = Array::with_max_entries(GC_TIMES_SLOTS, 0);
