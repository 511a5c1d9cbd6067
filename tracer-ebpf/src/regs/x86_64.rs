//! amd64's `pt_regs`.

use aya_ebpf::{helpers::bpf_probe_read_user, programs::ProbeContext};

/// Whether the return address into the probed function's caller is the word at the stack
/// pointer: on amd64 it is, where `CALL` left it.
pub const RETURN_ADDRESS_AT_SP: bool = true;

/// How far below the stack pointer the caller's frame record starts, at the probe: on amd64 it
/// is above, after the return address.
pub const CALLER_RECORD_BELOW_SP: u64 = 0;

/// The `N`th integer argument (from 0) under Go's register ABI, for `N` < 3: RAX, RBX, RCX.
#[inline(always)]
pub fn go_int_arg<const N: usize>(ctx: &ProbeContext) -> u64 {
    // SAFETY: a uprobe program's context is the traced task's saved `struct pt_regs`. The
    // verifier lets it read any aligned 8-byte word of that struct directly
    // (kprobe_prog_is_valid_access in kernel/trace/bpf_trace.c), which is what this compiles to.
    let regs = unsafe { &*ctx.regs };
    match N {
        0 => regs.rax,
        1 => regs.rbx,
        _ => regs.rcx,
    }
}

/// The traced thread's stack pointer.
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_int_arg.
    unsafe { (*ctx.regs).rsp }
}

/// The frame pointer (the caller's frame at the probe) and the probed pc.
pub fn frame_pointer_and_pc(ctx: &ProbeContext) -> (u64, u64) {
    // SAFETY: as in go_int_arg.
    let regs = unsafe { &*ctx.regs };
    (regs.rbp, regs.rip)
}

/// The current goroutine, `g`: R14 in every function compiled with Go's register ABI
/// (`src/cmd/compile/abi-internal.md`), as the probed functions are.
#[inline(always)]
pub fn current_goroutine(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in go_int_arg.
    unsafe { (*ctx.regs).r14 }
}

/// The return address into the probed function's caller, given the stack pointer `sp`: at the
/// stack pointer, where `CALL` left it.
#[inline(always)]
pub fn return_address(_ctx: &ProbeContext, sp: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user checks the address and fails cleanly.
    let return_address = unsafe { bpf_probe_read_user(sp as *const u64) }.ok()?;
    // (Not the `Option` itself: with the early return LLVM lays out the callers' branches as
    // the probes always had them, and the verifier walks them in the same order.)
    Some(return_address)
}
