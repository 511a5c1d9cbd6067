//! Data shared between gotrace's eBPF probes (`tracer-ebpf`) and user space (`tracer`).
//!
//! Both sides see the same bytes: user space writes the configuration into a map, the probe
//! writes counts into maps, and each side copies values across with the `bpf(2)` syscall. So
//! every type here is `#[repr(C)]`, made only of fixed-width integers, with any padding spelled
//! out as a named field that is always zero. Implicit padding would be uninitialised on the
//! probe side (the verifier rejects passing uninitialised stack bytes to map helpers, and for a
//! hash-map key it would make equal keys hash differently) and `bool` would make every other
//! byte value undefined behaviour on the user side.
#![no_std]

/// Name of the counting uprobe program (the `alloc_count` function in `tracer-ebpf`). It goes on
/// every counting entry point (`runtime.mallocgc` and Go 1.27's size-specialised mallocs).
pub const ALLOC_COUNT_PROGRAM: &str = "alloc_count";

/// Name of the Go-sampler program (`go_sample` in `tracer-ebpf`). It goes on
/// `runtime.profilealloc`, which the runtime calls only for the allocations its own heap
/// profiler samples (one per `runtime.MemProfileRate` bytes on average, a Poisson process).
pub const GO_SAMPLE_PROGRAM: &str = "go_sample";
/// Name of the span-refill program (`span_refill`). It goes on `runtime.(*mcache).refill`, which
/// runs when a P's cached span of one size class is used up: one hit stands for every object
/// the cache handed out from that span.
pub const SPAN_REFILL_PROGRAM: &str = "span_refill";
/// Name of the large-allocation program (`large_alloc`), on `runtime.(*mcache).allocLarge`:
/// objects over 32 KiB get a span each and never pass `refill`.
pub const LARGE_ALLOC_PROGRAM: &str = "large_alloc";

/// Name of the empty program (`empty_probe`): it does nothing. `cargo xtask bench` puts it
/// where the counting probe goes, and on the functions' first instructions, to measure what
/// the trap alone costs there: the floor any probe at that address pays.
pub const EMPTY_PROGRAM: &str = "empty_probe";

/// Name of the span-release program (`span_release`), on `runtime.(*mcache).releaseAll`: at
/// every GC cycle each P hands its cached spans back, and the objects it took from the partly
/// used ones never pass `refill`. They are counted against the stack of the refill that
/// brought the span in ([`LAST_REFILL_MAP`]).
pub const SPAN_RELEASE_PROGRAM: &str = "span_release";
/// Name of the last-refill map: a `HASH` from [`CacheClass`] to the [`AllocKey`] of the
/// latest refill of that P's cache and span class.
pub const LAST_REFILL_MAP: &str = "LAST_REFILL";
/// Capacity of [`LAST_REFILL_MAP`]: 136 span classes for each of 480 Ps (`GOMAXPROCS`). Not
/// preallocated: it costs memory for the (P, class) pairs a program really uses.
pub const LAST_REFILL_MAP_ENTRIES: u32 = 136 * 480;

/// Name of the in-use program on `runtime.setprofilebucket(p, b)` (`inuse_bucket`): the
/// heap-profile sample that go-sampler's probe just recorded on this thread got its profile
/// special, so it is tracked in [`LIVE_MAP`] until the runtime frees it.
pub const INUSE_BUCKET_PROGRAM: &str = "inuse_bucket";
/// Name of the in-use program on `runtime.freeSpecial(s, p, size)` (`inuse_free`): a profile
/// special's object died, and leaves [`LIVE_MAP`].
pub const INUSE_FREE_PROGRAM: &str = "inuse_free";
/// Name of the in-use program on `runtime.gcMarkTermination` (`inuse_gc`): the time of each
/// GC cycle's mark termination goes into [`GC_TIMES_MAP`].
pub const INUSE_GC_PROGRAM: &str = "inuse_gc";
/// Name of the GC-cycle map: an `ARRAY` of [`GC_TIMES_SLOTS`] `u64`s: slot 0 counts the
/// cycles seen, slot `1 + n % (GC_TIMES_SLOTS - 1)` holds the `bpf_ktime_get_ns` of cycle `n`.
pub const GC_TIMES_MAP: &str = "GC_TIMES";
/// Slots of [`GC_TIMES_MAP`]: the count and the latest seven cycles.
pub const GC_TIMES_SLOTS: u32 = 8;
/// Name of the live-object map: a `HASH` from a sampled object's address to its [`LiveObject`].
pub const LIVE_MAP: &str = "LIVE";
/// Capacity of [`LIVE_MAP`]: sampled objects tracked at once. At Go's default rate (one
/// sample per 512 KiB) that is a 32 GiB live heap; at `--set-mem-profile-rate 4096`, 256 MiB.
/// Not preallocated; a full map refuses new objects and counts them
/// ([`InuseStats::dropped_full`]). About 7 MiB of kernel memory when full.
pub const LIVE_MAP_ENTRIES: u32 = 1 << 16;
/// Name of the pending-sample map: a `LRU_HASH` from a thread id to the [`PendingSample`] its
/// latest go-sampler hit recorded, taken by [`INUSE_BUCKET_PROGRAM`].
pub const PENDING_MAP: &str = "PENDING";
/// Capacity of [`PENDING_MAP`]: threads with a sample in flight (least recently used go first).
pub const PENDING_MAP_ENTRIES: u32 = 4096;
/// Name of the in-use statistics map: a `PERCPU_ARRAY` with one [`InuseStats`] per CPU.
pub const INUSE_STATS_MAP: &str = "INUSE_STATS";

/// Name of the configuration map: an `ARRAY` with one [`ProbeConfig`].
pub const CONFIG_MAP: &str = "CONFIG";
/// Name of the epoch map: an `ARRAY` with one `u32`, 0 or 1, naming the counts map the probes
/// write to ([`COUNTS_MAP`] or [`COUNTS_ALT_MAP`]). User space flips it and drains the other.
pub const EPOCH_MAP: &str = "EPOCH";
/// Name of the pause map: an `ARRAY` with one `u32`. While it holds 1 the sampling probes
/// return at once: span mode's duty cycle sets it before it detaches them (detaching takes an
/// RCU grace period per probe, ~0.1 s, during which they still fire) and clears it once they
/// are attached again, so that the time they count is known to the millisecond.
pub const PAUSED_MAP: &str = "PAUSED";
/// Name of the statistics map: a `PERCPU_ARRAY` with one [`ProbeStats`] per CPU.
pub const STATS_MAP: &str = "STATS";
/// Name of the sampler-rate map: an `ARRAY` with one `u64`, the target's `runtime.MemProfileRate`
/// as the go-sampler probe read it at its latest sample (0 until then).
pub const SAMPLER_RATE_MAP: &str = "SAMPLER_RATE";
/// Name of the stack map: a `HASH` from a stack's 64-bit content hash to its [`UserStack`].
///
/// Not the kernel's `STACK_TRACE` map: that one keeps one stack per bucket and drops a new
/// stack whose id collides with a stored one, which by the birthday bound happens after a few
/// hundred distinct stacks in any reasonably sized map. A real hash map keyed by a 64-bit hash
/// of the frames only loses a stack when the map is full.
pub const STACKS_MAP: &str = "STACKS";
/// Name of the per-CPU scratch buffer the probe walks the stack into (one [`UserStack`]).
pub const STACK_SCRATCH_MAP: &str = "STACK_SCRATCH";
/// Name of the counts map: a `PERCPU_HASH` from [`AllocKey`] to a `u64` count.
pub const COUNTS_MAP: &str = "COUNTS";
/// Name of the second counts map, written while [`EPOCH_MAP`] holds 1.
///
/// Two maps so that user space can empty one while the probes fill the other: reading a key
/// and deleting it in a single map would lose whatever the probes add in between, and a map
/// that is never emptied grows with every stack and size the target ever uses.
pub const COUNTS_ALT_MAP: &str = "COUNTS_ALT";

/// Capacity of [`COUNTS_MAP`]: distinct (stack, caller, type, size) combinations. A full map
/// drops further new combinations and counts them in [`ProbeStats::dropped_counts_map`]. The
/// map is not preallocated, so the capacity costs memory only as it is used.
pub const COUNTS_MAP_ENTRIES: u32 = 1 << 18;
/// Capacity of [`STACKS_MAP`]: distinct user stacks. Not preallocated either. When it is full,
/// allocations are still counted, without their stack ([`ProbeStats::without_stack`]).
pub const STACKS_MAP_ENTRIES: u32 = 1 << 15;
/// [`AllocKey::stack`] of an allocation whose stack could not be stored: only its caller (the
/// return address) is known.
pub const NO_STACK: u64 = 0;

/// Frames kept per stack. Callsites are within the first few frames; deeper frames only
/// matter for flame graphs, where a stack cut at this depth still shows its top.
pub const MAX_STACK_DEPTH: usize = 96;

/// A user stack as the probe walks it: innermost frame first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStack {
    /// Frames used.
    pub len: u64,
    /// Bookkeeping of the probe's per-CPU scratch slot, meaningless in the stack map: bumped
    /// by each walk as it starts, so that a walk notices when another run of a probe on the
    /// same CPU reused the slot before the stack was stored.
    pub generation: u64,
    /// Instruction pointers; the first is the probed pc, the others return addresses.
    pub frames: [u64; MAX_STACK_DEPTH],
}

impl UserStack {
    /// The frames in use.
    #[must_use]
    pub fn frames(&self) -> &[u64] {
        let len = usize::try_from(self.len)
            .unwrap_or(MAX_STACK_DEPTH)
            .min(MAX_STACK_DEPTH);
        &self.frames[..len]
    }
}

/// The key of a stack in [`STACKS_MAP`]: an FNV-style multiply-xor over the frames, one 64-bit
/// word at a time, seeded with the FNV offset basis. Fed frame by frame, so the probe can hash
/// while it walks without storing the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackHasher(u64);

impl StackHasher {
    /// An empty hash.
    #[must_use]
    pub const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Mixes in the next frame.
    #[must_use]
    pub const fn push(self, frame: u64) -> Self {
        Self((self.0 ^ frame).wrapping_mul(0x0000_0100_0000_01b3))
    }

    /// The key. Never [`NO_STACK`]: a hash that comes out as 0 is moved to 1.
    #[must_use]
    pub const fn finish(self) -> u64 {
        if self.0 == NO_STACK { 1 } else { self.0 }
    }
}

impl Default for StackHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// The key of the first `len` frames (the user-space check of what the probe computed).
#[must_use]
pub fn stack_hash(frames: &[u64]) -> u64 {
    frames.iter().fold(StackHasher::new(), |h, &f| h.push(f)).finish()
}

/// How many address ranges [`ProbeConfig::nested`] holds.
pub const MAX_NESTED_RANGES: usize = 8;

/// [`ProbeConfig::flags`]: ignore calls whose size argument is 0 (`mallocgc(0, …)` returns
/// `&zerobase` without allocating).
pub const FLAG_SKIP_ZERO_SIZE: u32 = 1 << 0;

/// [`AllocKey::size`] of a span-refill sample: this bit, or'ed with the `spanClass` (size
/// class << 1 | noscan) of the span that was used up. User space turns the class into the
/// object size. Real sizes never have the top bit set.
pub const SIZE_IS_SPAN_CLASS: u64 = 1 << 63;
/// How many span classes the runtime has (`numSpanClasses` = 68 size classes × scan/noscan,
/// `src/runtime/mheap.go`); the probe refuses a larger class rather than read outside
/// `mcache.alloc`.
pub const NUM_SPAN_CLASSES: u64 = 136;

/// A half-open range of addresses in the traced process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressRange {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl AddressRange {
    /// Whether `addr` is in the range.
    #[must_use]
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
}

/// What the probe needs to know about the traced process, written once before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `FLAG_*` bits.
    pub flags: u32,
    /// How many entries of `nested` are used.
    pub nested_len: u32,
    /// The runtime's malloc implementation, in the process's addresses: a hit whose return
    /// address is in one of these ranges is a nested call for an allocation already counted.
    pub nested: [AddressRange; MAX_NESTED_RANGES],
    /// Byte offset of `alloc [numSpanClasses]*mspan` in `runtime.mcache` (span-refill mode).
    pub mcache_alloc_offset: u32,
    /// Byte offset of `allocCount uint16` in `runtime.mspan`.
    pub span_alloc_count_offset: u32,
    /// Byte offset of `allocCountBeforeCache uint16` in `runtime.mspan`.
    pub span_alloc_count_before_cache_offset: u32,
    /// Frames the probes walk per stack, at most [`MAX_STACK_DEPTH`] (0 means that). Each
    /// frame beyond the top of the stack the probe copies at once is one read of user memory:
    /// a deep stack walked in full costs microseconds.
    pub max_stack_depth: u32,
    /// Address of `runtime.MemProfileRate` in the process, 0 when unknown (go-sampler mode): the
    /// sampling probe copies the rate in effect at each sample into [`SAMPLER_RATE_MAP`], so
    /// user space scales the samples by the rate they were taken at, even when the program set
    /// it (`GODEBUG=memprofilerate=`, in `schedinit`) after the probes attached and exited
    /// before the first drain.
    pub mem_profile_rate_address: u64,
    /// Byte offset of `kind` in `runtime.special` (in-use tracking, go-sampler mode).
    pub special_kind_offset: u32,
    /// `_KindSpecialProfile` of the target's runtime; 0 when in-use is not tracked.
    pub special_profile_kind: u32,
}

/// What the counting probe did, per CPU. User space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Times the probes fired, once read through [`ProbeStats::with_outcome_hits`]. In the
    /// kernel's map, only the hits that have no outcome counter of their own (`releaseAll`):
    /// each other hit bumps just its outcome, one atomic add fewer per allocation.
    pub hits: u64,
    /// Allocations recorded in [`COUNTS_MAP`].
    pub recorded: u64,
    /// Hits ignored as nested calls (their return address was in the malloc implementation).
    pub nested: u64,
    /// Hits ignored because the size was 0.
    pub zero_size: u64,
    /// Allocations recorded without their stack ([`NO_STACK`]): the stack map was full, or
    /// the walk was disturbed by another run of the probe on the same CPU.
    pub without_stack: u64,
    /// Allocations lost because the caller's return address could not be read.
    pub dropped_return_address: u64,
    /// Allocations lost because [`COUNTS_MAP`] refused a new key (full).
    pub dropped_counts_map: u64,
    /// Span-refill hits that could not read the used-up span (a bad class, unreadable memory).
    pub dropped_span_read: u64,
    /// Objects of partly used spans handed back by `releaseAll` whose span's refill was not
    /// seen (it happened before gotrace attached): not counted.
    pub unattributed_release: u64,
}

impl ProbeStats {
    /// Adds another CPU's statistics to these.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            hits: self.hits.wrapping_add(other.hits),
            recorded: self.recorded.wrapping_add(other.recorded),
            nested: self.nested.wrapping_add(other.nested),
            zero_size: self.zero_size.wrapping_add(other.zero_size),
            without_stack: self.without_stack.wrapping_add(other.without_stack),
            dropped_return_address: self.dropped_return_address.wrapping_add(other.dropped_return_address),
            dropped_counts_map: self.dropped_counts_map.wrapping_add(other.dropped_counts_map),
            dropped_span_read: self.dropped_span_read.wrapping_add(other.dropped_span_read),
            unattributed_release: self.unattributed_release.wrapping_add(other.unattributed_release),
        }
    }

    /// The statistics as the kernel's map holds them (summed over CPUs), with `hits` made the
    /// total: the outcome counters of counting and sampling hits added in.
    #[must_use]
    pub const fn with_outcome_hits(self) -> Self {
        Self {
            hits: self
                .hits
                .wrapping_add(self.recorded)
                .wrapping_add(self.nested)
                .wrapping_add(self.zero_size)
                .wrapping_add(self.dropped_return_address)
                .wrapping_add(self.dropped_counts_map)
                .wrapping_add(self.dropped_span_read),
            ..self
        }
    }

    /// Allocations the probe saw but could not record.
    #[must_use]
    pub const fn dropped(&self) -> u64 {
        self.dropped_return_address
            .wrapping_add(self.dropped_counts_map)
            .wrapping_add(self.dropped_span_read)
    }
}

/// A sampled object that is still alive, in [`LIVE_MAP`] under its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveObject {
    /// The key its sample was counted under (the stack hash as stored in [`STACKS_MAP`]).
    pub key: AllocKey,
    /// Its `*runtime.bucket` in the runtime's own heap profile.
    pub bucket: u64,
    /// `runtime.MemProfileRate` when it was sampled (0: unknown, no symbol table).
    pub rate: u64,
    /// When it was sampled: `bpf_ktime_get_ns`, nanoseconds of `CLOCK_MONOTONIC`.
    pub sampled_ns: u64,
}

/// A go-sampler hit waiting for its `setprofilebucket`, in [`PENDING_MAP`] under its thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSample {
    /// The sampled object's address (`profilealloc`'s `x`).
    pub address: u64,
    /// What goes into [`LIVE_MAP`] (its `bucket` not yet known).
    pub object: LiveObject,
}

/// What the in-use programs did, per CPU. User space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InuseStats {
    /// Sampled objects that entered [`LIVE_MAP`].
    pub tracked: u64,
    /// `setprofilebucket` hits with no matching sample on their thread (the go-sampler probe
    /// could not record it, or it was made before attach).
    pub unpaired: u64,
    /// Objects that replaced a live entry at the same address: that object's free was missed.
    pub replaced: u64,
    /// Sampled objects not tracked because [`LIVE_MAP`] was full.
    pub dropped_full: u64,
    /// Tracked objects freed (removed from [`LIVE_MAP`]).
    pub freed: u64,
    /// Profile specials freed whose object was not tracked: sampled before attach, or
    /// refused by a full map.
    pub freed_untracked: u64,
    /// `freeSpecial` hits for other kinds of special (finalizers, cleanups, weak handles, ...).
    pub other_specials: u64,
    /// `freeSpecial` hits whose special could not be read.
    pub unreadable: u64,
}

impl InuseStats {
    /// Adds another CPU's statistics to these.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            tracked: self.tracked.wrapping_add(other.tracked),
            unpaired: self.unpaired.wrapping_add(other.unpaired),
            replaced: self.replaced.wrapping_add(other.replaced),
            dropped_full: self.dropped_full.wrapping_add(other.dropped_full),
            freed: self.freed.wrapping_add(other.freed),
            freed_untracked: self.freed_untracked.wrapping_add(other.freed_untracked),
            other_specials: self.other_specials.wrapping_add(other.other_specials),
            unreadable: self.unreadable.wrapping_add(other.unreadable),
        }
    }
}

/// A P's cache (`*runtime.mcache`, an address in the traced process) and a span class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheClass {
    /// The mcache.
    pub mcache: u64,
    /// The span class (0 to [`NUM_SPAN_CLASSES`] - 1).
    pub span_class: u64,
}

/// One recorded kind of allocation: where from, what, how big. The value is a count: of
/// allocations (exact and large-allocation probes), of Go's profile samples (Go-sampler), or of
/// objects handed out from used-up spans (span refill).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AllocKey {
    /// Key of the user stack in [`STACKS_MAP`], or [`NO_STACK`]. The frame-pointer walk starts
    /// at the probed function and misses its immediate caller, which is `return_address`.
    pub stack: u64,
    /// The return address into the function that called the allocation entry point.
    pub return_address: u64,
    /// The `*abi.Type` argument (0 for untyped memory), an address in the traced process.
    pub type_address: u64,
    /// Bytes requested; for span-refill samples [`SIZE_IS_SPAN_CLASS`] | the span class.
    pub size: u64,
}

// The layouts are part of the contract with the probe; a field added later must keep them free
// of implicit padding.
const _: () = assert!(core::mem::size_of::<AddressRange>() == 16);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 8 + 16 * MAX_NESTED_RANGES + 16 + 8 + 8);
const _: () = assert!(core::mem::size_of::<LiveObject>() == 32 + 3 * 8);
const _: () = assert!(core::mem::size_of::<PendingSample>() == 8 + 56);
const _: () = assert!(core::mem::size_of::<InuseStats>() == 8 * 8);
const _: () = assert!(core::mem::size_of::<ProbeStats>() == 9 * 8);
const _: () = assert!(core::mem::size_of::<CacheClass>() == 16);
const _: () = assert!(core::mem::size_of::<AllocKey>() == 32);
const _: () = assert!(core::mem::size_of::<UserStack>() == 8 * (2 + MAX_STACK_DEPTH));

// SAFETY (all of them): `#[repr(C)]`, `Copy`, `'static`, only integers with no implicit padding
// (checked above), so every bit pattern the kernel hands back is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for AddressRange {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeStats {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AllocKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CacheClass {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for UserStack {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LiveObject {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PendingSample {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for InuseStats {}
