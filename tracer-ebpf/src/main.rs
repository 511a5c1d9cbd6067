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
//!
//! The programs are defined here; their work is in the modules:
//! - `maps`: every map, by the names user space loads them by;
//! - `regs`: the traced thread's registers (Go's register ABI), per architecture;
//! - `count`: exact mode (`alloc_count`);
//! - `record`: the sampling programs (`go_sample`, `span_refill`, `large_alloc`);
//! - `release`: span reads and `span_release`;
//! - `walker`: the probes' side of the two stack walkers (copies of the stack, `bpf_loop`);
//! - `store`: the counts and stack maps; `stats`: what each hit did.
//!
//! The walkers' arithmetic, which needs no BPF helper, is in the library (`lib.rs`:
//! `tracer_ebpf::window`, `tracer_ebpf::paged`, ...), which has host unit tests.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For the atomic add in `bump` (see there); the eBPF crate is built with RUSTC_BOOTSTRAP=1.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "core_intrinsics, see bump"))]
// The sampling paths are forced inline: BPF-to-BPF calls can neither return a struct nor keep
// a register read at a constant offset from the context pointer, which the verifier requires
// (see try_record).
#![expect(clippy::inline_always, reason = "the verifier needs the sampling paths inlined")]

mod count;
mod inuse;
mod maps;
mod record;
mod regs;
mod release;
mod stats;
mod store;
mod walker;

use aya_ebpf::{macros::uprobe, programs::ProbeContext};

use crate::record::{Source, try_record};

/// Defines entry uprobes, each `name(ctx) => expression;`: a program `name` that evaluates the
/// expression (a `Result<u32, u32>`) with `ctx` bound to a reference to its context. The kernel
/// ignores a uprobe program's return value; everything worth knowing ends up in `STATS`.
macro_rules! uprobe_programs {
    ($($(#[$attr:meta])* $name:ident($ctx:ident) => $run:expr;)*) => {$(
        $(#[$attr])*
        #[uprobe]
        fn $name(ctx: ProbeContext) -> u32 {
            let $ctx = &ctx;
            match $run {
                Ok(ret) | Err(ret) => ret,
            }
        }
    )*};
}

uprobe_programs! {
    /// Entry uprobe on a counting allocation entry point (exact mode, see the crate's docs).
    alloc_count(ctx) => count::try_alloc_count(ctx);

    /// Entry uprobe on `runtime.profilealloc(mp *m, x unsafe.Pointer, size uintptr)`: one of Go's
    /// own heap-profile samples. The runtime calls it from `mallocgc` (and Go 1.27's specialised
    /// mallocs) only when the allocation crosses the P's next sampling point, so the probe fires
    /// about once per `MemProfileRate` bytes; user space scales the samples the way pprof does.
    go_sample(ctx) => try_record(ctx, Source::ProfileAlloc);

    /// Entry uprobe on `runtime.(*mcache).refill(c *mcache, spc spanClass)`: the P's cached span of
    /// class `spc` is used up. Every object the cache handed out of it since it was cached,
    /// `allocCount - allocCountBeforeCache` (what `refill` itself adds to the heap statistics as
    /// `slotsUsed`, `src/runtime/mcache.go`), is counted against the allocation that used it up.
    span_refill(ctx) => try_record(ctx, Source::Refill);

    /// Entry uprobe on `runtime.(*mcache).allocLarge(c *mcache, size uintptr, noscan bool)`: an
    /// object over 32 KiB, which gets a span of its own and never passes `refill`. Rare and
    /// expensive for the runtime (a fresh span from the heap), so probing each one costs little.
    large_alloc(ctx) => try_record(ctx, Source::LargeAlloc);

    /// Entry uprobe on `runtime.(*mcache).releaseAll(c *mcache)`: the P hands back every cached
    /// span (`src/runtime/mcache.go`). For each span class, the objects the cache took from its
    /// span since the refill that brought it in (`allocCount - allocCountBeforeCache`, what
    /// `releaseAll` adds to the heap statistics) are charged to that refill's key.
    span_release(ctx) => release::try_span_release(ctx);

    /// Entry uprobe on `runtime.setprofilebucket(p unsafe.Pointer, b *bucket)`: the object
    /// `go_sample` just sampled on this thread got its profile special; it is tracked as alive
    /// (`inuse`).
    inuse_bucket(ctx) => inuse::try_inuse_bucket(ctx);

    /// Entry uprobe on `runtime.freeSpecial(s *special, p unsafe.Pointer, size uintptr)`: the
    /// sweep frees a dead object's special; a profile special's object stops being tracked.
    inuse_free(ctx) => inuse::try_inuse_free(ctx);

    /// Entry uprobe on `runtime.gcMarkTermination`: a GC cycle's marking ended; its time tells
    /// which tracked objects have outlived a complete sweep (`inuse`).
    inuse_gc(ctx) => inuse::try_inuse_gc(ctx);
}

/// Entry uprobe that does nothing: the cost of a probe at an address, with no work of its own
/// (`gotrace bench empty-probe`, for `cargo xtask bench`).
#[uprobe]
fn empty_probe(_ctx: ProbeContext) -> u32 {
    0
}

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
