//! The target's own heap-profiling state: `runtime.MemProfileRate`, read (and, on request,
//! written) in the live process through `/proc/PID/mem`.
//!
//! Go samples one allocation per `MemProfileRate` bytes on average (512 KiB by default) for
//! its heap profile. The linker sets `runtime.disableMemoryProfiling` when nothing in the
//! program can read a heap profile (`runtime.MemProfile` is unreferenced), and then the
//! runtime sets the rate to 0 at start-up (`schedinit`, `src/runtime/proc.go`): no samples,
//! so the go-sampler mode sees nothing.

use anyhow::{Context as _, bail};
use gobin::GoBinary;
use gobin::procmaps::AddressMap;

use crate::progress;
use crate::remote::RemoteMemory;

/// The symbol of the rate (an `int`).
const RATE_SYMBOL: &str = "runtime.MemProfileRate";
/// The symbol of the linker's flag (a `bool`).
const DISABLED_SYMBOL: &str = "runtime.disableMemoryProfiling";

/// Where the target keeps its rate.
#[derive(Debug, Clone, Copy)]
pub struct MemProfileRate {
    pid: u32,
    /// Address of `runtime.MemProfileRate` in the process.
    address: u64,
    /// Address of `runtime.disableMemoryProfiling`, when the symbol table has it.
    disabled_address: Option<u64>,
}

impl MemProfileRate {
    /// Where the rate is in the process.
    #[must_use]
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Finds the rate in process `pid`; `None` when the binary has no symbol table (stripped).
    #[must_use]
    pub fn locate(binary: &GoBinary<'_>, pid: u32, addresses: &AddressMap) -> Option<Self> {
        let address = addresses.to_runtime(binary.variable(RATE_SYMBOL)?.address)?;
        let disabled_address = binary
            .variable(DISABLED_SYMBOL)
            .and_then(|v| addresses.to_runtime(v.address));
        Some(Self {
            pid,
            address,
            disabled_address,
        })
    }

    fn read_at(&self, address: u64, buf: &mut [u8]) -> std::io::Result<()> {
        RemoteMemory::new(self.pid).read_at(address, buf)
    }

    fn write_at(&self, address: u64, buf: &[u8]) -> std::io::Result<()> {
        RemoteMemory::new(self.pid).write_at(address, buf)
    }

    /// The rate now.
    pub fn read(&self) -> anyhow::Result<u64> {
        let mut word = [0u8; 8];
        self.read_at(self.address, &mut word).with_context(|| {
            format!(
                "cannot read {RATE_SYMBOL} in process {} (needs CAP_SYS_PTRACE for another user's process)",
                self.pid
            )
        })?;
        // An int; a negative rate behaves like 0 in the runtime.
        Ok(u64::try_from(i64::from_ne_bytes(word)).unwrap_or(0))
    }

    /// Whether the linker turned memory profiling off (`None`: unknown).
    #[must_use]
    pub fn disabled_by_linker(&self) -> Option<bool> {
        let mut byte = [0u8; 1];
        self.read_at(self.disabled_address?, &mut byte).ok()?;
        Some(byte[0] != 0)
    }

    /// Sets the rate in the running process.
    ///
    /// `MemProfileRate` is a plain word the runtime reads without synchronisation; an aligned
    /// 8-byte store is atomic on amd64 and arm64, so the runtime sees the old or the new value.
    /// Go 1.24 and later notice a change at the next allocation (`mcache.memProfRate`,
    /// `src/runtime/malloc.go`). Go 1.21–1.23 only notice it through `nextSample`, which stays
    /// at its maximum when the rate was 0 at start-up, so there it only works when profiling was
    /// already on.
    pub fn write(&self, rate: u64) -> anyhow::Result<()> {
        let value = i64::try_from(rate).context("the rate is too large")?.to_ne_bytes();
        self.write_at(self.address, &value)
            .with_context(|| format!("cannot write {RATE_SYMBOL} in process {}", self.pid))
    }
}

/// The Go versions whose runtime picks up a rate changed at run time from 0.
pub fn check_rate_change_supported(go_minor: u32, current: u64) -> anyhow::Result<()> {
    if current == 0 && go_minor < 24 {
        bail!(
            "this target (Go 1.{go_minor}) started with memory profiling off, and before Go 1.24 the \
             runtime never picks up a rate set later; use --mode span instead"
        );
    }
    Ok(())
}

/// How to weigh what the probes of `mode` counted this interval. For go-sampler: the rate the
/// probe saw at its latest sample (`sampled_at`), which is the rate the samples were taken at;
/// else the target's rate read now (the program, or `--set-mem-profile-rate`, may change it);
/// `last_rate` keeps the last one that was not 0, starting at Go's default.
///
/// Reading the target alone is not enough: a program started with `GODEBUG=memprofilerate=1`
/// sets the rate in `schedinit`, after `gotrace run` attached, and may exit before the first
/// drain, when its memory can no longer be read.
pub fn weighing(
    mode: crate::mode::Mode,
    sampled_at: Option<u64>,
    rate: Option<&MemProfileRate>,
    last_rate: &mut u64,
) -> crate::mode::Weighing {
    use crate::mode::{Mode, Weighing};
    match mode {
        Mode::GoSampler => {
            let now = sampled_at.or_else(|| rate.and_then(|r| r.read().ok()));
            if let Some(now) = now.filter(|&r| r > 0) {
                *last_rate = now;
            }
            Weighing::GoSampler { rate: *last_rate }
        }
        Mode::Span => Weighing::Span,
        Mode::Exact | Mode::Auto => Weighing::Exact,
    }
}

/// The rate Go uses unless told otherwise (`runtime.MemProfileRate`'s initial value).
pub const DEFAULT_RATE: u64 = 512 * 1024;

/// Resolves `--mode` for one target: `auto` becomes a real mode, and go-sampler is refused
/// when the target takes no samples. Returns the mode and notes for the user.
pub fn resolve_mode(
    requested: crate::mode::Mode,
    rate: Option<&MemProfileRate>,
    set_rate: Option<u64>,
) -> anyhow::Result<(crate::mode::Mode, Vec<String>)> {
    use crate::mode::Mode;
    let mut notes = Vec::new();
    let current = match rate.map(MemProfileRate::read).transpose() {
        Ok(current) => current,
        Err(error) => {
            notes.push(format!("{error:#}"));
            None
        }
    };
    let profiling_on = set_rate.is_some_and(|r| r > 0) || current.is_some_and(|r| r > 0);
    let mode = match requested {
        Mode::Auto if profiling_on => Mode::GoSampler,
        Mode::Auto => {
            notes.push(match current {
                Some(_) => "the target's memory profiling is off, so auto uses span mode".to_owned(),
                None => "the target has no symbol table to find runtime.MemProfileRate in, so auto uses span mode"
                    .to_owned(),
            });
            Mode::Span
        }
        other => other,
    };
    if mode == Mode::GoSampler && !profiling_on {
        match current {
            Some(0) => {
                let why = if rate.and_then(MemProfileRate::disabled_by_linker) == Some(true) {
                    " (runtime.disableMemoryProfiling: the program never reads a heap profile, so the linker turned \
                     profiling off)"
                } else {
                    ""
                };
                bail!(
                    "the target's memory profiling is off{why}: Go's sampler takes no samples. Use --mode span, or \
                     --set-mem-profile-rate 524288 to turn it on (see --help for the risk)"
                );
            }
            None => notes.push(format!(
                "cannot find runtime.MemProfileRate (no symbol table); assuming Go's default of {DEFAULT_RATE} bytes"
            )),
            Some(_) => {}
        }
    }
    if set_rate.is_some() && mode != Mode::GoSampler {
        bail!("--set-mem-profile-rate only makes sense with --mode go-sampler or auto");
    }
    Ok((mode, notes))
}

/// Everything a sampled mode needs to know of one target before attaching: `--mode` resolved
/// for it (its notes printed), where its rate is, and `--set-mem-profile-rate` applied (put
/// back when the returned override is dropped).
pub fn prepare(
    requested: crate::mode::Mode,
    set_rate: Option<u64>,
    binary: &GoBinary<'_>,
    pid: u32,
    addresses: &AddressMap,
) -> anyhow::Result<(crate::mode::Mode, Option<MemProfileRate>, Option<RateOverride>)> {
    let rate = MemProfileRate::locate(binary, pid, addresses);
    let (mode, notes) = resolve_mode(requested, rate.as_ref(), set_rate)?;
    for note in notes {
        progress!("{note}");
    }
    let rate_override = match (set_rate, rate) {
        (Some(new), Some(rate)) => Some(RateOverride::set(rate, new, binary.go_version().minor)?),
        (Some(_), None) => bail!("cannot set runtime.MemProfileRate: the binary has no symbol table to find it in"),
        _ => None,
    };
    Ok((mode, rate, rate_override))
}

/// [`prepare`], then the probes of the mode it resolved attached to the target: what a session
/// or serve needs of one target. The rate override is put back when dropped.
#[derive(Debug)]
pub struct PreparedProbes {
    pub probes: crate::probes::Probes,
    pub mode: crate::mode::Mode,
    pub rate: Option<MemProfileRate>,
    pub rate_override: Option<RateOverride>,
    /// Go-sampler: the runtime's records of objects sampled before attach, or why not.
    pub records: crate::mprof::RecordsAccess,
}

/// Prepares the target (see [`prepare`]) and attaches the probes to `binary` (read from
/// `binary_path`); go-sampler's probe is told where the rate is, to read it at each sample.
pub fn prepare_and_attach(
    requested: crate::mode::Mode,
    set_rate: Option<u64>,
    target: &crate::probes::AttachTarget<'_, '_>,
    options: crate::probes::ProbeOptions,
) -> anyhow::Result<PreparedProbes> {
    let (mode, rate, rate_override) = prepare(requested, set_rate, target.binary, target.pid, target.addresses)?;
    let records = records_access(mode, rate_override.as_ref(), target);
    let probes = crate::probes::Probes::attach(target, mode, options, rate.as_ref().map(MemProfileRate::address))?;
    Ok(PreparedProbes {
        probes,
        mode,
        rate,
        rate_override,
        records,
    })
}

/// Whether the runtime's records can add what was sampled before attach to in-use heap.
fn records_access(
    mode: crate::mode::Mode,
    rate_override: Option<&RateOverride>,
    target: &crate::probes::AttachTarget<'_, '_>,
) -> crate::mprof::RecordsAccess {
    use crate::mprof::RecordsAccess::{Readable, Unknown};
    if mode != crate::mode::Mode::GoSampler {
        return Unknown("not go-sampler".to_owned());
    }
    if rate_override.is_some_and(|o| o.original == 0) {
        return Unknown(
            "nothing was sampled before attach (memory profiling was off until --set-mem-profile-rate turned it \
             on)"
            .to_owned(),
        );
    }
    match crate::mprof::RuntimeRecords::locate(target.binary, target.pid, target.addresses) {
        Some(records) => Readable(records),
        None => Unknown(
            "objects allocated before attach are not included (the runtime's records, runtime.mbuckets, need a \
             symbol table and Go 1.21 to 1.27)"
                .to_owned(),
        ),
    }
}

/// A rate written into the target, put back as it was when dropped (not after SIGKILL: then
/// the target keeps the new rate, which only costs it its own profiling overhead).
#[derive(Debug)]
pub struct RateOverride {
    rate: MemProfileRate,
    original: u64,
    /// The run of the program the rate was written into: nothing is written back into a
    /// process that has exited, reused the pid or exec'd another program since.
    target: Option<crate::process::ProcessId>,
}

impl RateOverride {
    /// Writes `new` into the target.
    pub fn set(rate: MemProfileRate, new: u64, go_minor: u32) -> anyhow::Result<Self> {
        let original = rate.read()?;
        check_rate_change_supported(go_minor, original)?;
        let target = crate::process::ProcessId::of(rate.pid);
        rate.write(new)?;
        Ok(Self { rate, original, target })
    }
}

impl Drop for RateOverride {
    fn drop(&mut self) {
        // The target may be gone; nothing to put back then.
        if self.target.is_some_and(crate::process::ProcessId::alive) {
            let _ = self.rate.write(self.original);
        }
    }
}
