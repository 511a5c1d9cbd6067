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
