//! How one collection interval's counts become estimates while the duty cycle runs: what the
//! probes were attached for in it ([`Attached`]), and the factor for its counts ([`Scale`]).

use std::time::{Duration, Instant};

/// What the probes were attached for, as the collection sees it.
#[derive(Debug)]
pub(super) struct Attached {
    /// Since when the probes are attached, while they are.
    pub since: Option<Instant>,
    /// Time attached since `taken`, not counting the current stretch.
    pub wall: Duration,
    /// Whether the probes were detached at any time since `taken`.
    pub detached: bool,
    /// The end of the last interval ([`super::DutyCycle::end_interval`]).
    pub taken: Instant,
    /// The fraction of each cycle the thread keeps the probes attached now.
    pub fraction: f64,
    /// The target's allocated bytes at `taken`.
    pub heap_at_taken: Option<u64>,
    /// The latest reading of the target's allocated bytes: what stands for the reading at
    /// the end when the target has exited (its memory is gone).
    pub heap_latest: Option<u64>,
}

/// One collection interval as the duty cycle saw it, ended by [`super::DutyCycle::end_interval`]:
/// what [`super::DutyCycle::scale`] turns the interval's counts into estimates with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// Its length.
    pub wall: Duration,
    /// How long the probes were attached in it.
    attached: Duration,
    /// Whether they were attached all of it: its counts are complete.
    attached_throughout: bool,
    /// The bytes the target allocated in it, by its own count; `None` without one.
    allocated: Option<u64>,
}

/// What the last interval in which the probes saw something was collected over: it stands
/// in for an interval in which they saw nothing.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    attached: Duration,
    /// The bytes its counts stand for, as the target's runtime counts them.
    counted_bytes: u64,
}

/// How the counts of one collection interval become estimates: see [`super::DutyCycle::scale`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    /// The factor for this interval's counts.
    pub counts: f64,
    /// For an interval in which the probes saw nothing (never attached, or attached while the
    /// target allocated nothing): how many times the last interval in which they did see
    /// something stands in for it, its counts unscaled. `None` for an interval that saw
    /// something: it becomes the one that stands in.
    pub previous: Option<f64>,
}

impl Scale {
    /// Counts that stand for themselves.
    pub const ONE: Self = Self {
        counts: 1.0,
        previous: None,
    };
}

impl Attached {
    /// Starts an attached stretch at `now`.
    pub(super) fn open_stretch(&mut self, now: Instant) {
        self.since = Some(now);
    }

    /// Ends the current attached stretch at `now`, starting a new one when `still_attached`.
    pub(super) fn close_stretch(&mut self, now: Instant, still_attached: bool) {
        if let Some(since) = self.since.take() {
            self.wall += now.saturating_duration_since(since);
        }
        if still_attached {
            self.open_stretch(now);
        } else {
            self.detached = true;
        }
    }

    /// Ends the interval since `taken` at `now`, when the target had allocated `heap_now`
    /// bytes, and starts the next.
    pub(super) fn end_interval(&mut self, now: Instant, heap_now: Option<u64>) -> Interval {
        let still_attached = self.since.is_some();
        self.close_stretch(now, still_attached);
        let interval = Interval {
            wall: now.saturating_duration_since(self.taken),
            attached: self.wall,
            attached_throughout: !self.detached,
            allocated: heap_now
                .zip(self.heap_at_taken)
                .map(|(now, then)| now.saturating_sub(then)),
        };
        self.taken = now;
        self.wall = Duration::ZERO;
        self.detached = !still_attached;
        self.heap_at_taken = heap_now;
        interval
    }
}

impl Interval {
    /// The factor for counts collected over this interval that the target's runtime counts as
    /// `counted_bytes`: see [`super::DutyCycle::scale`]. `previous` is the last interval that saw
    /// something (this one becomes it, if it did); `slowdown` the pace detached over attached.
    pub(super) fn scale(&self, counted_bytes: u64, previous: &mut Option<Seen>, slowdown: impl Fn() -> f64) -> Scale {
        // With the target's count, "saw nothing" is exact: no bytes were counted (a factor by
        // time would be unbounded for a stretch of microseconds).
        let saw_nothing = self.attached.is_zero() || (self.allocated.is_some() && counted_bytes == 0);
        if saw_nothing {
            // Nothing was counted: the last interval that saw something stands for this one
            // too, in proportion (the last interval of a trace may be one such, when the
            // target exits while the probes are detached). Not for one attached throughout,
            // whose allocations are all still in the target's cached spans, to be counted later.
            let stand_in = previous.filter(|_| !self.attached_throughout).map_or(0.0, |seen| {
                share_of(self.allocated, Some(seen.counted_bytes))
                    .unwrap_or_else(|| self.wall.as_secs_f64() * slowdown() / seen.attached.as_secs_f64().max(1e-3))
            });
            return Scale {
                counts: 1.0,
                previous: Some(stand_in),
            };
        }
        *previous = Some(Seen {
            attached: self.attached,
            counted_bytes,
        });
        if self.attached_throughout {
            return Scale::ONE;
        }
        let detached = self.wall.saturating_sub(self.attached).as_secs_f64();
        let counts = share_of(self.allocated, Some(counted_bytes))
            .unwrap_or_else(|| 1.0 + detached * slowdown() / self.attached.as_secs_f64());
        Scale {
            counts: counts.max(1.0),
            previous: None,
        }
    }
}

/// `total` bytes allocated over `seen` of them counted by the probes: the factor that scales
/// what the probes saw to the whole; `None` without both, or when nothing was seen.
#[expect(clippy::cast_precision_loss, reason = "byte counts, a ratio")]
fn share_of(total: Option<u64>, seen: Option<u64>) -> Option<f64> {
    Some(total? as f64 / seen.filter(|&bytes| bytes > 0)? as f64)
}
