//! The traced thread's registers, from a uprobe's context: the traced task's saved
//! `struct pt_regs`, whose layout depends on the traced machine's architecture (the cfg
//! `bpf_target_arch`, see `build.rs`). One module per architecture gotrace supports, with the
//! same functions; user space checks that the analysis of the binary agrees with them before
//! it attaches each program.
//!
//! Go does not follow the C calling convention, so `ctx.arg(0)` (RDI / X0 per the System V and
//! AAPCS64 ABIs) is wrong on amd64. Go passes integer arguments in RAX, RBX, RCX, RDI, RSI, R8,
//! R9, R10, R11 on amd64 and in R0..R15 on arm64 (`src/cmd/compile/abi-internal.md`).
//!
//! Every read here is of the context itself: the verifier lets a uprobe program read any
//! aligned 8-byte word of `pt_regs` directly (`kprobe_prog_is_valid_access` in
//! `kernel/trace/bpf_trace.c`), as long as the offset from the context pointer is a constant.

#[cfg(bpf_target_arch = "aarch64")]
mod aarch64;
#[cfg(bpf_target_arch = "x86_64")]
mod x86_64;

#[cfg(bpf_target_arch = "aarch64")]
pub use aarch64::{
    CALLER_RECORD_BELOW_SP, RETURN_ADDRESS_AT_SP, current_goroutine, frame_pointer_and_pc, go_int_arg, return_address,
    stack_pointer,
};
#[cfg(bpf_target_arch = "x86_64")]
pub use x86_64::{
    CALLER_RECORD_BELOW_SP, RETURN_ADDRESS_AT_SP, current_goroutine, frame_pointer_and_pc, go_int_arg, return_address,
    stack_pointer,
};

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("gotrace's probes know Go's register ABI only on x86_64 and aarch64");

use aya_ebpf::programs::ProbeContext;

/// The first two integer arguments of a Go function compiled with Go's register-based internal
/// ABI (`ABIInternal`: Go 1.17+ on amd64, 1.18+ on arm64): `size` and `typ` of
/// `mallocgc(size uintptr, typ *_type, needzero bool)` and of the `mallocgc*SC<n>` functions,
/// which have the same signature. User space checks that the analysis of the binary agrees
/// before it attaches.
pub fn go_size_and_type(ctx: &ProbeContext) -> (u64, u64) {
    (go_int_arg::<0>(ctx), go_int_arg::<1>(ctx))
}

/// The return address into the probed function's caller: on amd64 at the stack pointer,
/// where `CALL` left it; on arm64 in the link register, which the frame set-up saves only
/// after the probe.
#[inline(always)]
pub fn caller_return_address(ctx: &ProbeContext) -> Option<u64> {
    return_address(ctx, stack_pointer(ctx))
}

// A window that starts at the stack pointer holds the return address in its first word only
// where the caller's frame record is not below the stack pointer (see `load_window`).
const _: () = assert!(!RETURN_ADDRESS_AT_SP || CALLER_RECORD_BELOW_SP == 0);
