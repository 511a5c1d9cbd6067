//! Collecting from attached probes: drain the kernel's maps, weigh what they counted into
//! estimated objects, add it to a bounded store, and build a [`Profile`] from the store.
//! `attach`, `run`, `serve`, `explain --pid` and the benchmark's helpers all collect this one
//! way.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use tracer_common::{AllocKey, LiveObject};

use crate::memprofile::{self, MemProfileRate, PreparedProbes, RateOverride};
use crate::mode::go_sampler_scale;
use crate::mprof::RecordsAccess;
use crate::probes::{InuseTracking, Probes};
use crate::profile::{self, Grouping, Inuse, InuseInput, Profile, UntrackedInuse};
use crate::store::Store;
use crate::tracee::ProcessSymbols;

/// How often the probes' maps are drained between reports. The kernel's stack map holds
/// `STACKS_MAP_ENTRIES` stacks and is emptied only from here (`Store::collect`); a program
/// with many distinct stacks filled it within one 2-second interval (Hugo 0.168 building a
/// site under `GOGC=1`: 48,179 of 1.43 million hits, 3.4%, were counted without their
/// stack), and those allocations' callsite was only the return address (`runtime.makeslice`).
/// Duty-cycled modes drain once per interval, which their scaling is measured over
/// ([`Collector::drains_between_reports`]).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// What in-use figures cover, for every output.
pub const INUSE_COVERAGE: &str = "in-use: objects Go's heap profiler sampled since gotrace attached and the \
     runtime has not freed yet (swept), scaled as pprof scales them";

/// What in-use figures cover when the runtime's own records add what was sampled before attach.
pub const INUSE_WITH_RECORDS: &str = "in-use: objects Go's heap profiler sampled and the runtime has not freed \
     yet (swept), scaled as pprof scales them: since attach as gotrace tracked them, before attach from the \
     runtime's own records (runtime.mbuckets; stacks only, types unknown)";

/// Attached probes and what has been collected from them.
#[derive(Debug)]
pub struct Collector {
    probes: Probes,
    store: Store,
    /// The target's `runtime.MemProfileRate`, for go-sampler mode.
    rate: Option<MemProfileRate>,
    /// The last rate read that was not 0.
    last_rate: u64,
    /// The runtime's records of what was sampled before attach (go-sampler).
    records: RecordsAccess,
    /// `--set-mem-profile-rate`'s change, put back when the collector is dropped (after the
    /// probes are gone: fields drop in order).
    _rate_override: Option<RateOverride>,
    grouping: Grouping,
    /// Significant figures of the size histograms.
    size_sigfigs: u8,
    /// The probes' hit count at the last drain.
    hits_at_drain: u64,
}

/// Between reports, the maps are drained once the probes have fired this often since the last
/// drain: each hit adds at most one key to `COUNTS` and one stack to `STACKS`, so neither can
/// fill before then (an eighth of the smaller map), while a quiet target (go-sampler's few
/// hundred samples a second) is not drained four times a second for nothing. Iterating a
/// BPF hash map walks all of its buckets (`htab_map_get_next_key`), about a millisecond for
/// `COUNTS`: twenty targets drained every [`DRAIN_INTERVAL`] cost a node agent 10% of a core.
const DRAIN_AFTER_HITS: u64 = tracer_common::STACKS_MAP_ENTRIES as u64 / 8;

impl Collector {
    /// Collects from `prepared` into `store`; profiles group rows by `grouping` and keep size
    /// quantiles to `size_sigfigs` significant figures.
    #[must_use]
    pub fn new(prepared: PreparedProbes, store: Store, grouping: Grouping, size_sigfigs: u8) -> Self {
        Self {
            probes: prepared.probes,
            store,
            records: prepared.records,
            rate: prepared.rate,
            last_rate: memprofile::DEFAULT_RATE,
            _rate_override: prepared.rate_override,
            grouping,
            size_sigfigs,
            hits_at_drain: 0,
        }
    }

    /// The attached probes.
    #[must_use]
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// What has been collected.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the maps should be drained every [`DRAIN_INTERVAL`] between reports: not while
    /// a duty cycle runs, whose scaling is measured over the report's whole interval.
    #[must_use]
    pub fn drains_between_reports(&self) -> bool {
        !self.probes.duty_cycled()
    }

    /// Moves what the probes counted into the store, and empties the kernel's stack map once
    /// the store holds a good part of it (see [`Store::collect`]).
    pub fn drain(&mut self) -> anyhow::Result<()> {
        self.hits_at_drain = self.probes.stats()?.hits;
        let weighing = memprofile::weighing(
            self.probes.mode,
            self.probes.sampler_rate(),
            self.rate.as_ref(),
            &mut self.last_rate,
        );
        self.store.collect(&mut self.probes, weighing)
    }

    /// Drains if the probes fired [`DRAIN_AFTER_HITS`] times since the last drain: what to call
    /// every [`DRAIN_INTERVAL`] between reports.
    pub fn drain_if_filling(&mut self) -> anyhow::Result<()> {
        if self.probes.stats()?.hits.saturating_sub(self.hits_at_drain) >= DRAIN_AFTER_HITS {
            self.drain()?;
        }
        Ok(())
    }

    /// Drains, then builds a profile of everything collected so far, with the in-use heap
    /// now.
    pub fn profile(&mut self, symbols: &mut ProcessSymbols<'_>) -> anyhow::Result<Profile> {
        self.drain()?;
        let stats = self.probes.stats()?;
        let (alive, untracked, inuse) = self.inuse(symbols);
        let mut profile = profile::build(
            self.probes.mode,
            stats,
            &self.store.counts(),
            &InuseInput {
                by_key: &alive,
                untracked: &untracked,
            },
            |id| self.store.stack(id),
            symbols,
            self.size_sigfigs,
            self.grouping,
        );
        profile.inuse = Inuse {
            objects: profile.inuse.objects,
            bytes: profile.inuse.bytes,
            ..inuse
        };
        Ok(profile)
    }

    /// The estimated objects alive now per stored key, those alive but not tracked (from the
    /// runtime's own records), and what in-use covers.
    ///
    /// Each tracked sample stands for `1/(1-exp(-size/rate))` objects at the rate it was
    /// sampled at, as its allocation did: Go's heap profile scales in-use the same way
    /// (`scaleHeapSample` in `src/runtime/pprof/protomem.go`).
    fn inuse(&mut self, symbols: &mut ProcessSymbols<'_>) -> (Vec<(AllocKey, u64, u64)>, Vec<UntrackedInuse>, Inuse) {
        let live = match &self.probes.inuse {
            InuseTracking::On => self
                .probes
                .live_objects()
                .ok_or_else(|| "in-use heap not tracked".to_owned()),
            InuseTracking::Off(why) => Err(why.clone()),
        };
        let live = match live {
            Ok(live) => live,
            Err(note) => {
                return (
                    Vec::new(),
                    Vec::new(),
                    Inuse {
                        note,
                        ..Inuse::default()
                    },
                );
            }
        };
        // Objects sampled before the mark termination two cycles back have outlived a complete
        // sweep if they are still here: a dead one allocated before cycle n-1 began is freed by
        // that cycle's sweep, which ends before cycle n begins (`finishsweep_m`, mgc.go).
        let (gc_cycles, gc_times) = self.probes.gc_cycles().unwrap_or_default();
        let settled_before = gc_times.len().checked_sub(3).map_or(0, |i| gc_times[i]);
        let mut objects: HashMap<AllocKey, (f64, f64)> = HashMap::new();
        for object in &live {
            let key = self.store.resolve(&mut self.probes, object.key);
            let rate = if object.rate > 0 { object.rate } else { self.last_rate };
            let n = go_sampler_scale(object.key.size, rate);
            let entry = objects.entry(key).or_insert((0.0, 0.0));
            entry.0 += n;
            if object.sampled_ns < settled_before {
                entry.1 += n;
            }
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a positive estimate, far below 2^64"
        )]
        let whole = |n: f64| n.round() as u64;
        let alive = objects
            .into_iter()
            .map(|(key, (n, settled))| (key, whole(n), whole(settled)))
            .filter(|&(_, n, _)| n > 0)
            .collect();
        let (untracked, note) = self.before_attach(&live, symbols);
        let inuse = Inuse {
            available: true,
            note,
            tracked_samples: live.len() as u64,
            gc_cycles,
            probes: self.probes.inuse_stats().map(Into::into),
            ..Inuse::default()
        };
        (alive, untracked, inuse)
    }

    /// The objects alive now that the probes do not track: per bucket of the runtime's own
    /// records, its sampled objects alive minus those tracked (sampled before attach), and
    /// what in-use covers.
    fn before_attach(&self, live: &[LiveObject], symbols: &mut ProcessSymbols<'_>) -> (Vec<UntrackedInuse>, String) {
        let records = match &self.records {
            RecordsAccess::Readable(records) => records,
            RecordsAccess::Unknown(why) => return (Vec::new(), format!("{INUSE_COVERAGE}; {why}")),
        };
        let buckets = match records.read() {
            Ok(buckets) => buckets,
            Err(e) => {
                return (
                    Vec::new(),
                    format!(
                        "{INUSE_COVERAGE}; objects allocated before attach are not included (cannot read the runtime's records: {e})"
                    ),
                );
            }
        };
        let mut tracked: HashMap<u64, u64> = HashMap::new();
        for object in live {
            *tracked.entry(object.bucket).or_insert(0) += 1;
        }
        let mut untracked = Vec::new();
        for bucket in &buckets {
            let residual = bucket
                .live
                .saturating_sub(tracked.get(&bucket.address).copied().unwrap_or(0));
            if residual == 0 {
                continue;
            }
            #[expect(clippy::cast_precision_loss, reason = "sampled objects, far below 2^53")]
            let estimate = residual as f64 * go_sampler_scale(bucket.size, self.last_rate);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a positive estimate, far below 2^64"
            )]
            let objects = estimate.round() as u64;
            untracked.push(UntrackedInuse {
                locations: profile::logical_frames(&bucket.stack, symbols),
                size: bucket.size,
                objects,
            });
        }
        let mut note = INUSE_WITH_RECORDS.to_owned();
        if buckets.len() >= crate::mprof::MAX_BUCKETS {
            let _ = write!(
                note,
                "; the runtime's records were read up to {} buckets, the rest left out",
                crate::mprof::MAX_BUCKETS
            );
        }
        (untracked, note)
    }
}
