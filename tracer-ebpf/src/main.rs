//! gotrace's eBPF probes.
//!
//! Built for `bpfel-unknown-none` by `tracer/build.rs` (with Debian's rustc and
//! `-Z build-std=core`, see `scripts/setup.sh`) and embedded into the `gotrace` binary. On the
//! host the crate compiles to an empty program, so `cargo check --workspace` and clippy work
//! there too; the probe code is still type-checked on the host, against the host's `pt_regs`.
//!
//! One program, `alloc_count`, sits on every counting allocation entry point of the traced
//! binary (`runtime.mallocgc`, and Go 1.27's `runtime.mallocgc*SC<n>`), at the instruction after
//! the stack-bound check. Per allocation it reads the size and type from Go's register ABI and
//! the caller's return address, walks the user stack, and counts the combination in a per-CPU
//! hash map: no event goes to user space, which reads the maps when it wants.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For the atomic add in `bump` (see there); the eBPF crate is built with RUSTC_BOOTSTRAP=1.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "core_intrinsics, see bump"))]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::bpf_probe_read_user,
    macros::{map, uprobe},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::ProbeContext,
};
use tracer_common::{
    AllocKey, COUNTS_MAP_ENTRIES, FLAG_SKIP_ZERO_SIZE, MAX_NESTED_RANGES, MAX_STACK_DEPTH, NO_STACK, ProbeConfig,
    ProbeStats, STACKS_MAP_ENTRIES, StackHasher, UserStack, stack_hash,
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

/// What happened to one hit, for [`STATS`].
enum Outcome {
    Recorded,
    RecordedWithoutStack,
    Nested,
    ZeroSize,
    NoReturnAddress,
    CountsMapRefused,
}

/// Adds 1 to a counter in map memory.
///
/// Atomically: uprobe programs run with migration disabled but, on preemptible kernels, not
/// with preemption disabled (`bpf_prog_run_array_uprobe`), so another task on this CPU can run
/// the same program in the middle of an update even on a per-CPU slot. The result is unused,
/// so this is the plain atomic add of the BPF instruction set.
///
/// # Safety
/// `counter` must point into map memory that stays valid for the run of the program.
unsafe fn bump(counter: *mut u64) {
    // The bpf target declares no atomics to `core` (it has no compare-and-swap before v3), so
    // `AtomicU64` is missing there; the intrinsic lowers to BPF's atomic add all the same.
    // SAFETY: the caller promises a valid, aligned u64 in map memory.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, 1);
    }
    // SAFETY: as above.
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(counter) }.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

fn try_alloc_count(ctx: &ProbeContext) -> Result<u32, u32> {
    let stats = STATS.get_ptr_mut(0).ok_or(0_u32)?;
    let outcome = count(ctx);
    // SAFETY: this CPU's slot of the per-CPU array, valid for the whole run.
    unsafe {
        bump(&raw mut (*stats).hits);
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
    let Some(return_address) = return_address(ctx) else {
        return Outcome::NoReturnAddress;
    };
    // A call from inside the malloc implementation is part of an allocation counted already
    // (mallocgc → mallocgcSmallNoScanSC3, mallocgcTinySlowPath → mallocgcSmallNoScanSC2).
    let nested_len = config.nested_len as usize;
    for i in 0..MAX_NESTED_RANGES {
        if i >= nested_len {
            break;
        }
        if config.nested[i].contains(return_address) {
            return Outcome::Nested;
        }
    }
    let stack = store_user_stack(ctx);
    let key = AllocKey {
        stack,
        return_address,
        type_address,
        size,
    };
    match increment(&key) {
        Ok(()) if stack == NO_STACK => Outcome::RecordedWithoutStack,
        Ok(()) => Outcome::Recorded,
        Err(_) => Outcome::CountsMapRefused,
    }
}

/// Walks Go's frame-pointer chain from the probe: the probed pc, then one return address per
/// frame record, up to [`MAX_STACK_DEPTH`] frames. Hashes the frames as it goes, and stores them
/// in `out` too when given one. Returns the hash and the number of frames.
///
/// The walk follows the frame pointers itself rather than calling `bpf_get_stack`: measured on
/// these machines, the kernel's user-stack walker costs about 1.5 µs for a six-frame Go stack,
/// reading the frame records one by one here about 0.7 µs.
///
/// At the probe (after the stack check, before the probed function saved its frame pointer)
/// the frame-pointer register still holds the caller's frame, so the chain yields the probed
/// pc and then the caller's *caller*: the caller itself is the return address, which the count
/// key carries next to the stack.
fn walk_stack(ctx: &ProbeContext, mut out: Option<&mut UserStack>) -> (u64, usize) {
    let (mut fp, pc) = frame_pointer_and_pc(ctx);
    let mut hash = StackHasher::new().push(pc);
    if let Some(out) = out.as_deref_mut() {
        out.frames[0] = pc;
    }
    let mut len = 1;
    for i in 1..MAX_STACK_DEPTH {
        // Go's frame record on amd64 and arm64: the caller's frame pointer, then the return
        // address into the caller.
        // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
        let Ok([next_fp, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if ret == 0 {
            break;
        }
        hash = hash.push(ret);
        if let Some(out) = out.as_deref_mut() {
            out.frames[i] = ret;
        }
        len = i + 1;
        // Frames sit at increasing addresses; anything else is the end or garbage.
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
    }
    (hash.finish(), len)
}

/// The stack's key in [`STACKS`], storing the stack there if it is new; [`NO_STACK`] when it
/// cannot be stored.
///
/// Most allocations come from stacks seen before, so the first walk only hashes. A new stack
/// is walked a second time into this CPU's scratch slot and stored if the second walk agrees
/// with the first: another run of the probe on this CPU (possible on preemptible kernels) may
/// have overwritten the slot mid-walk, and a mixed stack must not be stored under either
/// stack's key.
fn store_user_stack(ctx: &ProbeContext) -> u64 {
    let (hash, _) = walk_stack(ctx, None);
    if STACKS.get_ptr(hash).is_some() {
        return hash;
    }
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return NO_STACK;
    };
    // SAFETY: this CPU's scratch slot, valid for the run of the program.
    let scratch = unsafe { &mut *scratch };
    let (again, len) = walk_stack(ctx, Some(scratch));
    scratch.len = len as u64;
    if again != hash || stack_hash(&scratch.frames[..len.min(MAX_STACK_DEPTH)]) != hash {
        return NO_STACK;
    }
    match STACKS.insert(hash, scratch, u64::from(BPF_NOEXIST)) {
        // EEXIST: another CPU stored the same stack first.
        Ok(()) => hash,
        Err(e) if e == -EEXIST => hash,
        Err(_) => NO_STACK,
    }
}

fn increment(key: &AllocKey) -> Result<(), i32> {
    if let Some(count) = COUNTS.get_ptr_mut(key) {
        // SAFETY: this CPU's copy of the value, valid for the run of the program.
        unsafe { bump(count) };
        return Ok(());
    }
    match COUNTS.insert(key, 1, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(()),
        // Another run created the key between the lookup and the insert: its per-CPU slots
        // start at zero, so this CPU's slot can be incremented now.
        Err(e) if e == -EEXIST => {
            let count = COUNTS.get_ptr_mut(key).ok_or(-ENOENT)?;
            // SAFETY: as above.
            unsafe { bump(count) };
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
    // SAFETY: a uprobe program's context is the traced task's saved `struct pt_regs`. The
    // verifier lets it read any aligned 8-byte word of that struct directly
    // (kprobe_prog_is_valid_access in kernel/trace/bpf_trace.c), which is what this compiles to.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    let args = (regs.rax, regs.rbx);
    #[cfg(bpf_target_arch = "aarch64")]
    let args = (regs.regs[0], regs.regs[1]);
    args
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

/// The return address into the caller, where it is at the probe: on amd64 `CALL` left it at
/// `[RSP]` (the probe is before the function pushes its frame pointer); on arm64 it is still in
/// the link register, which the frame set-up saves only after the probe.
#[cfg_attr(
    bpf_target_arch = "aarch64",
    expect(clippy::unnecessary_wraps, reason = "the amd64 read from the stack can fail")
)]
fn return_address(ctx: &ProbeContext) -> Option<u64> {
    // SAFETY: as in go_size_and_type.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: bpf_probe_read_user checks the user address and fails cleanly on a bad one.
        unsafe { bpf_probe_read_user(regs.rsp as *const u64) }.ok()
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        Some(regs.regs[30])
    }
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
