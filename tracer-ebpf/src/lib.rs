//! The pure part of gotrace's eBPF probes: the arithmetic of walking Go's frame-pointer chain
//! through copies of the traced stack, and of reading the runtime's span counters. Nothing here
//! calls a BPF helper or touches a map; what needs the kernel (reading user memory, the
//! per-CPU map slots the data lives in, the registers) is handed in by the probes (`main.rs`
//! and its modules), so this library builds for the host too, where its unit tests run.
//!
//! - [`frames`]: what both walkers share: reading user memory ([`UserMemory`]), the walk's
//!   depth, claiming the scratch slot, a walk's result.
//! - [`window`]: exact mode's walker, over one copy of the live stack, and its replay.
//! - [`paged`]: the sampling programs' walker, a page of the stack at a time, one `bpf_loop`
//!   step per frame.
//! - [`mspan`]: the objects a P's cache took from a span (span-refill mode).
//!
//! The probes inline everything here (`#[inline(always)]`): BPF-to-BPF calls can neither return
//! a struct nor keep a register read at a constant offset from the context pointer, which the
//! verifier requires.
#![no_std]
#![expect(clippy::inline_always, reason = "the verifier needs the probes' paths inlined")]

#[cfg(test)]
extern crate std;

pub mod frames;
pub mod mspan;
pub mod paged;
pub mod window;

#[cfg(test)]
mod tests;

pub use frames::{StackWalk, UserMemory};
use tracer_common::{MAX_NESTED_RANGES, ProbeConfig};

/// Whether a call returning to `return_address` comes from inside the malloc implementation,
/// and so is part of an allocation counted already (mallocgc → mallocgcSmallNoScanSC3,
/// mallocgcTinySlowPath → mallocgcSmallNoScanSC2).
#[inline(always)]
#[must_use]
pub fn is_nested(config: &ProbeConfig, return_address: u64) -> bool {
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
