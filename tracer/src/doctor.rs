//! `gotrace --version` and `gotrace doctor`: what this build is, and whether this host can trace.
//!
//! `--version` states the build and the kernel features the embedded probes need, each checked
//! against the running kernel, without privileges. `doctor` adds everything else that decides
//! whether tracing works here (privileges, the verifier's verdict on the probes, lockdown,
//! `ptrace_scope`, `perf_event_paranoid`) on one screen, and exits non-zero when something
//! blocks tracing.

use std::fmt::Write as _;
use std::time::Instant;

use crate::host::{self, Check, Needs, Status};
use crate::privileges::{self, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE};

/// The release, from the workspace's `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this was built from (12 hex digits), or `unknown` outside a git checkout;
/// set by `build.rs`, or by `GOTRACE_COMMIT` when building from a source tarball.
pub const COMMIT: &str = env!("GOTRACE_COMMIT");
/// That commit's date (`YYYY-MM-DD`), or `unknown`.
pub const COMMIT_DATE: &str = env!("GOTRACE_COMMIT_DATE");
/// When `build.rs` last ran (`YYYY-MM-DD`, UTC; `SOURCE_DATE_EPOCH` wins when set).
pub const BUILD_DATE: &str = env!("GOTRACE_BUILD_DATE");
/// The Rust target this binary was built for.
pub const TARGET: &str = env!("GOTRACE_TARGET");

/// One line: `gotrace 0.1.0 (commit 0123456789ab 2026-12-03, built 2026-12-03, x86_64-unknown-linux-gnu)`.
#[must_use]
pub fn build_line() -> String {
    format!("gotrace {VERSION} (commit {COMMIT} {COMMIT_DATE}, built {BUILD_DATE}, {TARGET})")
}

/// What the embedded probes need; an unreadable object is reported as a failed check.
fn needs() -> Result<Needs, Check> {
    host::needs_of(crate::ebpf::object()).map_err(|e| Check {
        name: "probes",
        status: Status::Fail,
        detail: format!("{e}"),
    })
}

/// The text of `gotrace --version`.
#[must_use]
pub fn version_report() -> String {
    let mut out = build_line();
    out.push('\n');
    match needs() {
        Ok(needs) => {
            let _ = writeln!(
                out,
                "eBPF probes: {} programs, embedded; the kernel features they need, against this kernel:",
                needs.programs
            );
            render(&mut out, &host::kernel_checks(&needs));
        }
        Err(check) => render(&mut out, &[check]),
    }
    out.push_str("Whether this host can trace (privileges, lockdown, the verifier): gotrace doctor\n");
    out
}

/// The checks of `gotrace doctor`, in the order they are shown.
#[must_use]
pub fn doctor_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let needs = match needs() {
        Ok(needs) => Some(needs),
        Err(check) => {
            checks.push(check);
            None
        }
    };
    if let Some(needs) = &needs {
        checks.extend(host::kernel_checks(needs));
    }
    let effective = privileges::own_capabilities();
    checks.push(privileges_check(effective));
    checks.push(probes_check(effective, needs.is_some(), &checks));
    checks.push(attach_check(&checks));
    checks.push(host::lockdown());
    checks.push(host::ptrace_scope(effective & (1 << CAP_SYS_PTRACE) != 0));
    checks.push(host::perf_event_paranoid());
    checks.push(jit());
    checks
}

fn privileges_check(effective: u64) -> Check {
    let names: Vec<&str> = [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|&(cap, _)| effective & (1u64 << cap) != 0)
    .map(|(_, name)| name)
    .collect();
    let has = if names.is_empty() {
        "none of CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE".to_owned()
    } else {
        names.join(", ")
    };
    // SAFETY: geteuid cannot fail.
    let who = if unsafe { libc::geteuid() } == 0 {
        "root"
    } else {
        "not root"
    };
    if privileges::may_trace(effective) {
        Check {
            name: "privileges",
            status: Status::Ok,
            detail: format!("{who}, with {has}"),
        }
    } else {
        Check {
            name: "privileges",
            status: Status::Fail,
            detail: format!("{who}, with {has}: tracing needs {} (try sudo)", privileges::REQUIRED),
        }
    }
}

/// Loads every program into the verifier, when this process may: the only check that the
/// kernel accepts them as built (helpers, map types, program size and complexity).
fn probes_check(effective: u64, object_readable: bool, so_far: &[Check]) -> Check {
    let name = "verifier";
    if !object_readable {
        return Check {
            name,
            status: Status::Fail,
            detail: "not checked: the embedded object is unreadable".to_owned(),
        };
    }
    if !privileges::may_trace(effective) {
        return Check {
            name,
            status: Status::Info,
            detail: "not checked: loading the probes needs the privileges above".to_owned(),
        };
    }
    if so_far.iter().any(|c| c.status == Status::Fail) {
        return Check {
            name,
            status: Status::Info,
            detail: "not checked: fix the lines marked FAIL first".to_owned(),
        };
    }
    let started = Instant::now();
    match crate::probes::verify_all() {
        Ok(count) => Check {
            name,
            status: Status::Ok,
            detail: format!(
                "all {count} programs passed this kernel's verifier ({} ms), and were unloaded",
                started.elapsed().as_millis()
            ),
        },
        Err(e) => Check {
            name,
            status: Status::Fail,
            detail: format!("{e:#}"),
        },
    }
}

/// Attaches a uprobe to this very binary (scoped to this process, at its entry point, which
/// never runs again) and detaches it: whether `perf_event_open` on the uprobe PMU accepts this
/// process's privileges, which no capability bit can tell (on some kernels `CAP_PERFMON` is
/// not enough and `CAP_SYS_ADMIN` is needed).
fn attach_check(so_far: &[Check]) -> Check {
    let name = "uprobe attach";
    if so_far.iter().any(|c| c.name == "verifier" && c.status != Status::Ok) {
        return Check {
            name,
            status: Status::Info,
            detail: "not checked: the probes did not load".to_owned(),
        };
    }
    let attach = || -> anyhow::Result<()> {
        use anyhow::Context as _;
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let bytes = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
        let offset = host::entry_file_offset(&bytes).context("cannot find this executable's entry point")?;
        crate::probes::check_uprobe_attach(&exe, offset)
    };
    match attach() {
        Ok(()) => Check {
            name,
            status: Status::Ok,
            detail: "a uprobe on this binary, for this process only, attached and detached".to_owned(),
        },
        Err(e) => {
            let denied = format!("{e:#}").contains("ermission denied");
            let hint = if denied && privileges::own_capabilities() & (1 << CAP_SYS_ADMIN) == 0 {
                " (this kernel's uprobe PMU wants CAP_SYS_ADMIN, not only CAP_PERFMON)"
            } else {
                ""
            };
            Check {
                name,
                status: Status::Fail,
                detail: format!("{e:#}{hint}"),
            }
        }
    }
}

/// The BPF JIT: without it the kernel interprets the probes, several times slower.
fn jit() -> Check {
    let name = "BPF JIT";
    match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map(|v| v.trim().to_owned()) {
        Ok(v) if v == "0" => Check {
            name,
            status: Status::Warn,
            detail: "off: the probes are interpreted and cost several times more (sysctl net.core.bpf_jit_enable=1)"
                .to_owned(),
        },
        Ok(v) => Check {
            name,
            status: Status::Ok,
            detail: format!("on (net.core.bpf_jit_enable={v})"),
        },
        // The sysctl is absent when the JIT is always on (CONFIG_BPF_JIT_ALWAYS_ON without the
        // knob) or in a network namespace that hides it.
        Err(_) => Check {
            name,
            status: Status::Info,
            detail: "net.core.bpf_jit_enable unreadable".to_owned(),
        },
    }
}

/// Renders checks as aligned lines: `  ok    kernel       Linux 6.1 ...`.
pub fn render(out: &mut String, checks: &[Check]) {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for check in checks {
        let _ = writeln!(
            out,
            "  {:<5} {:<width$}  {}",
            check.status.label(),
            check.name,
            check.detail
        );
    }
}

/// The text of `gotrace doctor` and whether the host can trace (no check failed).
#[must_use]
pub fn doctor_report() -> (String, bool) {
    let checks = doctor_checks();
    let mut out = format!("{}\ncan this host trace Go programs?\n", build_line());
    render(&mut out, &checks);
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    let verdict = match (failed, warned) {
        (0, 0) => "yes: every mode works on this host".to_owned(),
        (0, _) => "yes, with the limits marked warn".to_owned(),
        (n, _) => format!("no: fix the {n} line(s) marked FAIL"),
    };
    let _ = writeln!(out, "verdict: {verdict}");
    (out, failed == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_report_names_the_build_and_the_kernel_needs() {
        let report = version_report();
        assert!(report.starts_with(&format!("gotrace {VERSION} (commit ")), "{report}");
        for needed in [
            "kernel",
            "bpf(2)",
            "uprobe PMU",
            "bpf_loop (5.17)",
            "bpf_probe_read_user (5.5)",
        ] {
            assert!(report.contains(needed), "no {needed:?} in:\n{report}");
        }
        assert_eq!(BUILD_DATE.len(), 10, "{BUILD_DATE}");
    }

    #[test]
    fn doctor_renders_one_line_per_check_and_a_verdict() {
        let (report, _) = doctor_report();
        for name in [
            "privileges",
            "verifier",
            "uprobe attach",
            "lockdown",
            "ptrace_scope",
            "perf_event_paranoid",
        ] {
            assert!(
                // "  STATUS NAME  detail": the name starts after the 5-wide status.
                report
                    .lines()
                    .any(|l| l.get(8..).is_some_and(|rest| rest.starts_with(&format!("{name} ")))),
                "{name}:\n{report}"
            );
        }
        assert!(report.lines().last().unwrap().starts_with("verdict: "), "{report}");
    }
}
