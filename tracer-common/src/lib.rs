//! Data shared between gotrace's eBPF probes (`tracer-ebpf`) and user space (`tracer`).
//!
//! Both sides see the same bytes: the probe writes a value into a map, user space copies it
//! out with the `bpf(2)` syscall. So every type here is `#[repr(C)]`, made only of fixed-width
//! integers, with any padding spelled out as a named field. Implicit padding would be
//! uninitialised on the probe side (the verifier rejects passing uninitialised stack bytes to
//! map helpers) and `bool` would make every other byte value undefined behaviour on the user
//! side.
#![no_std]

/// Name of the uprobe program in the eBPF object (the `alloc_probe` function in `tracer-ebpf`).
pub const ALLOC_PROBE: &str = "alloc_probe";

/// Name of the per-CPU counters map in the eBPF object (the `COUNTERS` static in
/// `tracer-ebpf`). A `PERCPU_ARRAY` of [`ProbeCounters`] with [`COUNTERS_LEN`] entries.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Number of entries in [`COUNTERS_MAP`]. There is a single slot, [`COUNTERS_INDEX`]; the map is
/// an array so its size is fixed at load time.
pub const COUNTERS_LEN: u32 = 1;

/// The slot of [`COUNTERS_MAP`] the allocation probe updates.
pub const COUNTERS_INDEX: u32 = 0;

/// What the allocation probe has seen on one CPU.
///
/// The map is per-CPU, so each CPU's probe updates its own copy without atomics; user space
/// reads all copies and sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Times the probe fired.
    pub hits: u64,
    /// Sum of the requested allocation sizes, in bytes. Wraps on overflow (after 16 EiB).
    pub bytes: u64,
}

// The layout is part of the contract with the probe: two u64s, no padding. A field added later
// must keep this true or add explicit padding.
const _: () = assert!(core::mem::size_of::<ProbeCounters>() == 16);
const _: () = assert!(core::mem::align_of::<ProbeCounters>() == 8);

impl ProbeCounters {
    /// Adds another CPU's counters to these, as user space does when it folds a per-CPU value.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            hits: self.hits.wrapping_add(other.hits),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

// SAFETY: `ProbeCounters` is `#[repr(C)]`, `Copy` and `'static`, made only of `u64`s with no
// padding (checked above), so every bit pattern the kernel hands back is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeCounters {}
