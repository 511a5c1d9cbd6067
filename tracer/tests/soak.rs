//! `gotrace serve`'s memory stays under its documented cap while it follows a target that
//! allocates millions of times per second from stacks and sizes that never stop changing
//! (`workloads churn`).
//!
//! CI runs it for a minute; `cargo xtask soak` runs the full ten minutes on a release build
//! (`GOTRACE_SOAK_SECONDS`). Root only: without root it says why and passes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{host_goarch, lines_of, repo_root, root_only};

/// docs/serve.md's promise for `gotrace serve` at its default `--max-keys`.
const RSS_CAP_BYTES: u64 = 64 << 20;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn serve_memory_stays_under_its_cap_against_churning_stacks() {
    let Some(_lock) = root_only("serve_memory_stays_under_its_cap_against_churning_stacks") else {
        return;
    };
    let seconds: u64 = std::env::var("GOTRACE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let workloads = repo_root().join(format!("target/fixtures/go1.27/{}/workloads", host_goarch()));
    let mut target = Command::new(&workloads)
        .arg("churn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the churn workload");
    let target_out = lines_of(target.stdout.take().expect("stdout"));
    assert!(
        target_out
            .recv_timeout(Duration::from_secs(20))
            .expect("ready")
            .starts_with("ready")
    );
    let mut serve = Command::new(env!("CARGO_BIN_EXE_gotrace"))
        // Span mode: the most probe hits and the most distinct keys of the sampled modes
        // (go-sampler sees one allocation in ~512 KiB); the defaults otherwise.
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "span",
            "--pid",
            &target.id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gotrace serve");
    let serve_err = lines_of(serve.stderr.take().expect("stderr"));
    let pid = serve.id();
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut attached = false;
    let mut allocs_per_second = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        while let Ok(line) = serve_err.try_recv() {
            attached |= line.contains("attached");
            eprintln!("{line}");
        }
        while let Ok(line) = target_out.try_recv() {
            // "allocs N cpu_ns C" each second.
            let count = line
                .strip_prefix("allocs ")
                .and_then(|rest| rest.split_whitespace().next());
            if let Some(n) = count.and_then(|n| n.parse::<u64>().ok()) {
                allocs_per_second.push(n);
            }
        }
        let rss = status_kib(pid, "VmRSS:").expect("gotrace is running") * 1024;
        peak_rss = peak_rss.max(rss);
        assert!(
            rss <= RSS_CAP_BYTES,
            "RSS {} MiB over the cap after {:?}",
            rss >> 20,
            started.elapsed()
        );
    }
    let hwm = status_kib(pid, "VmHWM:").expect("peak RSS") * 1024;
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = target.kill();
    let _ = target.wait();
    assert!(attached, "gotrace never attached");
    allocs_per_second.sort_unstable();
    let median = allocs_per_second.get(allocs_per_second.len() / 2).copied().unwrap_or(0);
    let mib = |bytes: u64| format!("{}.{} MiB", bytes >> 20, ((bytes & 0xf_ffff) * 10) >> 20);
    eprintln!(
        "soak: {seconds} s, target {median} allocations/s (median), gotrace peak RSS {} (VmHWM {}), cap {} MiB",
        mib(peak_rss),
        mib(hwm),
        RSS_CAP_BYTES >> 20
    );
    assert!(
        median >= 1_000_000,
        "the target should allocate millions of times per second, not {median}"
    );
    assert!(hwm <= RSS_CAP_BYTES, "peak RSS {} MiB over the cap", hwm >> 20);
}

/// A child killed when the test ends, however it ends (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// docs/serve.md's promise for `gotrace serve --all`: this much, plus [`AGENT_RSS_PER_TARGET`]
/// per traced process, at the defaults.
const AGENT_RSS_BASE: u64 = 64 << 20;
const AGENT_RSS_PER_TARGET: u64 = 8 << 20;
/// The agent's own CPU, as a fraction of one core, once every target is attached.
const AGENT_CPU_CAP: f64 = 0.02;

#[expect(clippy::cast_precision_loss, reason = "figures to print and compare, far below 2^52")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

/// `count` loop workloads, each asking for a million allocations a second, with their
/// per-second reports.
fn start_loops(count: usize) -> (Vec<KillOnDrop>, Vec<std::sync::mpsc::Receiver<String>>) {
    let workloads = repo_root().join(format!("target/fixtures/go1.27/{}/workloads", host_goarch()));
    let mut targets = Vec::new();
    let mut reports = Vec::new();
    for _ in 0..count {
        let mut target = KillOnDrop(
            Command::new(&workloads)
                .args(["loop", "--rate", "1000000"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the loop workload"),
        );
        reports.push(lines_of(target.0.stdout.take().expect("stdout")));
        targets.push(target);
    }
    (targets, reports)
}

/// CPU time of a process so far (user and system, all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// `gotrace serve --all` with N Go processes (`GOTRACE_SOAK_TARGETS`, default 20), each asking
/// for a million allocations a second (`workloads loop --rate 1000000`, memory profiling on,
/// so the default mode samples with go-sampler): the agent's RSS stays within its budget
/// throughout, and its CPU within 2% of a core once all are attached.
#[test]
fn agent_stays_within_its_memory_and_cpu_budget_with_many_targets() {
    let Some(_lock) = root_only("agent_stays_within_its_memory_and_cpu_budget_with_many_targets") else {
        return;
    };
    let seconds: u64 = std::env::var("GOTRACE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let count: usize = std::env::var("GOTRACE_SOAK_TARGETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (targets, reports) = start_loops(count);
    let mut agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_gotrace"))
            .args(["serve", "--all", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gotrace serve --all"),
    );
    let agent_err = lines_of(agent.0.stderr.take().expect("stderr"));
    let pid = agent.0.id();
    let budget = AGENT_RSS_BASE + AGENT_RSS_PER_TARGET * count as u64;
    let started = Instant::now();
    let mut attached = 0;
    let mut all_attached_at = None;
    let mut peak_rss = 0;
    let mut rates = Vec::new();
    // SAFETY: sysconf has no preconditions.
    let hz = f64::from(u32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).expect("clock ticks"));
    while all_attached_at.is_none_or(|(at, _): (Instant, u64)| at.elapsed() < Duration::from_secs(seconds)) {
        std::thread::sleep(Duration::from_secs(1));
        while let Ok(line) = agent_err.try_recv() {
            if line.contains("attached") {
                attached += 1;
            } else {
                eprintln!("{line}");
            }
        }
        if all_attached_at.is_none() && attached >= count {
            eprintln!("agent: all {count} targets attached after {:?}", started.elapsed());
            all_attached_at = Some((Instant::now(), cpu_ticks(pid)));
        }
        assert!(
            started.elapsed() < Duration::from_mins(2) || all_attached_at.is_some(),
            "only {attached} of {count} targets attached in two minutes"
        );
        for report in &reports {
            while let Ok(line) = report.try_recv() {
                let n = line.strip_prefix("allocs ").and_then(|r| r.split_whitespace().next());
                if let (Some(n), Some(_)) = (n.and_then(|n| n.parse::<u64>().ok()), all_attached_at) {
                    rates.push(n);
                }
            }
        }
        let rss = status_kib(pid, "VmRSS:").expect("gotrace is running") * 1024;
        peak_rss = peak_rss.max(rss);
        assert!(
            rss <= budget,
            "RSS {} MiB over the budget of {} MiB after {:?}",
            rss >> 20,
            budget >> 20,
            started.elapsed()
        );
    }
    let (since, ticks_then) = all_attached_at.expect("attached");
    let cpu = as_f64(cpu_ticks(pid) - ticks_then) / hz / since.elapsed().as_secs_f64();
    let hwm = status_kib(pid, "VmHWM:").expect("peak RSS") * 1024;
    let rss = status_kib(pid, "VmRSS:").expect("RSS") * 1024;
    drop(agent);
    drop(targets);
    rates.sort_unstable();
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0);
    let mib = |bytes: u64| format!("{:.1} MiB", as_f64(bytes) / f64::from(1 << 20));
    eprintln!(
        "soak --all: {count} targets for {seconds} s, each {median} allocations/s (median of {} seconds), \
         agent RSS {} at the end, peak {} (VmHWM {}), budget {}; agent CPU {:.2}% of a core (cap {:.0}%)",
        rates.len(),
        mib(rss),
        mib(peak_rss),
        mib(hwm),
        mib(budget),
        cpu * 100.0,
        AGENT_CPU_CAP * 100.0
    );
    assert!(
        hwm <= budget,
        "peak RSS {} over the budget of {}",
        mib(hwm),
        mib(budget)
    );
    assert!(
        cpu <= AGENT_CPU_CAP,
        "agent CPU {:.2}% of a core over the cap",
        cpu * 100.0
    );
}
