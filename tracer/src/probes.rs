//! The eBPF side as user space sees it: load the probes, configure them for one process,
//! attach them to its allocation entry points, and read what they counted.

use std::num::NonZeroU32;
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope};
use aya::{Ebpf, EbpfLoader};
use gobin::procmaps::AddressMap;
use gobin::sizeclasses::{MAX_SMALL_SIZE, large_object_bytes};
use gobin::{ArgRole, GoBinary, ProbePoint, ProbeRole};
use tracer_common::{
    ALLOC_COUNT_PROGRAM, AddressRange, AllocKey, CONFIG_MAP, COUNTS_ALT_MAP, COUNTS_MAP, EMPTY_PROGRAM, EPOCH_MAP,
    FLAG_SKIP_ZERO_SIZE, GC_TIMES_MAP, GC_TIMES_SLOTS, GO_SAMPLE_PROGRAM, INUSE_BUCKET_PROGRAM, INUSE_FREE_PROGRAM,
    INUSE_GC_PROGRAM, INUSE_STATS_MAP, InuseStats, LARGE_ALLOC_PROGRAM, LIVE_MAP, LiveObject, MAX_NESTED_RANGES,
    MAX_STACK_DEPTH, PAUSED_MAP, ProbeConfig, ProbeStats, SAMPLER_RATE_MAP, SPAN_REFILL_PROGRAM, SPAN_RELEASE_PROGRAM,
    STACKS_MAP, STATS_MAP, UserStack,
};

use crate::duty::{DutyCycle, DutyCycleOptions, HeapReader, Scale, Switch};
use crate::mode::{Mode, Weighing};
use crate::remote::HeapCounter;
use crate::uprobe_multi::MultiPrograms;

/// The process probes attach to: its Go binary (read from `binary_path`), its pid, and its
/// address space.
#[derive(Debug)]
pub struct AttachTarget<'b, 'd> {
    pub binary: &'b GoBinary<'d>,
    pub binary_path: &'b Path,
    pub pid: u32,
    pub addresses: &'b AddressMap,
}

/// How the probes are set up, besides their mode.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Frames walked per hit.
    pub stack_depth: usize,
    /// Span mode's duty cycle: the probe hits per second of the target's CPU time, on average,
    /// beyond which its probes are attached for only part of each cycle, and the cycle's length
    /// ([`crate::duty`]); `None`: always attached.
    pub span_duty_cycle: Option<DutyCycleOptions>,
    /// Have the kernel time every run of every BPF program while the probes are attached
    /// (`BPF_ENABLE_STATS`), so that [`Probes::run_time`] can say what the probes cost.
    pub time_probes: bool,
    /// Track go-sampler's samples until the runtime frees them (in-use heap), where the
    /// binary allows it.
    pub inuse: bool,
}

/// Whether the probes track in-use heap, and why not when they do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InuseTracking {
    /// Go-sampler's samples are followed until freed.
    On,
    /// Not tracked, for this reason (one sentence, for every output).
    Off(String),
}

/// The in-use maps, when tracked.
struct InuseMaps {
    live: BpfHashMap<MapData, u64, LiveObject>,
    stats: PerCpuArray<MapData, InuseStats>,
    gc_times: Array<MapData, u64>,
}

impl InuseMaps {
    /// Takes the maps out of the object when in-use heap is tracked.
    fn take(ebpf: &mut Ebpf, tracking: &InuseTracking) -> anyhow::Result<Option<Self>> {
        Ok(match tracking {
            InuseTracking::On => Some(Self {
                live: BpfHashMap::try_from(take(ebpf, LIVE_MAP)?)?,
                stats: PerCpuArray::try_from(take(ebpf, INUSE_STATS_MAP)?)?,
                gc_times: Array::try_from(take(ebpf, GC_TIMES_MAP)?)?,
            }),
            InuseTracking::Off(_) => None,
        })
    }
}

/// How long the probes' programs ran in the target, as the kernel timed them: from the
/// program's start to its end, without the trap that brought the thread into the kernel.
/// Only while something keeps the kernel's BPF run-time statistics on (`--time-probes`, or
/// the `kernel.bpf_stats_enabled` sysctl): the kernel reads the clock around a run then, and
/// only then (`__bpf_prog_run` in `include/linux/filter.h`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeRunTime {
    /// Runs timed.
    pub runs: u64,
    /// Their summed run time.
    pub nanoseconds: u64,
}

impl ProbeRunTime {
    /// Both sums, of these runs and `other`.
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            runs: self.runs.saturating_add(other.runs),
            nanoseconds: self.nanoseconds.saturating_add(other.nanoseconds),
        }
    }
}

/// Probes attached to one process.
pub struct Probes {
    /// Span mode's duty cycle, when it has one. Stopped before the programs go.
    duty: Option<DutyCycle>,
    /// Owns the programs and their links: dropping it detaches everything. The kernel also
    /// detaches when this process dies, however it dies (the links are file descriptors).
    attachments: Arc<Mutex<Attachments>>,
    /// Keeps the kernel's BPF run-time statistics on while open (`--time-probes`).
    _run_time_statistics: Option<OwnedFd>,
    stats: PerCpuArray<MapData, ProbeStats>,
    /// `COUNTS` and `COUNTS_ALT`, by epoch.
    counts: [PerCpuHashMap<MapData, AllocKey, u64>; 2],
    epoch_map: Array<MapData, u32>,
    /// `runtime.MemProfileRate` at the latest go-sampler sample (0 before the first).
    sampler_rate: Array<MapData, u64>,
    /// The epoch the probes write to now.
    epoch: u32,
    stacks: BpfHashMap<MapData, u64, UserStack>,
    /// The in-use maps, when [`Self::inuse`] is on.
    inuse_maps: Option<InuseMaps>,
    /// Whether in-use heap is tracked.
    pub inuse: InuseTracking,
    /// What the probes observe (never [`Mode::Auto`]).
    pub mode: Mode,
    /// How many uprobes were attached.
    pub attached: usize,
    /// Whether they went through `uprobe_multi` links (span mode's duty cycle on Linux 6.6+,
    /// see [`crate::uprobe_multi`]) rather than one perf event each.
    pub through_multi_links: bool,
    /// How long loading and attaching took.
    pub attach_time: Duration,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("mode", &self.mode)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// How long a drain waits after flipping the epoch before it reads the old map: a probe that
/// read the old epoch just before the flip finishes its update within microseconds (uprobe
/// programs run to completion with migration disabled); this leaves ample margin.
const EPOCH_SETTLE: Duration = Duration::from_millis(2);

impl Probes {
    /// Loads the probes of `mode` and attaches them to `target`'s binary, in its process only.
    /// `mem_profile_rate_address` is where the process keeps `runtime.MemProfileRate`
    /// (go-sampler reads it per sample).
    pub fn attach(
        target: &AttachTarget<'_, '_>,
        mode: Mode,
        options: ProbeOptions,
        mem_profile_rate_address: Option<u64>,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        // Before the programs run: a run is timed only when the statistics were on at its start.
        let run_time_statistics = options
            .time_probes
            .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
            .transpose()
            .context(
                "cannot have the kernel time the probes (--time-probes needs Linux 5.8 or later and CAP_SYS_ADMIN)",
            )?;
        let AttachTarget {
            binary,
            binary_path,
            pid,
            addresses,
        } = *target;
        let points = binary
            .probe_points()
            .context("cannot find the allocation entry points")?;
        let mut plan = plan(binary, &points, mode)?;
        let mut config = probe_config(binary, &points, addresses, mode)?;
        let inuse = inuse_tracking(binary, &points, mode, options.inuse, &mut config, &mut plan);
        config.max_stack_depth = u32::try_from(options.stack_depth.clamp(1, MAX_STACK_DEPTH)).unwrap_or(0);
        config.mem_profile_rate_address = mem_profile_rate_address.unwrap_or(0);

        let mut ebpf = load_object()?;
        let duty_cycle = options.span_duty_cycle.filter(|_| mode == Mode::Span);
        // Before any map is taken out of `ebpf`.
        let multi = duty_cycle.and_then(|_| multi_programs(&ebpf, &plan));
        let mut config_map: Array<_, ProbeConfig> = Array::try_from(
            ebpf.map_mut(CONFIG_MAP)
                .with_context(|| format!("the eBPF object has no map {CONFIG_MAP}"))?,
        )?;
        config_map
            .set(0, config, 0)
            .context("cannot write the probe configuration")?;
        let mut attachments = Attachments {
            scope: one_process(pid)?,
            binary_path: binary_path.to_owned(),
            plan: plan
                .iter()
                .map(|(program, points)| {
                    let places = points.iter().map(|p| (p.function.clone(), p.file_offset)).collect();
                    (*program, places)
                })
                .collect(),
            links: Vec::new(),
            multi_links: Vec::new(),
            perf_programs_loaded: false,
            pid,
            paused: Array::try_from(take(&mut ebpf, PAUSED_MAP)?)?,
            ebpf,
            multi,
        };
        attachments.attach()?;
        let attached = attachments.attached();
        let through_multi_links = attachments.through_multi_links();
        let mut ebpf = attachments.ebpf;
        // The duty cycle's thread reads the hits through a handle of its own.
        let stats_for_duty = duty_cycle.map(|_| reopen_per_cpu_array(&ebpf, STATS_MAP)).transpose()?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?)?;
        let counts = [
            PerCpuHashMap::try_from(take(&mut ebpf, COUNTS_MAP)?)?,
            PerCpuHashMap::try_from(take(&mut ebpf, COUNTS_ALT_MAP)?)?,
        ];
        let epoch_map = Array::try_from(take(&mut ebpf, EPOCH_MAP)?)?;
        let sampler_rate = Array::try_from(take(&mut ebpf, SAMPLER_RATE_MAP)?)?;
        let stacks = BpfHashMap::try_from(take(&mut ebpf, STACKS_MAP)?)?;
        let inuse_maps = InuseMaps::take(&mut ebpf, &inuse)?;
        attachments.ebpf = ebpf;
        let attachments = Arc::new(Mutex::new(attachments));
        let duty = match (duty_cycle, stats_for_duty) {
            (Some(duty_cycle), Some(stats_for_duty)) => {
                let stats: PerCpuArray<MapData, ProbeStats> = PerCpuArray::try_from(Map::PerCpuArray(stats_for_duty))?;
                let hits = move || stats.get(&0, 0).map_or(0, |cpus| total_stats(cpus.iter()).hits);
                let switch: Arc<Mutex<dyn Switch>> = attachments.clone();
                let clock = Box::new(move || crate::process::cpu_ticks(pid));
                let heap = HeapCounter::locate(binary, pid, addresses).map(|counter| {
                    let read: HeapReader = Arc::new(move || counter.allocated_bytes());
                    read
                });
                Some(
                    DutyCycle::start(switch, hits, heap, clock, duty_cycle)
                        .context("cannot start span mode's duty cycle")?,
                )
            }
            _ => None,
        };
        Ok(Self {
            duty,
            attachments,
            _run_time_statistics: run_time_statistics,
            stats,
            counts,
            epoch_map,
            sampler_rate,
            epoch: 0,
            stacks,
            inuse_maps,
            inuse,
            mode,
            attached,
            through_multi_links,
            attach_time: started.elapsed(),
        })
    }

    /// What the probes did so far, summed over CPUs (cumulative).
    pub fn stats(&self) -> anyhow::Result<ProbeStats> {
        Ok(total_stats(
            self.stats
                .get(&0, 0)
                .context("cannot read the probe statistics")?
                .iter(),
        ))
    }

    /// How long the probes ran so far, when the kernel timed them; `None` when it timed
    /// no run (its statistics were off).
    pub fn run_time(&self) -> Option<ProbeRunTime> {
        let attachments = self
            .attachments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = attachments
            .ebpf
            .programs()
            // A program of the object that this mode did not load has no information.
            .filter_map(|(_, program)| program.info().ok())
            .fold(ProbeRunTime::default(), |sum, info| {
                sum.plus(ProbeRunTime {
                    runs: info.run_count(),
                    nanoseconds: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                })
            });
        let total = match attachments.multi.as_ref().and_then(|multi| multi.run_time().ok()) {
            Some((runs, nanoseconds)) => total.plus(ProbeRunTime { runs, nanoseconds }),
            None => total,
        };
        (total.runs > 0).then_some(total)
    }

    /// The fraction of each duty cycle span mode's probes are attached now: below 1 while the
    /// cycle keeps their hits within the budget.
    pub fn attached_fraction(&self) -> f64 {
        self.duty.as_ref().map_or(1.0, DutyCycle::fraction)
    }

    /// Whether a duty cycle may detach the probes (span mode with a budget).
    #[must_use]
    pub fn duty_cycled(&self) -> bool {
        self.duty.is_some()
    }

    /// The target's `runtime.MemProfileRate` when go-sampler's probe last took a sample; `None`
    /// before the first sample, or when the probe cannot read it (no symbol table).
    #[must_use]
    pub fn sampler_rate(&self) -> Option<u64> {
        self.sampler_rate.get(&0, 0).ok().filter(|&rate| rate > 0)
    }

    /// Takes what the probes counted since the last drain, summed over CPUs, and empties the
    /// kernel's map of it: the probes switch to the other counts map first, so nothing they
    /// add is lost, and the kernel side never holds more than one interval's keys. Also
    /// returns how the counts scale to the whole interval: above 1 when a duty cycle detached
    /// the probes for part of it (see [`DutyCycle::scale`]).
    pub fn drain(&mut self) -> anyhow::Result<(Vec<(AllocKey, u64)>, Scale)> {
        let old = self.epoch;
        let new = 1 - old;
        self.epoch_map
            .set(0, new, 0)
            .context("cannot switch the probes' counts map")?;
        self.epoch = new;
        // Right after the switch, as the counts it goes with.
        let interval = self.duty.as_ref().map(DutyCycle::end_interval);
        std::thread::sleep(EPOCH_SETTLE);
        let map = &mut self.counts[old as usize];
        // Keys first: deleting while the kernel iterates would restart the walk.
        let keys: Vec<AllocKey> = map.keys().filter_map(Result::ok).collect();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            // A failed read is not worth aborting the trace for: it shows up as missing counts.
            if let Ok(per_cpu) = map.get(&key, 0) {
                let total = per_cpu.iter().fold(0u64, |acc, n| acc.wrapping_add(*n));
                if total > 0 {
                    out.push((key, total));
                }
            }
            let _ = map.remove(&key);
        }
        let scale = match (self.duty.as_mut(), interval) {
            (Some(duty), Some(interval)) => duty.scale(interval, heap_bytes_counted(&out)),
            _ => Scale::ONE,
        };
        Ok((out, scale))
    }

    /// The sampled objects alive now, with their keys as the probes recorded them; `None`
    /// when in-use heap is not tracked. Read one entry at a time while the probes run: an
    /// object freed or sampled during the read may be missed or seen, as at any instant.
    #[must_use]
    pub fn live_objects(&self) -> Option<Vec<LiveObject>> {
        let maps = self.inuse_maps.as_ref()?;
        Some(
            maps.live
                .iter()
                .filter_map(Result::ok)
                .map(|(_, object)| object)
                .collect(),
        )
    }

    /// The GC cycles the in-use probe saw end their marking since attach, and the times
    /// (`CLOCK_MONOTONIC` nanoseconds) of the latest ones, oldest first; `None` when in-use
    /// heap is not tracked.
    #[must_use]
    pub fn gc_cycles(&self) -> Option<(u64, Vec<u64>)> {
        let maps = self.inuse_maps.as_ref()?;
        let count = maps.gc_times.get(&0, 0).ok()?;
        let ring = u64::from(GC_TIMES_SLOTS - 1);
        let times = (count.saturating_sub(ring)..count)
            .filter_map(|n| {
                let slot = u32::try_from(1 + n % ring).ok()?;
                maps.gc_times.get(&slot, 0).ok()
            })
            .collect();
        Some((count, times))
    }

    /// What the in-use programs did so far, summed over CPUs; `None` when not tracked.
    #[must_use]
    pub fn inuse_stats(&self) -> Option<InuseStats> {
        let maps = self.inuse_maps.as_ref()?;
        let per_cpu = maps.stats.get(&0, 0).ok()?;
        Some(per_cpu.iter().fold(InuseStats::default(), |acc, cpu| acc.merged(*cpu)))
    }

    /// The user stack with the given key, innermost frame first (addresses in the process).
    ///
    /// A stack whose frames do not hash to its key is refused and removed: the probe's
    /// per-CPU scratch slot was reused by another run on the same CPU while it walked (on
    /// kernels that preempt uprobe programs), which its generation check does not always
    /// notice. The key's counts then come out without a stack; the next walk stores it again.
    pub fn stack(&mut self, key: u64) -> Option<Vec<u64>> {
        let frames = self.stacks.get(&key, 0).ok()?.frames().to_vec();
        if tracer_common::stack_hash(&frames) != key {
            let _ = self.stacks.remove(&key);
            return None;
        }
        Some(frames)
    }

    /// Removes from the kernel's stack map the stacks that user space has copied (`copied`),
    /// so that a target whose stacks keep changing does not fill it for good. A probe that
    /// finds its stack gone stores it again. Stacks not copied yet stay: a key counted since
    /// the last drain may name one, and it would come out without a stack. Returns the stacks
    /// kept.
    pub fn forget_stacks(&mut self, copied: impl Fn(u64) -> bool) -> Vec<u64> {
        let (remove, keep): (Vec<u64>, Vec<u64>) = self.stacks.keys().filter_map(Result::ok).partition(|&k| copied(k));
        for key in remove {
            let _ = self.stacks.remove(&key);
        }
        keep
    }
}

/// Where [`EmptyProbes`] go on each counting entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyAt {
    /// The function's first instruction, where a tool that probes by symbol name puts it.
    Entry,
    /// The address exact mode's probe goes to (after the stack-bound check).
    Placement,
    /// Where span mode's probes go (`runtime.(*mcache).refill`, `allocLarge`, `releaseAll`):
    /// what keeping them attached and gating them in BPF would cost.
    Span,
}

/// Empty probes on the counting entry points of one process: what a probe at those addresses
/// costs with no work of its own (for `cargo xtask bench`).
pub struct EmptyProbes {
    /// Owns the program and its links: dropping it detaches them.
    _ebpf: Ebpf,
    /// How many uprobes were attached.
    pub attached: usize,
}

impl EmptyProbes {
    /// Attaches the empty program where exact mode's counting probes would go, at those
    /// functions' first instructions, or where span mode's probes go.
    pub fn attach(binary: &GoBinary<'_>, binary_path: &Path, pid: u32, at: EmptyAt) -> anyhow::Result<Self> {
        let offsets = Self::offsets(binary, at)?;
        let mut ebpf = load_object()?;
        let places = offsets.iter().map(|(function, offset)| (function.as_str(), *offset));
        let attached = attach_program(&mut ebpf, EMPTY_PROGRAM, places, binary_path, one_process(pid)?)?;
        Ok(Self { _ebpf: ebpf, attached })
    }

    /// The (function, file offset) pairs [`EmptyProbes::attach`] puts the empty program on.
    pub fn offsets(binary: &GoBinary<'_>, at: EmptyAt) -> anyhow::Result<Vec<(String, u64)>> {
        let points = binary
            .probe_points()
            .context("cannot find the allocation entry points")?;
        let wanted = |role: ProbeRole| match at {
            EmptyAt::Entry | EmptyAt::Placement => role == ProbeRole::Count,
            EmptyAt::Span => matches!(
                role,
                ProbeRole::SpanRefill | ProbeRole::LargeAlloc | ProbeRole::SpanRelease
            ),
        };
        let chosen: Vec<&ProbePoint> = points.iter().filter(|p| wanted(p.role)).collect();
        if chosen.is_empty() {
            bail!("the binary has none of the functions to probe ({at:?})");
        }
        Ok(chosen
            .iter()
            .map(|p| {
                // The function's start lies in the same segment, `probe_address - address`
                // bytes before the probe.
                let offset = match at {
                    EmptyAt::Entry => p.file_offset - (p.probe_address - p.address),
                    EmptyAt::Placement | EmptyAt::Span => p.file_offset,
                };
                (p.function.clone(), offset)
            })
            .collect())
    }
}

impl std::fmt::Debug for EmptyProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmptyProbes")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// Loads every program of the embedded object into this kernel's verifier, then unloads them
/// all (on return): the one check that the helpers, map types and program sizes the probes use
/// all fit this kernel, for `gotrace doctor`. Returns how many programs passed.
pub fn verify_all() -> anyhow::Result<usize> {
    let mut ebpf = load_object()?;
    let names: Vec<String> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    for name in &names {
        load_program(&mut ebpf, name)?;
    }
    Ok(names.len())
}

/// Attaches the empty program as a uprobe at `file_offset` of `binary`, for this process
/// only, and detaches it on return: proof that `perf_event_open` on the uprobe PMU works with
/// this process's privileges (some kernels want `CAP_SYS_ADMIN` there, not `CAP_PERFMON`), for
/// `gotrace doctor`. The offset should be one this process never runs again (its entry point).
pub fn check_uprobe_attach(binary: &Path, file_offset: u64) -> anyhow::Result<()> {
    let mut ebpf = load_object()?;
    load_program(&mut ebpf, EMPTY_PROGRAM)?;
    attach_at(
        &mut ebpf,
        EMPTY_PROGRAM,
        ("its entry point", file_offset),
        binary,
        one_process(std::process::id())?,
    )?;
    Ok(())
}

/// Loads gotrace's eBPF object (maps created, programs not yet loaded).
fn load_object() -> anyhow::Result<Ebpf> {
    raise_memlock_limit();
    // Without the kernel's BTF: the probes use no CO-RE relocations (they read `pt_regs`
    // through the layout they were compiled for), and parsing /sys/kernel/btf/vmlinux would
    // cost tens of MiB of memory at every attach, the sidecar's high-water mark.
    EbpfLoader::new()
        .btf(None)
        .load(crate::ebpf::object())
        .context("cannot load gotrace's eBPF object")
}

fn one_process(pid: u32) -> anyhow::Result<UProbeScope> {
    Ok(UProbeScope::OneProcess(
        NonZeroU32::new(pid).context("pid 0 cannot be traced")?,
    ))
}

/// The plan's programs loaded for `uprobe_multi` links, for span mode's duty cycle, which
/// detaches them every period: through such links the target does not wait on each detach
/// (see [`crate::uprobe_multi`]). `None` where the kernel has none (before Linux 6.6): perf
/// events then. The programs are pointed at every map of `ebpf`, so none may be taken out yet.
fn multi_programs(ebpf: &Ebpf, plan: &Plan<'_>) -> Option<MultiPrograms> {
    let names: Vec<&'static str> = plan.iter().map(|(program, _)| *program).collect();
    MultiPrograms::load(crate::ebpf::object(), ebpf, &names).ok()
}

/// Loads one program of the object into the kernel.
fn load_program(ebpf: &mut Ebpf, program_name: &str) -> anyhow::Result<()> {
    let program: &mut UProbe = ebpf
        .program_mut(program_name)
        .with_context(|| format!("the eBPF object has no program {program_name}"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel refused gotrace's probe {program_name}"))
}

/// Attaches a loaded program at `file_offset` of `binary_path` (in `function`, for errors).
fn attach_at(
    ebpf: &mut Ebpf,
    program_name: &str,
    (function, file_offset): (&str, u64),
    binary_path: &Path,
    scope: UProbeScope,
) -> anyhow::Result<UProbeLinkId> {
    let program: &mut UProbe = ebpf
        .program_mut(program_name)
        .with_context(|| format!("the eBPF object has no program {program_name}"))?
        .try_into()?;
    program
        .attach(UProbeAttachLocation::AbsoluteOffset(file_offset), binary_path, scope)
        .with_context(|| {
            format!(
                "cannot attach a uprobe to {function} at file offset {file_offset:#x} of {}",
                binary_path.display()
            )
        })
}

/// Loads one program of the object and attaches it at each (function, file offset) of
/// `binary_path`; returns how many uprobes it attached.
fn attach_program<'f>(
    ebpf: &mut Ebpf,
    program_name: &str,
    offsets: impl IntoIterator<Item = (&'f str, u64)>,
    binary_path: &Path,
    scope: UProbeScope,
) -> anyhow::Result<usize> {
    load_program(ebpf, program_name)?;
    let mut attached = 0;
    for place in offsets {
        attach_at(ebpf, program_name, place, binary_path, scope)?;
        attached += 1;
    }
    Ok(attached)
}

/// The loaded programs and where each goes: what attaching, and re-attaching after a duty
/// cycle's pause, need.
struct Attachments {
    ebpf: Ebpf,
    /// Each program, with the functions and file offsets it goes on.
    plan: Vec<(&'static str, Vec<(String, u64)>)>,
    binary_path: PathBuf,
    scope: UProbeScope,
    /// The programs' links while attached through perf events (aya's way).
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The programs loaded for `uprobe_multi` links, where the kernel has them; `None`: perf
    /// events. Set to `None` for good when the kernel refuses the first such link.
    multi: Option<MultiPrograms>,
    /// The `uprobe_multi` links while attached, one per program.
    multi_links: Vec<OwnedFd>,
    /// Whether aya loaded the programs, for perf events.
    perf_programs_loaded: bool,
    /// The process the probes are for.
    pid: u32,
    /// [`PAUSED_MAP`]: the sampling programs count nothing while it holds 1.
    paused: Array<MapData, u32>,
}

impl Attachments {
    /// Loads the plan's programs through aya, for perf-event uprobes, unless they are loaded.
    fn load_programs(&mut self) -> anyhow::Result<()> {
        if !self.perf_programs_loaded {
            for (program_name, _) in &self.plan {
                load_program(&mut self.ebpf, program_name)?;
            }
            self.perf_programs_loaded = true;
        }
        Ok(())
    }

    /// How many uprobes are attached.
    fn attached(&self) -> usize {
        if self.multi_links.is_empty() {
            self.links.len()
        } else {
            self.plan.iter().map(|(_, places)| places.len()).sum()
        }
    }

    /// Whether the probes go through `uprobe_multi` links.
    fn through_multi_links(&self) -> bool {
        self.multi.is_some()
    }

    /// Attaches every program of the plan through one `uprobe_multi` link each.
    fn attach_multi(&mut self, multi: &MultiPrograms) -> anyhow::Result<()> {
        for (program_name, places) in &self.plan {
            let program = multi
                .program(program_name)
                .with_context(|| format!("program {program_name} was not loaded for uprobe_multi"))?;
            let offsets: Vec<u64> = places.iter().map(|(_, offset)| *offset).collect();
            let link = crate::uprobe_multi::attach(program, &self.binary_path, &offsets, self.pid)?;
            self.multi_links.push(link);
        }
        Ok(())
    }

    /// Attaches every program of the plan through one perf event per place.
    fn attach_perf(&mut self) -> anyhow::Result<()> {
        for (program_name, places) in &self.plan {
            for (function, offset) in places {
                let attached = attach_at(
                    &mut self.ebpf,
                    program_name,
                    (function, *offset),
                    &self.binary_path,
                    self.scope,
                );
                self.links.push((program_name, attached?));
            }
        }
        Ok(())
    }
}

impl Switch for Attachments {
    fn attach(&mut self) -> anyhow::Result<()> {
        let attached = match self.multi.take() {
            Some(multi) => {
                let attached = self.attach_multi(&multi);
                if attached.is_err() && self.multi_links.is_empty() {
                    // The kernel refused a link before any was made (no `uprobe_multi` for this
                    // process or binary): perf events from now on, as before Linux 6.6.
                    self.load_programs().and_then(|()| self.attach_perf())
                } else {
                    self.multi = Some(multi);
                    attached
                }
            }
            None => self.load_programs().and_then(|()| self.attach_perf()),
        };
        if let Err(e) = attached {
            // None or all: a probe attached while paused costs a trap and counts nothing.
            self.detach();
            return Err(e);
        }
        self.paused.set(0, 0, 0).context("cannot resume the probes")
    }

    fn detach(&mut self) {
        // At once, where detaching takes a while (see PAUSED_MAP). Were it to fail, the probes
        // would count until detached: a slight overestimate, nothing worse.
        let _ = self.paused.set(0, 1, 0);
        let mut links = Vec::with_capacity(self.links.len());
        for (program_name, link) in self.links.drain(..) {
            let program: Option<&mut UProbe> = self
                .ebpf
                .program_mut(program_name)
                .and_then(|program| program.try_into().ok());
            if let Some(link) = program.and_then(|program| program.take_link(link).ok()) {
                links.push(link);
            }
        }
        // Each link's release waits for an RCU grace period (~0.1 s here), one after the other
        // in one thread: in threads of their own the waits overlap, so the paused probes stop
        // trapping sooner. They are waited for: a probe attached again at the same place while
        // the old one is still being released was seen to miss hits (estimates 2–28% low
        // instead of a steady 12%).
        let multi_links = std::mem::take(&mut self.multi_links);
        std::thread::scope(|scope| {
            for link in links {
                scope.spawn(move || drop(link));
            }
            // One grace period for all of a link's places (`bpf_uprobe_unregister`).
            for link in multi_links {
                scope.spawn(move || drop(link));
            }
        });
    }
}

/// The bytes span mode's counts stand for, as the target's runtime counts its allocations
/// ([`crate::remote::HeapCounter`]): objects times their size class, and large objects in
/// whole pages.
fn heap_bytes_counted(counts: &[(AllocKey, u64)]) -> u64 {
    counts
        .iter()
        .filter_map(|&(key, count)| {
            let (key, _) = Weighing::Span.weigh(key, count)?;
            let size = if key.size > u64::from(MAX_SMALL_SIZE) {
                large_object_bytes(key.size)
            } else {
                key.size
            };
            Some(size.saturating_mul(count))
        })
        .fold(0, u64::saturating_add)
}

/// Statistics summed over CPUs, with their hits.
fn total_stats<'s>(per_cpu: impl Iterator<Item = &'s ProbeStats>) -> ProbeStats {
    per_cpu
        .fold(ProbeStats::default(), |acc, cpu| acc.merged(*cpu))
        .with_outcome_hits()
}

/// A second handle on one of the object's per-CPU arrays (its file descriptor duplicated), for
/// another thread.
fn reopen_per_cpu_array(ebpf: &Ebpf, name: &str) -> anyhow::Result<MapData> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    let Map::PerCpuArray(data) = map else {
        anyhow::bail!("the eBPF object's map {name} is not a per-CPU array");
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("cannot duplicate the map {name}"))?;
    MapData::from_fd(fd).with_context(|| format!("cannot open the map {name} again"))
}

/// Which eBPF program goes on which entry points, for a mode.
fn plan<'p>(binary: &GoBinary<'_>, points: &'p [ProbePoint], mode: Mode) -> anyhow::Result<Plan<'p>> {
    let with_role = |role: ProbeRole| -> Vec<&ProbePoint> { points.iter().filter(|p| p.role == role).collect() };
    let regs = binary.arch().int_arg_registers();
    // Each program reads its arguments from fixed registers of Go's register ABI; make sure the
    // analysis of this binary agrees before attaching.
    let check = |points: &[&ProbePoint], wanted: &[(ArgRole, usize)]| -> anyhow::Result<()> {
        for probe in points {
            for &(role, index) in wanted {
                if let Some(mismatch) = arg_mismatch(regs, probe, role, index) {
                    bail!("{mismatch}");
                }
            }
        }
        Ok(())
    };
    match mode {
        Mode::Exact => {
            let counting = with_role(ProbeRole::Count);
            if counting.is_empty() {
                bail!("the binary has no runtime.mallocgc: it cannot be traced");
            }
            check(&counting, &[(ArgRole::Size, 0), (ArgRole::Type, 1)])?;
            Ok(vec![(ALLOC_COUNT_PROGRAM, counting)])
        }
        Mode::GoSampler => {
            let sampler = with_role(ProbeRole::GoSample);
            if sampler.is_empty() {
                bail!("the binary has no runtime.profilealloc: --mode go-sampler cannot be used (try --mode span)");
            }
            check(&sampler, &[(ArgRole::Size, 2)])?;
            Ok(vec![(GO_SAMPLE_PROGRAM, sampler)])
        }
        Mode::Span => {
            let refill = with_role(ProbeRole::SpanRefill);
            let large = with_role(ProbeRole::LargeAlloc);
            let release = with_role(ProbeRole::SpanRelease);
            if refill.is_empty() || large.is_empty() || release.is_empty() {
                bail!(
                    "the binary lacks runtime.(*mcache).refill, allocLarge or releaseAll (Go 1.21 or later has \
                     them): --mode span cannot be used (try --mode exact)"
                );
            }
            check(&refill, &[(ArgRole::Mcache, 0), (ArgRole::SpanClass, 1)])?;
            check(&large, &[(ArgRole::Size, 1)])?;
            check(&release, &[(ArgRole::Mcache, 0)])?;
            Ok(vec![
                (SPAN_REFILL_PROGRAM, refill),
                (LARGE_ALLOC_PROGRAM, large),
                (SPAN_RELEASE_PROGRAM, release),
            ])
        }
        Mode::Auto => bail!("internal error: --mode auto must be resolved before attaching"),
    }
}

/// Why `probe` does not take its `role` argument in integer argument register `index`, where
/// gotrace's program reads it (the analysis of the binary must agree with the program).
fn arg_mismatch(regs: &[gobin::Register], probe: &ProbePoint, role: ArgRole, index: usize) -> Option<String> {
    let found = probe.arg(role);
    (found != regs.get(index).copied()).then(|| {
        format!(
            "{} takes its {} in {}, not in integer argument register {index} where gotrace's probe reads it",
            probe.function,
            role.key(),
            found.map_or_else(|| "no register".to_owned(), gobin::Register::name),
        )
    })
}

/// Each program with the entry points it goes on, in the order they are attached.
type Plan<'p> = Vec<(&'static str, Vec<&'p ProbePoint>)>;

/// Whether the probes of `mode` track in-use heap (`wanted`: the user did not turn it off);
/// when they do, the in-use programs go first into `plan` (the free probe before the bucket
/// probe before the sampler: an object the sampler tracks must never die unseen) and `config`
/// gets the special layout they read.
fn inuse_tracking<'p>(
    binary: &GoBinary<'_>,
    points: &'p [ProbePoint],
    mode: Mode,
    wanted: bool,
    config: &mut ProbeConfig,
    plan: &mut Plan<'p>,
) -> InuseTracking {
    match (mode, wanted) {
        (Mode::GoSampler, true) => match inuse_plan(binary, points) {
            Ok((programs, layout)) => {
                config.special_kind_offset = layout.kind_offset;
                config.special_profile_kind = u32::from(layout.profile_kind);
                plan.splice(0..0, programs);
                InuseTracking::On
            }
            Err(why) => InuseTracking::Off(why),
        },
        (Mode::GoSampler, false) => InuseTracking::Off("in-use heap not tracked (--no-inuse)".to_owned()),
        (Mode::Exact, _) => InuseTracking::Off(
            "exact mode cannot tell in-use heap: the runtime frees unsampled objects in bulk, with no call \
             per object; use --mode go-sampler"
                .to_owned(),
        ),
        (_, _) => InuseTracking::Off(
            "span mode cannot tell in-use heap: it sees spans, not objects; use --mode go-sampler".to_owned(),
        ),
    }
}

/// The in-use programs and the special layout they need, or why in-use heap cannot be tracked
/// in this binary.
fn inuse_plan<'p>(binary: &GoBinary<'_>, points: &'p [ProbePoint]) -> Result<(Plan<'p>, gobin::SpecialLayout), String> {
    let with_role = |role: ProbeRole| -> Vec<&ProbePoint> { points.iter().filter(|p| p.role == role).collect() };
    let bucket = with_role(ProbeRole::ProfileBucket);
    let free = with_role(ProbeRole::SpecialFree);
    let sampler = with_role(ProbeRole::GoSample);
    if bucket.is_empty() || free.is_empty() {
        return Err(
            "in-use heap not tracked: the binary lacks runtime.setprofilebucket or runtime.freeSpecial \
             (inlined by a profile-guided build?)"
                .to_owned(),
        );
    }
    let layout = binary
        .special_layout()
        .map_err(|e| format!("in-use heap not tracked: cannot read the layout of runtime.special: {e}"))?
        .ok_or_else(|| {
            format!(
                "in-use heap not tracked: gotrace knows runtime.special for Go 1.21 to 1.27, not {}",
                binary.go_version()
            )
        })?;
    let regs = binary.arch().int_arg_registers();
    let sampler_args = sampler.iter().map(|p| (*p, ArgRole::Object, 1));
    let bucket_args = bucket
        .iter()
        .flat_map(|p| [(*p, ArgRole::Object, 0), (*p, ArgRole::Bucket, 1)]);
    let free_args = free
        .iter()
        .flat_map(|p| [(*p, ArgRole::Special, 0), (*p, ArgRole::Object, 1)]);
    for (probe, role, index) in sampler_args.chain(bucket_args).chain(free_args) {
        if let Some(mismatch) = arg_mismatch(regs, probe, role, index) {
            return Err(format!("in-use heap not tracked: {mismatch}"));
        }
    }
    // The GC-cycle probe is the only one on runtime.gcMarkTermination; without it in-use
    // still works, and growth says its objects are not known to have outlived a sweep.
    let gc = with_role(ProbeRole::GcCycle);
    Ok((
        vec![
            (INUSE_GC_PROGRAM, gc),
            (INUSE_FREE_PROGRAM, free),
            (INUSE_BUCKET_PROGRAM, bucket),
        ],
        layout,
    ))
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}

/// The malloc implementation's address ranges in the process, for the no-double-count rule.
fn probe_config(
    binary: &GoBinary<'_>,
    points: &[ProbePoint],
    addresses: &AddressMap,
    mode: Mode,
) -> anyhow::Result<ProbeConfig> {
    let counting: Vec<&ProbePoint> = points.iter().filter(|p| p.role == ProbeRole::Count).collect();
    // Every counting probe has the same set (gobin::COUNTING_RULE); take the union anyway.
    let mut names: Vec<&str> = counting
        .iter()
        .flat_map(|p| p.skip_if_caller_in.iter().map(|f| f.name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let ranges = binary.functions().coalesced_ranges(names);
    if ranges.len() > MAX_NESTED_RANGES {
        bail!(
            "the runtime's malloc implementation is spread over {} address ranges; the probe \
             checks at most {MAX_NESTED_RANGES}",
            ranges.len()
        );
    }
    let mut config = ProbeConfig {
        flags: if counting.iter().all(|p| p.skip_zero_size) {
            FLAG_SKIP_ZERO_SIZE
        } else {
            0
        },
        nested_len: u32::try_from(ranges.len()).unwrap_or(0),
        nested: [AddressRange::default(); MAX_NESTED_RANGES],
        ..ProbeConfig::default()
    };
    if mode == Mode::Span {
        let layout = binary
            .runtime_layout()
            .context("span mode needs the layout of runtime.mcache and runtime.mspan")?;
        config.mcache_alloc_offset = layout.mcache_alloc;
        config.span_alloc_count_offset = layout.mspan_alloc_count;
        config.span_alloc_count_before_cache_offset = layout.mspan_alloc_count_before_cache;
    }
    for (slot, range) in config.nested.iter_mut().zip(&ranges) {
        let start = addresses
            .to_runtime(range.start)
            .with_context(|| format!("{:#x} is not mapped in the process", range.start))?;
        *slot = AddressRange {
            start,
            end: start + (range.end - range.start),
        };
    }
    Ok(config)
}

/// Lifts the locked-memory limit for maps on kernels that charge BPF memory to it. Kernels
/// since 5.11 charge the memory cgroup instead, and on these machines the bump is not even
/// permitted (`CAP_SYS_RESOURCE` is outside the bounding set), so failing is fine.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass and has no other preconditions.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}
