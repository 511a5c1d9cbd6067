//! The bottom-up account of what tracing costs the realistic workloads: what the kernel counted
//! and timed of each mode's probes in a window, what the tracer itself used, and the price of
//! a probe run's trap.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::cost::CostTable;
use super::proc::cpu_seconds;
use super::realistic::RealisticRow;
use super::side_by_side::SideBySide;
use super::stats::Stat;
use super::tracers::{Attached, Tracer, stream_path};
use super::{COST_GO, Env, REALISTIC_GO};

/// A gotrace mode's bottom-up account on one workload: how often its probes ran and how long
/// each run took (the kernel's BPF statistics), with a price for the trap (see
/// [`price_accounts`]). The counts and run times do not depend on how fast the machine ran
/// that minute; the price does, but it is measured where the change is many times the noise.
/// What the price cannot hold: span mode attaching and detaching its probes once every
/// `--span-period` (30 s).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Account {
    /// Probe runs (each one trap) per second of the target's CPU time.
    pub(super) runs_per_cpu_sec: Stat,
    /// The probes' run time per run, ns, without the trap.
    pub(super) ns_per_run: Stat,
    /// gotrace's own CPU time over the target's.
    pub(super) tracer_cpu_share: Stat,
    /// What a run's trap costs on this workload (see [`price_accounts`]); `None` when neither
    /// the cost part nor exact mode was measured.
    pub(super) trap_ns: Option<f64>,
    /// The share of the target's CPU time spent in the probes: runs × (trap + run time) over
    /// its CPU time, per window.
    pub(super) probe_cpu_share: Option<Stat>,
    /// The measured change of operations per target CPU-second, the runs' ratios.
    pub(super) measured_per_cpu_ratio: Option<Stat>,
}

impl Account {
    /// The account of `tracer` (an index of `runs`'s tracers) from its windows' figures,
    /// which start at metric `first`.
    pub(super) fn of(
        runs: &SideBySide,
        tracer: usize,
        first: usize,
        measured_per_cpu_ratio: Option<Stat>,
    ) -> Option<Self> {
        if tracer == 0 {
            return None;
        }
        Some(Self {
            runs_per_cpu_sec: runs.stat(tracer, first)?,
            ns_per_run: runs.stat(tracer, first + 1)?,
            tracer_cpu_share: runs.stat(tracer, first + 2)?,
            trap_ns: None,
            probe_cpu_share: None,
            measured_per_cpu_ratio,
        })
    }

    /// What one run cost the workload beyond its own timed time, by the measured change of
    /// work per CPU-second: traced CPU = untraced + runs × cost, so the ratio r of work per
    /// CPU-second is 1 − runs per CPU-second × cost.
    fn implied_trap_ns(&self) -> Option<f64> {
        let ratio = self.measured_per_cpu_ratio.as_ref()?.median;
        let runs = self.runs_per_cpu_sec.median;
        (runs > 0.0).then(|| (1.0 - ratio) / runs * 1e9 - self.ns_per_run.median)
    }

    /// Prices the runs at `trap_ns` each, plus their run time.
    fn price(&mut self, trap_ns: f64) {
        let shares: Vec<f64> = self
            .runs_per_cpu_sec
            .runs
            .iter()
            .zip(&self.ns_per_run.runs)
            .map(|(runs, run_ns)| runs * (trap_ns + run_ns) / 1e9)
            .collect();
        self.trap_ns = Some(trap_ns);
        self.probe_cpu_share = Stat::of(&shares);
    }
}

/// Prices the realistic rows' accounts. A trap costs at least the cost table's floor (an empty
/// probe on the pure-allocation loop, same Go release), and on a real workload more: its
/// caches and TLB are colder after each trip into the kernel and each run of the probe. Where
/// a mode probes every allocation (exact) or every span (span, always attached), the slowdown
/// on the same workload is far above the noise and nearly all probe: per run, what it cost the
/// workload beyond the run's own timed time is the trap's price there, with whatever the run
/// leaves behind. Exact mode's price goes to go-sampler's runs too (both copy little of the
/// stack), span mode's to its duty-cycled runs; the floor when it is higher, or when the row
/// that measures the price is missing.
pub(super) fn price_accounts(realistic: &mut [RealisticRow], cost: &[CostTable]) {
    let floor = trap_floor_ns(cost);
    for workload in 0..2 {
        let implied = |by: Tracer| {
            realistic
                .iter()
                .find(|r| r.tracer == by)
                .and_then(|r| r.accounts[workload].as_ref())
                .and_then(Account::implied_trap_ns)
        };
        let (by_exact, by_span) = (implied(Tracer::Exact), implied(Tracer::SpanAttached));
        for row in realistic.iter_mut() {
            let implied = if matches!(row.tracer, Tracer::Span | Tracer::SpanAttached) {
                by_span
            } else {
                by_exact
            };
            let trap_ns = match (floor, implied) {
                (Some(f), Some(i)) => Some(f.max(i)),
                (f, i) => f.or(i),
            };
            if let (Some(trap_ns), Some(account)) = (trap_ns, row.accounts[workload].as_mut()) {
                account.price(trap_ns);
            }
        }
    }
}

/// The cost table of the Go release the realistic workloads are built with ([`REALISTIC_GO`]);
/// `None` when the cost part did not run (it measures all of [`COST_GO`], in order, or none).
pub(super) fn realistic_cost_table(cost: &[CostTable]) -> Option<&CostTable> {
    COST_GO
        .iter()
        .position(|&minor| minor == REALISTIC_GO)
        .and_then(|i| cost.get(i))
}

/// The least a trap is priced at in the realistic accounts: the empty probe at gotrace's
/// placement, ns added per allocation, on the realistic workloads' Go release.
pub(super) fn trap_floor_ns(cost: &[CostTable]) -> Option<f64> {
    realistic_cost_table(cost)?
        .rows
        .iter()
        .find(|r| r.tracer == Tracer::EmptyPlacement && r.depth == 0)?
        .added_ns
}

/// A measured window's length, and the tracer's CPU time over it.
pub(super) struct Window {
    started: Instant,
    tracer: Option<u32>,
    tracer_cpu_before: f64,
}

/// What [`Window::end`] found.
#[derive(Debug, Clone, Copy)]
pub(super) struct WindowEnd {
    wall_secs: f64,
    tracer_cpu_secs: f64,
}

impl Window {
    pub(super) fn start(attached: Option<&Attached>) -> Result<Self> {
        let tracer = attached.map(Attached::pid);
        Ok(Self {
            started: Instant::now(),
            tracer,
            tracer_cpu_before: tracer.map(cpu_seconds).transpose()?.unwrap_or(0.0),
        })
    }

    pub(super) fn end(&self) -> Result<WindowEnd> {
        Ok(WindowEnd {
            wall_secs: self.started.elapsed().as_secs_f64(),
            tracer_cpu_secs: self
                .tracer
                .map(cpu_seconds)
                .transpose()?
                .map_or(0.0, |now| now - self.tracer_cpu_before),
        })
    }
}

/// What the kernel counted in one traced window, and what the tracer itself used: the
/// measured parts of the bottom-up account of what tracing costs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WindowAccount {
    /// Probe runs per second of the target's CPU time: one trap each. Runs, not hits: while
    /// span mode detaches, its probes still trap for a grace period without counting a hit.
    runs_per_cpu_sec: f64,
    /// The probes' run time per run as the kernel timed it, ns (without the trap).
    ns_per_run: f64,
    /// The tracer's CPU time over the target's.
    tracer_cpu_share: f64,
}

/// How long a gotrace mode runs before its window is measured (the HTTP service under load, a
/// second longer): span mode's duty cycle starts attached, measures the hit rate over its first
/// second and detaches within the next half, and a sidecar lives in the settled state. The
/// first jsonl document (after 2 s) marks the start of what the account counts.
pub(super) const SETTLE: Duration = Duration::from_secs(2);

impl WindowAccount {
    /// Figures a window adds to its workload's.
    pub(super) const METRICS: usize = 3;

    /// Reads the probe figures of a gotrace mode's jsonl stream, written by a tracer that has
    /// stopped, from the first document on (the settled part); zeros for a tracer that is not
    /// one of gotrace's modes. `target_cpu_rate` is the target's CPU seconds per second in the
    /// measured window.
    pub(super) fn read(env: &Env, tracer: Tracer, pid: u32, target_cpu_rate: f64, window: WindowEnd) -> Result<Self> {
        let Some(mode) = tracer.mode() else {
            return Ok(Self::default());
        };
        ensure!(target_cpu_rate > 0.0 && window.wall_secs > 0.0, "an empty window");
        let path = stream_path(env, mode, pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let documents = text
            .lines()
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not JSON lines", path.display()))?;
        let (Some(first), Some(last)) = (documents.first(), documents.last()) else {
            bail!("{} is empty", path.display());
        };
        // Cumulative figures, at the end of a document's interval.
        let at = |doc: &serde_json::Value| -> Result<[f64; 3]> {
            let number = |pointer: &str| doc.pointer(pointer).and_then(serde_json::Value::as_f64);
            Ok([
                number("/interval/end_secs").context("a document without its interval")?,
                // Absent while the probes have not run yet.
                number("/probes/run_time/runs").unwrap_or(0.0),
                number("/probes/run_time/nanoseconds").unwrap_or(0.0),
            ])
        };
        let [start, runs_before, ns_before] = at(first)?;
        let [end, runs_after, ns_after] = at(last)?;
        let (secs, runs) = (end - start, runs_after - runs_before);
        ensure!(
            secs > 0.5,
            "{}: too short a trace after its first document",
            path.display()
        );
        Ok(Self {
            runs_per_cpu_sec: runs / secs / target_cpu_rate,
            ns_per_run: if runs > 0.0 { (ns_after - ns_before) / runs } else { 0.0 },
            tracer_cpu_share: window.tracer_cpu_secs / window.wall_secs / target_cpu_rate,
        })
    }

    pub(super) fn figures(self) -> [f64; Self::METRICS] {
        [self.runs_per_cpu_sec, self.ns_per_run, self.tracer_cpu_share]
    }
}
