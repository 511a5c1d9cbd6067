//! Whether this process may load eBPF programs and attach uprobes, checked up front so that the
//! user gets one sentence saying what is missing instead of an `EPERM` from deep inside aya.

use anyhow::bail;

/// `CAP_SYS_ADMIN`: covers everything below on any kernel.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` (Linux 5.8+): `perf_event_open`, which attaches uprobes.
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8+): loading programs and creating maps.
const CAP_BPF: u32 = 39;

/// What gotrace needs, in words, for error messages and `--help`.
pub const REQUIRED: &str = "root, or the capabilities CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN on kernels \
before 5.8 or whose uprobe PMU does not honour CAP_PERFMON), plus CAP_SYS_PTRACE for another user's process";

/// Fails with a message naming the missing capabilities.
pub fn check_tracing_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = effective_capabilities(&status);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
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
