//! The realistic workloads' measuring scheme: two identical instances of a workload side by
//! side, one traced and one not in each window, with A/A windows for the noise.

use anyhow::Result;
use serde::Serialize;

use super::Plan;
use super::latency::{Latencies, PooledPercentile};
use super::stats::Stat;
use super::tracers::Tracer;

/// One window of a workload's two instances side by side: the figures of the instance that
/// was traced (for a tracer, its account after the compared figures, see [`WindowAccount`]),
/// those of the other, and the share of the workload CPU's time the hypervisor stole.
pub(super) struct PairedWindow {
    pub(super) traced: Vec<f64>,
    pub(super) untraced: Vec<f64>,
    /// Where the workload serves requests: each instance's request latencies in the window,
    /// the traced instance's first, to be pooled over the runs ([`SideBySide::pooled`]).
    pub(super) latencies: Option<[Latencies; 2]>,
    pub(super) steal: f64,
}

/// One realistic workload as two identical instances side by side on the workload's CPU,
/// under the same load and measured over the same seconds. In each window one instance runs
/// under the tracer and the other untraced, and each figure of the traced one is compared with
/// the other's: whatever the host does that minute (other VMs stealing the CPU, a neighbour
/// thrashing the shared caches) it does to both. Which instance is traced alternates from
/// window to window and from run to run, so that a difference between the instances cancels.
/// The first tracer must be [`Tracer::Untraced`]: its windows trace neither (A/A), one before
/// each traced window, and how far apart the two instances come out there is the noise every
/// traced change stands in.
///
/// This replaced windows taken one after the other (untraced, traced, untraced, …), in which
/// untraced neighbours 45 s apart differed by 10.6% per service CPU-second (median, 0.3–34.7%)
/// in the last full bench: steal time on this host comes and goes by the minute, by up to 30%.
/// Side by side, A/A windows differed by 0.4–2.7% in runs by hand, under steal of 1–31%.
pub(super) struct SideBySide {
    /// `[tracer][metric]`: the traced instance's figures; for [`Tracer::Untraced`], the
    /// untraced instance's in every window.
    values: Vec<Vec<Vec<f64>>>,
    /// `[tracer][metric]`: traced over untraced in the same window; for
    /// [`Tracer::Untraced`], one untraced instance over the other.
    ratios: Vec<Vec<Vec<f64>>>,
    /// `[tracer]`: request latencies over every run's windows, the traced instance's and the
    /// untraced one's beside it. For [`Tracer::Untraced`], unused: see `aa_latencies`.
    latencies: Vec<[Latencies; 2]>,
    /// `[tracer]`: the same over the A/A windows taken before that tracer's, the instance it
    /// then traces first (so that the A/A pools alternate instances as the traced ones do).
    aa_latencies: Vec<[Latencies; 2]>,
    /// Every window's steal share of the workload CPU.
    steal: Vec<f64>,
    pub(super) errors: Vec<Option<String>>,
}

impl SideBySide {
    /// `measure(tracer, traced)` measures one window with instance `traced` (0 or 1) under
    /// `tracer`; the first `compared` figures of both instances are compared.
    pub(super) fn run(
        plan: &Plan,
        tracers: &[Tracer],
        (compared, metrics): (usize, usize),
        what: &str,
        mut measure: impl FnMut(Tracer, usize) -> Result<PairedWindow>,
    ) -> Self {
        let n = tracers.len();
        let mut out = Self {
            values: vec![vec![Vec::new(); metrics]; n],
            ratios: vec![vec![Vec::new(); compared]; n],
            latencies: vec![Default::default(); n],
            aa_latencies: vec![Default::default(); n],
            steal: Vec::new(),
            errors: vec![None; n],
        };
        // An A/A window before each traced one, so that the noise is sampled as often as the
        // changes and under the same minutes' conditions.
        // The traced instance alternates from mode to mode and from run to run (an A/A window
        // takes the parity of the mode after it).
        let order = (1..n).flat_map(|i| [(0, i), (i, i)]);
        for run in 0..plan.runs {
            for (i, parity) in order.clone() {
                if out.errors[i].is_some() || out.errors[0].is_some() {
                    continue;
                }
                let instance = (run + parity) % 2;
                let mode = tracers[i];
                match measure(mode, instance) {
                    Ok(figures) => {
                        let shown =
                            |figures: &[f64]| figures.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ");
                        eprintln!(
                            "bench: {what}, run {}/{}: {:<20} traced #{instance}: {}; untraced: {}; steal {:.1}%",
                            run + 1,
                            plan.runs,
                            mode.label(),
                            shown(&figures.traced),
                            shown(&figures.untraced),
                            figures.steal * 100.0
                        );
                        out.add((i, parity), &figures, compared);
                    }
                    Err(e) => {
                        eprintln!("bench: {what}: {}: {e:#}", mode.label());
                        out.errors[i] = Some(format!("{e:#}"));
                    }
                }
            }
        }
        out
    }

    /// Adds the window of `tracer`, taken before `parity`'s when it is an A/A window.
    fn add(&mut self, (tracer, parity): (usize, usize), window: &PairedWindow, compared: usize) {
        if let Some(latencies) = &window.latencies {
            let pools = if tracer == 0 {
                &mut self.aa_latencies[parity]
            } else {
                &mut self.latencies[tracer]
            };
            for (pool, window) in pools.iter_mut().zip(latencies) {
                pool.merge(window);
            }
        }
        for (m, v) in window.traced.iter().enumerate() {
            if tracer > 0 {
                self.values[tracer][m].push(*v);
            }
        }
        for (m, v) in window.untraced.iter().take(compared).enumerate() {
            self.values[0][m].push(*v);
            if tracer == 0 {
                self.values[0][m].push(window.traced[m]);
            }
        }
        for m in 0..compared {
            let (under_tracer, beside_it) = (window.traced[m], window.untraced[m]);
            if beside_it > 0.0 {
                self.ratios[tracer][m].push(under_tracer / beside_it);
            }
        }
        self.steal.push(window.steal);
    }

    pub(super) fn stat(&self, tracer: usize, metric: usize) -> Option<Stat> {
        Stat::of(&self.values[tracer][metric])
    }

    pub(super) fn ratio(&self, tracer: usize, metric: usize) -> Option<Stat> {
        Stat::of(self.ratios[tracer].get(metric)?)
    }

    /// How far apart the two untraced instances came out in the A/A windows, |a / b − 1| in
    /// percent.
    pub(super) fn noise(&self, metric: usize) -> Option<Stat> {
        let apart: Vec<f64> = self.ratios[0][metric].iter().map(|r| (r - 1.0).abs() * 100.0).collect();
        Stat::of(&apart)
    }

    /// `tracer`'s `percent` percentile of latency over every request of its runs, traced
    /// instance against the untraced one beside it. `None` for [`Tracer::Untraced`] or where
    /// the workload serves no requests.
    pub(super) fn pooled(&self, tracer: usize, percent: f64) -> Option<PooledPercentile> {
        (tracer > 0)
            .then(|| PooledPercentile::of(&self.latencies[tracer], percent))
            .flatten()
    }

    /// How far apart two untraced instances came out in the `percent` percentile of latency
    /// over every request of the A/A windows, pooled as the traced windows are (one pool per
    /// tracer, of the A/A windows before its), |a / b − 1| in percent.
    pub(super) fn pooled_noise(&self, percent: f64) -> Option<Stat> {
        let apart: Vec<f64> = self
            .aa_latencies
            .iter()
            .filter_map(|pools| PooledPercentile::of(pools, percent))
            .map(|p| (p.ratio - 1.0).abs() * 100.0)
            .collect();
        Stat::of(&apart)
    }

    /// The steal share of the workload CPU over the windows, in percent.
    pub(super) fn steal_percent(&self) -> Option<Stat> {
        Stat::of(&self.steal.iter().map(|s| s * 100.0).collect::<Vec<_>>())
    }
}

/// The noise the realistic changes stand in: how far apart the two untraced instances came out
/// in the A/A windows (|a / b − 1|, percent), and how much of the workload CPU's time the
/// hypervisor stole over the windows (percent).
#[derive(Debug, Default, Serialize)]
pub(super) struct SideBySideNoise {
    pub(super) http_per_cpu: Option<Stat>,
    pub(super) http_p99: Option<Stat>,
    /// The same, over every request of the A/A windows pooled as each mode's are (see
    /// [`SideBySide::pooled_noise`]).
    pub(super) http_p99_pooled: Option<Stat>,
    pub(super) cpu_ops: Option<Stat>,
    pub(super) cpu_per_cpu: Option<Stat>,
    pub(super) http_steal: Option<Stat>,
    pub(super) cpu_steal: Option<Stat>,
}

#[cfg(test)]
mod tests {
    use super::{PairedWindow, SideBySide};
    use crate::bench::latency::Latencies;
    use crate::bench::tracers::Tracer;
    use crate::bench::{Plan, SPAN_PERIOD_SECS};

    /// A plan of `runs` runs, one-second windows.
    fn plan_of(runs: usize) -> Plan {
        Plan {
            runs,
            window_secs: 1,
            wrk_secs: 1,
            span_period_secs: Some(SPAN_PERIOD_SECS),
            classes_rounds: 1,
            accuracy_runs: 1,
            symbolize_runs: 1,
        }
    }

    /// Each window compares the traced instance with the untraced one of the same seconds,
    /// whatever the host did to both; the A/A windows give the noise; the traced instance
    /// alternates.
    #[test]
    fn side_by_side_windows_compare_the_instances_of_the_same_window() {
        let plan = plan_of(2);
        // A host twice as slow in the second run: the changes do not see it. Each run is A/A,
        // exact, A/A, span.
        let mut host = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5].into_iter();
        let mut traced_instances = Vec::new();
        let windows = SideBySide::run(
            &plan,
            &[Tracer::Untraced, Tracer::Exact, Tracer::Span],
            (1, 2),
            "test",
            |tracer, traced| {
                traced_instances.push(traced);
                let speed = host.next().expect("one window each");
                let (traced_figure, account) = match tracer {
                    Tracer::Untraced => (102.0, vec![]),
                    Tracer::Exact => (20.0, vec![7.0]),
                    _ => (98.0, vec![7.0]),
                };
                Ok(PairedWindow {
                    traced: [vec![traced_figure * speed], account].concat(),
                    untraced: vec![100.0 * speed],
                    latencies: None,
                    steal: speed / 10.0,
                })
            },
        );
        let change = |i| windows.ratio(i, 0).expect("a ratio");
        assert!((change(1).median - 0.2).abs() < 1e-9 && (change(1).max - 0.2).abs() < 1e-9);
        assert!((change(2).min - 0.98).abs() < 1e-9 && (change(2).max - 0.98).abs() < 1e-9);
        let noise = windows.noise(0).expect("A/A windows");
        assert!((noise.max - 2.0).abs() < 1e-9, "{noise:?}");
        assert_eq!(windows.noise(0).expect("A/A windows").runs.len(), 4);
        // The untraced row holds the untraced instance of every window and both of the A/A's.
        assert_eq!(windows.stat(0, 0).expect("untraced").runs.len(), 12);
        assert_eq!(windows.stat(1, 1).expect("account").runs, vec![7.0, 7.0]);
        // Each mode on instance 1 in the first run and 0 in the second; its A/A window likewise.
        assert_eq!(traced_instances, vec![1, 1, 0, 0, 0, 0, 1, 1]);
        let steal = windows.steal_percent().expect("steal");
        assert!((steal.min - 5.0).abs() < 1e-9 && (steal.max - 10.0).abs() < 1e-9);
        assert!(windows.pooled(1, 99.0).is_none() && windows.pooled_noise(99.0).is_none());
    }

    /// Latencies pool per mode over the runs, and the A/A windows pool by the mode they come
    /// before.
    #[test]
    fn latencies_pool_per_mode_over_the_runs() {
        let plan = plan_of(3);
        let histogram = |slow_us: u64| {
            Latencies::from_wrk_output(&format!("latency-us 400 98\nlatency-us {slow_us} 2\n")).expect("lines")
        };
        let mut window = 0;
        let windows = SideBySide::run(
            &plan,
            &[Tracer::Untraced, Tracer::GoSampler, Tracer::Span],
            (1, 1),
            "test",
            |tracer, _| {
                window += 1;
                // The traced instance is 10% slower at the tail under span; each A/A window
                // before span has its first instance 20% slower in one run of three.
                let (traced, untraced) = match (tracer, window) {
                    (Tracer::Span, _) => (1100, 1000),
                    (Tracer::Untraced, 3) => (1200, 1000),
                    _ => (1000, 1000),
                };
                Ok(PairedWindow {
                    traced: vec![1.0],
                    untraced: vec![1.0],
                    latencies: Some([histogram(traced), histogram(untraced)]),
                    steal: 0.0,
                })
            },
        );
        let span = windows.pooled(2, 99.0).expect("span's pool");
        assert_eq!(span.requests, [300, 300]);
        assert!((span.ratio - 1.1).abs() < 1e-9, "{span:?}");
        assert!((windows.pooled(1, 99.0).expect("go-sampler's pool").ratio - 1.0).abs() < 1e-9);
        // p99 of 300 requests is the 297th: 1 ms in both pools of every A/A.
        let noise = windows.pooled_noise(99.0).expect("A/A pools");
        assert_eq!(noise.runs, vec![0.0, 0.0]);
        assert_eq!(windows.pooled(0, 99.0).map(|p| p.ratio), None);
        // At p99.9 the 20% slower tail of one run in three shows.
        let tail = windows.pooled_noise(99.9).expect("A/A pools");
        assert!((tail.max - 20.0).abs() < 1e-9, "{tail:?}");
    }
}
