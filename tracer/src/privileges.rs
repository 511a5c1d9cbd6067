//! Whether this process may load eBPF programs and attach uprobes, checked up front so that the
//! user gets one sentence saying what is missing instead of an `EPERM` from deep inside aya.

use anyhow::bail;

/// `CAP_SYS_ADMIN`: covers everything below on any kernel.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_PTRACE`: reading another user's process memory (`process_vm_readv`).
pub const CAP_SYS_PTRACE: u32 = 19;
/// `CAP_PERFMON` (Linux 5.8+): `perf_event_open`, which attaches uprobes.
pub const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8+): loading programs and creating maps.
pub const CAP_BPF: u32 = 39;

/// What gotrace needs, in words, for error messages and `--help`.
pub const REQUIRED: &str = "root, or the capabilities CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN on kernels \
before 5.8 or whose uprobe PMU does not honour CAP_PERFMON), plus CAP_SYS_PTRACE for another user's process";

/// Fails with a message naming the missing capabilities.
pub fn check_tracing_privileges() -> anyhow::Result<()> {
    let effective = own_capabilities();
    if may_trace(effective) {
        return Ok(());
    }
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect();
    bail!(
        "tracing needs {REQUIRED}; this process lacks {} (run gotrace with sudo)",
        missing.join(" and ")
    )
}

/// This process's effective capability set, as a bitmask indexed by `CAP_*` number.
#[must_use]
pub fn own_capabilities() -> u64 {
    effective_capabilities(&std::fs::read_to_string("/proc/self/status").unwrap_or_default())
}

/// Whether this process may load the probes and attach them (the test of
/// [`check_tracing_privileges`]).
#[must_use]
pub fn may_trace(effective: u64) -> bool {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// The `CapEff:` bitmask of a `/proc/PID/status` text (0 when absent).
fn effective_capabilities(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tgotrace\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(status), 0x01ff_ffff_ffff);
        assert_eq!(effective_capabilities("Name: x\n"), 0);
    }
}
