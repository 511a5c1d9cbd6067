//! The sampled modes' accuracy: span and go-sampler against exact mode, on the same run of a
//! workload.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::proc::Proc;
use super::stats::Stat;
use super::tracers::{Tracer, attach};
use super::{Env, Plan, REALISTIC_GO};

/// One sampled mode's errors against exact mode.
#[derive(Debug, Serialize)]
pub(super) struct AccuracyRow {
    pub(super) tracer: Tracer,
    pub(super) setting: String,
    /// Largest |estimate − exact| / exact over the 10 callsites with the most bytes, per run.
    pub(super) max_abs_error: Option<Stat>,
    /// Mean of the same, per run.
    pub(super) mean_abs_error: Option<Stat>,
    pub(super) error: Option<String>,
}

/// go-sampler's rate in the accuracy runs (as `tracer/tests/accuracy.rs`): at Go's default
/// 512 KiB the smallest of the top 10 callsites would get a few dozen samples in a run this
/// short.
const ACCURACY_SAMPLE_RATE: &str = "4096";

/// Span and go-sampler against exact mode, all three attached to one run of the `classes`
/// workload before its first allocation.
pub(super) fn measure(repo: &Path, env: &Env, plan: &Plan) -> Vec<AccuracyRow> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let sampled = [
        (Tracer::Span, &[][..]),
        (Tracer::GoSampler, &["--set-mem-profile-rate", ACCURACY_SAMPLE_RATE][..]),
    ];
    let mut max_errors = vec![Vec::new(); sampled.len()];
    let mut mean_errors = vec![Vec::new(); sampled.len()];
    let mut error = None;
    for run in 1..=plan.accuracy_runs {
        let measured = (|| -> Result<Vec<(f64, f64)>> {
            let mut target = Proc::start(
                "workloads classes",
                Command::new(&binary).args(["classes", "--rounds", &plan.classes_rounds.to_string(), "--wait"]),
                false,
            )?;
            target.wait_for("ready", false, Duration::from_secs(20))?;
            let mut tracers = Vec::new();
            for &(tracer, extra) in std::iter::once(&(Tracer::Exact, &[][..])).chain(&sampled) {
                let attached = attach(env, tracer, target.pid(), &binary, &[], extra)?.context("no tracer")?;
                tracers.push((tracer, attached));
            }
            target.send_line("")?;
            target.close_stdin();
            target.wait_for("{", false, Duration::from_mins(5))?;
            target.wait(Duration::from_secs(30))?;
            let mut reports = Vec::new();
            for (tracer, mut attached) in tracers {
                // Each reports and exits on its own once the target has exited.
                let status = attached.proc.wait(Duration::from_mins(1))?;
                ensure!(
                    status.success(),
                    "gotrace --mode {:?} exited with {status}",
                    tracer.mode()
                );
                let path = env
                    .scratch
                    .join(format!("{}-{}.json", tracer.mode().unwrap_or("?"), target.pid()));
                let report: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
                )
                .context("bad report")?;
                reports.push(bytes_by_line(&report)?);
            }
            let exact = &reports[0];
            let mut top: Vec<(&String, f64)> = exact.iter().map(|(k, v)| (k, *v)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(10);
            Ok(reports[1..]
                .iter()
                .map(|sampled| {
                    let errors: Vec<f64> = top
                        .iter()
                        .map(|(line, e)| (sampled.get(*line).copied().unwrap_or(0.0) - e).abs() / e)
                        .collect();
                    #[expect(clippy::cast_precision_loss, reason = "ten callsites")]
                    let mean = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
                    (errors.iter().copied().fold(0.0, f64::max), mean)
                })
                .collect())
        })();
        match measured {
            Ok(per_mode) => {
                for (i, (max, mean)) in per_mode.into_iter().enumerate() {
                    eprintln!(
                        "bench: accuracy, run {run}/{}: {:<20} top-10 error max {:.1}%, mean {:.1}%",
                        plan.accuracy_runs,
                        sampled[i].0.label(),
                        max * 100.0,
                        mean * 100.0
                    );
                    max_errors[i].push(max);
                    mean_errors[i].push(mean);
                }
            }
            Err(e) => {
                eprintln!("bench: accuracy: {e:#}");
                error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    sampled
        .iter()
        .enumerate()
        .map(|(i, &(tracer, _))| AccuracyRow {
            tracer,
            setting: if tracer == Tracer::GoSampler {
                format!("MemProfileRate {ACCURACY_SAMPLE_RATE} (--set-mem-profile-rate)")
            } else {
                "default".to_owned()
            },
            max_abs_error: Stat::of(&max_errors[i]),
            mean_abs_error: Stat::of(&mean_errors[i]),
            error: error.clone(),
        })
        .collect()
}

/// Bytes per allocating line (`function:line`) of a gotrace JSON report.
fn bytes_by_line(report: &serde_json::Value) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for c in report["callsites"].as_array().context("report without callsites")? {
        let key = format!("{}:{}", c["function"].as_str().unwrap_or("?"), c["line"]);
        *out.entry(key).or_insert(0.0) += c["bytes"].as_f64().unwrap_or(0.0);
    }
    Ok(out)
}
