//! gotrace's own costs: the time to attach, to symbolize many distinct stacks, and its CPU time
//! while the target allocates at a fixed rate.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::proc::{Proc, cpu_seconds};
use super::stats::Stat;
use super::tracers::{STOP_GRACE, Tracer, attach};
use super::{Env, Plan, REALISTIC_GO, report_line};
use crate::go;

/// gotrace's own costs: attaching, symbolizing, and its CPU time while a target allocates.
#[derive(Debug, Default, Serialize)]
pub(super) struct TracerCosts {
    /// From starting `gotrace attach` to its "attached" line, on the Go distribution's
    /// `compile`, ms.
    pub(super) attach_ms: Option<Stat>,
    /// The part gotrace reports as loading and attaching the probes, ms.
    pub(super) attach_probes_ms: Option<Stat>,
    pub(super) attach_binary: String,
    pub(super) attach_error: Option<String>,
    pub(super) symbolize_stacks: usize,
    pub(super) symbolize_frames: usize,
    /// Building the first profile of that many distinct stacks, cold caches, ms.
    pub(super) symbolize_ms: Option<Stat>,
    /// The same build again, warm caches, ms.
    pub(super) symbolize_warm_ms: Option<Stat>,
    pub(super) symbolize_error: Option<String>,
    pub(super) cpu_at_rate: Vec<TracerCpu>,
}

/// gotrace's CPU time in one mode, the target paced at [`TRACER_CPU_RATE`].
#[derive(Debug, Serialize)]
pub(super) struct TracerCpu {
    pub(super) tracer: Tracer,
    /// What the target managed while traced.
    pub(super) target_allocs_per_sec: Option<Stat>,
    /// gotrace's own CPU time over wall time, percent of one core.
    pub(super) cpu_percent: Option<Stat>,
    pub(super) error: Option<String>,
}

/// The target allocation rate of the tracer-CPU measurement.
const TRACER_CPU_RATE: u32 = 1_000_000;
/// Distinct stacks in the symbolization measurement.
const SYMBOLIZE_STACKS: usize = 10_000;

/// The attach time, the symbolization time and gotrace's CPU at [`TRACER_CPU_RATE`]; an attach
/// or symbolization that cannot run is noted in the result.
pub(super) fn measure(repo: &Path, env: &Env, plan: &Plan) -> Result<TracerCosts> {
    let mut costs = TracerCosts {
        symbolize_stacks: SYMBOLIZE_STACKS,
        ..TracerCosts::default()
    };
    match attach_time(repo, env, plan) {
        Ok((binary, total, probes)) => {
            costs.attach_binary = binary;
            costs.attach_ms = Stat::of(&total);
            costs.attach_probes_ms = Stat::of(&probes);
        }
        Err(e) => {
            eprintln!("bench: attach time: {e:#}");
            costs.attach_error = Some(format!("{e:#}"));
        }
    }
    match symbolize_time(repo, env, plan) {
        Ok((frames, cold, warm)) => {
            costs.symbolize_frames = frames;
            costs.symbolize_ms = Stat::of(&cold);
            costs.symbolize_warm_ms = Stat::of(&warm);
        }
        Err(e) => {
            eprintln!("bench: symbolization: {e:#}");
            costs.symbolize_error = Some(format!("{e:#}"));
        }
    }
    costs.cpu_at_rate = tracer_cpu(repo, env, plan)?;
    Ok(costs)
}

/// From starting `gotrace attach --mode exact` to its "attached" line, on a running `compile`
/// of the Go distribution (held still: it waits to open its input, a FIFO).
fn attach_time(repo: &Path, env: &Env, plan: &Plan) -> Result<(String, Vec<f64>, Vec<f64>)> {
    let toolchain = go::Toolchain::find(repo, REALISTIC_GO)?;
    let compile = toolchain.goroot.join(format!("pkg/tool/linux_{}/compile", env.goarch));
    ensure!(compile.is_file(), "no {}", compile.display());
    let fifo = env.scratch.join("input.go");
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).context("bad scratch path")?;
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    ensure!(
        unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } == 0,
        "cannot make a FIFO at {}",
        fifo.display()
    );
    let (mut total, mut probes) = (Vec::new(), Vec::new());
    for run in 1..=plan.runs {
        let compiler = Proc::start(
            "compile",
            Command::new(&compile)
                .args(["-p", "main", "-o"])
                .arg(env.scratch.join("input.o"))
                .arg(&fifo),
            false,
        )?;
        // Let it start up and block opening its input.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let tracer = Proc::start(
            "gotrace attach",
            Command::new(&env.gotrace)
                .args([
                    "attach",
                    &compiler.pid().to_string(),
                    "--mode",
                    "exact",
                    "-f",
                    "json",
                    "-o",
                ])
                .arg(env.scratch.join("compile.json")),
            true,
        )?;
        let line = tracer.wait_for("gotrace: attached", true, Duration::from_mins(1))?;
        #[expect(clippy::cast_precision_loss, reason = "milliseconds")]
        let ms = started.elapsed().as_micros() as f64 / 1000.0;
        // "… in 226 ms, exact mode; …"
        let reported = line
            .split(" in ")
            .nth(1)
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no attach time in gotrace's line")?;
        eprintln!(
            "bench: attach to compile, run {run}/{}: {ms:.0} ms from start ({reported:.0} ms loading and attaching the probes)",
            plan.runs
        );
        total.push(ms);
        probes.push(reported);
        // Detaching waits out an RCU grace period per probe, one after the other: once, on a
        // host whose other VMs were busy, that took over 30 s. Nothing is measured meanwhile.
        tracer.stop(libc::SIGINT, STOP_GRACE)?;
        drop(compiler);
    }
    let _ = std::fs::remove_file(&fifo);
    Ok((toolchain.version + " compile", total, probes))
}

/// `bench-probes symbolize` on the churn workload (ever new stacks).
fn symbolize_time(repo: &Path, env: &Env, plan: &Plan) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let (mut cold, mut warm, mut frames) = (Vec::new(), Vec::new(), 0);
    for run in 1..=plan.symbolize_runs {
        let churn = Proc::start("workloads churn", Command::new(&binary).arg("churn"), false)?;
        churn.wait_for("ready", false, Duration::from_secs(20))?;
        let out = Command::new(&env.bench_probes)
            .args(["symbolize", &churn.pid().to_string(), "--stacks"])
            .arg(SYMBOLIZE_STACKS.to_string())
            .output()
            .context("cannot run bench-probes symbolize")?;
        drop(churn);
        ensure!(
            out.status.success(),
            "bench-probes symbolize failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("bad JSON from bench-probes symbolize")?;
        let seconds = doc["seconds"].as_f64().context("no seconds")?;
        let warm_seconds = doc["warm_seconds"].as_f64().context("no warm_seconds")?;
        frames = usize::try_from(doc["frames"].as_u64().unwrap_or(0)).unwrap_or(0);
        eprintln!(
            "bench: symbolization, run {run}/{}: {} stacks ({frames} frames) in {:.0} ms cold, {:.1} ms warm",
            plan.symbolize_runs,
            doc["stacks"],
            seconds * 1000.0,
            warm_seconds * 1000.0
        );
        cold.push(seconds * 1000.0);
        warm.push(warm_seconds * 1000.0);
    }
    Ok((frames, cold, warm))
}

/// gotrace's own CPU while the target allocates about `TRACER_CPU_RATE` times a second.
fn tracer_cpu(repo: &Path, env: &Env, plan: &Plan) -> Result<Vec<TracerCpu>> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let target = Proc::start(
        "workloads loop (paced)",
        Command::new(&binary).args(["loop", "--workers", "2", "--rate", &TRACER_CPU_RATE.to_string()]),
        false,
    )?;
    target.wait_for("ready", false, Duration::from_secs(20))?;
    let mut rows = Vec::new();
    for tracer in Tracer::MODES {
        let (mut rates, mut cpu) = (Vec::new(), Vec::new());
        let mut error = None;
        for run in 1..=plan.runs {
            let measured = (|| -> Result<(f64, f64)> {
                let attached = attach(env, tracer, target.pid(), &binary, &[], &[])?.context("no tracer")?;
                let _ = target.drain_stdout();
                let _partial = target.next_line(Duration::from_secs(10))?;
                let (cpu0, t0) = (cpu_seconds(attached.pid())?, Instant::now());
                let mut allocs = 0.0;
                for _ in 0..plan.window_secs {
                    let line = target.next_line(Duration::from_secs(10))?;
                    allocs += report_line(&line).map_or(0.0, |(n, _)| n);
                }
                let (cpu1, wall) = (cpu_seconds(attached.pid())?, t0.elapsed().as_secs_f64());
                attached.stop()?;
                #[expect(clippy::cast_precision_loss, reason = "a few seconds")]
                Ok((allocs / plan.window_secs as f64, (cpu1 - cpu0) / wall * 100.0))
            })();
            match measured {
                Ok((rate, percent)) => {
                    eprintln!(
                        "bench: tracer CPU, run {run}/{}: {:<20} {percent:.2}% of a core, target at {:.2} M allocs/s",
                        plan.runs,
                        tracer.label(),
                        rate / 1e6
                    );
                    rates.push(rate);
                    cpu.push(percent);
                }
                Err(e) => {
                    eprintln!("bench: tracer CPU: {}: {e:#}", tracer.label());
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        rows.push(TracerCpu {
            tracer,
            target_allocs_per_sec: Stat::of(&rates),
            cpu_percent: Stat::of(&cpu),
            error,
        });
    }
    Ok(rows)
}
