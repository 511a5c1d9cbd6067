//! Build script for the eBPF probes.
//!
//! 1. Tells the probe code which CPU's `pt_regs` it reads. The bpf target has no notion of the
//!    traced machine's architecture, but the layout of `struct pt_regs` (and which register
//!    holds a Go argument) depends on it. aya uses the cfg `bpf_target_arch` for that;
//!    `aya_build` sets it from `AYA_BPF_TARGET_ARCH` (which `tracer/build.rs` passes) or else from
//!    the build host. aya-ebpf's build script calls the same function, so both crates agree.
//! 2. Asks bpf-linker for BTF, generated from the debug info (`debug = 2` in the `bpf` profile).
//!    The kernel uses the object's BTF for function and line info (readable verifier logs), and
//!    aya needs it for BTF-defined maps. bpf-linker only emits BTF when given `--btf`.

use std::env;

fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()?;
    if env::var_os("CARGO_CFG_TARGET_ARCH").is_some_and(|arch| arch == "bpf") {
        println!("cargo:rustc-link-arg-bins=--btf");
    }
    Ok(())
}
