//! Collecting from attached probes: drain the kernel's maps, weigh what they counted into
//! estimated objects, add it to a bounded store, and build a [`Profile`] from the store.
//! `attach`, `run`, `serve`, `explain --pid` and the benchmark's helpers all collect this one
//! way.

use std::collections::HashMap;
use std::time::Duration;

use tracer_common::AllocKey;

use crate::memprofile::{self, MemProfileRate, PreparedProbes, RateOverride};
use crate::mode::go_sampler_scale;
use crate::probes::{InuseTracking, Probes};
use crate::profile::{self, Grouping, Inuse, Profile};
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
     runtime has not freed yet (swept), scaled as pprof scales them; objects allocated before attach are \
     not included";

/// Attached probes and what has been collected from them.
#[derive(Debug)]
pub struct Collector {
    probes: Probes,
    store: Store,
    /// The target's `runtime.MemProfileRate`, for go-sampler mode.
    rate: Option<MemProfileRate>,
    /// The last rate read that was not 0.
    last_rate: u64,
    /// `--set-mem-profile-rate`'s change, put back when the collector is dropped (after the
    /// probes are gone: fields drop in order).
    _rate_override: Option<RateOverride>,
    grouping: Grouping,
    /// Significant figures of the size histograms.
    size_sigfigs: u8,
}

impl Collector {
    /// Collects from `prepared` into `store`; profiles group rows by `grouping` and keep size
    /// quantiles to `size_sigfigs` significant figures.
    #[must_use]
    pub fn new(prepared: PreparedProbes, store: Store, grouping: Grouping, size_sigfigs: u8) -> Self {
        Self {
            probes: prepared.probes,
            store,
            rate: prepared.rate,
            last_rate: memprofile::DEFAULT_RATE,
            _rate_override: prepared.rate_override,
            grouping,
            size_sigfigs,
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
        let weighing = memprofile::weighing(
            self.probes.mode,
            self.probes.sampler_rate(),
            self.rate.as_ref(),
            &mut self.last_rate,
        );
        self.store.collect(&mut self.probes, weighing)
    }

    /// Drains, then builds a profile of everything collected so far, with the in-use heap
    /// now.
    pub fn profile(&mut self, symbols: &mut ProcessSymbols<'_>) -> anyhow::Result<Profile> {
        self.drain()?;
        let stats = self.probes.stats()?;
        let (alive, inuse) = self.inuse();
        let mut profile = profile::build(
            self.probes.mode,
            stats,
            &self.store.counts(),
            &alive,
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

    /// The estimated objects alive now per stored key, and what in-use covers.
    ///
    /// Each tracked sample stands for `1/(1-exp(-size/rate))` objects at the rate it was
    /// sampled at, as its allocation did: Go's heap profile scales in-use the same way
    /// (`scaleHeapSample` in `src/runtime/pprof/protomem.go`).
    fn inuse(&mut self) -> (Vec<(AllocKey, u64)>, Inuse) {
        let why_not = match &self.probes.inuse {
            InuseTracking::On => None,
            InuseTracking::Off(why) => Some(why.clone()),
        };
        let live = self.probes.live_objects();
        let (Some(live), None) = (live, why_not.clone()) else {
            let note = why_not.unwrap_or_else(|| "in-use heap not tracked".to_owned());
            return (
                Vec::new(),
                Inuse {
                    note,
                    ..Inuse::default()
                },
            );
        };
        let mut objects: HashMap<AllocKey, f64> = HashMap::new();
        for object in &live {
            let key = self.store.resolve(&mut self.probes, object.key);
            let rate = if object.rate > 0 { object.rate } else { self.last_rate };
            *objects.entry(key).or_insert(0.0) += go_sampler_scale(object.key.size, rate);
        }
        let alive = objects
            .into_iter()
            .filter_map(|(key, n)| {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "a positive estimate, far below 2^64"
                )]
                let n = n.round() as u64;
                (n > 0).then_some((key, n))
            })
            .collect();
        let inuse = Inuse {
            available: true,
            note: INUSE_COVERAGE.to_owned(),
            tracked_samples: live.len() as u64,
            probes: self.probes.inuse_stats().map(Into::into),
            ..Inuse::default()
        };
        (alive, inuse)
    }
}
