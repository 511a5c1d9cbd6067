//! gotrace's eBPF probes.
//!
//! Built for `bpfel-unknown-none` by `tracer/build.rs` (with Debian's rustc and
//! `-Z build-std=core`, see `scripts/setup.sh`) and embedded into the `gotrace` binary. On the
//! host the crate compiles to an empty program, so `cargo check --workspace` and clippy work
//! there too; the probe code is still type-checked on the host, against the host's `pt_regs`.
//!
//! Exact mode: `alloc_count` sits on every counting allocation entry point of the traced
//! binary (`runtime.mallocgc`, and Go 1.27's `runtime.mallocgc*SC<n>`), at the instruction after
//! the stack-bound check. Per allocation it reads the size and type from Go's register ABI,
//! copies the goroutine's live stack in one read, takes the caller's return address and the
//! frame-pointer chain from the copy (or replays the goroutine's previous walk, when every record
//! it read is still there), and counts the combination in a per-CPU hash map: no event goes to
//! user space, which reads the maps when it wants.
//!
//! Sampled modes put other programs on functions the runtime calls far less often, and record
//! the same kind of key with a weight: `go_sample` on `runtime.profilealloc` (Go's own heap
//! profile sampler), `span_refill` on `runtime.(*mcache).refill` and `large_alloc` on
//! `runtime.(*mcache).allocLarge` (span-refill mode).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For the atomic add in `bump` (see there); the eBPF crate is built with RUSTC_BOOTSTRAP=1.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "core_intrinsics, see bump"))]
// The sampling paths are forced inline: BPF-to-BPF calls can neither return a struct nor keep
// a register read at a constant offset from the context pointer, which the verifier requires
// (see try_record).
#![expect(clippy::inline_always, reason = "the verifier needs the sampling paths inlined")]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    cty::c_void,
    helpers::{bpf_loop, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use tracer_common::{
    AllocKey, COUNTS_MAP_ENTRIES, CacheClass, FLAG_SKIP_ZERO_SIZE, LAST_REFILL_MAP_ENTRIES, MAX_NESTED_RANGES,
    MAX_STACK_DEPTH, NO_STACK, NUM_SPAN_CLASSES, ProbeConfig, ProbeStats, SIZE_IS_SPAN_CLASS, STACKS_MAP_ENTRIES,
    StackHasher, UserStack,
};

/// Written once by user space before the probes are attached.
#[map]
static CONFIG: Array<ProbeConfig> = Array::with_max_entries(1, 0);

/// What the probe did, per CPU (one slot).
#[map]
static STATS: PerCpuArray<ProbeStats> = PerCpuArray::with_max_entries(1, 0);

/// User stacks by content hash; [`AllocKey::stack`] points here.
#[map]
static STACKS: HashMap<u64, UserStack> = HashMap::with_max_entries(STACKS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Where the probe walks the stack: too big for the 512-byte BPF stack, so a per-CPU slot.
#[map]
static STACK_SCRATCH: PerCpuArray<UserStack> = PerCpuArray::with_max_entries(1, 0);

/// Allocation counts by (stack, caller, type, size). Per-CPU, so concurrent allocations on
/// different CPUs never contend for a value; user space sums the CPUs when it reads.
#[map]
static COUNTS: PerCpuHashMap<AllocKey, u64> = PerCpuHashMap::with_max_entries(COUNTS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// The same while [`EPOCH`] is 1; user space drains whichever map the probes are not writing.
#[map]
static COUNTS_ALT: PerCpuHashMap<AllocKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTS_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// The key of the latest refill of each P's cache and span class: whoever brought a span into
/// the cache is charged, at `releaseAll`, with the objects taken from it since.
#[map]
static LAST_REFILL: HashMap<CacheClass, AllocKey> =
    HashMap::with_max_entries(LAST_REFILL_MAP_ENTRIES, BPF_F_NO_PREALLOC);

/// Which counts map the probes write to: 0 for [`COUNTS`], 1 for [`COUNTS_ALT`].
#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// [`tracer_common::PAUSED_MAP`]: 1 while span mode's duty cycle has the sampling probes off.
#[map]
static PAUSED: Array<u32> = Array::with_max_entries(1, 0);

/// Whether the sampling probes are paused (see [`PAUSED`]): they then return at once, counting
/// nothing, not even their hit.
#[inline(always)]
fn paused() -> bool {
    PAUSED.get(0).copied() == Some(1)
}

/// [`tracer_common::SAMPLER_RATE_MAP`]: `runtime.MemProfileRate` at the latest Go sample.
#[map]
static SAMPLER_RATE: Array<u64> = Array::with_max_entries(1, 0);

/// `-EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST`: another CPU inserted the key first.
const EEXIST: i32 = 17;
/// A missing map slot: the kernel's convention for a failed lookup.
const ENOENT: i32 = 2;

/// Entry uprobe on a counting allocation entry point. The kernel ignores a uprobe program's
/// return value; everything worth knowing ends up in [`STATS`].
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn alloc_count(ctx: ProbeContext) -> u32 {
    match try_alloc_count(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Entry uprobe that does nothing: the cost of a probe at an address, with no work of its own
/// (`gotrace bench empty-probe`, for `cargo xtask bench`).
#[uprobe]
fn empty_probe(_ctx: ProbeContext) -> u32 {
    0
}

/// Entry uprobe on `runtime.profilealloc(mp *m, x unsafe.Pointer, size uintptr)`: one of Go's
/// own heap-profile samples. The runtime calls it from `mallocgc` (and Go 1.27's specialised
/// mallocs) only when the allocation crosses the P's next sampling point, so the probe fires
/// about once per `MemProfileRate` bytes; user space scales the samples the way pprof does.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn go_sample(ctx: ProbeContext) -> u32 {
    match try_record(&ctx, Source::ProfileAlloc) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Entry uprobe on `runtime.(*mcache).refill(c *mcache, spc spanClass)`: the P's cached span of
/// class `spc` is used up. Every object the cache handed out of it since it was cached,
/// `allocCount - allocCountBeforeCache` (what `refill` itself adds to the heap statistics as
/// `slotsUsed`, `src/runtime/mcache.go`), is counted against the allocation that used it up.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn span_refill(ctx: ProbeContext) -> u32 {
    match try_record(&ctx, Source::Refill) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Entry uprobe on `runtime.(*mcache).allocLarge(c *mcache, size uintptr, noscan bool)`: an
/// object over 32 KiB, which gets a span of its own and never passes `refill`. Rare and
/// expensive for the runtime (a fresh span from the heap), so probing each one costs little.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn large_alloc(ctx: ProbeContext) -> u32 {
    match try_record(&ctx, Source::LargeAlloc) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// What happened to one hit, for [`STATS`].
#[derive(Clone, Copy)]
enum Outcome {
    Recorded,
    RecordedWithoutStack,
    Nested,
    ZeroSize,
    NoReturnAddress,
    CountsMapRefused,
    SpanUnreadable,
}

/// Entry uprobe on `runtime.(*mcache).releaseAll(c *mcache)`: the P hands back every cached
/// span (`src/runtime/mcache.go`). For each span class, the objects the cache took from its
/// span since the refill that brought it in (`allocCount - allocCountBeforeCache`, what
/// `releaseAll` adds to the heap statistics) are charged to that refill's key.
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn span_release(ctx: ProbeContext) -> u32 {
    match try_span_release(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_span_release(ctx: &ProbeContext) -> Result<u32, u32> {
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
        bpf_probe_read_user_buf(alloc as *const u8, bytes)
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

/// A copy of `mcache.alloc`: the cached span of each span class.
#[repr(C)]
struct CachedSpans {
    words: [u64; SPAN_CLASSES],
}

/// [`NUM_SPAN_CLASSES`] as a length.
#[expect(clippy::cast_possible_truncation, reason = "136")]
const SPAN_CLASSES: usize = NUM_SPAN_CLASSES as usize;

/// Where `span_release` copies `mcache.alloc` (per CPU: 1 KiB is too big for the BPF stack).
/// A release that preempts another on the same CPU overwrites it, and the preempted one then
/// charges the other P's spans a second time: rare (uprobe programs are seldom preempted, and
/// releases come once per P per GC cycle), and bounded by one P's cached spans.
#[map]
static CACHED_SPANS: PerCpuArray<CachedSpans> = PerCpuArray::with_max_entries(1, 0);

/// The objects the cache `mcache` took from its current span of `span_class` since that span
/// was cached: `allocCount - allocCountBeforeCache`, as `refill` and `releaseAll` compute it.
#[inline(always)]
fn objects_taken(mcache: u64, span_class: u64, config: &ProbeConfig) -> Option<u64> {
    let slot = mcache
        .checked_add(u64::from(config.mcache_alloc_offset))?
        .checked_add(span_class * 8)?;
    // SAFETY: bpf_probe_read_user checks the user address and fails cleanly on a bad one.
    let span: u64 = unsafe { bpf_probe_read_user(slot as *const u64) }.ok()?;
    span_objects_taken(span, config)
}

/// `allocCount - allocCountBeforeCache` of the `mspan` at `span`. Both are `uint16`s 6 bytes
/// apart in every release gotrace knows (`src/runtime/mheap.go`), so one 8-byte read covers
/// both: each read of user memory costs ~150 ns here.
#[inline(always)]
fn span_objects_taken(span: u64, config: &ProbeConfig) -> Option<u64> {
    let count_at = config.span_alloc_count_offset;
    let before_at = config.span_alloc_count_before_cache_offset;
    let first = count_at.min(before_at);
    let last = count_at.max(before_at);
    let read_u64 = |offset: u32| -> Option<u64> {
        let at = span.checked_add(u64::from(offset))?;
        // SAFETY: bpf_probe_read_user checks the user address and fails cleanly on a bad one.
        unsafe { bpf_probe_read_user(at as *const u64) }.ok()
    };
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

/// Which function a sampling probe sits on.
#[derive(Clone, Copy)]
enum Source {
    ProfileAlloc,
    Refill,
    LargeAlloc,
}

/// What a sampling probe records: the size field of the key and the weight to add.
struct Sample {
    size: u64,
    weight: u64,
}

/// Adds `n` to a counter in map memory.
///
/// Atomically: uprobe programs run with migration disabled but, on preemptible kernels, not
/// with preemption disabled (`bpf_prog_run_array_uprobe`), so another task on this CPU can run
/// the same program in the middle of an update even on a per-CPU slot. The result is unused,
/// so this is the plain atomic add of the BPF instruction set.
///
/// # Safety
/// `counter` must point into map memory that stays valid for the run of the program.
unsafe fn bump(counter: *mut u64) {
    // SAFETY: as promised by the caller.
    unsafe { bump_by(counter, 1) }
}

/// [`bump`] by `n`.
///
/// # Safety
/// As for [`bump`].
unsafe fn bump_by(counter: *mut u64, n: u64) {
    // The bpf target declares no atomics to `core` (it has no compare-and-swap before v3), so
    // `AtomicU64` is missing there; the intrinsic lowers to BPF's atomic add all the same.
    // SAFETY: the caller promises a valid, aligned u64 in map memory.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, n);
    }
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(n, core::sync::atomic::Ordering::Relaxed);
}

fn try_alloc_count(ctx: &ProbeContext) -> Result<u32, u32> {
    account(count(ctx))
}

/// Records one hit of a sampling probe. Inlined into each program so that `source` is a
/// constant there: otherwise LLVM turns the register reads into one load at a computed offset
/// from the context pointer, which the verifier refuses ("dereference of modified ctx ptr").
#[inline(always)]
fn try_record(ctx: &ProbeContext, source: Source) -> Result<u32, u32> {
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
    if matches!(source, Source::ProfileAlloc) {
        note_sampler_rate(config);
    }
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
    let generation = claim(scratch);
    let mut pages = PagedStack::EMPTY;
    let walked = pages.load(ctx).map(|return_address| {
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

/// Adds a hit's outcome to this CPU's [`STATS`] (user space adds the outcomes up into the hits:
/// `ProbeStats::with_outcome_hits`).
fn account(outcome: Outcome) -> Result<u32, u32> {
    let stats = STATS.get_ptr_mut(0).ok_or(0_u32)?;
    // SAFETY: this CPU's slot of the per-CPU array, valid for the whole run.
    unsafe {
        bump(match outcome {
            Outcome::Recorded => &raw mut (*stats).recorded,
            Outcome::RecordedWithoutStack => {
                bump(&raw mut (*stats).recorded);
                &raw mut (*stats).without_stack
            }
            Outcome::Nested => &raw mut (*stats).nested,
            Outcome::ZeroSize => &raw mut (*stats).zero_size,
            Outcome::NoReturnAddress => &raw mut (*stats).dropped_return_address,
            Outcome::CountsMapRefused => &raw mut (*stats).dropped_counts_map,
            Outcome::SpanUnreadable => &raw mut (*stats).dropped_span_read,
        });
    }
    Ok(0)
}

fn count(ctx: &ProbeContext) -> Outcome {
    // Index 0 of an array map always exists; this cannot fail.
    let Some(config) = CONFIG.get(0) else {
        return Outcome::CountsMapRefused;
    };
    let (size, type_address) = go_size_and_type(ctx);
    if size == 0 && config.flags & FLAG_SKIP_ZERO_SIZE != 0 {
        return Outcome::ZeroSize;
    }
    let Some(window) = STACK_WINDOW.get_ptr_mut(0) else {
        return Outcome::CountsMapRefused;
    };
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    let window = unsafe { &mut *window };
    // The window and the goroutine slots serve one walk at a time on a CPU. Uprobe programs run
    // with migration disabled but, on kernels that preempt, not with preemption disabled
    // (`bpf_prog_run_array_uprobe`), so a run can start while another on this CPU is inside
    // its walk: it leaves their state alone and counts its allocation by its caller only, as
    // when the stack map is full (`without_stack` in the report).
    if window.busy != 0 {
        return count_without_stack(ctx, config, size, type_address);
    }
    window.busy = 1;
    let outcome = count_with_stack(ctx, config, size, type_address, window);
    window.busy = 0;
    outcome
}

/// Whether a call returning to `return_address` comes from inside the malloc implementation,
/// and so is part of an allocation counted already (mallocgc → mallocgcSmallNoScanSC3,
/// mallocgcTinySlowPath → mallocgcSmallNoScanSC2).
#[inline(always)]
fn is_nested(config: &ProbeConfig, return_address: u64) -> bool {
    let nested_len = config.nested_len as usize;
    for i in 0..MAX_NESTED_RANGES {
        if i >= nested_len {
            break;
        }
        if config.nested[i].contains(return_address) {
            return true;
        }
    }
    false
}

/// The return address into the probed function's caller: on amd64 at the stack pointer,
/// where `CALL` left it; on arm64 in the link register, which the frame set-up saves only
/// after the probe.
#[inline(always)]
#[cfg_attr(
    bpf_target_arch = "aarch64",
    expect(clippy::unnecessary_wraps, reason = "the amd64 read of the return address can fail")
)]
fn caller_return_address(ctx: &ProbeContext) -> Option<u64> {
    #[cfg(bpf_target_arch = "x86_64")]
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let return_address = unsafe { bpf_probe_read_user(stack_pointer(ctx) as *const u64) }.ok()?;
    #[cfg(bpf_target_arch = "aarch64")]
    let return_address = link_register(ctx);
    Some(return_address)
}

/// Counts an allocation by its caller, type and size, without its stack.
#[inline(always)]
fn count_without_stack(ctx: &ProbeContext, config: &ProbeConfig, size: u64, type_address: u64) -> Outcome {
    let Some(return_address) = caller_return_address(ctx) else {
        return Outcome::NoReturnAddress;
    };
    if is_nested(config, return_address) {
        return Outcome::Nested;
    }
    let key = AllocKey {
        stack: NO_STACK,
        return_address,
        type_address,
        size,
    };
    match increment(&key, 1) {
        Ok(()) => Outcome::RecordedWithoutStack,
        Err(_) => Outcome::CountsMapRefused,
    }
}

/// Counts an allocation with its stack, walked (or replayed) in `window`, which this run holds.
#[inline(always)]
fn count_with_stack(
    ctx: &ProbeContext,
    config: &ProbeConfig,
    size: u64,
    type_address: u64,
    window: &mut StackWindow,
) -> Outcome {
    let Some(slot) = goroutine_slot(ctx) else {
        return Outcome::CountsMapRefused;
    };
    let Some(return_address) = window.load(ctx, slot) else {
        return Outcome::NoReturnAddress;
    };
    if is_nested(config, return_address) {
        return Outcome::Nested;
    }
    let walk = match replay_walk(ctx, window, slot) {
        Some(walk) => walk,
        None => walk_window(ctx, config.max_stack_depth, window, slot),
    };
    let mut key = AllocKey {
        stack: walk.hash,
        return_address,
        type_address,
        size,
    };
    // The common case, a key seen before in this interval, costs one lookup: its stack went
    // into STACKS when the key was created. (If user space emptied STACKS since, before it
    // read the stack, the key's counts of this interval come out without a stack; the next
    // interval's map starts empty and stores it again.)
    // One call site per map (not one call on a map chosen at run time): the verifier inlines
    // a lookup only where the map is known (`htab_percpu_map_gen_lookup`), sparing the
    // helper's indirect call.
    let found = if EPOCH.get(0).copied() == Some(1) {
        COUNTS_ALT.get_ptr_mut(key)
    } else {
        COUNTS.get_ptr_mut(key)
    };
    if let Some(count) = found {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump(count) };
        return Outcome::Recorded;
    }
    key.stack = store_stack(walk, &slot.stack);
    match increment(&key, 1) {
        Ok(()) if key.stack == NO_STACK => Outcome::RecordedWithoutStack,
        Ok(()) => Outcome::Recorded,
        Err(_) => Outcome::CountsMapRefused,
    }
}

/// A read of user memory never crosses a boundary of this size above its start: the page the
/// start is in is mapped, the next one need not be (a goroutine stack near the end of the heap's
/// mapped memory). A read that faults costs a page-fault exception, microseconds, and then
/// nothing is copied at all. 4 KiB is the smallest page size of `x86_64` and arm64.
const STACK_PAGE_BYTES: u64 = 4096;
/// How many 8-byte words [`STACK_PAGE`] holds: a page.
const PAGE_WORDS: usize = (STACK_PAGE_BYTES / 8) as usize;
/// How much of the stack [`PagedStack`]'s first read copies from the stack pointer, at most, so
/// that a shallow stack costs one short copy; a deeper record is copied with the rest of its
/// page.
const FIRST_READ_BYTES: u64 = 256;

/// A copy of part of the traced thread's stack. The thread is stopped in the probe, so its
/// stack cannot change while the probe reads the copy.
#[repr(C)]
struct StackCopy {
    words: [u64; PAGE_WORDS],
}

/// Where a walk copies the stack: per CPU, a page is too big for the BPF stack. A run that
/// preempts a walk on the same CPU may copy its own stack here; it also claims the scratch slot
/// (see [`claim`]), so the preempted walk's stack is then not stored.
#[map]
static STACK_PAGE: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// Which part of the traced thread's stack [`STACK_PAGE`] holds for the current walk.
///
/// Deep stacks (a refill under `encoding/json`'s recursion, a handler under `net/http`) have
/// their frame records kilobytes above the stack pointer. Read one by one, each record cost a
/// `bpf_probe_read_user` (~150 ns), so that a 25-frame walk took microseconds; instead, a
/// record beyond the copy is read together with everything from it to the end of its page,
/// and the records above it come from that copy.
struct PagedStack {
    /// The user address of the first word; `u64::MAX` when nothing was copied (then nothing
    /// falls inside it).
    base: u64,
    /// Bytes copied.
    valid: u64,
}

impl PagedStack {
    /// Nothing copied yet.
    const EMPTY: Self = Self {
        base: u64::MAX,
        valid: 0,
    };

    /// Copies the top of the stack, and returns the return address into the caller: on amd64
    /// at the stack pointer, where `CALL` left it; on arm64 in the link register, which the
    /// frame set-up saves only after the probe.
    #[inline(always)]
    #[cfg_attr(
        bpf_target_arch = "aarch64",
        expect(clippy::unnecessary_wraps, reason = "the amd64 read of the return address can fail")
    )]
    fn load(&mut self, ctx: &ProbeContext) -> Option<u64> {
        let sp = stack_pointer(ctx);
        let copied = self.copy(sp, FIRST_READ_BYTES);
        #[cfg(bpf_target_arch = "x86_64")]
        let return_address = match copied {
            Some(words) => words[0],
            // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
            None => unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?,
        };
        #[cfg(bpf_target_arch = "aarch64")]
        let return_address = {
            let _ = copied;
            link_register(ctx)
        };
        Some(return_address)
    }

    /// Copies up to `at_most` bytes from `at` (an 8-aligned stack address) into the window,
    /// never past the end of `at`'s page, but always 16 bytes: one frame record. (A record that
    /// straddles two pages has both mapped.) Returns the window's words.
    #[inline(always)]
    #[expect(clippy::cast_possible_truncation, reason = "at most a page")]
    fn copy(&mut self, at: u64, at_most: u64) -> Option<&'static [u64; PAGE_WORDS]> {
        let window = STACK_PAGE.get_ptr_mut(0)?;
        let valid = (STACK_PAGE_BYTES - at % STACK_PAGE_BYTES).clamp(16, at_most);
        // SAFETY: `valid` bytes (at most a page) of this CPU's window, valid for the run of the
        // program; the helper checks the user address and fails cleanly.
        let copied = unsafe {
            let bytes = core::slice::from_raw_parts_mut(window.cast::<u8>(), valid as usize);
            bpf_probe_read_user_buf(at as *const u8, bytes)
        };
        if copied.is_err() {
            self.base = u64::MAX;
            self.valid = 0;
            return None;
        }
        self.base = at;
        self.valid = valid;
        // SAFETY: as above.
        Some(unsafe { &(*window).words })
    }
}

impl FrameRecords for PagedStack {
    /// From the copy when it holds the record, else copied with the rest of its page.
    #[inline(always)]
    fn frame_record(&mut self, fp: u64) -> Option<(u64, u64)> {
        // Below the window (or with no window) the difference wraps to a huge offset.
        let offset = fp.wrapping_sub(self.base);
        // No alignment check: Go's frame pointers are 8-aligned, and with one the compiler
        // would index the stack at an offset the verifier cannot prove aligned. A misaligned
        // (garbage) pointer reads the word it falls in, and the walk ends at the next check.
        let (words, index) = if offset <= STACK_PAGE_BYTES - 16 && offset + 16 <= self.valid {
            let window = STACK_PAGE.get_ptr(0)?;
            // SAFETY: this CPU's window, valid for the run of the program.
            (unsafe { &(*window).words }, (offset / 8) as usize)
        } else {
            (self.copy(fp, STACK_PAGE_BYTES)?, 0)
        };
        let index = index.min(PAGE_WORDS - 2);
        Some((words[index], words[index + 1]))
    }
}

/// Where a walk gets Go's frame records from.
trait FrameRecords {
    /// The frame record at `fp`: the caller's frame pointer, then the return address into the
    /// caller (Go's layout on amd64 and arm64).
    fn frame_record(&mut self, fp: u64) -> Option<(u64, u64)>;
}

/// What exact mode remembers about a goroutine that allocated on this CPU: where its stack
/// ends, and its latest walk, so that the next allocation from the same stack needs no walk.
#[repr(C)]
struct Goroutine {
    /// The goroutine (its `g`), for `lo` and `hi`.
    g: u64,
    /// `g.stack` (`runtime.stack{lo, hi}`, the first field of `runtime.g` in every release,
    /// `src/runtime/runtime2.go`) as last read.
    lo: u64,
    hi: u64,
    /// The latest walk's hash; 0 when it cannot be replayed.
    hash: u64,
    /// Where the walk read its frame records: frame `k` of `stack` (from 1) came from the record
    /// at `fps[k]`, and `fps[len]` is the caller's frame pointer in the last record read.
    fps: [u64; MAX_STACK_DEPTH + 1],
    /// The walk itself; also the stack stored in [`STACKS`] when its key is new.
    stack: UserStack,
}

/// How many goroutines each CPU remembers ([`Goroutine`]), direct-mapped by `g`.
const GOROUTINE_SLOTS: u32 = 8;

/// Per CPU, the goroutines that allocated there lately.
///
/// Nothing here is trusted: a slot may be stale (the stack moved, or a run of the probe that
/// preempted this one rewrote it), which costs speed, never a wrong count. A copy of the stack
/// that runs into unmapped memory because `hi` is stale fails and is redone a page at a time;
/// a replayed walk is checked against the stack as it is now, record by record.
#[map]
static GOROUTINES: PerCpuArray<Goroutine> = PerCpuArray::with_max_entries(GOROUTINE_SLOTS, 0);

/// The current goroutine's slot in [`GOROUTINES`].
#[inline(always)]
fn goroutine_slot(ctx: &ProbeContext) -> Option<&'static mut Goroutine> {
    let g = current_goroutine(ctx);
    #[expect(clippy::cast_possible_truncation, reason = "masked to a slot index")]
    let index = ((g >> 6) ^ (g >> 12)) as u32 & (GOROUTINE_SLOTS - 1);
    let slot = GOROUTINES.get_ptr_mut(index)?;
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    Some(unsafe { &mut *slot })
}

/// The current goroutine, `g`: R14 on amd64 and R28 on arm64 in every function compiled with
/// Go's register ABI (`src/cmd/compile/abi-internal.md`), as the probed functions are.
#[inline(always)]
fn current_goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_size_and_type.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let g = regs.r14;
    #[cfg(bpf_target_arch = "aarch64")]
    let g = regs.regs[28];
    g
}

/// The top (`hi`) of the goroutine stack `sp` is on, remembered in `slot` or read from `g`.
#[inline(always)]
fn stack_top(ctx: &ProbeContext, sp: u64, slot: &mut Goroutine) -> Option<u64> {
    let g = current_goroutine(ctx);
    if slot.g == g && sp >= slot.lo && sp < slot.hi {
        return Some(slot.hi);
    }
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let [lo, hi] = unsafe { bpf_probe_read_user(g as *const [u64; 2]) }.ok()?;
    if sp < lo || sp >= hi {
        return None;
    }
    slot.g = g;
    slot.lo = lo;
    slot.hi = hi;
    Some(hi)
}

/// How much of the live stack exact mode copies in its one read, at most.
const WINDOW_BYTES: u64 = 16384;
/// The window in words, plus one so that a frame record at its last word can be indexed
/// with a mask the verifier understands.
const WINDOW_WORDS: usize = (WINDOW_BYTES / 8) as usize;

/// How far below the stack pointer the caller's frame record starts, at the probe: on arm64
/// Go's prologue stores the frame pointer at `-8(RSP)` of the frame it just made (and points
/// R29 there), so the caller's record sits 8 bytes below the stack pointer the callee sees
/// (`src/cmd/internal/obj/arm64/obj7.go`); on amd64 it is above, after the return address.
#[cfg(bpf_target_arch = "aarch64")]
const CALLER_RECORD_BELOW_SP: u64 = 8;
#[cfg(not(bpf_target_arch = "aarch64"))]
const CALLER_RECORD_BELOW_SP: u64 = 0;

/// Exact mode's copy of the traced thread's stack (per CPU: far too big for the BPF stack).
#[repr(C)]
struct StackWindow {
    /// 1 while a run of the probe on this CPU uses the window and the goroutine slots (see
    /// `count`).
    busy: u64,
    /// The user address of `words[0]`; `u64::MAX` when nothing is copied.
    base: u64,
    /// Bytes copied.
    valid: u64,
    words: [u64; WINDOW_WORDS + 1],
}

#[map]
static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);

impl StackWindow {
    /// Copies the live stack, from the stack pointer up to the goroutine's stack top (at most
    /// [`WINDOW_BYTES`]), or to the end of the stack pointer's page when the top is unknown;
    /// returns the return address into the caller (see [`caller_return_address`]).
    #[inline(always)]
    fn load(&mut self, ctx: &ProbeContext, slot: &mut Goroutine) -> Option<u64> {
        let sp = stack_pointer(ctx);
        let from = sp - CALLER_RECORD_BELOW_SP;
        let to_page_end = STACK_PAGE_BYTES - from % STACK_PAGE_BYTES;
        let copied = match stack_top(ctx, sp, slot) {
            Some(hi) if self.copy(from, hi - from) => true,
            Some(_) => {
                // A stale `hi` (see GOROUTINES): forget it, so that the next allocation reads
                // `g.stack` again rather than fault again.
                slot.g = 0;
                self.copy(from, to_page_end)
            }
            None => self.copy(from, to_page_end),
        };
        // On amd64 the window starts at the stack pointer, where CALL left the return address.
        if cfg!(bpf_target_arch = "x86_64") && copied {
            return Some(self.words[0]);
        }
        caller_return_address(ctx)
    }

    /// Copies `len` bytes (at least 16, at most [`WINDOW_BYTES`]) from `at`; false, with
    /// nothing in the window, when the read fails.
    #[inline(always)]
    fn copy(&mut self, at: u64, len: u64) -> bool {
        let len = len.clamp(16, WINDOW_BYTES);
        // SAFETY: `len` bytes of the words, which are longer; the helper checks the user
        // address and fails cleanly.
        let copied = unsafe {
            let bytes = core::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len as usize);
            bpf_probe_read_user_buf(at as *const u8, bytes)
        }
        .is_ok();
        self.base = if copied { at } else { u64::MAX };
        self.valid = if copied { len } else { 0 };
        copied
    }

    /// [`Self::valid`], read so that the compiler cannot tell its bound: it would then drop the
    /// mask on the index below as redundant after the comparison with `valid`, and older
    /// verifiers (Debian's 6.1 arm64 kernel, `cargo xtask arm64`) cannot bound an index by a
    /// comparison between two registers (`math between map_value pointer and register with
    /// unbounded min value`).
    #[inline(always)]
    fn valid_bytes(&self) -> u64 {
        // SAFETY: a plain read of this CPU's window, valid for the run of the program.
        unsafe { core::ptr::read_volatile(&raw const self.valid) }
    }

    /// The frame record at `fp` if the copy holds it.
    #[inline(always)]
    fn copied_record(&self, fp: u64) -> Option<(u64, u64)> {
        let offset = fp.wrapping_sub(self.base);
        let valid = self.valid_bytes();
        if valid < 16 || offset > valid - 16 {
            return None;
        }
        let index = (offset / 8) as usize & (WINDOW_WORDS - 1);
        Some((self.words[index], self.words[index + 1]))
    }

    /// The frame record at `fp`: from the copy when it holds the record, else copied with the
    /// rest of its page.
    #[inline(always)]
    fn frame_record(&mut self, fp: u64) -> Option<(u64, u64)> {
        // Below the window (or with no window) the difference wraps to a huge offset.
        let mut offset = fp.wrapping_sub(self.base);
        let valid = self.valid_bytes();
        if valid < 16 || offset > valid - 16 {
            if !self.copy(fp, STACK_PAGE_BYTES - fp % STACK_PAGE_BYTES) {
                return None;
            }
            offset = 0;
        }
        // Masked rather than compared: one instruction, and a bound the verifier sees. A
        // misaligned (garbage) pointer reads the word it falls in, and the walk ends at the
        // next check.
        let index = (offset / 8) as usize & (WINDOW_WORDS - 1);
        Some((self.words[index], self.words[index + 1]))
    }
}

/// Exact mode's walk of Go's frame-pointer chain from the probe into `slot`: the probed pc,
/// then one return address per frame record, up to `depth` frames (the configured depth, at
/// most [`MAX_STACK_DEPTH`]). Returns the hash of the frames (the stack's key in [`STACKS`])
/// and the generation of the slot's stack the walk claimed.
///
/// At the probe (after the stack check, before the probed function saved its frame pointer)
/// the frame-pointer register still holds the caller's frame, so the chain yields the probed
/// pc and then the caller's *caller*: the caller itself is the return address, which the count
/// key carries next to the stack.
///
/// The records come from `window`, the copy of the live stack [`StackWindow::load`] made in one
/// read; one beyond it is copied with the rest of its page. On this kernel every read of user
/// memory costs ~120 ns before it copies a byte (the helper, `copy_from_user_nofault`, and the
/// hardened-usercopy check of the destination), and a step from a copy ~4 ns: reading records
/// one by one made each frame cost ~80 ns. The kernel's own walker (`bpf_get_stack` with
/// `BPF_F_USER_STACK`) was slower still: ~60 ns a frame (`__get_user` twice per record), and
/// a page fault on the null frame pointer that ends every goroutine's chain (~1.7 µs a walk
/// at 8 frames). Measured with `perf record` on `workloads loop --depth`.
///
/// The loop keeps its state in registers and touches map memory only to read a record and to
/// store a frame. The walk is remembered for [`replay_walk`] unless it ended at a record it
/// could not read or at a zero return address.
#[inline(always)]
fn walk_window(ctx: &ProbeContext, depth: u32, window: &mut StackWindow, slot: &mut Goroutine) -> StackWalk {
    slot.hash = 0;
    let generation = claim(&raw mut slot.stack);
    let max_depth = u32::try_from(MAX_STACK_DEPTH).unwrap_or(u32::MAX);
    let depth = if depth == 0 { max_depth } else { depth.min(max_depth) } as usize;
    let (mut fp, pc) = frame_pointer_and_pc(ctx);
    slot.stack.frames[0] = pc;
    slot.fps[1] = fp;
    let mut hash = StackHasher::new().push(pc);
    let mut len = 1;
    let mut replayable = true;
    for _ in 1..MAX_STACK_DEPTH {
        if len >= depth {
            break;
        }
        let Some((next_fp, ret)) = window.frame_record(fp) else {
            replayable = false;
            break;
        };
        if ret == 0 || len >= MAX_STACK_DEPTH {
            replayable = false;
            break;
        }
        hash = hash.push(ret);
        slot.stack.frames[len] = ret;
        len += 1;
        slot.fps[len] = next_fp;
        // Frames sit at increasing addresses; anything else is the end or garbage.
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
    }
    slot.stack.len = len as u64;
    let hash = hash.finish();
    if replayable {
        slot.hash = hash;
    }
    StackWalk { hash, generation }
}

/// The walk remembered in `slot`, if the stack still holds it: the same probed pc and frame
/// pointer, and every frame record it read still the same (the same caller's frame pointer
/// and return address), so that walking again would read the same records and end the same
/// way. The checks do not depend on each other, unlike the steps of a walk, which each wait
/// for the record the one before found: about three times faster on the CPU.
#[inline(always)]
fn replay_walk(ctx: &ProbeContext, window: &StackWindow, slot: &Goroutine) -> Option<StackWalk> {
    let generation = slot.stack.generation;
    let hash = slot.hash;
    let (fp, pc) = frame_pointer_and_pc(ctx);
    if hash == 0 || slot.stack.frames[0] != pc || slot.fps[1] != fp {
        return None;
    }
    let len = usize::try_from(slot.stack.len).unwrap_or(0);
    for k in 1..MAX_STACK_DEPTH {
        if k >= len {
            break;
        }
        let (next_fp, ret) = window.copied_record(slot.fps[k])?;
        if next_fp != slot.fps[k + 1] || ret != slot.stack.frames[k] {
            return None;
        }
    }
    // A run that preempted this one and walked into the slot meanwhile moved the generation on.
    (slot.stack.generation == generation).then_some(StackWalk { hash, generation })
}

/// The counts map of the current epoch.
#[inline(always)]
fn counts_map() -> &'static PerCpuHashMap<AllocKey, u64> {
    // A missing slot cannot happen (index 0 of an array); it reads as epoch 0.
    if EPOCH.get(0).copied() == Some(1) {
        &COUNTS_ALT
    } else {
        &COUNTS
    }
}

/// The sampling programs' walk of Go's frame-pointer chain, as exact mode's [`walk_window`]
/// but from a short first copy: records beyond it are read a page at a time ([`PagedStack`]),
/// since their stacks are deep (a refill happens inside `mallocgc`,
/// under the allocating code's own frames), and the steps run in `bpf_loop`: the verifier
/// checks the step once, where the loop of [`MAX_STACK_DEPTH`] steps, each with a read that
/// may fail, took these programs past its budget of a million instructions. (The kernel
/// inlines `bpf_loop` into a plain loop with a direct call, `inline_bpf_loop`.)
#[inline(always)]
fn walk_stack_paged(
    ctx: &ProbeContext,
    depth: u32,
    pages: PagedStack,
    out: *mut UserStack,
    generation: u64,
) -> StackWalk {
    let (mut walk, depth) = start_walk(ctx, depth, pages, out);
    // SAFETY: bpf_loop calls `walk_step` with `walk`, which outlives the call.
    unsafe {
        bpf_loop(depth - 1, walk_step as *mut c_void, (&raw mut walk).cast::<c_void>(), 0);
    }
    StackWalk {
        hash: walk.hash.finish(),
        generation,
    }
}

/// Claims the scratch slot `out` for a walk: a run that preempts this one on the same CPU
/// claims it again. Returns the claimed generation.
#[inline(always)]
fn claim(out: *mut UserStack) -> u64 {
    // SAFETY: the caller's scratch slot, valid for the run of the program.
    unsafe {
        let generation = (*out).generation.wrapping_add(1);
        (*out).generation = generation;
        generation
    }
}

/// Puts the probed pc in the scratch slot `out` as the first frame; returns the walk's state
/// and the depth to walk to.
#[inline(always)]
fn start_walk<R: FrameRecords>(ctx: &ProbeContext, depth: u32, records: R, out: *mut UserStack) -> (WalkState<R>, u32) {
    let max_depth = u32::try_from(MAX_STACK_DEPTH).unwrap_or(u32::MAX);
    let depth = if depth == 0 { max_depth } else { depth.min(max_depth) };
    let (fp, pc) = frame_pointer_and_pc(ctx);
    // SAFETY: the caller's scratch slot, valid for the run of the program.
    unsafe {
        (*out).frames[0] = pc;
        (*out).len = 1;
    }
    let walk = WalkState {
        fp,
        hash: StackHasher::new().push(pc),
        records,
    };
    (walk, depth)
}

/// A walk's state between its steps.
struct WalkState<R> {
    /// The frame record to read next.
    fp: u64,
    hash: StackHasher,
    records: R,
}

impl<R: FrameRecords> WalkState<R> {
    /// Reads the frame record at `fp` into the next frame of `out`; false when the walk is
    /// over.
    #[inline(always)]
    fn step(&mut self, out: &mut UserStack) -> bool {
        let fp = self.fp;
        let Some((next_fp, ret)) = self.records.frame_record(fp) else {
            return false;
        };
        if ret == 0 {
            return false;
        }
        // Checked after the read, next to the store: a bound checked before the helper call
        // survives it only in a stack slot, where older verifiers (Debian's 6.1) lose it.
        let len = usize::try_from(out.len).unwrap_or(MAX_STACK_DEPTH);
        if len >= MAX_STACK_DEPTH {
            return false;
        }
        self.hash = self.hash.push(ret);
        out.frames[len] = ret;
        out.len = len as u64 + 1;
        self.fp = next_fp;
        // Frames sit at increasing addresses; anything else is the end or garbage.
        next_fp > fp
    }
}

/// [`WalkState::step`] as a `bpf_loop` callback: returns 0 to go on, 1 when the walk is over.
#[inline(never)]
extern "C" fn walk_step(_index: u64, state: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes walk_stack_paged's state, which lives until bpf_loop returns.
    let walk = unsafe { &mut *state.cast::<WalkState<PagedStack>>() };
    let Some(out) = STACK_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot of the per-CPU array, valid for the run of the program.
    i64::from(!walk.step(unsafe { &mut *out }))
}

/// A stack walked into the scratch slot: its hash (the key in [`STACKS`]), and the slot's
/// generation the walk claimed.
#[derive(Clone, Copy)]
struct StackWalk {
    hash: u64,
    generation: u64,
}

/// The key under which the stack just walked into `scratch` is in [`STACKS`], storing it if
/// it is new; [`NO_STACK`] when it cannot be stored.
///
/// Another run of a probe on this CPU (possible on kernels that preempt uprobe programs) may
/// have overwritten the scratch slot since the walk began: then the slot's generation moved
/// on, and the stack is not stored. The check is cheap but not complete (a run preempted
/// before this walk may write the slot again after it, and the claim is not atomic): user
/// space checks each stored stack against its hash before using it (`Probes::stack`).
fn store_stack(walk: StackWalk, scratch: &UserStack) -> u64 {
    let hash = walk.hash;
    if STACKS.get_ptr(hash).is_some() {
        return hash;
    }
    // Checked by generation here, and by content in user space, rather than by hashing the
    // frames again: a loop over `frames[..len]` made older verifiers (Debian's 6.1 arm64
    // kernel, `cargo xtask arm64`) lose the bound of the pointer, and a loop over the constant
    // depth made the sampling programs exceed the verifier's million-instruction budget.
    if scratch.generation != walk.generation {
        return NO_STACK;
    }
    match STACKS.insert(hash, scratch, u64::from(BPF_NOEXIST)) {
        // EEXIST: another CPU stored the same stack first.
        Ok(()) => hash,
        Err(e) if e == -EEXIST => hash,
        Err(_) => NO_STACK,
    }
}

/// Copies the target's `runtime.MemProfileRate` into [`SAMPLER_RATE`]: the rate this sample was
/// taken at, which user space scales by. One read of user memory per sample, and go-sampler's
/// samples are rare (one per `MemProfileRate` bytes).
#[inline(always)]
fn note_sampler_rate(config: &ProbeConfig) {
    if config.mem_profile_rate_address == 0 {
        return;
    }
    // SAFETY: a read of the target's memory through the helper, which fails rather than faults.
    let Ok(rate) = (unsafe { bpf_probe_read_user(config.mem_profile_rate_address as *const u64) }) else {
        return;
    };
    if let Some(slot) = SAMPLER_RATE.get_ptr_mut(0) {
        // SAFETY: the map's one slot, valid for the run of the program; a racing store from
        // another CPU writes the same rate, or a newer one.
        unsafe { *slot = rate };
    }
}

/// Adds `weight` to the key's count in the counts map of the current epoch.
fn increment(key: &AllocKey, weight: u64) -> Result<(), i32> {
    increment_in(counts_map(), key, weight)
}

fn increment_in(counts: &PerCpuHashMap<AllocKey, u64>, key: &AllocKey, weight: u64) -> Result<(), i32> {
    if let Some(count) = counts.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump_by(count, weight) };
        return Ok(());
    }
    match counts.insert(key, weight, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another run created the key between the lookup and the insert: its per-CPU slots
        // start at zero, so this CPU's slot can be incremented now.
        Err(e) if e == -EEXIST => {
            let count = counts.get_ptr_mut(key).ok_or(-ENOENT)?;
            // SAFETY: as above.
            unsafe { bump_by(count, weight) };
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The first two integer arguments of a Go function compiled with Go's register-based internal
/// ABI (`ABIInternal`: Go 1.17+ on amd64, 1.18+ on arm64): `size` and `typ` of
/// `mallocgc(size uintptr, typ *_type, needzero bool)` and of the `mallocgc*SC<n>` functions,
/// which have the same signature. User space checks that the analysis of the binary agrees
/// before it attaches.
///
/// Go does not follow the C calling convention, so `ctx.arg(0)` (RDI / X0 per the System V and
/// AAPCS64 ABIs) is wrong on amd64. Go passes integer arguments in RAX, RBX, RCX, RDI, RSI, R8,
/// R9, R10, R11 on amd64 and in R0..R15 on arm64 (`src/cmd/compile/abi-internal.md`).
fn go_size_and_type(ctx: &ProbeContext) -> (u64, u64) {
    (go_int_arg::<0>(ctx), go_int_arg::<1>(ctx))
}

/// The `N`th integer argument (from 0) under Go's register ABI, for `N` < 3: RAX, RBX, RCX on
/// amd64; R0, R1, R2 on arm64. User space checks the analysis of the binary agrees before it
/// attaches each program.
#[inline(always)]
fn go_int_arg<const N: usize>(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe program's context is the traced task's saved `struct pt_regs`. The
    // verifier lets it read any aligned 8-byte word of that struct directly
    // (kprobe_prog_is_valid_access in kernel/trace/bpf_trace.c), which is what this compiles to.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let value = match N {
        0 => regs.rax,
        1 => regs.rbx,
        _ => regs.rcx,
    };
    #[cfg(bpf_target_arch = "aarch64")]
    let value = regs.regs[if N < 3 { N } else { 2 }];
    value
}

/// The traced thread's stack pointer.
fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_size_and_type.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let sp = regs.rsp;
    #[cfg(bpf_target_arch = "aarch64")]
    let sp = regs.sp;
    sp
}

/// The link register (x30) on arm64: the return address into the caller at the probe.
#[cfg(bpf_target_arch = "aarch64")]
fn link_register(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_size_and_type.
    unsafe { (*ctx.regs).regs[30] }
}

/// The frame pointer (the caller's frame at the probe) and the probed pc.
fn frame_pointer_and_pc(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: as in go_size_and_type.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let fp_pc = (regs.rbp, regs.rip);
    #[cfg(bpf_target_arch = "aarch64")]
    let fp_pc = (regs.regs[29], regs.pc);
    fp_pc
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("gotrace's probes know Go's register ABI only on x86_64 and aarch64");

/// The bpf target has neither std nor unwinding, so `core` needs this handler. A program that could
/// actually reach the loop would be refused by the verifier (it rejects infinite loops), so a
/// program that loads proves that no panic path survived optimisation.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The kernel refuses GPL-only helpers (`bpf_probe_read_user`) to programs that do not declare
/// a GPL-compatible licence.
#[cfg(target_arch = "bpf")]
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// On the host this crate is only type-checked; the real program is the bpf build above.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
