//! The eBPF side as user space sees it: load the probes, configure them for one process,
//! attach them to its allocation entry points, and read what they counted.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use aya::Ebpf;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeScope};
use gobin::procmaps::AddressMap;
use gobin::{ArgRole, GoBinary, ProbePoint, ProbeRole};
use tracer_common::{
    ALLOC_COUNT_PROGRAM, AddressRange, AllocKey, CONFIG_MAP, COUNTS_MAP, FLAG_SKIP_ZERO_SIZE, MAX_NESTED_RANGES,
    ProbeConfig, ProbeStats, STACKS_MAP, STATS_MAP, UserStack,
};

/// Probes attached to one process.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything. The kernel also
    /// detaches when this process dies, however it dies (the links are file descriptors).
    _ebpf: Ebpf,
    stats: PerCpuArray<MapData, ProbeStats>,
    counts: PerCpuHashMap<MapData, AllocKey, u64>,
    stacks: BpfHashMap<MapData, u64, UserStack>,
    /// How many uprobes were attached.
    pub attached: usize,
    /// How long loading and attaching took.
    pub attach_time: Duration,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// What the probes have counted so far (cumulative).
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Summed over CPUs.
    pub stats: ProbeStats,
    /// Allocation counts by key, summed over CPUs.
    pub counts: Vec<(AllocKey, u64)>,
}

impl Probes {
    /// Loads the probes and attaches them to every counting entry point of `binary` (read from
    /// `binary_path`), in process `pid` only, whose address space `addresses` describes.
    pub fn attach(binary: &GoBinary<'_>, binary_path: &Path, pid: u32, addresses: &AddressMap) -> anyhow::Result<Self> {
        let started = Instant::now();
        let probes = binary
            .probe_points()
            .context("cannot find the allocation entry points")?;
        let counting: Vec<&ProbePoint> = probes.iter().filter(|p| p.role == ProbeRole::Count).collect();
        if counting.is_empty() {
            bail!("the binary has no runtime.mallocgc: it cannot be traced");
        }
        check_registers(binary, &counting)?;
        let config = probe_config(binary, &counting, addresses)?;

        raise_memlock_limit();
        let mut ebpf = Ebpf::load(crate::ebpf::object()).context("cannot load gotrace's eBPF object")?;
        let mut config_map: Array<_, ProbeConfig> = Array::try_from(
            ebpf.map_mut(CONFIG_MAP)
                .with_context(|| format!("the eBPF object has no map {CONFIG_MAP}"))?,
        )?;
        config_map
            .set(0, config, 0)
            .context("cannot write the probe configuration")?;

        let program: &mut UProbe = ebpf
            .program_mut(ALLOC_COUNT_PROGRAM)
            .with_context(|| format!("the eBPF object has no program {ALLOC_COUNT_PROGRAM}"))?
            .try_into()?;
        program
            .load()
            .context("the kernel refused gotrace's allocation probe")?;
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).context("pid 0 cannot be traced")?);
        for probe in &counting {
            program
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
                    binary_path,
                    scope,
                )
                .with_context(|| {
                    format!(
                        "cannot attach a uprobe to {} at file offset {:#x} of {}",
                        probe.function,
                        probe.file_offset,
                        binary_path.display()
                    )
                })?;
        }
        let stats = PerCpuArray::try_from(take(&mut ebpf, STATS_MAP)?)?;
        let counts = PerCpuHashMap::try_from(take(&mut ebpf, COUNTS_MAP)?)?;
        let stacks = BpfHashMap::try_from(take(&mut ebpf, STACKS_MAP)?)?;
        Ok(Self {
            _ebpf: ebpf,
            stats,
            counts,
            stacks,
            attached: counting.len(),
            attach_time: started.elapsed(),
        })
    }

    /// Reads the counts and statistics. The maps are cumulative; nothing is reset.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let stats = self
            .stats
            .get(&0, 0)
            .context("cannot read the probe statistics")?
            .iter()
            .fold(ProbeStats::default(), |acc, cpu| acc.merged(*cpu));
        let mut counts = Vec::new();
        for entry in &self.counts {
            // A key deleted between listing and lookup cannot happen (nothing deletes), but a
            // failed read is not worth aborting the trace for: it shows up as missing counts.
            let Ok((key, per_cpu)) = entry else { continue };
            let total = per_cpu.iter().fold(0u64, |acc, n| acc.wrapping_add(*n));
            if total > 0 {
                counts.push((key, total));
            }
        }
        Ok(Snapshot { stats, counts })
    }

    /// The user stack with the given key, innermost frame first (addresses in the process).
    pub fn stack(&self, key: u64) -> Option<Vec<u64>> {
        Some(self.stacks.get(&key, 0).ok()?.frames().to_vec())
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}

/// The probe reads `size` and `typ` from the first two integer argument registers of Go's
/// register ABI; make sure the analysis of this binary agrees for every counting function.
fn check_registers(binary: &GoBinary<'_>, counting: &[&ProbePoint]) -> anyhow::Result<()> {
    let regs = binary.arch().int_arg_registers();
    for probe in counting {
        let size = probe.arg(ArgRole::Size);
        let typ = probe.arg(ArgRole::Type);
        if size != regs.first().copied() || typ != regs.get(1).copied() {
            bail!(
                "{} takes its size in {} and its type in {}, not in the first two argument \
                 registers where gotrace's probe reads them",
                probe.function,
                size.map_or_else(|| "no register".to_owned(), gobin::Register::name),
                typ.map_or_else(|| "no register".to_owned(), gobin::Register::name),
            );
        }
    }
    Ok(())
}

/// The malloc implementation's address ranges in the process, for the no-double-count rule.
fn probe_config(
    binary: &GoBinary<'_>,
    counting: &[&ProbePoint],
    addresses: &AddressMap,
) -> anyhow::Result<ProbeConfig> {
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
    };
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

/// A stack cache: a stack's key is a hash of its content, so it never changes meaning.
#[derive(Debug, Default)]
pub struct StackCache {
    stacks: HashMap<u64, Option<Vec<u64>>>,
}

impl StackCache {
    /// The stack with this key, read from the probes once.
    pub fn get(&mut self, probes: &Probes, key: u64) -> Option<&[u64]> {
        self.stacks.entry(key).or_insert_with(|| probes.stack(key)).as_deref()
    }
}
