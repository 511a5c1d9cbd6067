//! `--format jsonl`: one JSON document per `--interval`, each holding what happened in that
//! interval only (deltas), for piping into other tools. Every line is a complete report, with
//! an `interval` key; the last one covers the time from the last interval to the end. In-use
//! figures (`inuse_objects`, `inuse_bytes`, `inuse`) are levels at the interval's end, not
//! deltas: a callsite is listed when it allocated in the interval or its in-use changed.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::profile::{Callsite, CallsiteKey, Profile, Totals};
use crate::report::{Interval, Report, TargetInfo};

/// Remembers the previous cumulative profile to turn the next one into deltas.
#[derive(Debug, Default)]
pub struct JsonlStream {
    previous: HashMap<CallsiteKey, Callsite>,
    previous_totals: Totals,
    previous_end: f64,
}

impl JsonlStream {
    /// The document for the interval that ends now, `elapsed` seconds into the trace.
    #[must_use]
    pub fn next(
        &mut self,
        target: TargetInfo,
        profile: &Profile,
        attached: usize,
        elapsed: f64,
        top: Option<usize>,
    ) -> Report {
        let mut deltas: Vec<Callsite> = profile
            .callsites
            .iter()
            .filter_map(|now| delta(now, self.previous.get(&now.key)))
            .collect();
        deltas.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
        let totals = Totals {
            allocations: profile
                .totals
                .allocations
                .saturating_sub(self.previous_totals.allocations),
            bytes: profile.totals.bytes.saturating_sub(self.previous_totals.bytes),
            dropped: profile.totals.dropped.saturating_sub(self.previous_totals.dropped),
        };
        let mut report = Report::of_callsites(
            target,
            profile.mode,
            totals,
            profile.stats,
            &deltas,
            attached,
            elapsed - self.previous_end,
            top,
        );
        report.set_inuse(profile.inuse.clone());
        report.interval = Some(Interval {
            start_secs: self.previous_end,
            end_secs: elapsed,
        });
        self.previous = profile.callsites.iter().map(|c| (c.key.clone(), c.clone())).collect();
        self.previous_totals = profile.totals;
        self.previous_end = elapsed;
        report
    }

    /// Writes one document as one line.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write(report: &Report, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, report)?;
        writeln!(out)?;
        out.flush()
    }
}

/// What a callsite did since `before`; `None` when nothing.
fn delta(now: &Callsite, before: Option<&Callsite>) -> Option<Callsite> {
    let Some(before) = before else {
        return Some(now.clone());
    };
    let allocations = now.allocations.saturating_sub(before.allocations);
    // In-use is a level: a callsite whose allocations stopped is still news when what it
    // holds changed (freed, say).
    if allocations == 0 && now.inuse_bytes == before.inuse_bytes {
        return None;
    }
    let mut sizes = now.sizes.clone();
    // Same configuration on both sides, and counts only grow: subtraction cannot fail; if it
    // did, the cumulative distribution is the honest fallback.
    if sizes.subtract(&before.sizes).is_err() {
        sizes = now.sizes.clone();
    }
    // The interval's extremes, from the histogram, within the exact ones of the whole trace.
    let min_size = sizes.min().clamp(now.min_size, now.max_size);
    let max_size = sizes.max().clamp(now.min_size, now.max_size);
    Some(Callsite {
        key: now.key.clone(),
        allocations,
        bytes: now.bytes.saturating_sub(before.bytes),
        sizes,
        min_size,
        max_size,
        inlined_into: now.inlined_into.clone(),
        user: now.user.clone(),
        via: now.via.clone(),
        also_counts: HashMap::new(),
        inuse_objects: now.inuse_objects,
        inuse_bytes: now.inuse_bytes,
        inuse_settled_bytes: now.inuse_settled_bytes,
    })
}
