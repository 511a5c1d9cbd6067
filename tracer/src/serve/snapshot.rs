//! What the collector publishes and every request reads: one snapshot behind a mutex, replaced
//! field by field at each collection, never changed by a request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tracer_common::ProbeStats;

use crate::export::MappingInfo;
use crate::mode::Mode;
use crate::probes::ProbeRunTime;
use crate::profile::{Callsite, CallsiteKey, Profile};
use crate::report::{CallsiteReport, Report, TargetInfo};

/// What the collector publishes, read by every request.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub target: Option<TargetInfo>,
    pub mode: Option<Mode>,
    /// Counts one traced process; a new process starts a new generation (and fresh counters).
    pub generation: u64,
    /// The target has exited; the data is its last.
    pub stale: bool,
    pub profile: Option<Arc<Profile>>,
    /// The callsites with series of their own in `/metrics`, chosen when the profile was
    /// collected ([`SeriesSelection`]), and the totals the `other` series is the rest of.
    pub series: Option<Arc<Report>>,
    pub mapping: MappingInfo,
    /// When tracing of the current generation started.
    pub started: Option<(Instant, i64)>,
    pub attached_probes: usize,
    /// The fraction of each duty cycle the probes are attached (below 1 while span mode's
    /// cycle engages).
    pub attached_fraction: f64,
    /// The bytes the target's runtime has counted as allocated since it started (`None`
    /// without a symbol table to find the count by).
    pub runtime_allocated_bytes: Option<u64>,
    /// Probe statistics of earlier generations, summed.
    pub earlier_stats: ProbeStats,
    /// How long the current generation's probes ran, when the kernel times them.
    pub probe_run_time: Option<ProbeRunTime>,
    /// The same of earlier generations, summed.
    pub earlier_run_time: ProbeRunTime,
    pub reattaches: u64,
    pub last_error: Option<String>,
    pub store_keys: usize,
    pub overflowed_keys: u64,
    /// Callsites left in `other` by `serve --all`'s `--max-series`, at the last collection.
    pub folded_series: usize,
    /// When the collector last published; `/healthz` fails when it stops doing so.
    pub last_collection: Option<Instant>,
    /// The collector thread has ended (it only does when gotrace stops, or on a bug).
    pub collector_gone: bool,
}

pub(super) type Shared = Arc<Mutex<Snapshot>>;

pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Snapshot> {
    // A panic while holding the lock leaves a snapshot that is still consistent enough to read.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which callsites get series of their own in `/metrics`, for one target.
///
/// Cardinality is bounded: the first `top_k` callsites by bytes get series of their own, and
/// keep them for the life of the target (so that a series never disappears while its process
/// runs); everything else adds up in one `other` series per counter.
#[derive(Debug)]
pub(super) struct SeriesSelection {
    /// Sticky membership.
    exported: HashSet<CallsiteKey>,
    /// At most this many members (`serve --all`'s share of `--max-series`).
    cap: usize,
    /// Callsites that would have earned a series but for the cap, at the last selection.
    pub folded: usize,
}

impl Default for SeriesSelection {
    fn default() -> Self {
        Self::capped(usize::MAX)
    }
}

impl SeriesSelection {
    /// A selection of at most `cap` members. Capping here, where membership is decided, keeps
    /// it sticky: a callsite folded into `other` stays there, so `other` never shrinks because
    /// the cap moved.
    pub fn capped(cap: usize) -> Self {
        Self {
            exported: HashSet::new(),
            cap,
            folded: 0,
        }
    }

    /// Admits the callsites of `profile` that earn a series, and returns a report of the
    /// members (most bytes first) with the profile's totals.
    pub fn select(&mut self, profile: &Profile, target: TargetInfo, attached: usize, top_k: usize) -> Report {
        // Membership only grows, so no series disappears while its process lives: the first
        // `top_k` callsites by bytes get in, and later a callsite that outgrows the smallest
        // member, up to twice `top_k` series.
        let mut folded = 0;
        let mut smallest = profile
            .callsites
            .iter()
            .filter(|c| self.exported.contains(&c.key))
            .map(|c| c.bytes)
            .min();
        for callsite in &profile.callsites {
            if self.exported.contains(&callsite.key) {
                continue;
            }
            let admit = self.exported.len() < top_k
                || (self.exported.len() < top_k.saturating_mul(2) && smallest.is_some_and(|m| callsite.bytes > m));
            if !admit {
                break;
            }
            if self.exported.len() >= self.cap {
                folded += 1;
                continue;
            }
            self.exported.insert(callsite.key.clone());
            smallest = Some(smallest.map_or(callsite.bytes, |m| m.min(callsite.bytes)));
        }
        // What holds the most memory now gets a series too, though it may allocate little
        // (a slow leak): the top `top_k` by in-use bytes, within three times `top_k` series.
        let mut holding: Vec<&Callsite> = profile.callsites.iter().filter(|c| c.inuse_bytes > 0).collect();
        holding.sort_by_key(|c| std::cmp::Reverse(c.inuse_bytes));
        for callsite in holding.into_iter().take(top_k) {
            if self.exported.len() >= top_k.saturating_mul(3) {
                break;
            }
            if self.exported.contains(&callsite.key) {
                continue;
            }
            if self.exported.len() >= self.cap {
                folded += 1;
                continue;
            }
            self.exported.insert(callsite.key.clone());
        }
        // Counted past the cap, a callsite could be counted where the uncapped rules would have
        // stopped: no more than the uncapped limit's worth.
        self.folded = folded.min(top_k.saturating_mul(3).saturating_sub(self.exported.len()));
        let mut report = Report::new(target, profile, attached, 0.0, Some(0));
        report.callsites = profile
            .callsites
            .iter()
            .filter(|c| self.exported.contains(&c.key))
            .map(CallsiteReport::from)
            .collect();
        let inuse = std::mem::take(&mut report.inuse);
        report.set_inuse(inuse);
        report
    }

    /// How many callsites have series.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.exported.len()
    }
}
