//! Request latencies as wrk records them (a count per whole microsecond), so that the HTTP
//! service's p99 can be taken over every request of several windows pooled together, not only
//! window by window.
//!
//! Why pool: at ~5,000 requests/s a 10 s window's p99 is set by its slowest 500 requests, and
//! on these VMs those come from a few host stalls of a few milliseconds that land on one
//! instance and not its twin. Two untraced instances side by side came out 8.6–12.9% apart in
//! p99 at most (A/A, three full benches), against a 10% target, while their requests per
//! CPU-second agreed within 1.4%. Pooled over the runs, a mode's p99 is the 99th percentile of
//! its 250,000–750,000 requests, and one stall weighs a fifth as much.

use std::collections::BTreeMap;

use serde::Serialize;

/// wrk's latency histogram: how many requests took each whole number of microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Latencies {
    counts: BTreeMap<u64, u64>,
}

/// The prefix of the lines [`PACE_SCRIPT`](super::realistic)'s `done` hook prints, one per
/// latency wrk saw: `latency-us VALUE COUNT`.
pub(super) const LINE_PREFIX: &str = "latency-us ";

impl Latencies {
    /// The histogram in wrk's output (the `latency-us` lines), `None` when it has none or a
    /// line does not parse.
    pub(super) fn from_wrk_output(text: &str) -> Option<Self> {
        let mut out = Self::default();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix(LINE_PREFIX) else {
                continue;
            };
            let mut fields = rest.split_whitespace().map(parse_count);
            let (Some(Some(micros)), Some(Some(count)), None) = (fields.next(), fields.next(), fields.next()) else {
                return None;
            };
            *out.counts.entry(micros).or_default() += count;
        }
        (out.requests() > 0).then_some(out)
    }

    /// Adds `other`'s requests to these.
    pub(super) fn merge(&mut self, other: &Self) {
        for (&micros, &count) in &other.counts {
            *self.counts.entry(micros).or_default() += count;
        }
    }

    pub(super) fn requests(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `percent` percentile in milliseconds, nearest rank (the smallest latency at least
    /// `percent`% of the requests took no longer than); `None` with no requests.
    pub(super) fn percentile_ms(&self, percent: f64) -> Option<f64> {
        let total = self.requests();
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank between 1 and the request count"
        )]
        let rank = ((percent / 100.0 * total as f64).ceil() as u64).clamp(1, total.max(1));
        let mut seen = 0;
        for (&micros, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                #[expect(clippy::cast_precision_loss, reason = "microseconds")]
                return Some(micros as f64 / 1000.0);
            }
        }
        None
    }
}

/// wrk prints its Lua numbers as floats or integers depending on the Lua build: `25` or `25.0`.
fn parse_count(field: &str) -> Option<u64> {
    let integral = field.strip_suffix(".0").unwrap_or(field);
    integral.parse().ok()
}

/// A percentile over two pools of requests: one instance's under a tracer and its untraced
/// twin's in the same seconds, every run's windows together.
#[derive(Debug, Clone, Serialize)]
pub(super) struct PooledPercentile {
    pub(super) traced_ms: f64,
    pub(super) untraced_ms: f64,
    /// Traced over untraced.
    pub(super) ratio: f64,
    /// How many requests each pool holds: traced, untraced.
    pub(super) requests: [u64; 2],
}

impl PooledPercentile {
    /// `percent` of `[traced, untraced]`; `None` when either is empty.
    pub(super) fn of(pools: &[Latencies; 2], percent: f64) -> Option<Self> {
        let traced_ms = pools[0].percentile_ms(percent)?;
        let untraced_ms = pools[1].percentile_ms(percent)?;
        (untraced_ms > 0.0).then(|| Self {
            traced_ms,
            untraced_ms,
            ratio: traced_ms / untraced_ms,
            requests: [pools[0].requests(), pools[1].requests()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Latencies, PooledPercentile};

    fn of(pairs: &[(u64, u64)]) -> Latencies {
        let lines: Vec<String> = pairs.iter().map(|(v, c)| format!("latency-us {v} {c}")).collect();
        Latencies::from_wrk_output(&lines.join("\n")).expect("a histogram")
    }

    #[test]
    fn reads_the_done_hooks_lines_among_wrks_own() {
        let text = "Running 2s test @ http://127.0.0.1:1/json\n  99%  564.00us\nlatency-us 25 1\n\
                    latency-us 27.0 3\nRequests/sec:   5499.34\n";
        let latencies = Latencies::from_wrk_output(text).expect("a histogram");
        assert_eq!(latencies.requests(), 4);
        assert_eq!(latencies.percentile_ms(50.0), Some(0.027));
        assert_eq!(Latencies::from_wrk_output("Requests/sec: 1\n"), None);
        assert_eq!(Latencies::from_wrk_output("latency-us 25\n"), None);
        assert_eq!(Latencies::from_wrk_output("latency-us 25 x\n"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        // 100 requests: 98 at 100 us, one at 900 us, one at 5 ms.
        let latencies = of(&[(100, 98), (900, 1), (5000, 1)]);
        assert_eq!(latencies.percentile_ms(98.0), Some(0.1));
        assert_eq!(latencies.percentile_ms(99.0), Some(0.9));
        assert_eq!(latencies.percentile_ms(99.5), Some(5.0));
        assert_eq!(latencies.percentile_ms(100.0), Some(5.0));
        assert_eq!(Latencies::default().percentile_ms(99.0), None);
    }

    /// One window's stall sets that window's p99 but not the pool's.
    #[test]
    fn a_stall_in_one_window_weighs_less_in_the_pool() {
        let quiet = of(&[(500, 985), (700, 15)]);
        let stalled = of(&[(500, 980), (3000, 20)]);
        assert_eq!(stalled.percentile_ms(99.0), Some(3.0));
        let mut pool = Latencies::default();
        for window in [&quiet, &quiet, &quiet, &quiet, &stalled] {
            pool.merge(window);
        }
        assert_eq!(pool.requests(), 5000);
        assert_eq!(pool.percentile_ms(99.0), Some(0.7));
        let mut untraced = Latencies::default();
        for _ in 0..5 {
            untraced.merge(&quiet);
        }
        let pooled = PooledPercentile::of(&[pool, untraced], 99.0).expect("both pools");
        assert!((pooled.ratio - 1.0).abs() < 1e-12, "{pooled:?}");
        assert_eq!(pooled.requests, [5000, 5000]);
        assert!(PooledPercentile::of(&[quiet, Latencies::default()], 99.0).is_none());
    }
}
