//! gotrace's eBPF probes.
//!
//! Built for `bpfel-unknown-none` by `tracer/build.rs` (with Debian's rustc and
//! `-Z build-std=core`, see `scripts/setup.sh`) and embedded into the `gotrace` binary. On the
//! host the crate compiles to an empty program, so `cargo check --workspace` and clippy work
//! there too; the probe code is still type-checked on the host, against the host's `pt_regs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    macros::{map, uprobe},
    maps::PerCpuArray,
    programs::ProbeContext,
};
use aya_log_ebpf::error;
use tracer_common::{COUNTERS_INDEX, COUNTERS_LEN, ProbeCounters};

/// Per-CPU allocation counters, one slot ([`COUNTERS_INDEX`]).
///
/// An array rather than a hash map: its size is fixed when it is created, so the probe never
/// inserts and can never run out of room. Per-CPU so that concurrent hits on different CPUs
/// never share a cache line and need no atomics.
#[map]
static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Entry uprobe on a Go allocation function (`runtime.mallocgc`, whose first argument is the
/// size in bytes).
///
/// The kernel ignores a uprobe program's return value, so failures are only logged (aya-log;
/// they cannot happen unless the map is missing).
#[uprobe]
#[expect(
    clippy::needless_pass_by_value,
    reason = "#[uprobe] builds the context and hands it over by value"
)]
fn alloc_probe(ctx: ProbeContext) -> u32 {
    match try_alloc_probe(&ctx) {
        Ok(ret) => ret,
        Err(err) => {
            error!(&ctx, "alloc_probe: counters update failed: {}", err);
            0
        }
    }
}

/// Error for a missing map slot: `-ENOENT`, the kernel's convention for a failed lookup.
const ENOENT: i64 = 2;

fn try_alloc_probe(ctx: &ProbeContext) -> Result<u32, i64> {
    let size = go_arg0(ctx);
    let counters = COUNTERS.get_ptr_mut(COUNTERS_INDEX).ok_or(-ENOENT)?;
    // SAFETY: the pointer comes from bpf_map_lookup_elem on a per-CPU array, so it points at
    // this CPU's copy of the value, which stays valid for the whole program run. Programs on
    // other CPUs use their own copies. A program preempted on this CPU by another one that
    // hits the same probe could lose an update; for counters that is acceptable, and it is why
    // they are not used for anything that has to be exact.
    let counters = unsafe { &mut *counters };
    counters.hits = counters.hits.wrapping_add(1);
    counters.bytes = counters.bytes.wrapping_add(size);
    Ok(0)
}

/// The first integer argument of a Go function compiled with Go's register-based internal ABI
/// (`ABIInternal`: Go 1.17+ on amd64, 1.18+ on arm64).
///
/// Go does not follow the C calling convention, so `ctx.arg(0)` (RDI / X0 per the System V and
/// AAPCS64 ABIs) is wrong on amd64. Go passes integer arguments in RAX, RBX, RCX, RDI, RSI, R8,
/// R9, R10, R11 on amd64 and in R0..R15 on arm64 (see the Go source tree's
/// `src/cmd/compile/abi-internal.md`).
fn go_arg0(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe program's context is the traced task's saved `struct pt_regs`. The
    // verifier lets it read any aligned 8-byte word of that struct directly
    // (kprobe_prog_is_valid_access in kernel/trace/bpf_trace.c), which is what this compiles to.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let arg0 = regs.rax;
    #[cfg(bpf_target_arch = "aarch64")]
    let arg0 = regs.regs[0];
    arg0
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

/// On the host this crate is only type-checked; the real program is the bpf build above.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
