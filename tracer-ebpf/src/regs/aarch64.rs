//! arm64's `pt_regs`.

use aya_ebpf::programs::ProbeContext;

/// Whether the return address into the probed function's caller is the word at the stack
/// pointer: on arm64 it is not, it is in the link register (see [`return_address`]).
pub const RETURN_ADDRESS_AT_SP: bool = false;

/// How far below the stack pointer the caller's frame record starts, at the probe: on arm64
/// Go's prologue stores the frame pointer at `-8(RSP)` of the frame it just made (and points
/// R29 there), so the caller's record sits 8 bytes below the stack pointer the callee sees
/// (`src/cmd/internal/obj/arm64/obj7.go`).
pub const CALLER_RECORD_BELOW_SP: u64 = 8;

/// The `N`th integer argument (from 0) under Go's register ABI, for `N` < 3: R0, R1, R2.
#[inline(always)]
pub fn go_int_arg<const N: usize>(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe program's context is the traced task's saved `struct pt_regs`. The
    // verifier lets it read any aligned 8-byte word of that struct directly
    // (kprobe_prog_is_valid_access in kernel/trace/bpf_trace.c), which is what this compiles to.
    let regs = unsafe { &*ctx.regs };
    regs.regs[if N < 3 { N } else { 2 }]
}

/// The traced thread's stack pointer.
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_int_arg.
    unsafe { (*ctx.regs).sp }
}

/// The frame pointer (the caller's frame at the probe, R29) and the probed pc.
pub fn frame_pointer_and_pc(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: as in go_int_arg.
    let regs = unsafe { &*ctx.regs };
    (regs.regs[29], regs.pc)
}

/// The current goroutine, `g`: R28 in every function compiled with Go's register ABI
/// (`src/cmd/compile/abi-internal.md`), as the probed functions are.
#[inline(always)]
pub fn current_goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_int_arg.
    unsafe { (*ctx.regs).regs[28] }
}

/// The return address into the probed function's caller (whatever the stack pointer): the
/// link register (x30), which the frame set-up saves only after the probe.
#[inline(always)]
#[expect(clippy::unnecessary_wraps, reason = "the amd64 read of the return address can fail")]
pub fn return_address(ctx: &ProbeContext, _sp: u64) -> Option<u64> {
    // SAFETY: as in go_int_arg.
    Some(unsafe { (*ctx.regs).regs[30] })
}
