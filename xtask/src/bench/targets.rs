//! The targets and their verdicts: met, missed, undecided (the A/A noise exceeds the
//! limit) or not measured.

use serde::Serialize;

use super::cost::CostTable;
use super::realistic::RealisticRow;
use super::side_by_side::SideBySideNoise;
use super::stats::Stat;
use super::tracers::Tracer;

/// One of the targets: the figure that decides it, its limit and the verdict.
#[derive(Debug, Serialize)]
pub(super) struct TargetCheck {
    pub(super) what: String,
    pub(super) value: Option<f64>,
    /// Lowest and highest over the runs, where the figure is a median of paired runs.
    pub(super) range: Option<[f64; 2]>,
    pub(super) limit: String,
    pub(super) verdict: Verdict,
    /// For a realistic workload's target: how far apart two untraced instances came out in
    /// the A/A windows, at most, percent.
    pub(super) noise: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Verdict {
    Met,
    Missed,
    /// Two untraced instances came out further apart than the limit in some A/A window: this
    /// run cannot tell whether the limit was met, and another should be taken.
    Undecided,
    NotMeasured,
}

impl Verdict {
    fn of(met: Option<bool>) -> Self {
        match met {
            Some(true) => Self::Met,
            Some(false) => Self::Missed,
            None => Self::NotMeasured,
        }
    }
}

/// A realistic target's verdict from its runs' losses (percent) and the A/A windows' largest
/// difference between two untraced instances (percent): undecided when that noise is above the
/// limit, else met only when every run is within it.
fn side_by_side_verdict(losses: Option<&Stat>, noise: Option<f64>, limit: f64) -> Verdict {
    let Some(losses) = losses else {
        return Verdict::NotMeasured;
    };
    if noise.is_none_or(|noise| noise > limit) {
        Verdict::Undecided
    } else if losses.max <= limit {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

/// The targets, each with the figure that decides it.
pub(super) fn check(cost: &[CostTable], realistic: &[RealisticRow], noise: &SideBySideNoise) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for table in cost {
        let row = |t: Tracer, depth: u32| table.rows.iter().find(|r| r.tracer == t && r.depth == depth);
        for (depth, limit) in [(30, 1.3), (90, 1.6)] {
            let vs_floor = row(Tracer::Exact, depth).and_then(|r| r.vs_floor);
            out.push(TargetCheck {
                what: format!(
                    "{}: exact mode's added cost over the empty-probe floor's, {depth} frames deep",
                    table.go_version
                ),
                value: vs_floor,
                limit: format!("≤ {limit}×"),
                verdict: Verdict::of(vs_floor.map(|v| v <= limit)),
                range: None,
                noise: None,
            });
        }
        let cheaper = row(Tracer::Exact, 0).and_then(|r| r.bpftrace_over_this);
        out.push(TargetCheck {
            what: format!(
                "{}: bpftrace one-liner's added cost over exact mode's",
                table.go_version
            ),
            value: cheaper,
            limit: "≥ 4×".to_owned(),
            verdict: Verdict::of(cheaper.map(|v| v >= 4.0)),
            range: None,
            noise: None,
        });
    }
    for row in realistic
        .iter()
        .filter(|r| matches!(r.tracer, Tracer::GoSampler | Tracer::Span))
    {
        // What each target holds, its runs' traced-over-untraced ratios, the A/A noise of the
        // same figure and the limit in percent. HTTP requests/s has none: the load is paced, so it is set by wrk, and what tracing
        // costs the service shows as CPU time per request and as latency.
        let checks = [
            (
                "HTTP requests per service CPU-second lost to tracing",
                row.ratio_ranges[1].as_ref(),
                noise.http_per_cpu.as_ref(),
                3.0,
            ),
            (
                "CPU-bound ops/s lost to tracing",
                row.ratio_ranges[2].as_ref(),
                noise.cpu_ops.as_ref(),
                3.0,
            ),
            (
                "CPU-bound ops per CPU-second lost to tracing",
                row.ratio_ranges[3].as_ref(),
                noise.cpu_per_cpu.as_ref(),
                3.0,
            ),
        ];
        for (what, ratios, noise, limit) in checks {
            let losses = ratios.and_then(|r| Stat::of(&r.runs.iter().map(|&x| (1.0 - x) * 100.0).collect::<Vec<_>>()));
            let noise = noise.map(|n| n.max);
            out.push(TargetCheck {
                what: format!("{}: {what}, %", row.tracer.label()),
                value: losses.as_ref().map(|l| l.median),
                limit: format!("≤ {limit}% in every run"),
                verdict: side_by_side_verdict(losses.as_ref(), noise, limit),
                range: losses.as_ref().map(|l| [l.min, l.max]),
                noise,
            });
        }
        out.push(p99_check(row, noise));
        for (workload, account) in ["HTTP", "CPU-bound"].into_iter().zip(&row.accounts) {
            let share = account.as_ref().and_then(|a| a.probe_cpu_share.as_ref());
            out.push(TargetCheck {
                what: format!(
                    "{}: {workload} work per CPU-second lost to the probes, accounted bottom-up, %",
                    row.tracer.label()
                ),
                value: share.map(|s| s.median * 100.0),
                limit: "≤ 3%".to_owned(),
                // Every window's, not just the median's.
                verdict: Verdict::of(share.map(|s| s.max <= 0.03)),
                range: share.map(|s| [s.min * 100.0, s.max * 100.0]),
                noise: None,
            });
        }
    }
    out
}

/// The HTTP p99 target: the latency tracing adds at p99 over every request of the runs pooled
/// (see `latency.rs` for why pooled), undecided when two untraced instances' A/A pools came
/// out further apart than the limit. The runs' own p99 changes are the range shown.
fn p99_check(row: &RealisticRow, noise: &SideBySideNoise) -> TargetCheck {
    const LIMIT: f64 = 10.0;
    let added = row.http_p99_pooled.as_ref().map(|p| (p.ratio - 1.0) * 100.0);
    let noise = noise.http_p99_pooled.as_ref().map(|n| n.max);
    TargetCheck {
        what: format!(
            "{}: HTTP p99 latency added by tracing, every run's requests pooled (the runs' own), %",
            row.tracer.label()
        ),
        value: added,
        limit: format!("≤ {LIMIT}% pooled"),
        verdict: side_by_side_verdict(added.and_then(|a| Stat::of(&[a])).as_ref(), noise, LIMIT),
        range: row
            .http_p99_ratio
            .as_ref()
            .map(|r| [(r.min - 1.0) * 100.0, (r.max - 1.0) * 100.0]),
        noise,
    }
}

#[cfg(test)]
mod tests {
    use super::{Verdict, side_by_side_verdict};
    use crate::bench::stats::Stat;

    #[test]
    fn a_target_is_undecided_when_the_noise_exceeds_its_limit_and_met_only_in_every_run() {
        let losses = Stat::of(&[1.0, 2.5, 2.9]);
        assert_eq!(side_by_side_verdict(losses.as_ref(), Some(1.5), 3.0), Verdict::Met);
        assert_eq!(
            side_by_side_verdict(losses.as_ref(), Some(3.5), 3.0),
            Verdict::Undecided
        );
        assert_eq!(side_by_side_verdict(losses.as_ref(), None, 3.0), Verdict::Undecided);
        let one_run_over = Stat::of(&[1.0, 2.5, 3.4]);
        assert_eq!(
            side_by_side_verdict(one_run_over.as_ref(), Some(1.5), 3.0),
            Verdict::Missed
        );
        assert_eq!(side_by_side_verdict(None, Some(1.5), 3.0), Verdict::NotMeasured);
    }
}
