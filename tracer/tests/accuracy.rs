//! The sampled modes' estimates against exact mode, on the same allocations: three `gotrace
//! attach` runs (exact, span, go-sampler) on one process of the `workloads classes` fixture,
//! all attached before its first allocation and reporting when it exits. Exact mode itself is
//! checked against the workload's own count of what it allocated.
//!
//! Target (issue 5): for the 10 callsites with the most bytes, each sampled mode's estimated
//! bytes are within ±15% of exact mode's.
//!
//! Span mode's duty cycle (`--span-budget`) is off there; a second test runs it alone against
//! the program's own count.
//!
//! Root only: without root the test says why and passes (CI runs as root).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{host_goarch, lines_of, repo_root, root_only, wait_output};

/// Rounds of the workload: about 420 MB allocated, 5 million allocations.
const ROUNDS: &str = "600";
/// The go-sampler run's `--set-mem-profile-rate`: small enough that the smallest of the top 10
/// callsites gets about a thousand samples in this short run (at Go's default 512 KiB it would
/// need minutes of allocation for the same error).
const SAMPLE_RATE: &str = "4096";
/// The accuracy target.
const TOLERANCE: f64 = 0.15;
/// What the span duty-cycle test holds the estimates to, scaled by the runtime's own
/// allocation count and, for a stripped binary, by time (see there).
const DUTY_CYCLE_TOLERANCE: f64 = 0.10;
const STRIPPED_DUTY_CYCLE_TOLERANCE: f64 = 0.25;

fn workloads(minor: &str) -> PathBuf {
    repo_root().join(format!("target/fixtures/go{minor}/{}/workloads", host_goarch()))
}

/// Bytes per allocating line (`function:line`) of a gotrace JSON report, over all its types and
/// kinds.
fn bytes_by_line(report: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in report["callsites"].as_array().expect("callsites") {
        let key = format!("{}:{}", c["function"].as_str().expect("function"), c["line"]);
        *out.entry(key).or_insert(0.0) += c["bytes"].as_f64().expect("bytes");
    }
    out
}

/// One mode's bytes by line, and what gotrace printed on stderr.
type Traced = (BTreeMap<String, f64>, String);

/// Runs `workloads classes` for `rounds`, traced from before its first allocation by one
/// `gotrace attach` per (mode, extra arguments); returns the workload's own summary, and each
/// tracer's bytes by line with what it printed on stderr, under its mode's name (or the
/// mode's name and its first extra argument when the mode comes twice).
fn trace_classes(
    minor: &str,
    rounds: &str,
    modes: &[(&'static str, &[&str])],
) -> (Value, BTreeMap<&'static str, Traced>) {
    trace_classes_of(&workloads(minor), minor, rounds, modes)
}

/// [`trace_classes`] on a given build of the workload.
fn trace_classes_of(
    binary: &Path,
    minor: &str,
    rounds: &str,
    modes: &[(&'static str, &[&str])],
) -> (Value, BTreeMap<&'static str, Traced>) {
    assert!(
        binary.exists(),
        "{} is missing: run cargo xtask fixtures",
        binary.display()
    );
    let mut target = Command::new(binary)
        .args(["classes", "--rounds", rounds, "--wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let stdout = lines_of(target.stdout.take().expect("stdout"));
    let ready = stdout.recv_timeout(Duration::from_secs(20)).expect("ready line");
    assert!(ready.starts_with("ready"), "{ready}");
    let pid = target.id().to_string();
    let dir = std::env::temp_dir().join(format!("gotrace-accuracy-{}-{minor}-{rounds}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let mut tracers = Vec::new();
    for &(mode, extra) in modes {
        let label: &'static str = if modes.iter().filter(|(m, _)| *m == mode).count() > 1 {
            Box::leak(format!("{mode} {}", extra.join(" ")).into_boxed_str())
        } else {
            mode
        };
        let out = dir.join(format!("{}.json", label.replace(' ', "_")));
        let mut child = Command::new(env!("CARGO_BIN_EXE_gotrace"))
            .args(["attach", &pid, "--mode", mode, "-f", "json", "-o"])
            .arg(&out)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gotrace");
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + Duration::from_secs(30);
        // What it said until it attached, the attach line included, is part of what it said.
        let mut said_first = Vec::new();
        loop {
            let line = stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("gotrace --mode {mode} never attached"));
            let attached = line.contains("attached");
            said_first.push(line);
            if attached {
                break;
            }
        }
        tracers.push((mode, label, out, child, (said_first, stderr)));
    }
    // Go.
    let mut stdin = target.stdin.take().expect("stdin");
    stdin.write_all(b"\n").expect("start the rounds");
    drop(stdin);
    let expected: Value = loop {
        let line = stdout
            .recv_timeout(Duration::from_mins(2))
            .expect("the workload's summary");
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            break v;
        }
    };
    let _ = target.wait();
    let mut reports = BTreeMap::new();
    for (mode, label, out, child, (said_first, stderr)) in tracers {
        let status = wait_output(child).status;
        assert!(status.success(), "gotrace --mode {mode}: {status}");
        let report: Value = serde_json::from_slice(&std::fs::read(&out).expect("report")).expect("json");
        assert_eq!(report["mode"], mode);
        assert_eq!(report["estimated"], mode != "exact");
        let said: Vec<String> = said_first.into_iter().chain(stderr.try_iter()).collect();
        reports.insert(label, (bytes_by_line(&report), said.join("\n")));
    }
    let _ = std::fs::remove_dir_all(&dir);
    (expected, reports)
}

fn check(minor: &str) {
    let modes: [(&str, &[&str]); 3] = [
        ("exact", &[]),
        ("span", &["--span-budget", "0"]),
        ("go-sampler", &["--set-mem-profile-rate", SAMPLE_RATE]),
    ];
    let (expected, reports) = trace_classes(minor, ROUNDS, &modes);
    let reports = reports.into_iter().map(|(mode, (bytes, _))| (mode, bytes)).collect();
    compare(minor, &expected, &reports);
}

/// The workload's lines by its own count, most bytes first.
fn own_count(expected: &Value) -> Vec<(String, f64)> {
    let mut lines: Vec<(String, f64)> = expected["callsites"]
        .as_array()
        .expect("callsites")
        .iter()
        .map(|c| {
            (
                format!("{}:{}", c["function"].as_str().expect("function"), c["line"]),
                c["bytes"].as_f64().expect("bytes"),
            )
        })
        .collect();
    lines.sort_by(|a, b| b.1.total_cmp(&a.1));
    lines
}

/// Checks exact mode against the program's own count (`expected`), and each sampled mode
/// against exact mode, on the 10 lines with the most bytes.
fn compare(minor: &str, expected: &Value, reports: &BTreeMap<&str, BTreeMap<String, f64>>) {
    let lines = own_count(expected);
    let exact = &reports["exact"];
    let mut table = format!("go{minor}: line, exact MB, then each sampled mode's error\n");
    let mut failures = Vec::new();
    for (line, own_count) in lines.iter().take(10) {
        let e = exact.get(line).copied().unwrap_or(0.0);
        // Exact mode counts what the program itself counted (plus, rarely, a runtime object
        // allocated from within one of its allocations).
        assert!(
            (e - own_count).abs() <= own_count * 0.001 + 256.0,
            "exact mode {e} vs the program's own {own_count} at {line}"
        );
        let _ = write!(table, "{line:>28} {:>9.1}", e / 1e6);
        for mode in ["span", "go-sampler"] {
            let estimate = reports[mode].get(line).copied().unwrap_or(0.0);
            let error = (estimate - e) / e;
            let _ = write!(table, "  {mode} {:>+6.1}%", error * 100.0);
            if error.abs() > TOLERANCE {
                failures.push(format!(
                    "{mode} at {line}: {estimate} vs exact {e} ({:+.1}%)",
                    error * 100.0
                ));
            }
        }
        table.push('\n');
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
}

use std::fmt::Write as _;

#[test]
fn sampled_modes_are_within_15_percent_of_exact_on_the_top_10_callsites() {
    let Some(_lock) = root_only("sampled_modes_are_within_15_percent_of_exact_on_the_top_10_callsites") else {
        return;
    };
    // The oldest and the newest runtime: their mcache and mspan layouts differ, and 1.27
    // allocates through size-specialised mallocs.
    for minor in ["1.21", "1.27"] {
        check(minor);
    }
}

/// Span mode with its duty cycle, alone on `workloads classes`, against the program's own
/// count. The workload refills ~90,000 spans a second, so a budget of 1,000 hits a second keeps
/// the probes attached for 5% of each 1 s cycle (the least the cycle goes to), and the probes slow
/// it by a third while attached, which the scaling must allow for (by wall time alone it came
/// out 8–17% low).
///
/// The counts are scaled by the target's own allocation count (`runtime.memstats.heapStats`)
/// over the bytes the probes counted: −0.5% to +0.5% on the largest callsite in 6 runs, 3 of
/// them beside two busy loops. (Scaled by the share of that count read at each switch, it
/// was −5.6% to +1.4%, and +15% once in a full CI run: the readings bounded the probes'
/// counting only as well as the duty cycle's thread was scheduled, and the last one could
/// come 0.1 s before the target's exit.) The rounds last ~3 s unloaded: the last interval
/// often holds a single attached stretch, scaled ×20 or more.
/// A stripped copy of the same binary has no symbol to find that count by, and the scaling
/// falls back to time weighed by the target's user-CPU pace: between −16% and +12% in 17 runs,
/// so that run is held to ±25% only, which still catches a broken scaling (a factor of 20 off)
/// or a lost window.
#[test]
fn span_duty_cycle_estimates_match_the_programs_own_count() {
    let Some(_lock) = root_only("span_duty_cycle_estimates_match_the_programs_own_count") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("gotrace-duty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let stripped = dir.join("workloads-stripped");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(workloads("1.27"))
        .arg(&stripped)
        .status()
        .expect("run objcopy (binutils)");
    assert!(status.success(), "objcopy --strip-all: {status}");
    for (binary, tolerance, basis) in [
        (
            workloads("1.27"),
            DUTY_CYCLE_TOLERANCE,
            "by the target's own count of its allocations",
        ),
        (stripped.clone(), STRIPPED_DUTY_CYCLE_TOLERANCE, "by time"),
    ] {
        // ~3 s unloaded, ~10 s beside two busy loops: a few cycles of 1 s. The default cycle
        // (10 s) would hold one; the scaling does not depend on the cycle's length, and more
        // cycles test more of its edges.
        let (expected, reports) = trace_classes_of(
            &binary,
            "1.27",
            "8000",
            &[("span", &["--span-budget", "1000", "--span-period", "1s"])],
        );
        let (span, said) = &reports["span"];
        assert!(
            said.contains("attached for 5% of every 1s"),
            "the duty cycle never engaged:\n{said}"
        );
        // Where the kernel has them, the cycle goes through `uprobe_multi` links, whose detach
        // does not make the target wait (tracer/src/uprobe_multi.rs); these counts check them.
        let (kernel, _) = tracer::host::running_kernel().expect("the running kernel's release");
        if kernel.at_least(tracer::host::KernelVersion(6, 6)) {
            assert!(
                said.contains("(uprobe_multi links)"),
                "span's duty cycle did not use uprobe_multi links on Linux 6.6+:\n{said}"
            );
        }
        assert!(
            said.contains(basis),
            "{}: not scaled {basis}:\n{said}",
            binary.display()
        );
        let mut table = format!("{}: line, own MB, span's error (5% duty cycle)\n", binary.display());
        let mut failures = Vec::new();
        for (line, own) in own_count(&expected).iter().take(10) {
            let estimate = span.get(line).copied().unwrap_or(0.0);
            let error = (estimate - own) / own;
            let _ = writeln!(table, "{line:>28} {:>9.1} {:>+6.1}%", own / 1e6, error * 100.0);
            if error.abs() > tolerance {
                failures.push(format!("{line}: {estimate} vs {own} ({:+.1}%)", error * 100.0));
            }
        }
        eprintln!("{table}");
        assert!(failures.is_empty(), "{failures:#?}\n{table}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
