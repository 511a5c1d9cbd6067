//! The duty cycle's control law, with no clock and no thread of its own: the caller observes
//! the probes' hits and the target's CPU time at the times it chooses, and the controller says
//! what to do next and when to look again. The thread in `duty/mod.rs` carries that out with
//! real probes and real sleeps; the tests here step it with made-up times.

use std::time::{Duration, Instant};

use super::{DutyCycleOptions, RATE_WINDOW};
use crate::process::{CPU_TICKS_PER_SEC, CpuTicks};

/// The least fraction of each cycle the probes stay attached: 5% of a 1 s cycle is still
/// thousands of refills in a program that needs sampling. (So a target that hits the probes
/// more than 20 times the budget per CPU-second, attached, pays more than the budget.)
pub(super) const MIN_FRACTION: f64 = 0.05;

/// The largest fraction worth cycling for. Each cycle attaches and detaches the probes, and
/// each of those rewrites the target's code page (copy-on-write, with a TLB flush on every CPU
/// the target runs on): on the `net/http` workload, cycling at ~50% cost as much as staying
/// attached (requests/s −10% to −25% against −1% to −23%, two runs each), so a target within
/// twice the budget keeps its probes.
const MAX_FRACTION: f64 = 0.5;

/// What the caller saw when it looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub now: Instant,
    /// The probes' hits so far.
    pub hits: u64,
    /// The target's CPU time so far, when it can be read.
    pub cpu: Option<CpuTicks>,
}

/// What the controller asks for at the end of an attached stretch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Keep the probes attached and look again after this long.
    StayAttached(Duration),
    /// Detach the probes, and attach them again this long after the observation.
    Detach {
        /// How long they stay detached, from the observation.
        off: Duration,
        /// The hit rate that called for it, per second of the target's CPU time.
        rate: f64,
        /// Whether this is the first time: the caller tells the user once.
        first: bool,
    },
}

/// The target's pace attached and detached, over the whole trace: user CPU ticks and wall time
/// of each. Per window (50 ms at 5%) the 10 ms ticks are far too coarse to measure by, but
/// pooled over every window they give how much the probes slow the target while attached.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pace {
    pub attached_ticks: u64,
    pub attached_wall: Duration,
    pub detached_ticks: u64,
    pub detached_wall: Duration,
}

/// Pooled ticks on each side below which the pace is not trusted (0.2 s of CPU time).
const MIN_PACE_TICKS: u64 = 20;

impl Pace {
    /// How much faster the target runs detached than attached (its user CPU time per second),
    /// once both sides have enough ticks; 1 before. Never below 1: the probes cannot speed it up.
    pub fn slowdown(&self) -> f64 {
        if self.attached_ticks < MIN_PACE_TICKS || self.detached_ticks < MIN_PACE_TICKS {
            return 1.0;
        }
        #[expect(clippy::cast_precision_loss, reason = "tick counts")]
        let rate = |ticks: u64, wall: Duration| ticks as f64 / wall.as_secs_f64().max(1e-3);
        (rate(self.detached_ticks, self.detached_wall) / rate(self.attached_ticks, self.attached_wall)).clamp(1.0, 4.0)
    }
}

/// Where the current stretch (attached or detached) started.
#[derive(Debug, Clone, Copy)]
struct StretchStart {
    at: Instant,
    hits: u64,
    cpu: Option<CpuTicks>,
}

/// Keeps the probes attached for the fraction of each `period` that holds their hits within
/// `budget` per second of the target's CPU time, measuring the rate while they are attached.
#[derive(Debug)]
pub struct DutyController {
    budget: f64,
    period: Duration,
    fraction: f64,
    told: bool,
    attached_since: StretchStart,
    detached_since: Option<StretchStart>,
    pace: Pace,
}

impl DutyController {
    /// A controller for probes attached at `start`; look again after the returned time.
    #[must_use]
    pub fn new(DutyCycleOptions { budget, period }: DutyCycleOptions, start: Observation) -> (Self, Duration) {
        let controller = Self {
            budget: f64::from(budget),
            period,
            fraction: 1.0,
            told: false,
            attached_since: stretch_start(start),
            detached_since: None,
            pace: Pace::default(),
        };
        let next = controller.attached_stretch();
        (controller, next)
    }

    /// The fraction of each cycle the probes are attached now.
    #[must_use]
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// The target's pace attached and detached so far.
    pub(super) fn pace(&self) -> Pace {
        self.pace
    }

    /// How long an attached stretch lasts: attached throughout (at the start, or within the
    /// budget) the rate is measured over [`RATE_WINDOW`], so that a target over the budget is
    /// cycled within a second; else the fraction of the period.
    fn attached_stretch(&self) -> Duration {
        if self.fraction >= 1.0 {
            RATE_WINDOW
        } else {
            self.period.mul_f64(self.fraction)
        }
    }

    /// The end of an attached stretch: measures the hit rate over it and decides.
    pub fn step(&mut self, now: Observation) -> Decision {
        let since = self.attached_since;
        let cpu_ticks = now
            .cpu
            .zip(since.cpu)
            .map(|(now, then)| now.total.saturating_sub(then.total));
        let rate = hits_per_cpu_second(
            now.hits.saturating_sub(since.hits),
            now.now.saturating_duration_since(since.at),
            cpu_ticks,
        );
        self.fraction = fraction_for(rate, self.budget);
        if self.fraction >= 1.0 {
            self.attached_since = stretch_start(now);
            return Decision::StayAttached(RATE_WINDOW);
        }
        if let (Some(start), Some(end)) = (since.cpu, now.cpu) {
            self.pace.attached_ticks += end.user.saturating_sub(start.user);
            self.pace.attached_wall += now.now.saturating_duration_since(since.at);
        }
        self.detached_since = Some(stretch_start(now));
        let first = !std::mem::replace(&mut self.told, true);
        Decision::Detach {
            off: self.period.mul_f64(1.0 - self.fraction),
            rate,
            first,
        }
    }

    /// The probes are attached again at `now`; look again after the returned time.
    pub fn attached(&mut self, now: Observation) -> Duration {
        if let Some(off) = self.detached_since.take()
            && let (Some(start), Some(end)) = (off.cpu, now.cpu)
        {
            self.pace.detached_ticks += end.user.saturating_sub(start.user);
            self.pace.detached_wall += now.now.saturating_duration_since(off.at);
        }
        self.attached_since = stretch_start(now);
        self.attached_stretch()
    }
}

fn stretch_start(observation: Observation) -> StretchStart {
    StretchStart {
        at: observation.now,
        hits: observation.hits,
        cpu: observation.cpu,
    }
}

/// The probes' hit rate over a stretch attached: per second of the target's CPU time in it
/// (user and system, the traps included) when `cpu_ticks` has it, else per second of `wall`.
///
/// Per CPU-second because a hit's price is a share of the target's own work, and a hit costs
/// a service that mostly waits on the network more than a busy program: in `cargo xtask
/// bench`, with the probes always attached, the `net/http` service (paced, a quarter of a CPU)
/// ran 7,800 probes per second of its CPU time and lost 6.0% of its requests per CPU-second
/// (~7.7 µs a hit: the trap and the probe find its caches cold; `perf record` put 9.4% of its
/// time in the uprobe path at a similar rate), the CPU-bound workload 34,700 and 12.5% (~3.6 µs
/// a hit). A budget of hits per wall second let the service, at 2,000 hits a wall second, keep
/// its probes attached for half of each cycle; per CPU-second, the default 1000 holds it to
/// ~0.8% (the bench's account: 0.8% at 1,165 runs per CPU-second). An idle stretch counts as
/// one tick, so that a few hits in it read as a rate.
pub(super) fn hits_per_cpu_second(hits: u64, wall: Duration, cpu_ticks: Option<u64>) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    let (hits, seconds) = match cpu_ticks {
        Some(ticks) => (hits as f64, ticks.max(1) as f64 / CPU_TICKS_PER_SEC as f64),
        None => (hits as f64, wall.as_secs_f64()),
    };
    if seconds > 0.0 { hits / seconds } else { 0.0 }
}

/// The fraction of the cycle that keeps `rate` hits per CPU-second (measured while attached,
/// see [`hits_per_cpu_second`]) within `budget`; 1 (no cycle) unless that is below
/// [`MAX_FRACTION`].
pub(super) fn fraction_for(rate: f64, budget: f64) -> f64 {
    let fraction = (budget / rate).clamp(MIN_FRACTION, 1.0);
    if fraction > MAX_FRACTION { 1.0 } else { fraction }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn options(budget: u32) -> DutyCycleOptions {
        DutyCycleOptions { budget, period: PERIOD }
    }

    /// An observation `secs` after `start`, with `hits` so far and the target busy `busy` of
    /// each second (user time only).
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a few ticks")]
    fn seen(start: Instant, secs: f64, hits: u64, busy: f64) -> Observation {
        let ticks = (secs * busy * 100.0).round() as u64;
        Observation {
            now: start + Duration::from_secs_f64(secs),
            hits,
            cpu: Some(CpuTicks {
                user: ticks,
                total: ticks,
            }),
        }
    }

    #[test]
    fn within_the_budget_the_probes_stay_attached_and_the_rate_is_watched_every_window() {
        let start = Instant::now();
        let (mut controller, first) = DutyController::new(options(1000), seen(start, 0.0, 0, 1.0));
        assert_eq!(first, RATE_WINDOW);
        // 1,500 hits a CPU-second is within twice the budget: not worth cycling for.
        assert_eq!(
            controller.step(seen(start, 1.0, 1500, 1.0)),
            Decision::StayAttached(RATE_WINDOW)
        );
        assert!((controller.fraction() - 1.0).abs() < f64::EPSILON);
        assert_eq!(
            controller.step(seen(start, 2.0, 3000, 1.0)),
            Decision::StayAttached(RATE_WINDOW)
        );
    }

    /// 20,000 hits per CPU-second against a budget of 1,000: attached 5% of each 30 s period,
    /// the user told once, and the attached stretch after reattaching is 5% of the period.
    #[test]
    fn over_the_budget_the_probes_are_attached_for_the_fraction_that_keeps_it() {
        let start = Instant::now();
        let (mut controller, _) = DutyController::new(options(1000), seen(start, 0.0, 0, 1.0));
        let Decision::Detach { off, rate, first } = controller.step(seen(start, 1.0, 20_000, 1.0)) else {
            panic!("over the budget, the probes must go");
        };
        assert!((rate - 20_000.0).abs() < 1e-6, "{rate}");
        assert!(first);
        assert!((controller.fraction() - 0.05).abs() < 1e-9);
        assert_eq!(off, PERIOD.mul_f64(0.95));
        let stretch = controller.attached(seen(start, 1.0 + off.as_secs_f64(), 20_000, 1.0));
        assert_eq!(stretch, PERIOD.mul_f64(0.05));
        let at = 1.0 + off.as_secs_f64() + stretch.as_secs_f64();
        let Decision::Detach { first, .. } = controller.step(seen(start, at, 20_000 + 30_000, 1.0)) else {
            panic!("still over the budget");
        };
        assert!(!first, "the user is told once");
    }

    /// The same hits a wall second from a target busy a quarter of the time are four times as
    /// many per second of its CPU time.
    #[test]
    fn the_rate_is_per_second_of_the_targets_cpu_time() {
        let start = Instant::now();
        let (mut controller, _) = DutyController::new(options(4000), seen(start, 0.0, 0, 0.25));
        assert!(matches!(
            controller.step(seen(start, 1.0, 5_000, 0.25)),
            Decision::Detach { .. }
        ));
        assert!((controller.fraction() - 0.2).abs() < 1e-9, "{}", controller.fraction());
    }

    /// The pace attached and detached pools the stretches: a target that runs 100 ticks a
    /// second detached and 50 attached is slowed 2× by the probes.
    #[test]
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a few ticks")]
    fn the_pace_pools_attached_and_detached_stretches() {
        let start = Instant::now();
        let (mut controller, _) = DutyController::new(options(1000), seen(start, 0.0, 0, 0.5));
        let Decision::Detach { off, .. } = controller.step(seen(start, 1.0, 50_000, 0.5)) else {
            panic!("over the budget");
        };
        let mut at = 1.0;
        let mut ticks = 50;
        let mut cycle = |controller: &mut DutyController, off: Duration| {
            // Detached: 100 ticks a second.
            at += off.as_secs_f64();
            ticks += (off.as_secs_f64() * 100.0).round() as u64;
            let stretch = controller.attached(Observation {
                now: start + Duration::from_secs_f64(at),
                hits: 0,
                cpu: Some(CpuTicks {
                    user: ticks,
                    total: ticks,
                }),
            });
            // Attached: 50 ticks a second.
            at += stretch.as_secs_f64();
            ticks += (stretch.as_secs_f64() * 50.0).round() as u64;
            controller.step(Observation {
                now: start + Duration::from_secs_f64(at),
                hits: u64::MAX / 2,
                cpu: Some(CpuTicks {
                    user: ticks,
                    total: ticks,
                }),
            })
        };
        let mut off = off;
        for _ in 0..3 {
            let Decision::Detach { off: next, .. } = cycle(&mut controller, off) else {
                panic!("over the budget");
            };
            off = next;
        }
        assert!(
            (controller.pace().slowdown() - 2.0).abs() < 0.05,
            "{:?}",
            controller.pace()
        );
    }

    #[test]
    fn pace_is_trusted_only_with_enough_ticks_and_never_speeds_up() {
        let mut pace = Pace {
            attached_ticks: 10,
            attached_wall: Duration::from_millis(150),
            detached_ticks: 90,
            detached_wall: Duration::from_millis(900),
        };
        assert!((pace.slowdown() - 1.0).abs() < f64::EPSILON);
        // Attached: 67 ticks a second; detached: 100.
        pace.attached_ticks = 20;
        pace.attached_wall = Duration::from_millis(300);
        assert!((pace.slowdown() - 1.5).abs() < 1e-9, "{}", pace.slowdown());
        pace.attached_ticks = 60;
        assert!((pace.slowdown() - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn hit_rates_are_per_cpu_second_and_an_idle_stretch_counts_one_tick() {
        let second = Duration::from_secs(1);
        assert!((hits_per_cpu_second(500, second, Some(25)) - 2000.0).abs() < 1e-9);
        assert!((hits_per_cpu_second(500, second, None) - 500.0).abs() < 1e-9);
        assert!((hits_per_cpu_second(3, second, Some(0)) - 300.0).abs() < 1e-9);
        assert!(hits_per_cpu_second(0, Duration::ZERO, None).abs() < f64::EPSILON);
    }

    #[test]
    fn fraction_keeps_hits_within_budget() {
        assert!((fraction_for(1000.0, 4000.0) - 1.0).abs() < f64::EPSILON);
        assert!((fraction_for(7000.0, 4000.0) - 1.0).abs() < f64::EPSILON);
        assert!((fraction_for(24_000.0, 4000.0) - 1.0 / 6.0).abs() < 1e-9);
        assert!((fraction_for(1e9, 4000.0) - MIN_FRACTION).abs() < f64::EPSILON);
    }
}
