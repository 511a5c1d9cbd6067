//! Sampling in time: span mode's probes attached for part of each cycle (`--span-period`),
//! when the target refills spans faster than a budget of probe hits allows.
//!
//! Every probe hit is a trap into the kernel (~1 µs on these machines) plus the program (~2 µs
//! for a refill with its stack walk), and the cache misses both leave the target: the
//! CPU-bound workload of `cargo xtask bench`, with the probes always attached, ran them 25,500
//! times per second of its CPU time and lost 8.8% of its work per CPU-second, ~3.5 µs a hit.
//! Skipping work inside the probe cannot help, since
//! the trap is paid before the program runs; only a probe that is not there costs nothing. So a
//! thread detaches the probes for the rest of each period (`--span-period`, see [`RATE_WINDOW`]
//! for why it is long) once they have been attached for
//! the fraction that keeps their hits within the budget, and the counts of each collection are
//! scaled by the inverse of the share of the target's allocations the probes counted (by the
//! target's own count; of its progress, for a binary without a symbol table).
//!
//! The scaling is unbiased for a steady workload: each span is counted, with all of its
//! objects, when its end (the refill that replaces it, or the `releaseAll` that hands it back)
//! falls while the probes are attached, which happens for that share of the spans. The objects
//! are charged to the refill that ended the span and half of them to the one that started it,
//! as the probes know it: for a span brought in while they were detached, that is the last
//! refill of the same P and size class they saw before, which is a guess (the totals are
//! right, the split between callsites sharing a size class may not be). The probes' traps slow
//! the target while attached, which the share allows for (see [`DutyCycle::scale`]).
//!
//! Detaching takes an RCU grace period per probe (~0.1 s, in parallel), during which the probes
//! still trap but count nothing (`PAUSED_MAP`): a cost the budget does not see.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod controller;
mod scaling;

pub use self::controller::{Decision, DutyController, Observation};
use self::scaling::{Attached, Seen};
pub use self::scaling::{Interval, Scale};
use crate::process::CpuTicks;

/// How long the probes stay attached to measure their hit rate: at the start, while the rate
/// is within the budget, and between attempts to attach again. The cycle itself is as long as
/// the caller says (`--span-period`, 30 s by default) because attaching and detaching costs
/// more than the hits while attached: registering a uprobe copies the target's code page and
/// releasing it waits for an RCU grace period; and through perf events (before Linux 6.6, see
/// `crate::uprobe_multi`) every thread of the target that hits a probe while it is being
/// removed sleeps until the removal is done (~10 ms here), which on the pinned `net/http`
/// benchmark service added ~13% to its p99 at a 3 s cycle and nothing measurable at 30 s
/// (docs/sampled-overhead.md, *What a detach costs the target*).
pub const RATE_WINDOW: Duration = Duration::from_secs(1);

/// How often a thread reads the target's allocation total, so that when the target exits the
/// latest reading is recent: what the last interval's total ends with (three
/// `process_vm_readv` of ~3.5 KiB each time, microseconds).
const HEAP_POLL: Duration = Duration::from_millis(25);

/// Span mode's duty cycle as the user set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutyCycleOptions {
    /// Probe hits per second of the target's CPU time that it pays for, on average
    /// (`--span-budget`; see [`hits_per_cpu_second`]).
    pub budget: u32,
    /// How long one cycle lasts (`--span-period`).
    pub period: Duration,
}

/// What the duty-cycle thread does to the probes.
pub trait Switch: Send + 'static {
    /// Attaches every probe again; they count from when it returns.
    fn attach(&mut self) -> anyhow::Result<()>;
    /// Detaches every probe; they count nothing from when it is called (even if detaching
    /// itself takes a while).
    fn detach(&mut self);
}

/// Reads the target's CPU time so far; `None` when it cannot.
pub type ProgressClock = Box<dyn Fn() -> Option<CpuTicks> + Send>;

/// Reads the bytes the target's runtime has counted as allocated so far
/// ([`crate::remote::HeapCounter`]); `None` when it cannot.
pub type HeapReader = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    attached: Mutex<Attached>,
    /// How much the probes slow the target while attached ([`controller::Pace::slowdown`]),
    /// as of the controller's latest step.
    slowdown: Mutex<f64>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("attached", &self.attached)
            .field("slowdown", &self.slowdown)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn attached(&self) -> MutexGuard<'_, Attached> {
        self.attached.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slowdown(&self) -> MutexGuard<'_, f64> {
        self.slowdown.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sleeps for `time` unless told to stop; true when told to stop.
    fn sleep(&self, time: Duration) -> bool {
        let stop = self.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, time, |stop| !*stop)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *stop
    }
}

/// A running duty cycle; dropping it stops the thread (the probes stay as they are then: the
/// owner drops them next).
pub struct DutyCycle {
    shared: Arc<Shared>,
    heap: Option<HeapReader>,
    /// The last interval in which the probes saw something.
    previous: Option<Seen>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DutyCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DutyCycle")
            .field("shared", &self.shared)
            .field("previous", &self.previous)
            .finish_non_exhaustive()
    }
}

impl DutyCycle {
    /// Starts cycling probes that are attached now, keeping their hits (`hits` returns the
    /// count so far) within `options.budget` per second of the target's CPU time (as `clock`
    /// reads it; per wall second without it) on average, one cycle each
    /// `options.period`. The counts are scaled by what `heap`
    /// reads, the target's own allocation total, when there is one; else by time, with `clock`
    /// (the target's user CPU time) allowing for the probes slowing the target (see
    /// [`Self::scale`]).
    pub fn start(
        switch: Arc<Mutex<dyn Switch>>,
        hits: impl FnMut() -> u64 + Send + 'static,
        heap: Option<HeapReader>,
        clock: ProgressClock,
        options: DutyCycleOptions,
    ) -> anyhow::Result<Self> {
        let now = Instant::now();
        let heap_now = heap.as_ref().and_then(|read| read());
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            attached: Mutex::new(Attached {
                since: Some(now),
                wall: Duration::ZERO,
                detached: false,
                taken: now,
                fraction: 1.0,
                heap_at_taken: heap_now,
                heap_latest: heap_now,
            }),
            slowdown: Mutex::new(1.0),
        });
        let mut duty = Self {
            shared: shared.clone(),
            heap: heap.clone(),
            previous: None,
            threads: Vec::new(),
        };
        // Pushed one by one: should the second fail to start, dropping `duty` stops the first.
        duty.threads
            .push(std::thread::Builder::new().name("duty-cycle".to_owned()).spawn({
                let shared = shared.clone();
                let by_count = heap.is_some();
                move || cycle(&shared, &*switch, hits, &clock, options, by_count)
            })?);
        if let Some(heap) = heap {
            duty.threads.push(
                std::thread::Builder::new()
                    .name("heap-poll".to_owned())
                    .spawn(move || poll_heap(&shared, &*heap))?,
            );
        }
        Ok(duty)
    }

    /// Ends a collection interval: call it right after the probes switched to the other counts
    /// map, and pass what it returns, with what the probes counted in the interval, to
    /// [`Self::scale`].
    #[must_use]
    pub fn end_interval(&self) -> Interval {
        let heap_read = self.heap.as_ref().and_then(|read| read());
        // `now` under the lock, so that the cycle cannot switch between it and the end of
        // the stretch it closes.
        let mut attached = self.shared.attached();
        // Once the target has exited, the allocations since the latest reading (at most
        // `HEAP_POLL` ago) are missing from the interval's total. The largest, as in
        // `poll_heap`: the poller may have stored a reading since this one.
        let heap_now = attached.heap_latest.max(heap_read);
        attached.heap_latest = heap_now;
        attached.end_interval(Instant::now(), heap_now)
    }

    /// The factor that turns the counts collected over `interval` into estimates for the
    /// whole of it: the inverse of the share of the target's allocations the probes counted.
    /// `counted_bytes` is what those counts add up to, as the target's runtime counts bytes.
    ///
    /// The target's runtime counts its allocations itself, at the very events the probes
    /// count (see [`crate::remote::HeapCounter`]), so the interval's total by that count over
    /// the bytes the probes counted is that share exactly, whatever the probes' traps did to
    /// the target's pace, however its allocation rate varied, and whenever the thread got to
    /// run around a switch. (On `workloads classes`, which refills 90,000 spans a second, the
    /// traps slow the target by a third while attached: the share of wall time overstated
    /// what the probes saw, and estimates came out 8–17% low. Readings of the count taken by
    /// this thread at each switch instead bounded the probes' counting only as well as the
    /// thread was scheduled, and at the target's exit only as well as the last reading before
    /// it: one estimate came out 15% high under the load of a full test run.)
    ///
    /// Without it (a stripped binary has no symbol for `runtime.memstats`), the share is of
    /// time, weighed by the target's pace: user CPU time, which leaves the traps out. Its clock
    /// ticks (10 ms) are far too coarse for one 50 ms window (±25% errors when measured so),
    /// so the pace attached and detached is pooled over the whole trace ([`Pace`]) and each
    /// interval's detached wall time weighed by it (−21% to +6% at a 5% duty cycle).
    pub fn scale(&mut self, interval: Interval, counted_bytes: u64) -> Scale {
        let shared = &self.shared;
        interval.scale(counted_bytes, &mut self.previous, || *shared.slowdown())
    }

    /// The fraction of each cycle the probes are attached now (1 while the target stays within
    /// the budget).
    #[must_use]
    pub fn fraction(&self) -> f64 {
        self.shared.attached().fraction
    }
}

impl Drop for DutyCycle {
    fn drop(&mut self) {
        *self
            .shared
            .stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Reads the target's allocation total every [`HEAP_POLL`] until told to stop, so that when
/// the target exits the latest reading is recent. A thread of its own: the cycle's thread
/// spends ~0.1 s in each detach, during which the target may exit.
fn poll_heap(shared: &Shared, read: &(dyn Fn() -> Option<u64> + Send + Sync)) {
    while !shared.sleep(HEAP_POLL) {
        if let Some(bytes) = read() {
            // The largest: `end_interval` may have stored a reading since this one.
            let mut attached = shared.attached();
            attached.heap_latest = attached.heap_latest.max(Some(bytes));
        }
    }
}

/// The duty cycle's thread: carries out what the [`DutyController`] decides, with the real
/// probes and real sleeps. `by_count` says whether the counts are scaled by the target's own
/// count (for the message).
fn cycle(
    shared: &Shared,
    switch: &Mutex<dyn Switch>,
    mut hits: impl FnMut() -> u64,
    clock: &ProgressClock,
    options: DutyCycleOptions,
    by_count: bool,
) {
    let lock = || switch.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut observe = || Observation {
        now: Instant::now(),
        hits: hits(),
        cpu: clock(),
    };
    let (mut controller, mut next) = DutyController::new(options, observe());
    loop {
        if shared.sleep(next) {
            return;
        }
        let seen = observe();
        let decision = controller.step(seen);
        shared.attached().fraction = controller.fraction();
        let Decision::Detach { off, rate, first } = decision else {
            if let Decision::StayAttached(wait) = decision {
                next = wait;
            }
            continue;
        };
        if first {
            let basis = if by_count {
                "by the target's own count of its allocations"
            } else {
                "by time (the binary has no symbol table to find the runtime's allocation count \
                 in, so expect errors of up to ±20%)"
            };
            crate::progress!(
                "span mode: {rate:.0} probe hits per second of the target's CPU time is over \
                 the budget of {} (--span-budget): the probes are attached for {:.0}% of every {:?} (--span-period) \
                 and the counts scaled up to match, {basis}",
                options.budget,
                controller.fraction() * 100.0,
                options.period
            );
        }
        shared.attached().close_stretch(seen.now, false);
        *shared.slowdown() = controller.pace().slowdown();
        lock().detach();
        if shared.sleep(off.saturating_sub(seen.now.elapsed())) {
            return;
        }
        // Attach again; should that fail (most likely the target exited, which the collection
        // notices within a second), try again every RATE_WINDOW.
        let mut failures = 0_u32;
        while let Err(e) = lock().attach() {
            failures += 1;
            if failures == 2 {
                crate::warning!("cannot attach the probes again (trying again every {RATE_WINDOW:?}): {e:#}");
            }
            if shared.sleep(RATE_WINDOW) {
                return;
            }
        }
        let seen = observe();
        shared.attached().open_stretch(seen.now);
        next = controller.attached(seen);
        *shared.slowdown() = controller.pace().slowdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fakes' cycle: as long as the window that measures the rate, so that the tests'
    /// timings count in whole cycles.
    const PERIOD: Duration = RATE_WINDOW;

    /// A target that hits the probes `RATE` times a second while they are attached, and
    /// allocates `BYTES_PER_HIT` bytes per hit, attached or not, until it exits.
    struct FakeProbes {
        since: Option<Instant>,
        hits: f64,
        switches: usize,
        target: Arc<FakeTarget>,
    }

    const RATE: f64 = 100_000.0;
    const BYTES_PER_HIT: u64 = 64;

    struct FakeTarget {
        born: Instant,
        exited: Mutex<Option<Instant>>,
        /// Set to have the target exit while the probes are being detached next.
        exit_while_detaching: std::sync::atomic::AtomicBool,
    }

    impl FakeTarget {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                born: Instant::now(),
                exited: Mutex::new(None),
                exit_while_detaching: std::sync::atomic::AtomicBool::new(false),
            })
        }

        /// `at`, or when the target exited if that was earlier.
        fn alive_at(&self, at: Instant) -> Instant {
            self.exited.lock().unwrap().map_or(at, |exited| exited.min(at))
        }

        /// Bytes allocated from birth to `at`.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive count, far below 2^53"
        )]
        fn allocated(&self, at: Instant) -> u64 {
            let alive = self.alive_at(at).saturating_duration_since(self.born);
            (alive.as_secs_f64() * RATE) as u64 * BYTES_PER_HIT
        }

        /// The target's own count, as [`crate::remote::HeapCounter`] reads it: nothing once
        /// it has exited.
        fn reader(self: &Arc<Self>) -> HeapReader {
            let target = self.clone();
            Arc::new(move || {
                let now = Instant::now();
                (target.alive_at(now) == now).then(|| target.allocated(now))
            })
        }
    }

    impl FakeProbes {
        /// Probes attached to `target` from now, as the duty cycle starts them.
        fn attached_to(target: &Arc<FakeTarget>) -> Arc<Mutex<Self>> {
            Arc::new(Mutex::new(Self {
                since: Some(Instant::now()),
                hits: 0.0,
                switches: 0,
                target: target.clone(),
            }))
        }

        fn hits_until(&self, at: Instant) -> f64 {
            let at = self.target.alive_at(at);
            self.since
                .map_or(0.0, |since| at.saturating_duration_since(since).as_secs_f64() * RATE)
        }

        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive count, far below 2^53"
        )]
        fn hits(&self) -> u64 {
            (self.hits + self.hits_until(Instant::now())) as u64
        }
    }

    impl Switch for FakeProbes {
        fn attach(&mut self) -> anyhow::Result<()> {
            self.since = Some(Instant::now());
            self.switches += 1;
            Ok(())
        }

        fn detach(&mut self) {
            self.hits += self.hits_until(Instant::now());
            self.since = None;
            self.switches += 1;
            let grace_period = Duration::from_millis(100);
            if self
                .target
                .exit_while_detaching
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                *self.target.exited.lock().unwrap() = Some(Instant::now() + grace_period * 9 / 10);
            }
            // As the real probes: paused at once, released after an RCU grace period.
            std::thread::sleep(grace_period);
        }
    }

    /// Starts a duty cycle with a budget of 10,000 hits a second over fake probes on `target`
    /// (scaled by its count when `by_count`); returns the probes and the cycle once its
    /// fraction has settled (at 10%) and a first interval has ended.
    fn settled_duty_cycle(target: &Arc<FakeTarget>, by_count: bool) -> (Arc<Mutex<FakeProbes>>, DutyCycle) {
        let probes = FakeProbes::attached_to(target);
        let reader = probes.clone();
        let duty = DutyCycle::start(
            probes.clone(),
            move || reader.lock().unwrap().hits(),
            by_count.then(|| target.reader()),
            Box::new(|| None),
            DutyCycleOptions {
                budget: 10_000,
                period: PERIOD,
            },
        )
        .unwrap();
        // The first second is attached whole: its rate sets the fraction.
        std::thread::sleep(PERIOD + PERIOD / 2);
        assert!((duty.fraction() - 0.1).abs() < 0.02, "{}", duty.fraction());
        let _ = duty.end_interval();
        (probes, duty)
    }

    #[test]
    fn cycles_within_the_budget_and_scales_by_the_time_attached() {
        let (probes, mut duty) = settled_duty_cycle(&FakeTarget::new(), false);
        let hits_before = probes.lock().unwrap().hits();
        std::thread::sleep(PERIOD * 3);
        let interval = duty.end_interval();
        let scale = duty.scale(interval, 0);
        assert!(scale.previous.is_none(), "{scale:?}");
        let scale = scale.counts;
        let hits = probes.lock().unwrap().hits() - hits_before;
        // Estimated hits over the 3 s: the target's true 300,000.
        #[expect(clippy::cast_precision_loss, reason = "far below 2^53")]
        let estimate = hits as f64 * scale;
        assert!(
            (estimate / (RATE * 3.0) - 1.0).abs() < 0.15,
            "scale {scale}, hits {hits}"
        );
        assert!((scale - 10.0).abs() < 2.0, "{scale}");
        drop(duty);
        assert!(probes.lock().unwrap().switches >= 4);
    }

    /// With the target's own count, the estimate is what the target allocated in each
    /// interval, up to its exit: the count's last reading is recent, although the cycle's
    /// thread was detaching (~0.1 s) when the target exited.
    #[test]
    #[expect(clippy::cast_precision_loss, reason = "byte counts, far below 2^53")]
    fn scales_by_the_targets_count_up_to_its_exit() {
        let target = FakeTarget::new();
        let (probes, mut duty) = settled_duty_cycle(&target, true);
        let hits = || probes.lock().unwrap().hits();
        for exits in [false, true] {
            let from = Instant::now();
            let hits_before = hits();
            if exits {
                // A second at least before the exit, so that the interval is long.
                std::thread::sleep(PERIOD);
                target
                    .exit_while_detaching
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let deadline = Instant::now() + PERIOD * 3;
                while target
                    .exited
                    .lock()
                    .unwrap()
                    .is_none_or(|at| Instant::now() < at + HEAP_POLL * 4)
                {
                    assert!(Instant::now() < deadline, "the cycle never detached");
                    std::thread::sleep(HEAP_POLL);
                }
            } else {
                std::thread::sleep(PERIOD * 2);
            }
            let interval = duty.end_interval();
            let to = Instant::now();
            let counted = (hits() - hits_before) * BYTES_PER_HIT;
            let scale = duty.scale(interval, counted);
            assert!(scale.previous.is_none(), "{scale:?}");
            let truth = (target.allocated(to) - target.allocated(from)) as f64;
            let estimate = counted as f64 * scale.counts;
            // The last reading comes at most `HEAP_POLL` before the exit, 2.5% of the second
            // the interval lasts at least (with no reading while detaching, it would be 90 ms).
            assert!(
                (estimate / truth - 1.0).abs() < 0.04,
                "{estimate} for {truth} ({scale:?}, exit: {exits})"
            );
        }
    }

    fn attached_at(start: Instant, heap: Option<u64>) -> Attached {
        Attached {
            since: Some(start),
            wall: Duration::ZERO,
            detached: false,
            taken: start,
            fraction: 1.0,
            heap_at_taken: heap,
            heap_latest: heap,
        }
    }

    /// The interval from `a`'s last end to `at`, scaled for `counted` bytes.
    fn end_and_scale(
        a: &mut Attached,
        at: Instant,
        heap: Option<u64>,
        counted: u64,
        previous: &mut Option<Seen>,
        slowdown: f64,
    ) -> Scale {
        a.end_interval(at, heap).scale(counted, previous, || slowdown)
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "exact ratios of small integers")]
    fn scales_by_the_share_of_the_targets_allocations_the_probes_counted() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = attached_at(t0, Some(1_000));
        let mut previous = None;
        // Attached 100 ms, then detached; the target allocated 2,000 bytes in the second, of
        // which the probes counted 100. Time (10%) would say 10; the allocations say 20.
        a.close_stretch(ms(100), false);
        let scale = end_and_scale(&mut a, ms(1_000), Some(3_000), 100, &mut previous, 1.0);
        assert_eq!(
            scale,
            Scale {
                counts: 20.0,
                previous: None
            }
        );
        // Two stretches, the interval ending attached.
        a.open_stretch(ms(1_500));
        a.close_stretch(ms(1_600), false);
        a.open_stretch(ms(1_900));
        let scale = end_and_scale(&mut a, ms(2_000), Some(4_000), 200, &mut previous, 1.0);
        assert_eq!(
            scale,
            Scale {
                counts: 5.0,
                previous: None
            }
        );
        // An interval whose 200 bytes counted stand for 2,000; the next one is never attached
        // (say the target exited while detached): they stand for its 3,000 too.
        a.close_stretch(ms(2_100), false);
        assert_eq!(
            end_and_scale(&mut a, ms(3_000), Some(6_000), 200, &mut previous, 1.0).counts,
            10.0
        );
        assert_eq!(
            end_and_scale(&mut a, ms(4_000), Some(9_000), 0, &mut previous, 1.0),
            Scale {
                counts: 1.0,
                previous: Some(15.0)
            }
        );
        // Attached for a moment in which the probes counted nothing: that saw nothing either
        // (time would make it a factor of 1,000), and the 200 bytes stand for its 1,000.
        a.open_stretch(ms(4_000));
        a.close_stretch(ms(4_001), false);
        assert_eq!(
            end_and_scale(&mut a, ms(5_000), Some(10_000), 0, &mut previous, 1.0),
            Scale {
                counts: 1.0,
                previous: Some(5.0)
            }
        );
        // Attached from the start of an interval: not throughout, it began detached ...
        a.open_stretch(ms(5_000));
        assert_eq!(
            end_and_scale(&mut a, ms(6_000), Some(11_000), 500, &mut previous, 1.0),
            Scale {
                counts: 2.0,
                previous: None
            }
        );
        // ... but the next is: its counts are complete whatever they add up to (the target's
        // cached spans hold what it allocated since their last refill) ...
        assert_eq!(
            end_and_scale(&mut a, ms(7_000), Some(12_000), 900, &mut previous, 1.0),
            Scale::ONE
        );
        // ... and when they are none, nothing stands in for them.
        assert_eq!(
            end_and_scale(&mut a, ms(8_000), Some(12_100), 0, &mut previous, 1.0),
            Scale {
                counts: 1.0,
                previous: Some(0.0)
            }
        );
    }

    #[test]
    fn scales_by_time_without_the_targets_count() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut a = attached_at(t0, None);
        let mut previous = None;
        a.close_stretch(ms(100), false);
        // 10% of the time attached, the target running 1.5 times as fast detached.
        let scale = end_and_scale(&mut a, ms(1_000), None, 100, &mut previous, 1.5);
        assert!((scale.counts - 14.5).abs() < 1e-9, "{scale:?}");
        // No attached time: the previous 100 ms stand for this second, at that pace.
        let scale = end_and_scale(&mut a, ms(2_000), None, 0, &mut previous, 1.5);
        assert!((scale.previous.unwrap() - 15.0).abs() < 1e-9, "{scale:?}");
        // A count that cannot be read at the end (and never was) also falls back to time.
        let mut a = attached_at(t0, Some(0));
        a.heap_latest = None;
        a.close_stretch(ms(100), false);
        let scale = end_and_scale(&mut a, ms(1_000), None, 100, &mut previous, 1.0);
        assert!((scale.counts - 10.0).abs() < 1e-9, "{scale:?}");
    }

    #[test]
    fn budget_is_per_second_of_the_targets_cpu_time() {
        let target = FakeTarget::new();
        let probes = FakeProbes::attached_to(&target);
        let reader = probes.clone();
        let born = Instant::now();
        let quarter_busy = Box::new(move || {
            #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a few ticks")]
            let ticks = (born.elapsed().as_secs_f64() * 25.0) as u64;
            Some(CpuTicks {
                user: ticks,
                total: ticks,
            })
        });
        let duty = DutyCycle::start(
            probes,
            move || reader.lock().unwrap().hits(),
            None,
            quarter_busy,
            DutyCycleOptions {
                budget: 40_000,
                period: PERIOD,
            },
        )
        .unwrap();
        std::thread::sleep(PERIOD + PERIOD / 2);
        // 100,000 hits a second over 0.25 CPU-seconds a second is 400,000 per CPU-second: 10%
        // of each cycle (per wall second it would have been 40%).
        assert!((duty.fraction() - 0.1).abs() < 0.02, "{}", duty.fraction());
    }
}
