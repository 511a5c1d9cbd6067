//! The realistic workloads: the HTTP service under paced `wrk` and the CPU-bound workload,
//! each as two instances side by side ([`SideBySide`]), untraced and under each of gotrace's
//! modes; their windows, and the rows of the realistic table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::account::{Account, SETTLE, Window, WindowAccount};
use super::latency::{Latencies, PooledPercentile};
use super::proc::{CpuSplit, Proc, cpu_seconds_exact, peak_rss_mib, steal_seconds};
use super::side_by_side::{PairedWindow, SideBySide, SideBySideNoise};
use super::stats::Stat;
use super::tracers::{Attached, TIME_PROBES, Tracer, attach};
use super::{Env, Plan, REALISTIC_GO, report_line};

/// One row of the realistic table: a tracer on both workloads, its figures and its changes.
#[derive(Debug, Serialize)]
pub(super) struct RealisticRow {
    pub(super) tracer: Tracer,
    pub(super) http_requests_per_sec: Option<Stat>,
    pub(super) http_p99_ms: Option<Stat>,
    pub(super) cpu_ops_per_sec: Option<Stat>,
    /// Requests per second of the service's own CPU time.
    pub(super) http_requests_per_cpu_sec: Option<Stat>,
    /// Operations per second of the workload's own CPU time.
    pub(super) cpu_ops_per_cpu_sec: Option<Stat>,
    /// Traced over untraced, side by side in the same window, medians.
    pub(super) http_ratio: Option<f64>,
    pub(super) cpu_ratio: Option<f64>,
    pub(super) http_per_cpu_ratio: Option<f64>,
    pub(super) cpu_per_cpu_ratio: Option<f64>,
    /// The HTTP p99 latency's, traced over untraced, every run.
    pub(super) http_p99_ratio: Option<Stat>,
    /// The HTTP p99 latency over every request of the runs pooled, traced against untraced.
    pub(super) http_p99_pooled: Option<PooledPercentile>,
    /// The same ratios' runs: HTTP requests/s, per CPU-second; CPU-bound ops/s, per CPU-second.
    pub(super) ratio_ranges: [Option<Stat>; 4],
    /// The tracer's peak RSS over these runs, MiB.
    pub(super) tracer_peak_rss_mib: Option<f64>,
    /// The bottom-up account of the HTTP service's and the CPU-bound workload's windows
    /// (gotrace's modes only).
    pub(super) accounts: [Option<Account>; 2],
    pub(super) error: Option<String>,
}

/// The HTTP service under paced wrk and the CPU-bound workload, each as two instances side
/// by side ([`SideBySide`]), untraced and under each mode. Also returns which CPUs ran what
/// while the workloads were measured, and the noise.
pub(super) fn measure(repo: &Path, env: &Env, plan: &Plan) -> Result<(Vec<RealisticRow>, String, SideBySideNoise)> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let tracers = [
        Tracer::Untraced,
        Tracer::Exact,
        Tracer::GoSampler,
        Tracer::Span,
        Tracer::SpanAttached,
    ];
    let mut rss: Vec<Option<f64>> = vec![None; tracers.len()];
    let mut note_rss = |tracer: Tracer, attached: Option<&Attached>| {
        let i = tracers.iter().position(|&t| t == tracer).unwrap_or(0);
        if let Some(mib) = attached.and_then(|a| peak_rss_mib(a.pid()).ok()) {
            rss[i] = Some(rss[i].map_or(mib, |m: f64| m.max(mib)));
        }
    };

    // The workloads on one CPU, wrk and gotrace on the others (see `CpuSplit`); a Go
    // program pinned so runs with GOMAXPROCS 1 (the runtime sets it from its CPU mask).
    let split = CpuSplit::of_this_thread()?;
    let cpus = split.as_ref().map_or_else(
        || "the workloads, wrk and gotrace share the one CPU".to_owned(),
        CpuSplit::describe,
    );
    eprintln!("bench: realistic: {cpus}");
    let pinned = split.as_ref().map(CpuSplit::pin_this_thread_to_others).transpose()?;
    let setup = RealisticSetup {
        env,
        plan,
        binary: &binary,
        split: split.as_ref(),
        tracers: &tracers,
    };
    let http = http_side_by_side(&setup, &mut note_rss)?;

    let cpu = cpu_side_by_side(&setup, &mut note_rss)?;
    drop(pinned);

    let noise = SideBySideNoise {
        http_per_cpu: http.noise(2),
        http_p99: http.noise(1),
        http_p99_pooled: http.pooled_noise(99.0),
        cpu_ops: cpu.noise(0),
        cpu_per_cpu: cpu.noise(1),
        http_steal: http.steal_percent(),
        cpu_steal: cpu.steal_percent(),
    };
    Ok((realistic_rows(&tracers, &http, &cpu, &rss), cpus, noise))
}

/// What the realistic workloads' side-by-side runs share: where to find things, how long to
/// run, the workload binary, which CPU runs it, and the modes in order.
struct RealisticSetup<'a> {
    env: &'a Env,
    plan: &'a Plan,
    binary: &'a Path,
    split: Option<&'a CpuSplit>,
    tracers: &'a [Tracer],
}

impl RealisticSetup<'_> {
    /// Seconds stolen from the workload's CPU so far (from every CPU when they are not split).
    fn steal_seconds(&self) -> Result<f64> {
        steal_seconds(self.split.map(CpuSplit::workload_cpu))
    }
}

/// The HTTP service's two instances under paced wrk ([`PACE_SCRIPT`]), side by side.
fn http_side_by_side(
    setup: &RealisticSetup<'_>,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
) -> Result<SideBySide> {
    let RealisticSetup {
        env,
        plan,
        binary,
        split,
        tracers,
    } = *setup;
    let steal = || setup.steal_seconds();
    let pace = env.scratch.join("pace.lua");
    std::fs::write(&pace, PACE_SCRIPT).with_context(|| format!("cannot write {}", pace.display()))?;
    let servers = start_pair(binary, &["http", "127.0.0.1:0"], split)?;
    let mut urls = Vec::new();
    for server in &servers {
        let ready = server.wait_for("ready", false, Duration::from_secs(20))?;
        urls.push(format!("{}/json", ready.trim_start_matches("ready").trim()));
    }
    // Both instances loaded at once, each by its own wrk.
    let load_both = |secs: u64| -> Result<[WrkLoad; 2]> {
        std::thread::scope(|scope| {
            let loads: Vec<_> = urls
                .iter()
                .map(|url| scope.spawn(|| wrk(url, secs, Some(&pace))))
                .collect();
            let mut out = Vec::with_capacity(2);
            for load in loads {
                out.push(load.join().map_err(|_| anyhow::anyhow!("a wrk thread panicked"))??);
            }
            out.try_into().map_err(|_| anyhow::anyhow!("not one load per instance"))
        })
    };
    load_both(1).context("warming the HTTP services up")?;
    // Metrics: requests/s, p99 ms, requests per second of the service's CPU time; then the
    // traced instance's account (see `WindowAccount`).
    let http = SideBySide::run(
        plan,
        tracers,
        (3, 3 + WindowAccount::METRICS),
        "http (req/s, p99 ms, req per CPU-s; probe runs per CPU-s, ns per run, gotrace CPU share)",
        |tracer, traced| {
            let pids = [servers[traced].pid(), servers[1 - traced].pid()];
            paired_window(
                env,
                (tracer, plan.span_period_secs),
                pids[0],
                binary,
                &mut *note_rss,
                (
                    // Settled under load: idle, span mode's duty cycle would stay attached.
                    || load_both(SETTLE.as_secs().max(1) + 1).map(drop),
                    |window_secs| {
                        let cpu_before = [cpu_seconds_exact(pids[0])?, cpu_seconds_exact(pids[1])?];
                        let steal_before = steal()?;
                        let started = Instant::now();
                        let mut loads = load_both(window_secs)?;
                        let wall = started.elapsed().as_secs_f64();
                        let stolen = (steal()? - steal_before) / wall;
                        #[expect(clippy::cast_precision_loss, reason = "seconds")]
                        let secs = window_secs as f64;
                        let mut figures = Vec::new();
                        let mut cpu_rate = 0.0;
                        for (k, &pid) in pids.iter().enumerate() {
                            let WrkLoad { rps, p99, .. } = loads[(traced + k) % 2];
                            let cpu = cpu_seconds_exact(pid)? - cpu_before[k];
                            ensure!(cpu > 0.0, "the service used no CPU time");
                            if k == 0 {
                                cpu_rate = cpu / secs;
                            }
                            figures.push(vec![rps, p99, rps * secs / cpu]);
                        }
                        let latencies = [
                            std::mem::take(&mut loads[traced].latencies),
                            std::mem::take(&mut loads[1 - traced].latencies),
                        ];
                        let untraced = figures.pop().unwrap_or_default();
                        let traced = figures.pop().unwrap_or_default();
                        Ok(Measured {
                            traced,
                            untraced,
                            latencies: Some(latencies),
                            steal: stolen,
                            target_cpu_rate: cpu_rate,
                        })
                    },
                    plan.wrk_secs,
                ),
            )
        },
    );
    drop(servers);
    Ok(http)
}

/// The CPU-bound workload's two instances, busy, side by side.
fn cpu_side_by_side(
    setup: &RealisticSetup<'_>,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
) -> Result<SideBySide> {
    let RealisticSetup {
        env,
        plan,
        binary,
        split,
        tracers,
    } = *setup;
    let steal = || setup.steal_seconds();
    let workloads = start_pair(binary, &["cpu", "0"], split)?;
    for workload in &workloads {
        workload.wait_for("ready", false, Duration::from_secs(20))?;
    }
    // Metrics: operations/s, operations per second of the workload's CPU time.
    let cpu = SideBySide::run(
        plan,
        tracers,
        (2, 2 + WindowAccount::METRICS),
        "cpu-bound (ops/s, ops per CPU-s; probe runs per CPU-s, ns per run, gotrace CPU share)",
        |tracer, traced| {
            let pair = [&workloads[traced], &workloads[1 - traced]];
            paired_window(
                env,
                (tracer, plan.span_period_secs),
                pair[0].pid(),
                binary,
                &mut *note_rss,
                (
                    || {
                        std::thread::sleep(SETTLE);
                        Ok(())
                    },
                    |window_secs| {
                        // Each instance's report lines of the same seconds: each line covers one
                        // second of that instance, with its own CPU time in it.
                        for workload in pair {
                            let _ = workload.drain_stdout();
                        }
                        let steal_before = steal()?;
                        let started = Instant::now();
                        std::thread::sleep(Duration::from_secs(window_secs));
                        let stolen = (steal()? - steal_before) / started.elapsed().as_secs_f64();
                        let mut figures = Vec::new();
                        for workload in pair {
                            let (mut lines, mut ops, mut cpu_ns) = (0.0, 0.0, 0.0);
                            for line in workload.drain_stdout() {
                                let (n, c) = report_line(&line).with_context(|| format!("unexpected line {line:?}"))?;
                                lines += 1.0;
                                ops += n;
                                cpu_ns += c;
                            }
                            ensure!(lines > 0.0 && cpu_ns > 0.0, "the workload reported no CPU time");
                            figures.push((vec![ops / lines, ops / (cpu_ns / 1e9)], cpu_ns / 1e9 / lines));
                        }
                        let (untraced, _) = figures.pop().unwrap_or_default();
                        let (traced, cpu_rate) = figures.pop().unwrap_or_default();
                        Ok(Measured {
                            traced,
                            untraced,
                            latencies: None,
                            steal: stolen,
                            target_cpu_rate: cpu_rate,
                        })
                    },
                    plan.window_secs as u64,
                ),
            )
        },
    );
    drop(workloads);
    Ok(cpu)
}

/// What one window measured of a workload's two instances.
struct Measured {
    /// The traced instance's compared figures, then the untraced one's.
    traced: Vec<f64>,
    untraced: Vec<f64>,
    /// Where the workload serves requests: their latencies, the traced instance's first.
    latencies: Option<[Latencies; 2]>,
    /// The share of the workload CPU's time the hypervisor stole.
    steal: f64,
    /// The traced instance's CPU seconds per second.
    target_cpu_rate: f64,
}

/// One window of a realistic workload's two instances: attaches `tracer` to `traced_pid` (gotrace's
/// modes timing their probes), lets it settle, measures, stops it and appends the window's
/// account ([`WindowAccount`]) to the traced instance's figures: `settle` (skipped untraced),
/// then `measure`, which is given the window's length in seconds (`window_secs`, or
/// duty-cycled span's period) and returns what it measured ([`Measured`]).
fn paired_window(
    env: &Env,
    (tracer, span_period_secs): (Tracer, Option<u64>),
    traced_pid: u32,
    binary: &Path,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
    (settle, measure, window_secs): (impl Fn() -> Result<()>, impl FnOnce(u64) -> Result<Measured>, u64),
) -> Result<PairedWindow> {
    // Duty-cycled span mode measures its rate over the first second, detaches, and attaches
    // again ~0.95 of a period later, so with the window as long as the period (and the
    // settling 2–3 s) each window holds one attach and one detach, what the cycle costs most
    // for (see `tracer/src/duty.rs`). A window shorter than the period would hold none, and
    // measure only the detached target.
    let window_secs = match tracer {
        Tracer::Span => span_period_secs.unwrap_or(window_secs),
        _ => window_secs,
    };
    let period = format!("{window_secs}s");
    let extra: Vec<&str> = if tracer == Tracer::Span {
        [TIME_PROBES, &["--span-period", period.as_str()][..]].concat()
    } else {
        TIME_PROBES.to_vec()
    };
    let attached = attach(env, tracer, traced_pid, binary, &[], &extra)?;
    if attached.is_some() {
        settle()?;
    }
    let window = Window::start(attached.as_ref())?;
    let Measured {
        traced: mut under_tracer,
        untraced: beside_it,
        latencies,
        steal,
        target_cpu_rate,
    } = measure(window_secs)?;
    let window = window.end()?;
    note_rss(tracer, attached.as_ref());
    if let Some(attached) = attached {
        attached.stop()?;
        let account = WindowAccount::read(env, tracer, traced_pid, target_cpu_rate, window)?;
        under_tracer.extend(account.figures());
        // The instance takes a while to recover from exact mode: in the A/A window right
        // after it, with none of this, the instance that had been traced ran 4–19% slower per
        // CPU-second than the other in three runs of five (CPU-bound; none after the sampled
        // modes). Measured windows must not hold that.
        settle()?;
        settle()?;
    }
    Ok(PairedWindow {
        traced: under_tracer,
        untraced: beside_it,
        latencies,
        steal,
    })
}

/// The realistic table's rows from the HTTP and CPU-bound runs of `tracers`, with each
/// tracer's peak RSS.
fn realistic_rows(tracers: &[Tracer], http: &SideBySide, cpu: &SideBySide, rss: &[Option<f64>]) -> Vec<RealisticRow> {
    let median = |s: Option<Stat>| s.map(|s| s.median);
    (0..tracers.len())
        .map(|i| RealisticRow {
            tracer: tracers[i],
            http_requests_per_sec: http.stat(i, 0),
            http_p99_ms: http.stat(i, 1),
            http_requests_per_cpu_sec: http.stat(i, 2),
            cpu_ops_per_sec: cpu.stat(i, 0),
            cpu_ops_per_cpu_sec: cpu.stat(i, 1),
            http_ratio: median(http.ratio(i, 0)),
            http_per_cpu_ratio: median(http.ratio(i, 2)),
            http_p99_ratio: http.ratio(i, 1),
            http_p99_pooled: http.pooled(i, 99.0),
            cpu_ratio: median(cpu.ratio(i, 0)),
            cpu_per_cpu_ratio: median(cpu.ratio(i, 1)),
            ratio_ranges: [http.ratio(i, 0), http.ratio(i, 2), cpu.ratio(i, 0), cpu.ratio(i, 1)],
            accounts: [
                Account::of(http, i, 3, http.ratio(i, 2)),
                Account::of(cpu, i, 2, cpu.ratio(i, 1)),
            ],
            tracer_peak_rss_mib: rss[i],
            error: http.errors[i].clone().or_else(|| cpu.errors[i].clone()),
        })
        .collect()
}

/// Two instances of a workload, started side by side on the workload's CPU.
fn start_pair(binary: &Path, args: &[&str], split: Option<&CpuSplit>) -> Result<[Proc; 2]> {
    Ok([
        start_workload(binary, args, split)?,
        start_workload(binary, args, split)?,
    ])
}

/// Starts `workloads ARGS`, on the workload's CPU when the CPUs are split.
fn start_workload(binary: &Path, args: &[&str], split: Option<&CpuSplit>) -> Result<Proc> {
    let mut command = Command::new(binary);
    command.args(args);
    if let Some(split) = split {
        split.pin_workload(&mut command);
    }
    Proc::start(&format!("workloads {}", args.join(" ")), &mut command, false)
}

/// wrk's Lua hooks: `delay` paces each connection: after every response it waits 1 ms before
/// the next request. With `-c8`, an instance of the HTTP service gets up to ~8,000 requests a
/// second and in practice ~5,000 (a quarter of a CPU each here): both instances get the same
/// load and neither saturates, so neither's requests per CPU-second depends on how the
/// scheduler shared the CPU out. (Two instances under unpaced wrk differed by up to ±40% in
/// requests/s, and their requests per CPU-second followed: a service batches more per wakeup
/// the busier it is.)
///
/// `done` prints wrk's latency histogram, a `latency-us VALUE COUNT` line per latency seen
/// ([`LINE_PREFIX`](super::latency::LINE_PREFIX)), so that p99 can be taken over several windows' requests pooled
/// ([`Latencies`]). In wrk's Lua API the `latency` object's length is how many distinct values
/// it holds and `latency(i)` returns the i-th value in microseconds and its count (wrk's
/// `SCRIPTING` and `src/script.c`).
const PACE_SCRIPT: &str = "-- gotrace bench: each connection waits 1 ms after every response\n\
                           function delay()\n   return 1\nend\n\
                           -- and wrk's latency histogram is printed at the end\n\
                           function done(summary, latency, requests)\n\
                           \x20  for i = 1, #latency do\n\
                           \x20     local micros, count = latency(i)\n\
                           \x20     io.write(string.format(\"latency-us %d %d\\n\", micros, count))\n\
                           \x20  end\n\
                           end\n";

/// What one `wrk` run measured: requests per second, p99 latency in ms (wrk's own), and with
/// [`PACE_SCRIPT`] every request's latency.
struct WrkLoad {
    rps: f64,
    p99: f64,
    latencies: Latencies,
}

/// `wrk` against `url` for `secs`, each connection paced by `pace` when given
/// ([`PACE_SCRIPT`]).
fn wrk(url: &str, secs: u64, pace: Option<&Path>) -> Result<WrkLoad> {
    let mut command = Command::new("wrk");
    match pace {
        Some(script) => command.args(["-t1", "-c8", "-s"]).arg(script),
        None => command.args(["-t2", "-c16"]),
    };
    let out = command
        .args([&format!("-d{secs}s"), "--latency", url])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| latency_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output: {text}"))?;
    let latencies = match pace {
        Some(_) => Latencies::from_wrk_output(&text)
            .with_context(|| format!("no latency histogram in wrk's output: {text}"))?,
        None => Latencies::default(),
    };
    Ok(WrkLoad { rps, p99, latencies })
}

/// `1.23ms`, `456.00us`, `1.50s` → milliseconds.
fn latency_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (text.strip_suffix('s')?, 1000.0)
    };
    Some(number.parse::<f64>().ok()? * factor)
}

#[cfg(test)]
mod tests {
    use super::latency_ms;

    #[test]
    fn parses_wrk_latencies() {
        assert_eq!(latency_ms("456.00us"), Some(0.456));
        assert_eq!(latency_ms("1.50ms"), Some(1.5));
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
        assert_eq!(latency_ms("1.00m"), Some(60_000.0));
        assert_eq!(latency_ms("fast"), None);
    }
}
