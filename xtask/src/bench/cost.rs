//! The cost per allocation: the pure-allocation loop at several stack depths, untraced, under
//! the empty probes (the floor), the bpftrace one-liner and each of gotrace's modes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::proc::{Proc, cpu_seconds};
use super::stats::Stat;
use super::tracers::{Tracer, attach};
use super::{Env, Plan, report_line};
use crate::go;

#[derive(Debug, Serialize)]
pub(super) struct CostTable {
    pub(super) go_version: String,
    /// The functions every probed row puts a probe on.
    pub(super) probed_functions: Vec<String>,
    pub(super) rows: Vec<CostRow>,
}

#[derive(Debug, Serialize)]
pub(super) struct CostRow {
    /// How many frames below the worker goroutine's entry the loop allocates
    /// (`workloads loop --depth`).
    pub(super) depth: u32,
    pub(super) tracer: Tracer,
    /// CPU time of the whole target process per allocation, ns.
    pub(super) ns_per_alloc: Option<Stat>,
    /// Over untraced (medians), ns.
    pub(super) added_ns: Option<f64>,
    /// `added_ns` over the floor's (the empty probe at gotrace's placement, same depth).
    pub(super) vs_floor: Option<f64>,
    /// The bpftrace one-liner's `added_ns` over this row's.
    pub(super) bpftrace_over_this: Option<f64>,
    /// How long each run of the probe took, ns, as the kernel timed it (the timed row only).
    pub(super) probe_run_ns: Option<Stat>,
    pub(super) error: Option<String>,
}

/// The depths of the cost table's rows: how many frames below its goroutine's entry the loop
/// allocates. Real services allocate 20-60 frames deep; the shallow row is the loop as it was.
const COST_DEPTHS: [u32; 3] = [0, 30, 90];

/// What is measured at each depth: everything at the shallow one, the floor and exact mode at
/// the deep ones (the sampled modes' cost does not grow with the stack: they walk it rarely).
fn cost_tracers(depth: u32) -> &'static [Tracer] {
    if depth == 0 {
        &[
            Tracer::Untraced,
            Tracer::EmptyEntry,
            Tracer::EmptyPlacement,
            Tracer::Bpftrace,
            Tracer::Exact,
            Tracer::ExactTimed,
            Tracer::GoSampler,
            Tracer::Span,
        ]
    } else {
        &[
            Tracer::Untraced,
            Tracer::EmptyPlacement,
            Tracer::Exact,
            Tracer::ExactTimed,
        ]
    }
}

/// Go release `minor`'s cost table: each depth of [`COST_DEPTHS`] in turn.
pub(super) fn measure(repo: &Path, env: &Env, plan: &Plan, minor: &str) -> Result<CostTable> {
    let binary = env.workloads(repo, minor);
    let functions = counting_functions(env, &binary)?;
    let version = go::Toolchain::find(repo, minor)?.version;
    let mut rows = Vec::new();
    for depth in COST_DEPTHS {
        rows.extend(cost_at_depth(env, plan, &binary, &functions, &version, depth)?);
    }
    Ok(CostTable {
        go_version: version,
        probed_functions: functions,
        rows,
    })
}

/// The cost table's rows at one depth: `workloads loop --depth DEPTH`, each tracer in turn,
/// `plan.runs` times.
fn cost_at_depth(
    env: &Env,
    plan: &Plan,
    binary: &Path,
    functions: &[String],
    version: &str,
    depth: u32,
) -> Result<Vec<CostRow>> {
    let target = Proc::start(
        "workloads loop",
        Command::new(binary).args(["loop", "--depth", &depth.to_string()]),
        false,
    )?;
    target.wait_for("ready", false, Duration::from_secs(20))?;
    let tracers = cost_tracers(depth);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut run_ns: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut errors: Vec<Option<String>> = vec![None; tracers.len()];
    for run in 1..=plan.runs {
        for (i, &tracer) in tracers.iter().enumerate() {
            if errors[i].is_some() {
                continue;
            }
            let measured = (|| -> Result<(f64, Option<f64>)> {
                let attached = attach(env, tracer, target.pid(), binary, functions, &[])?;
                let (allocs, cpu_ns, _) = sum_report_lines(&target, plan.window_secs)?;
                if let Some(a) = attached {
                    a.stop()?;
                }
                ensure!(allocs > 0.0, "the loop allocated nothing");
                let probe_ns = if tracer == Tracer::ExactTimed {
                    Some(probe_run_ns(env, target.pid())?)
                } else {
                    None
                };
                Ok((cpu_ns / allocs, probe_ns))
            })();
            match measured {
                Ok((ns, probe_ns)) => {
                    eprintln!(
                        "bench: {version} cost at depth {depth}, run {run}/{}: {:<52} {ns:>8.0} ns/alloc{}",
                        plan.runs,
                        tracer.label(),
                        probe_ns.map_or_else(String::new, |p| format!(", {p:.0} ns a probe run"))
                    );
                    samples[i].push(ns);
                    run_ns[i].extend(probe_ns);
                }
                Err(e) => {
                    eprintln!("bench: {version} cost at depth {depth}: {}: {e:#}", tracer.label());
                    errors[i] = Some(format!("{e:#}"));
                }
            }
        }
    }
    drop(target);
    let stats: Vec<Option<Stat>> = samples.iter().map(|s| Stat::of(s)).collect();
    let median = |t: Tracer| -> Option<f64> {
        let i = tracers.iter().position(|&x| x == t)?;
        stats[i].as_ref().map(|s| s.median)
    };
    let untraced = median(Tracer::Untraced);
    let added = |t: Tracer| -> Option<f64> { Some(median(t)? - untraced?) };
    let floor = added(Tracer::EmptyPlacement);
    let bpftrace = added(Tracer::Bpftrace);
    let added_by: Vec<Option<f64>> = tracers.iter().map(|&t| added(t)).collect();
    let rows = tracers
        .iter()
        .zip(stats)
        .zip(errors)
        .zip(run_ns)
        .zip(added_by)
        .map(|((((&tracer, stat), error), run_ns), added)| {
            let added_ns = (tracer != Tracer::Untraced).then_some(added).flatten();
            // Ratios mean something for the rows that probe every allocation; the sampled
            // modes' added cost is within the noise of zero.
            let per_allocation = !matches!(tracer, Tracer::Untraced | Tracer::GoSampler | Tracer::Span);
            CostRow {
                depth,
                tracer,
                ns_per_alloc: stat,
                added_ns,
                vs_floor: added_ns.zip(floor).map(|(a, f)| a / f).filter(|_| per_allocation),
                bpftrace_over_this: added_ns.zip(bpftrace).map(|(a, b)| b / a).filter(|_| per_allocation),
                probe_run_ns: Stat::of(&run_ns),
                error,
            }
        })
        .collect();
    Ok(rows)
}

/// The probe's run time per run in the timed exact window just ended: from the report
/// `gotrace attach` wrote when it stopped.
fn probe_run_ns(env: &Env, pid: u32) -> Result<f64> {
    let path = env.scratch.join(format!("exact-{pid}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let run_time = &report["probes"]["run_time"];
    let (runs, ns) = (run_time["runs"].as_f64(), run_time["nanoseconds"].as_f64());
    match (runs, ns) {
        (Some(runs), Some(ns)) if runs > 0.0 => Ok(ns / runs),
        _ => bail!("the report has no probe run time: {}", report["probes"]),
    }
}

/// The target's counting allocation entry points, from `gotrace inspect`: where exact mode
/// and the empty probes go, and what the bpftrace one-liner probes.
fn counting_functions(env: &Env, binary: &Path) -> Result<Vec<String>> {
    let out = Command::new(&env.gotrace)
        .arg("inspect")
        .arg(binary)
        .args(["--format", "json"])
        .output()
        .context("cannot run gotrace inspect")?;
    ensure!(out.status.success(), "gotrace inspect {} failed", binary.display());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).context("gotrace inspect: bad JSON")?;
    let functions: Vec<String> = doc["probes"]
        .as_array()
        .context("gotrace inspect: no probes")?
        .iter()
        .filter(|p| p["role"] == "count")
        .filter_map(|p| p["function"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !functions.is_empty(),
        "{} has no counting entry points",
        binary.display()
    );
    Ok(functions)
}

/// Sums the next `secs` whole report lines of a workload (skipping the partial one first):
/// the counts, the CPU nanoseconds the lines report, and the target's CPU seconds over those
/// lines as `/proc` counts them.
fn sum_report_lines(target: &Proc, secs: usize) -> Result<(f64, f64, f64)> {
    let _ = target.drain_stdout();
    let _partial = target.next_line(Duration::from_secs(10))?;
    let cpu_before = cpu_seconds(target.pid())?;
    let (mut count, mut cpu) = (0.0, 0.0);
    for _ in 0..secs {
        let line = target.next_line(Duration::from_secs(10))?;
        let (n, c) = report_line(&line).with_context(|| format!("unexpected line {line:?}"))?;
        count += n;
        cpu += c;
    }
    Ok((count, cpu, cpu_seconds(target.pid())? - cpu_before))
}
