//! `cargo xtask bench`: gotrace's overhead and accuracy, measured side by side in one run on
//! this machine, against no tracing, an empty probe at the same addresses, and bpftrace.
//!
//! Absolute times on a 2-core VM are noise; the figures are the ratios between rows measured
//! minutes apart in the same run. Every measurement is repeated (`--runs`); the tables show
//! the median and the range, so the noise is visible. Nothing here fails on a missed target:
//! the tables say which targets were met.

mod proc;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use self::proc::{CpuSplit, Proc, cpu_seconds, cpu_seconds_exact, peak_rss_mib, steal_seconds};
use self::stats::Stat;
use crate::{fixtures, go};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A CI-sized run: two runs of everything, short windows (a few minutes in all)
    #[arg(long)]
    pub quick: bool,
    /// Runs of each measurement (default 5; 2 with --quick)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    pub runs: Option<u32>,
    /// Where results.md and results.json go
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    pub out: PathBuf,
    /// Also put the Markdown tables into README.md (between its bench markers)
    #[arg(long, conflicts_with = "only")]
    pub readme: bool,
    /// Measure only these parts (repeatable; default: all)
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Vec<Part>,
}

/// The parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Cost per allocation of the pure-allocation loop
    Cost,
    /// The HTTP service and the CPU-bound workload
    Realistic,
    /// The sampled modes against exact mode
    Accuracy,
    /// Attach time, symbolization, RSS, the tracer's own CPU
    Tracer,
}

/// How long and how often each part runs.
#[derive(Debug, Clone, Copy, Serialize)]
struct Plan {
    runs: usize,
    /// One-second report lines per measurement of the loop and the CPU-bound workload.
    window_secs: usize,
    /// Seconds of `wrk` per HTTP measurement.
    wrk_secs: u64,
    /// Duty-cycled span mode's `--span-period`, and the length of its realistic windows, so
    /// that each holds one whole cycle: gotrace's default ([`SPAN_PERIOD_SECS`]) in a full
    /// run; `None` in a quick one, where span cycles once per window of the others' length.
    span_period_secs: Option<u64>,
    /// Rounds of `workloads classes` per accuracy run.
    classes_rounds: u32,
    accuracy_runs: usize,
    symbolize_runs: usize,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let runs = args.runs.map(|r| r as usize);
        if args.quick {
            Self {
                runs: runs.unwrap_or(2),
                window_secs: 2,
                wrk_secs: 3,
                span_period_secs: None,
                classes_rounds: 300,
                accuracy_runs: 1,
                symbolize_runs: 1,
            }
        } else {
            Self {
                runs: runs.unwrap_or(5),
                window_secs: 5,
                wrk_secs: 10,
                span_period_secs: Some(SPAN_PERIOD_SECS),
                classes_rounds: 600,
                accuracy_runs: 3,
                symbolize_runs: 3,
            }
        }
    }
}

/// gotrace's default `--span-period` (`tracer/src/cli.rs`), in seconds.
const SPAN_PERIOD_SECS: u64 = 30;

/// The Go releases of the cost-per-allocation table; the realistic workloads, accuracy and
/// tracer costs use the newest.
const COST_GO: &[&str] = &["1.25", "1.27"];
const REALISTIC_GO: &str = "1.27";
/// go-sampler's rate in the accuracy runs (as `tracer/tests/accuracy.rs`): at Go's default
/// 512 KiB the smallest of the top 10 callsites would get a few dozen samples in a run this
/// short.
const ACCURACY_SAMPLE_RATE: &str = "4096";
/// The target allocation rate of the tracer-CPU measurement.
const TRACER_CPU_RATE: u32 = 1_000_000;
/// Distinct stacks in the symbolization measurement.
const SYMBOLIZE_STACKS: usize = 10_000;

/// What observes the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Tracer {
    Untraced,
    /// gotrace's empty program at each counting function's first instruction.
    EmptyEntry,
    /// gotrace's empty program where exact mode's probe goes.
    EmptyPlacement,
    /// The naive bpftrace one-liner.
    Bpftrace,
    Exact,
    /// Exact mode with `--time-probes`: the kernel times each run of the probe, which says how
    /// much of exact mode's cost is the probe's own work (the rest is the trap).
    ExactTimed,
    GoSampler,
    Span,
    /// Span mode without its duty cycle (`--span-budget 0`): what each of its hits costs, in
    /// a change large enough to measure.
    SpanAttached,
}

impl Tracer {
    const MODES: [Self; 3] = [Self::Exact, Self::GoSampler, Self::Span];

    fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::EmptyEntry => "empty uprobe at the function's first instruction",
            Self::EmptyPlacement => "empty uprobe at gotrace's probe address (the floor)",
            Self::Bpftrace => "bpftrace one-liner",
            Self::Exact => "gotrace exact",
            Self::ExactTimed => "gotrace exact, timed by the kernel",
            Self::GoSampler => "gotrace go-sampler",
            Self::Span => "gotrace span",
            Self::SpanAttached => "gotrace span, always attached",
        }
    }

    fn mode(self) -> Option<&'static str> {
        match self {
            Self::Exact | Self::ExactTimed => Some("exact"),
            Self::GoSampler => Some("go-sampler"),
            Self::Span | Self::SpanAttached => Some("span"),
            _ => None,
        }
    }
}

/// Paths every part needs.
struct Env {
    gotrace: PathBuf,
    scratch: PathBuf,
    bpftrace: Option<PathBuf>,
    goarch: &'static str,
}

impl Env {
    fn workloads(&self, repo: &Path, minor: &str) -> PathBuf {
        repo.join(format!("target/fixtures/go{minor}/{}/workloads", self.goarch))
    }
}

/// The machine and software the figures belong to.
#[derive(Debug, Serialize)]
pub struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    go: Vec<String>,
    bpftrace: Option<String>,
    date: String,
}

#[derive(Debug, Serialize)]
pub struct Results {
    machine: Machine,
    quick: bool,
    plan: Plan,
    cost: Vec<CostTable>,
    realistic: Vec<RealisticRow>,
    /// Which CPU ran the realistic workloads, and which wrk and gotrace.
    cpus: String,
    /// How far apart the two untraced instances were in the A/A windows, and the steal: the
    /// noise the changes stand in.
    noise: SideBySideNoise,
    accuracy: Vec<AccuracyRow>,
    tracer: TracerCosts,
    targets: Vec<TargetCheck>,
}

#[derive(Debug, Serialize)]
struct CostTable {
    go_version: String,
    /// The functions every probed row puts a probe on.
    probed_functions: Vec<String>,
    rows: Vec<CostRow>,
}

#[derive(Debug, Serialize)]
struct CostRow {
    /// How many frames below the worker goroutine's entry the loop allocates
    /// (`workloads loop --depth`).
    depth: u32,
    tracer: Tracer,
    /// CPU time of the whole target process per allocation, ns.
    ns_per_alloc: Option<Stat>,
    /// Over untraced (medians), ns.
    added_ns: Option<f64>,
    /// `added_ns` over the floor's (the empty probe at gotrace's placement, same depth).
    vs_floor: Option<f64>,
    /// The bpftrace one-liner's `added_ns` over this row's.
    bpftrace_over_this: Option<f64>,
    /// How long each run of the probe took, ns, as the kernel timed it (the timed row only).
    probe_run_ns: Option<Stat>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RealisticRow {
    tracer: Tracer,
    http_requests_per_sec: Option<Stat>,
    http_p99_ms: Option<Stat>,
    cpu_ops_per_sec: Option<Stat>,
    /// Requests per second of the service's own CPU time.
    http_requests_per_cpu_sec: Option<Stat>,
    /// Operations per second of the workload's own CPU time.
    cpu_ops_per_cpu_sec: Option<Stat>,
    /// Traced over untraced, side by side in the same window, medians.
    http_ratio: Option<f64>,
    cpu_ratio: Option<f64>,
    http_per_cpu_ratio: Option<f64>,
    cpu_per_cpu_ratio: Option<f64>,
    /// The HTTP p99 latency's, traced over untraced, every run.
    http_p99_ratio: Option<Stat>,
    /// The same ratios' runs: HTTP requests/s, per CPU-second; CPU-bound ops/s, per CPU-second.
    ratio_ranges: [Option<Stat>; 4],
    /// The tracer's peak RSS over these runs, MiB.
    tracer_peak_rss_mib: Option<f64>,
    /// The bottom-up account of the HTTP service's and the CPU-bound workload's windows
    /// (gotrace's modes only).
    accounts: [Option<Account>; 2],
    error: Option<String>,
}

/// A gotrace mode's bottom-up account on one workload: how often its probes ran and how long
/// each run took (the kernel's BPF statistics), with a price for the trap (see
/// [`price_accounts`]). The counts and run times do not depend on how fast the machine ran
/// that minute; the price does, but it is measured where the change is many times the noise.
/// What the price cannot hold: span mode attaching and detaching its probes once every
/// `--span-period` (30 s).
#[derive(Debug, Clone, Serialize)]
struct Account {
    /// Probe runs (each one trap) per second of the target's CPU time.
    runs_per_cpu_sec: Stat,
    /// The probes' run time per run, ns, without the trap.
    ns_per_run: Stat,
    /// gotrace's own CPU time over the target's.
    tracer_cpu_share: Stat,
    /// What a run's trap costs on this workload (see [`price_accounts`]); `None` when neither
    /// the cost part nor exact mode was measured.
    trap_ns: Option<f64>,
    /// The share of the target's CPU time spent in the probes: runs × (trap + run time) over
    /// its CPU time, per window.
    probe_cpu_share: Option<Stat>,
    /// The measured change of operations per target CPU-second, the runs' ratios.
    measured_per_cpu_ratio: Option<Stat>,
}

impl Account {
    /// The account of `tracer` (an index of `runs`'s tracers) from its windows' figures,
    /// which start at metric `first`.
    fn of(runs: &SideBySide, tracer: usize, first: usize, measured_per_cpu_ratio: Option<Stat>) -> Option<Self> {
        if tracer == 0 {
            return None;
        }
        Some(Self {
            runs_per_cpu_sec: runs.stat(tracer, first)?,
            ns_per_run: runs.stat(tracer, first + 1)?,
            tracer_cpu_share: runs.stat(tracer, first + 2)?,
            trap_ns: None,
            probe_cpu_share: None,
            measured_per_cpu_ratio,
        })
    }

    /// What one run cost the workload beyond its own timed time, by the measured change of
    /// work per CPU-second: traced CPU = untraced + runs × cost, so the ratio r of work per
    /// CPU-second is 1 − runs per CPU-second × cost.
    fn implied_trap_ns(&self) -> Option<f64> {
        let ratio = self.measured_per_cpu_ratio.as_ref()?.median;
        let runs = self.runs_per_cpu_sec.median;
        (runs > 0.0).then(|| (1.0 - ratio) / runs * 1e9 - self.ns_per_run.median)
    }

    /// Prices the runs at `trap_ns` each, plus their run time.
    fn price(&mut self, trap_ns: f64) {
        let shares: Vec<f64> = self
            .runs_per_cpu_sec
            .runs
            .iter()
            .zip(&self.ns_per_run.runs)
            .map(|(runs, run_ns)| runs * (trap_ns + run_ns) / 1e9)
            .collect();
        self.trap_ns = Some(trap_ns);
        self.probe_cpu_share = Stat::of(&shares);
    }
}

/// Prices the realistic rows' accounts. A trap costs at least the cost table's floor (an empty
/// probe on the pure-allocation loop, same Go release), and on a real workload more: its
/// caches and TLB are colder after each trip into the kernel and each run of the probe. Where
/// a mode probes every allocation (exact) or every span (span, always attached), the slowdown
/// on the same workload is far above the noise and nearly all probe: per run, what it cost the
/// workload beyond the run's own timed time is the trap's price there, with whatever the run
/// leaves behind. Exact mode's price goes to go-sampler's runs too (both copy little of the
/// stack), span mode's to its duty-cycled runs; the floor when it is higher, or when the row
/// that measures the price is missing.
fn price_accounts(realistic: &mut [RealisticRow], cost: &[CostTable]) {
    let floor = trap_floor_ns(cost);
    for workload in 0..2 {
        let implied = |by: Tracer| {
            realistic
                .iter()
                .find(|r| r.tracer == by)
                .and_then(|r| r.accounts[workload].as_ref())
                .and_then(Account::implied_trap_ns)
        };
        let (by_exact, by_span) = (implied(Tracer::Exact), implied(Tracer::SpanAttached));
        for row in realistic.iter_mut() {
            let implied = if matches!(row.tracer, Tracer::Span | Tracer::SpanAttached) {
                by_span
            } else {
                by_exact
            };
            let trap_ns = match (floor, implied) {
                (Some(f), Some(i)) => Some(f.max(i)),
                (f, i) => f.or(i),
            };
            if let (Some(trap_ns), Some(account)) = (trap_ns, row.accounts[workload].as_mut()) {
                account.price(trap_ns);
            }
        }
    }
}

/// The cost table of the Go release the realistic workloads are built with ([`REALISTIC_GO`]);
/// `None` when the cost part did not run (it measures all of [`COST_GO`], in order, or none).
fn realistic_cost_table(cost: &[CostTable]) -> Option<&CostTable> {
    COST_GO
        .iter()
        .position(|&minor| minor == REALISTIC_GO)
        .and_then(|i| cost.get(i))
}

/// The least a trap is priced at in the realistic accounts: the empty probe at gotrace's
/// placement, ns added per allocation, on the realistic workloads' Go release.
fn trap_floor_ns(cost: &[CostTable]) -> Option<f64> {
    realistic_cost_table(cost)?
        .rows
        .iter()
        .find(|r| r.tracer == Tracer::EmptyPlacement && r.depth == 0)?
        .added_ns
}

/// gotrace's modes are timed by the kernel in the realistic windows (`--time-probes`): two
/// clock reads per probe run, which the measured changes then include too.
const TIME_PROBES: &[&str] = &["--time-probes"];

/// A measured window's length, and the tracer's CPU time over it.
struct Window {
    started: Instant,
    tracer: Option<u32>,
    tracer_cpu_before: f64,
}

/// What [`Window::end`] found.
#[derive(Debug, Clone, Copy)]
struct WindowEnd {
    wall_secs: f64,
    tracer_cpu_secs: f64,
}

impl Window {
    fn start(attached: Option<&Attached>) -> Result<Self> {
        let tracer = attached.map(Attached::pid);
        Ok(Self {
            started: Instant::now(),
            tracer,
            tracer_cpu_before: tracer.map(cpu_seconds).transpose()?.unwrap_or(0.0),
        })
    }

    fn end(&self) -> Result<WindowEnd> {
        Ok(WindowEnd {
            wall_secs: self.started.elapsed().as_secs_f64(),
            tracer_cpu_secs: self
                .tracer
                .map(cpu_seconds)
                .transpose()?
                .map_or(0.0, |now| now - self.tracer_cpu_before),
        })
    }
}

/// What the kernel counted in one traced window, and what the tracer itself used: the
/// measured parts of the bottom-up account of what tracing costs.
#[derive(Debug, Clone, Copy, Default)]
struct WindowAccount {
    /// Probe runs per second of the target's CPU time: one trap each. Runs, not hits: while
    /// span mode detaches, its probes still trap for a grace period without counting a hit.
    runs_per_cpu_sec: f64,
    /// The probes' run time per run as the kernel timed it, ns (without the trap).
    ns_per_run: f64,
    /// The tracer's CPU time over the target's.
    tracer_cpu_share: f64,
}

/// How long a gotrace mode runs before its window is measured (the HTTP service under load, a
/// second longer): span mode's duty cycle starts attached, measures the hit rate over its first
/// second and detaches within the next half, and a sidecar lives in the settled state. The
/// first jsonl document (after 2 s) marks the start of what the account counts.
const SETTLE: Duration = Duration::from_secs(2);

impl WindowAccount {
    /// Figures a window adds to its workload's.
    const METRICS: usize = 3;

    /// Reads the probe figures of a gotrace mode's jsonl stream, written by a tracer that has
    /// stopped, from the first document on (the settled part); zeros for a tracer that is not
    /// one of gotrace's modes. `target_cpu_rate` is the target's CPU seconds per second in the
    /// measured window.
    fn read(env: &Env, tracer: Tracer, pid: u32, target_cpu_rate: f64, window: WindowEnd) -> Result<Self> {
        let Some(mode) = tracer.mode() else {
            return Ok(Self::default());
        };
        ensure!(target_cpu_rate > 0.0 && window.wall_secs > 0.0, "an empty window");
        let path = stream_path(env, mode, pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let documents = text
            .lines()
            .map(serde_json::from_str::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not JSON lines", path.display()))?;
        let (Some(first), Some(last)) = (documents.first(), documents.last()) else {
            bail!("{} is empty", path.display());
        };
        // Cumulative figures, at the end of a document's interval.
        let at = |doc: &serde_json::Value| -> Result<[f64; 3]> {
            let number = |pointer: &str| doc.pointer(pointer).and_then(serde_json::Value::as_f64);
            Ok([
                number("/interval/end_secs").context("a document without its interval")?,
                // Absent while the probes have not run yet.
                number("/probes/run_time/runs").unwrap_or(0.0),
                number("/probes/run_time/nanoseconds").unwrap_or(0.0),
            ])
        };
        let [start, runs_before, ns_before] = at(first)?;
        let [end, runs_after, ns_after] = at(last)?;
        let (secs, runs) = (end - start, runs_after - runs_before);
        ensure!(
            secs > 0.5,
            "{}: too short a trace after its first document",
            path.display()
        );
        Ok(Self {
            runs_per_cpu_sec: runs / secs / target_cpu_rate,
            ns_per_run: if runs > 0.0 { (ns_after - ns_before) / runs } else { 0.0 },
            tracer_cpu_share: window.tracer_cpu_secs / window.wall_secs / target_cpu_rate,
        })
    }

    fn figures(self) -> [f64; Self::METRICS] {
        [self.runs_per_cpu_sec, self.ns_per_run, self.tracer_cpu_share]
    }
}

/// Where `attach` has a gotrace mode's tracer write its jsonl stream.
fn stream_path(env: &Env, mode: &str, pid: u32) -> PathBuf {
    env.scratch.join(format!("{mode}-{pid}.jsonl"))
}

#[derive(Debug, Serialize)]
struct AccuracyRow {
    tracer: Tracer,
    setting: String,
    /// Largest |estimate − exact| / exact over the 10 callsites with the most bytes, per run.
    max_abs_error: Option<Stat>,
    /// Mean of the same, per run.
    mean_abs_error: Option<Stat>,
    error: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct TracerCosts {
    /// From starting `gotrace attach` to its "attached" line, on the Go distribution's
    /// `compile`, ms.
    attach_ms: Option<Stat>,
    /// The part gotrace reports as loading and attaching the probes, ms.
    attach_probes_ms: Option<Stat>,
    attach_binary: String,
    attach_error: Option<String>,
    symbolize_stacks: usize,
    symbolize_frames: usize,
    /// Building the first profile of that many distinct stacks, cold caches, ms.
    symbolize_ms: Option<Stat>,
    /// The same build again, warm caches, ms.
    symbolize_warm_ms: Option<Stat>,
    symbolize_error: Option<String>,
    cpu_at_rate: Vec<TracerCpu>,
}

#[derive(Debug, Serialize)]
struct TracerCpu {
    tracer: Tracer,
    /// What the target managed while traced.
    target_allocs_per_sec: Option<Stat>,
    /// gotrace's own CPU time over wall time, percent of one core.
    cpu_percent: Option<Stat>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    what: String,
    value: Option<f64>,
    /// Lowest and highest over the runs, where the figure is a median of paired runs.
    range: Option<[f64; 2]>,
    limit: String,
    verdict: Verdict,
    /// For a realistic workload's target: how far apart two untraced instances came out in
    /// the A/A windows, at most, percent.
    noise: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// Two untraced instances came out further apart than the limit in some A/A window: this
    /// run cannot tell whether the limit was met, and another should be taken.
    Undecided,
    NotMeasured,
}

impl Verdict {
    fn of(met: Option<bool>) -> Self {
        match met {
            Some(true) => Self::Met,
            Some(false) => Self::Missed,
            None => Self::NotMeasured,
        }
    }
}

pub fn run(repo: &Path, args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark loads eBPF programs and attaches uprobes: run it as root"
    );
    let plan = Plan::new(args);
    let started = Instant::now();
    eprintln!("bench: building gotrace (release) and the Go fixtures");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(repo)
        .args(["build", "--release", "-p", "tracer"])
        .status()
        .context("cannot run cargo build")?;
    ensure!(status.success(), "cargo build --release -p tracer failed");
    fixtures::run(repo, &fixtures::Args::all())?;
    let out_dir = repo.join(&args.out);
    let scratch = out_dir.join("scratch");
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let env = Env {
        gotrace: repo.join("target/release/gotrace"),
        scratch,
        bpftrace: find_on_path("bpftrace"),
        goarch: match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => bail!("no Go fixtures for {other}"),
        },
    };
    ensure!(
        find_on_path("wrk").is_some(),
        "wrk is not installed: run scripts/setup.sh"
    );
    let machine = machine(repo, &env)?;
    eprintln!(
        "bench: {} runs of each measurement{}; {} on {} cores, Linux {}",
        plan.runs,
        if args.quick { " (--quick)" } else { "" },
        machine.cpu,
        machine.cores,
        machine.kernel
    );

    let wanted = |part: Part| args.only.is_empty() || args.only.contains(&part);
    let mut cost = Vec::new();
    if wanted(Part::Cost) {
        for minor in COST_GO {
            cost.push(cost_per_allocation(repo, &env, &plan, minor)?);
        }
    }
    let (mut realistic, cpus, noise) = if wanted(Part::Realistic) {
        realistic(repo, &env, &plan)?
    } else {
        (Vec::new(), String::new(), SideBySideNoise::default())
    };
    let accuracy = if wanted(Part::Accuracy) {
        accuracy(repo, &env, &plan)
    } else {
        Vec::new()
    };
    let tracer = if wanted(Part::Tracer) {
        tracer_costs(repo, &env, &plan)?
    } else {
        TracerCosts::default()
    };
    price_accounts(&mut realistic, &cost);
    let targets = targets(&cost, &realistic, &noise);
    let failed = failures(&cost, &realistic, &accuracy, &tracer);
    let results = Results {
        machine,
        quick: args.quick,
        plan,
        cost,
        realistic,
        cpus,
        noise,
        accuracy,
        tracer,
        targets,
    };

    publish(repo, &out_dir, args.readme, &results, started)?;
    // A missed target is a result; a measurement that could not run is a broken benchmark.
    ensure!(
        failed.is_empty(),
        "{} measurements could not run:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    Ok(())
}

/// Writes the results (`results.md`, `results.json`, and README.md's tables when asked) and
/// prints them.
fn publish(repo: &Path, out_dir: &Path, readme: bool, results: &Results, started: Instant) -> Result<()> {
    let markdown = report::markdown(results);
    let json = serde_json::to_string_pretty(results).context("cannot encode the results")?;
    std::fs::write(out_dir.join("results.json"), json + "\n").context("cannot write results.json")?;
    std::fs::write(out_dir.join("results.md"), &markdown).context("cannot write results.md")?;
    if readme {
        report::update_readme(&repo.join("README.md"), &markdown)?;
        eprintln!("bench: README.md updated");
    }
    println!("{markdown}");
    if let Some(advice) = report::undecided_advice(&results.targets) {
        eprintln!("bench: {advice}");
    }
    eprintln!(
        "bench: done in {:.0} s; {} and {}",
        started.elapsed().as_secs_f64(),
        out_dir.join("results.md").display(),
        out_dir.join("results.json").display()
    );
    Ok(())
}

/// Every measurement that could not run, named.
fn failures(
    cost: &[CostTable],
    realistic: &[RealisticRow],
    accuracy: &[AccuracyRow],
    tracer: &TracerCosts,
) -> Vec<String> {
    let mut out = Vec::new();
    for table in cost {
        for row in &table.rows {
            if let Some(e) = &row.error {
                out.push(format!(
                    "{} cost at depth {}, {}: {e}",
                    table.go_version,
                    row.depth,
                    row.tracer.label()
                ));
            }
        }
    }
    for row in realistic {
        if let Some(e) = &row.error {
            out.push(format!("realistic, {}: {e}", row.tracer.label()));
        }
    }
    for row in accuracy {
        if let Some(e) = &row.error {
            out.push(format!("accuracy, {}: {e}", row.tracer.label()));
        }
    }
    for e in [&tracer.attach_error, &tracer.symbolize_error].into_iter().flatten() {
        out.push(format!("tracer costs: {e}"));
    }
    for row in &tracer.cpu_at_rate {
        if let Some(e) = &row.error {
            out.push(format!("tracer CPU, {}: {e}", row.tracer.label()));
        }
    }
    out
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn machine(repo: &Path, env: &Env) -> Result<Machine> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let mut go = Vec::new();
    for minor in COST_GO {
        go.push(go::Toolchain::find(repo, minor)?.version);
    }
    let bpftrace = env.bpftrace.as_ref().and_then(|b| {
        let out = Command::new(b).arg("--version").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(Machine {
        cpu,
        cores,
        kernel,
        go,
        bpftrace,
        date,
    })
}

/// The target's counting allocation entry points, from `gotrace inspect`: where exact mode
/// and the empty probes go, and what the bpftrace one-liner probes.
fn counting_functions(env: &Env, binary: &Path) -> Result<Vec<String>> {
    let out = Command::new(&env.gotrace)
        .arg("inspect")
        .arg(binary)
        .args(["--format", "json"])
        .output()
        .context("cannot run gotrace inspect")?;
    ensure!(out.status.success(), "gotrace inspect {} failed", binary.display());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).context("gotrace inspect: bad JSON")?;
    let functions: Vec<String> = doc["probes"]
        .as_array()
        .context("gotrace inspect: no probes")?
        .iter()
        .filter(|p| p["role"] == "count")
        .filter_map(|p| p["function"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !functions.is_empty(),
        "{} has no counting entry points",
        binary.display()
    );
    Ok(functions)
}

/// How long a tracer gets to exit after SIGINT (see [`Attached::stop`]).
const STOP_GRACE: Duration = Duration::from_mins(2);

/// A tracer attached to a target, ready.
struct Attached {
    proc: Proc,
}

impl Attached {
    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Detaches (SIGINT) and waits for the tracer to exit. Generously: bpftrace, on Go 1.27's
    /// ~70 size-specialised entry points, once took more than 30 s to print its map and detach
    /// on a loaded 2-core VM (a CI run failed so); nothing is measured while it does.
    fn stop(self) -> Result<()> {
        let name = self.proc.name.clone();
        let status = self.proc.stop(libc::SIGINT, STOP_GRACE)?;
        ensure!(status.success(), "{name} exited with {status}");
        Ok(())
    }
}

/// Attaches `tracer` to process `pid` of `binary` and waits until its probes are live.
/// `extra` goes to `gotrace attach`.
fn attach(
    env: &Env,
    tracer: Tracer,
    pid: u32,
    binary: &Path,
    functions: &[String],
    extra: &[&str],
) -> Result<Option<Attached>> {
    let pid_arg = pid.to_string();
    let timeout = Duration::from_mins(1);
    let proc = match tracer {
        Tracer::Untraced => return Ok(None),
        Tracer::EmptyEntry | Tracer::EmptyPlacement => {
            let at = if tracer == Tracer::EmptyEntry {
                "entry"
            } else {
                "placement"
            };
            let proc = Proc::start(
                "gotrace bench empty-probe",
                Command::new(&env.gotrace).args(["bench", "empty-probe", &pid_arg, "--at", at]),
                true,
            )?;
            proc.wait_for("gotrace: attached", true, timeout)?;
            proc
        }
        Tracer::Bpftrace => {
            let bpftrace = env
                .bpftrace
                .as_ref()
                .context("bpftrace is not installed (scripts/setup.sh installs it)")?;
            let probes: Vec<String> = functions
                .iter()
                .map(|f| format!("uprobe:{}:{f}", binary.display()))
                .collect();
            // bpftrace runs BEGIN once every probe is attached.
            let program = format!(
                "BEGIN {{ printf(\"live\\n\"); }} {} {{ @[ustack, reg(\"ax\")] = count(); }}",
                probes.join(", ")
            );
            let proc = Proc::start("bpftrace", Command::new(bpftrace).arg("-e").arg(program), true)?;
            proc.wait_for("live", false, timeout)?;
            proc
        }
        Tracer::Exact | Tracer::ExactTimed | Tracer::GoSampler | Tracer::Span | Tracer::SpanAttached => {
            let mode = tracer.mode().unwrap_or("exact");
            let always = match tracer {
                Tracer::SpanAttached => &["--span-budget", "0"][..],
                Tracer::ExactTimed => TIME_PROBES,
                _ => &[],
            };
            let proc = Proc::start(
                "gotrace attach",
                Command::new(&env.gotrace)
                    .args(["attach", &pid_arg, "--mode", mode, "-f", "json", "-o"])
                    .arg(env.scratch.join(format!("{mode}-{pid}.json")))
                    .arg("-o")
                    .arg(stream_path(env, mode, pid))
                    .args(always)
                    .args(extra),
                true,
            )?;
            proc.wait_for("gotrace: attached", true, timeout)?;
            proc
        }
    };
    Ok(Some(Attached { proc }))
}

/// Parses a workload's report line, `allocs N cpu_ns C` or `ops N cpu_ns C` (`ops N` without
/// the CPU time, as the CPU-bound workload once printed, reads as 0 ns).
fn report_line(line: &str) -> Option<(f64, f64)> {
    let mut words = line.split_whitespace();
    let _label = words.next()?;
    let count: f64 = words.next()?.parse().ok()?;
    let cpu = match (words.next(), words.next()) {
        (Some("cpu_ns"), Some(v)) => v.parse().ok()?,
        _ => 0.0,
    };
    Some((count, cpu))
}

/// Sums the next `secs` whole report lines of a workload (skipping the partial one first):
/// the counts, the CPU nanoseconds the lines report, and the target's CPU seconds over those
/// lines as `/proc` counts them.
fn sum_report_lines(target: &Proc, secs: usize) -> Result<(f64, f64, f64)> {
    let _ = target.drain_stdout();
    let _partial = target.next_line(Duration::from_secs(10))?;
    let cpu_before = cpu_seconds(target.pid())?;
    let (mut count, mut cpu) = (0.0, 0.0);
    for _ in 0..secs {
        let line = target.next_line(Duration::from_secs(10))?;
        let (n, c) = report_line(&line).with_context(|| format!("unexpected line {line:?}"))?;
        count += n;
        cpu += c;
    }
    Ok((count, cpu, cpu_seconds(target.pid())? - cpu_before))
}

/// The depths of the cost table's rows: how many frames below its goroutine's entry the loop
/// allocates. Real services allocate 20-60 frames deep; the shallow row is the loop as it was.
const COST_DEPTHS: [u32; 3] = [0, 30, 90];

/// What is measured at each depth: everything at the shallow one, the floor and exact mode at
/// the deep ones (the sampled modes' cost does not grow with the stack: they walk it rarely).
fn cost_tracers(depth: u32) -> &'static [Tracer] {
    if depth == 0 {
        &[
            Tracer::Untraced,
            Tracer::EmptyEntry,
            Tracer::EmptyPlacement,
            Tracer::Bpftrace,
            Tracer::Exact,
            Tracer::ExactTimed,
            Tracer::GoSampler,
            Tracer::Span,
        ]
    } else {
        &[
            Tracer::Untraced,
            Tracer::EmptyPlacement,
            Tracer::Exact,
            Tracer::ExactTimed,
        ]
    }
}

fn cost_per_allocation(repo: &Path, env: &Env, plan: &Plan, minor: &str) -> Result<CostTable> {
    let binary = env.workloads(repo, minor);
    let functions = counting_functions(env, &binary)?;
    let version = go::Toolchain::find(repo, minor)?.version;
    let mut rows = Vec::new();
    for depth in COST_DEPTHS {
        rows.extend(cost_at_depth(env, plan, &binary, &functions, &version, depth)?);
    }
    Ok(CostTable {
        go_version: version,
        probed_functions: functions,
        rows,
    })
}

/// The cost table's rows at one depth: `workloads loop --depth DEPTH`, each tracer in turn,
/// `plan.runs` times.
fn cost_at_depth(
    env: &Env,
    plan: &Plan,
    binary: &Path,
    functions: &[String],
    version: &str,
    depth: u32,
) -> Result<Vec<CostRow>> {
    let target = Proc::start(
        "workloads loop",
        Command::new(binary).args(["loop", "--depth", &depth.to_string()]),
        false,
    )?;
    target.wait_for("ready", false, Duration::from_secs(20))?;
    let tracers = cost_tracers(depth);
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut run_ns: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
    let mut errors: Vec<Option<String>> = vec![None; tracers.len()];
    for run in 1..=plan.runs {
        for (i, &tracer) in tracers.iter().enumerate() {
            if errors[i].is_some() {
                continue;
            }
            let measured = (|| -> Result<(f64, Option<f64>)> {
                let attached = attach(env, tracer, target.pid(), binary, functions, &[])?;
                let (allocs, cpu_ns, _) = sum_report_lines(&target, plan.window_secs)?;
                if let Some(a) = attached {
                    a.stop()?;
                }
                ensure!(allocs > 0.0, "the loop allocated nothing");
                let probe_ns = if tracer == Tracer::ExactTimed {
                    Some(probe_run_ns(env, target.pid())?)
                } else {
                    None
                };
                Ok((cpu_ns / allocs, probe_ns))
            })();
            match measured {
                Ok((ns, probe_ns)) => {
                    eprintln!(
                        "bench: {version} cost at depth {depth}, run {run}/{}: {:<52} {ns:>8.0} ns/alloc{}",
                        plan.runs,
                        tracer.label(),
                        probe_ns.map_or_else(String::new, |p| format!(", {p:.0} ns a probe run"))
                    );
                    samples[i].push(ns);
                    run_ns[i].extend(probe_ns);
                }
                Err(e) => {
                    eprintln!("bench: {version} cost at depth {depth}: {}: {e:#}", tracer.label());
                    errors[i] = Some(format!("{e:#}"));
                }
            }
        }
    }
    drop(target);
    let stats: Vec<Option<Stat>> = samples.iter().map(|s| Stat::of(s)).collect();
    let median = |t: Tracer| -> Option<f64> {
        let i = tracers.iter().position(|&x| x == t)?;
        stats[i].as_ref().map(|s| s.median)
    };
    let untraced = median(Tracer::Untraced);
    let added = |t: Tracer| -> Option<f64> { Some(median(t)? - untraced?) };
    let floor = added(Tracer::EmptyPlacement);
    let bpftrace = added(Tracer::Bpftrace);
    let added_by: Vec<Option<f64>> = tracers.iter().map(|&t| added(t)).collect();
    let rows = tracers
        .iter()
        .zip(stats)
        .zip(errors)
        .zip(run_ns)
        .zip(added_by)
        .map(|((((&tracer, stat), error), run_ns), added)| {
            let added_ns = (tracer != Tracer::Untraced).then_some(added).flatten();
            // Ratios mean something for the rows that probe every allocation; the sampled
            // modes' added cost is within the noise of zero.
            let per_allocation = !matches!(tracer, Tracer::Untraced | Tracer::GoSampler | Tracer::Span);
            CostRow {
                depth,
                tracer,
                ns_per_alloc: stat,
                added_ns,
                vs_floor: added_ns.zip(floor).map(|(a, f)| a / f).filter(|_| per_allocation),
                bpftrace_over_this: added_ns.zip(bpftrace).map(|(a, b)| b / a).filter(|_| per_allocation),
                probe_run_ns: Stat::of(&run_ns),
                error,
            }
        })
        .collect();
    Ok(rows)
}

/// The probe's run time per run in the timed exact window just ended: from the report
/// `gotrace attach` wrote when it stopped.
fn probe_run_ns(env: &Env, pid: u32) -> Result<f64> {
    let path = env.scratch.join(format!("exact-{pid}.json"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let run_time = &report["probes"]["run_time"];
    let (runs, ns) = (run_time["runs"].as_f64(), run_time["nanoseconds"].as_f64());
    match (runs, ns) {
        (Some(runs), Some(ns)) if runs > 0.0 => Ok(ns / runs),
        _ => bail!("the report has no probe run time: {}", report["probes"]),
    }
}

/// wrk's Lua hook that paces each connection: after every response it waits 1 ms before the
/// next request. With `-c8`, an instance of the HTTP service gets up to ~8,000 requests a
/// second and in practice ~5,000 (a quarter of a CPU each here): both instances get the same
/// load and neither saturates, so neither's requests per CPU-second depends on how the
/// scheduler shared the CPU out. (Two instances under unpaced wrk differed by up to ±40% in
/// requests/s, and their requests per CPU-second followed: a service batches more per wakeup
/// the busier it is.)
const PACE_SCRIPT: &str = "-- gotrace bench: each connection waits 1 ms after every response\n\
                           function delay()\n   return 1\nend\n";

/// `wrk` against `url` for `secs`, each connection paced by `pace` when given
/// ([`PACE_SCRIPT`]): requests per second and p99 latency in ms.
fn wrk(url: &str, secs: u64, pace: Option<&Path>) -> Result<(f64, f64)> {
    let mut command = Command::new("wrk");
    match pace {
        Some(script) => command.args(["-t1", "-c8", "-s"]).arg(script),
        None => command.args(["-t2", "-c16"]),
    };
    let out = command
        .args([&format!("-d{secs}s"), "--latency", url])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| latency_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output: {text}"))?;
    Ok((rps, p99))
}

/// `1.23ms`, `456.00us`, `1.50s` → milliseconds.
fn latency_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (text.strip_suffix('s')?, 1000.0)
    };
    Some(number.parse::<f64>().ok()? * factor)
}

/// One window of a workload's two instances side by side: the figures of the instance that
/// was traced (for a tracer, its account after the compared figures, see [`WindowAccount`]),
/// those of the other, and the share of the workload CPU's time the hypervisor stole.
struct PairedWindow {
    traced: Vec<f64>,
    untraced: Vec<f64>,
    steal: f64,
}

/// One realistic workload as two identical instances side by side on the workload's CPU,
/// under the same load and measured over the same seconds. In each window one instance runs
/// under the tracer and the other untraced, and each figure of the traced one is compared with
/// the other's: whatever the host does that minute (other VMs stealing the CPU, a neighbour
/// thrashing the shared caches) it does to both. Which instance is traced alternates from
/// window to window and from run to run, so that a difference between the instances cancels.
/// The first tracer must be [`Tracer::Untraced`]: its windows trace neither (A/A), one before
/// each traced window, and how far apart the two instances come out there is the noise every
/// traced change stands in.
///
/// This replaced windows taken one after the other (untraced, traced, untraced, …), in which
/// untraced neighbours 45 s apart differed by 10.6% per service CPU-second (median, 0.3–34.7%)
/// in the last full bench: steal time on this host comes and goes by the minute, by up to 30%.
/// Side by side, A/A windows differed by 0.4–2.7% in runs by hand, under steal of 1–31%.
struct SideBySide {
    /// `[tracer][metric]`: the traced instance's figures; for [`Tracer::Untraced`], the
    /// untraced instance's in every window.
    values: Vec<Vec<Vec<f64>>>,
    /// `[tracer][metric]`: traced over untraced in the same window; for
    /// [`Tracer::Untraced`], one untraced instance over the other.
    ratios: Vec<Vec<Vec<f64>>>,
    /// Every window's steal share of the workload CPU.
    steal: Vec<f64>,
    errors: Vec<Option<String>>,
}

impl SideBySide {
    /// `measure(tracer, traced)` measures one window with instance `traced` (0 or 1) under
    /// `tracer`; the first `compared` figures of both instances are compared.
    fn run(
        plan: &Plan,
        tracers: &[Tracer],
        (compared, metrics): (usize, usize),
        what: &str,
        mut measure: impl FnMut(Tracer, usize) -> Result<PairedWindow>,
    ) -> Self {
        let n = tracers.len();
        let mut out = Self {
            values: vec![vec![Vec::new(); metrics]; n],
            ratios: vec![vec![Vec::new(); compared]; n],
            steal: Vec::new(),
            errors: vec![None; n],
        };
        // An A/A window before each traced one, so that the noise is sampled as often as the
        // changes and under the same minutes' conditions.
        // The traced instance alternates from mode to mode and from run to run (an A/A window
        // takes the parity of the mode after it).
        let order = (1..n).flat_map(|i| [(0, i), (i, i)]);
        for run in 0..plan.runs {
            for (i, parity) in order.clone() {
                if out.errors[i].is_some() || out.errors[0].is_some() {
                    continue;
                }
                let instance = (run + parity) % 2;
                let mode = tracers[i];
                match measure(mode, instance) {
                    Ok(figures) => {
                        let shown =
                            |figures: &[f64]| figures.iter().map(|v| format!("{v:.1}")).collect::<Vec<_>>().join(" ");
                        eprintln!(
                            "bench: {what}, run {}/{}: {:<20} traced #{instance}: {}; untraced: {}; steal {:.1}%",
                            run + 1,
                            plan.runs,
                            mode.label(),
                            shown(&figures.traced),
                            shown(&figures.untraced),
                            figures.steal * 100.0
                        );
                        out.add(i, &figures, compared);
                    }
                    Err(e) => {
                        eprintln!("bench: {what}: {}: {e:#}", mode.label());
                        out.errors[i] = Some(format!("{e:#}"));
                    }
                }
            }
        }
        out
    }

    fn add(&mut self, tracer: usize, window: &PairedWindow, compared: usize) {
        for (m, v) in window.traced.iter().enumerate() {
            if tracer > 0 {
                self.values[tracer][m].push(*v);
            }
        }
        for (m, v) in window.untraced.iter().take(compared).enumerate() {
            self.values[0][m].push(*v);
            if tracer == 0 {
                self.values[0][m].push(window.traced[m]);
            }
        }
        for m in 0..compared {
            let (under_tracer, beside_it) = (window.traced[m], window.untraced[m]);
            if beside_it > 0.0 {
                self.ratios[tracer][m].push(under_tracer / beside_it);
            }
        }
        self.steal.push(window.steal);
    }

    fn stat(&self, tracer: usize, metric: usize) -> Option<Stat> {
        Stat::of(&self.values[tracer][metric])
    }

    fn ratio(&self, tracer: usize, metric: usize) -> Option<Stat> {
        Stat::of(self.ratios[tracer].get(metric)?)
    }

    /// How far apart the two untraced instances came out in the A/A windows, |a / b − 1| in
    /// percent.
    fn noise(&self, metric: usize) -> Option<Stat> {
        let apart: Vec<f64> = self.ratios[0][metric].iter().map(|r| (r - 1.0).abs() * 100.0).collect();
        Stat::of(&apart)
    }

    /// The steal share of the workload CPU over the windows, in percent.
    fn steal_percent(&self) -> Option<Stat> {
        Stat::of(&self.steal.iter().map(|s| s * 100.0).collect::<Vec<_>>())
    }
}

/// The noise the realistic changes stand in: how far apart the two untraced instances came out
/// in the A/A windows (|a / b − 1|, percent), and how much of the workload CPU's time the
/// hypervisor stole over the windows (percent).
#[derive(Debug, Default, Serialize)]
struct SideBySideNoise {
    http_per_cpu: Option<Stat>,
    http_p99: Option<Stat>,
    cpu_ops: Option<Stat>,
    cpu_per_cpu: Option<Stat>,
    http_steal: Option<Stat>,
    cpu_steal: Option<Stat>,
}

/// Two instances of a workload, started side by side on the workload's CPU.
fn start_pair(binary: &Path, args: &[&str], split: Option<&CpuSplit>) -> Result<[Proc; 2]> {
    Ok([
        start_workload(binary, args, split)?,
        start_workload(binary, args, split)?,
    ])
}

/// The HTTP service under paced wrk and the CPU-bound workload, each as two instances side
/// by side ([`SideBySide`]), untraced and under each mode. Also returns which CPUs ran what
/// while the workloads were measured, and the noise.
fn realistic(repo: &Path, env: &Env, plan: &Plan) -> Result<(Vec<RealisticRow>, String, SideBySideNoise)> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let tracers = [
        Tracer::Untraced,
        Tracer::Exact,
        Tracer::GoSampler,
        Tracer::Span,
        Tracer::SpanAttached,
    ];
    let mut rss: Vec<Option<f64>> = vec![None; tracers.len()];
    let mut note_rss = |tracer: Tracer, attached: Option<&Attached>| {
        let i = tracers.iter().position(|&t| t == tracer).unwrap_or(0);
        if let Some(mib) = attached.and_then(|a| peak_rss_mib(a.pid()).ok()) {
            rss[i] = Some(rss[i].map_or(mib, |m: f64| m.max(mib)));
        }
    };

    // The workloads on one CPU, wrk and gotrace on the others (see `CpuSplit`); a Go
    // program pinned so runs with GOMAXPROCS 1 (the runtime sets it from its CPU mask).
    let split = CpuSplit::of_this_thread()?;
    let cpus = split.as_ref().map_or_else(
        || "the workloads, wrk and gotrace share the one CPU".to_owned(),
        CpuSplit::describe,
    );
    eprintln!("bench: realistic: {cpus}");
    let pinned = split.as_ref().map(CpuSplit::pin_this_thread_to_others).transpose()?;
    let setup = RealisticSetup {
        env,
        plan,
        binary: &binary,
        split: split.as_ref(),
        tracers: &tracers,
    };
    let http = http_side_by_side(&setup, &mut note_rss)?;

    let cpu = cpu_side_by_side(&setup, &mut note_rss)?;
    drop(pinned);

    let noise = SideBySideNoise {
        http_per_cpu: http.noise(2),
        http_p99: http.noise(1),
        cpu_ops: cpu.noise(0),
        cpu_per_cpu: cpu.noise(1),
        http_steal: http.steal_percent(),
        cpu_steal: cpu.steal_percent(),
    };
    Ok((realistic_rows(&tracers, &http, &cpu, &rss), cpus, noise))
}

/// What the realistic workloads' side-by-side runs share: where to find things, how long to
/// run, the workload binary, which CPU runs it, and the modes in order.
struct RealisticSetup<'a> {
    env: &'a Env,
    plan: &'a Plan,
    binary: &'a Path,
    split: Option<&'a CpuSplit>,
    tracers: &'a [Tracer],
}

impl RealisticSetup<'_> {
    /// Seconds stolen from the workload's CPU so far (from every CPU when they are not split).
    fn steal_seconds(&self) -> Result<f64> {
        steal_seconds(self.split.map(CpuSplit::workload_cpu))
    }
}

/// The HTTP service's two instances under paced wrk ([`PACE_SCRIPT`]), side by side.
fn http_side_by_side(
    setup: &RealisticSetup<'_>,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
) -> Result<SideBySide> {
    let RealisticSetup {
        env,
        plan,
        binary,
        split,
        tracers,
    } = *setup;
    let steal = || setup.steal_seconds();
    let pace = env.scratch.join("pace.lua");
    std::fs::write(&pace, PACE_SCRIPT).with_context(|| format!("cannot write {}", pace.display()))?;
    let servers = start_pair(binary, &["http", "127.0.0.1:0"], split)?;
    let mut urls = Vec::new();
    for server in &servers {
        let ready = server.wait_for("ready", false, Duration::from_secs(20))?;
        urls.push(format!("{}/json", ready.trim_start_matches("ready").trim()));
    }
    // Both instances loaded at once, each by its own wrk.
    let load_both = |secs: u64| -> Result<[(f64, f64); 2]> {
        std::thread::scope(|scope| {
            let loads: Vec<_> = urls
                .iter()
                .map(|url| scope.spawn(|| wrk(url, secs, Some(&pace))))
                .collect();
            let mut out = [(0.0, 0.0); 2];
            for (slot, load) in out.iter_mut().zip(loads) {
                *slot = load.join().map_err(|_| anyhow::anyhow!("a wrk thread panicked"))??;
            }
            Ok(out)
        })
    };
    load_both(1).context("warming the HTTP services up")?;
    // Metrics: requests/s, p99 ms, requests per second of the service's CPU time; then the
    // traced instance's account (see `WindowAccount`).
    let http = SideBySide::run(
        plan,
        tracers,
        (3, 3 + WindowAccount::METRICS),
        "http (req/s, p99 ms, req per CPU-s; probe runs per CPU-s, ns per run, gotrace CPU share)",
        |tracer, traced| {
            let pids = [servers[traced].pid(), servers[1 - traced].pid()];
            paired_window(
                env,
                (tracer, plan.span_period_secs),
                pids[0],
                binary,
                &mut *note_rss,
                (
                    // Settled under load: idle, span mode's duty cycle would stay attached.
                    || load_both(SETTLE.as_secs().max(1) + 1).map(drop),
                    |window_secs| {
                        let cpu_before = [cpu_seconds_exact(pids[0])?, cpu_seconds_exact(pids[1])?];
                        let steal_before = steal()?;
                        let started = Instant::now();
                        let loads = load_both(window_secs)?;
                        let wall = started.elapsed().as_secs_f64();
                        let stolen = (steal()? - steal_before) / wall;
                        #[expect(clippy::cast_precision_loss, reason = "seconds")]
                        let secs = window_secs as f64;
                        let mut figures = Vec::new();
                        let mut cpu_rate = 0.0;
                        for (k, &pid) in pids.iter().enumerate() {
                            let (rps, p99) = loads[(traced + k) % 2];
                            let cpu = cpu_seconds_exact(pid)? - cpu_before[k];
                            ensure!(cpu > 0.0, "the service used no CPU time");
                            if k == 0 {
                                cpu_rate = cpu / secs;
                            }
                            figures.push(vec![rps, p99, rps * secs / cpu]);
                        }
                        let untraced = figures.pop().unwrap_or_default();
                        let traced = figures.pop().unwrap_or_default();
                        Ok((traced, untraced, stolen, cpu_rate))
                    },
                    plan.wrk_secs,
                ),
            )
        },
    );
    drop(servers);
    Ok(http)
}

/// The CPU-bound workload's two instances, busy, side by side.
fn cpu_side_by_side(
    setup: &RealisticSetup<'_>,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
) -> Result<SideBySide> {
    let RealisticSetup {
        env,
        plan,
        binary,
        split,
        tracers,
    } = *setup;
    let steal = || setup.steal_seconds();
    let workloads = start_pair(binary, &["cpu", "0"], split)?;
    for workload in &workloads {
        workload.wait_for("ready", false, Duration::from_secs(20))?;
    }
    // Metrics: operations/s, operations per second of the workload's CPU time.
    let cpu = SideBySide::run(
        plan,
        tracers,
        (2, 2 + WindowAccount::METRICS),
        "cpu-bound (ops/s, ops per CPU-s; probe runs per CPU-s, ns per run, gotrace CPU share)",
        |tracer, traced| {
            let pair = [&workloads[traced], &workloads[1 - traced]];
            paired_window(
                env,
                (tracer, plan.span_period_secs),
                pair[0].pid(),
                binary,
                &mut *note_rss,
                (
                    || {
                        std::thread::sleep(SETTLE);
                        Ok(())
                    },
                    |window_secs| {
                        // Each instance's report lines of the same seconds: each line covers one
                        // second of that instance, with its own CPU time in it.
                        for workload in pair {
                            let _ = workload.drain_stdout();
                        }
                        let steal_before = steal()?;
                        let started = Instant::now();
                        std::thread::sleep(Duration::from_secs(window_secs));
                        let stolen = (steal()? - steal_before) / started.elapsed().as_secs_f64();
                        let mut figures = Vec::new();
                        for workload in pair {
                            let (mut lines, mut ops, mut cpu_ns) = (0.0, 0.0, 0.0);
                            for line in workload.drain_stdout() {
                                let (n, c) = report_line(&line).with_context(|| format!("unexpected line {line:?}"))?;
                                lines += 1.0;
                                ops += n;
                                cpu_ns += c;
                            }
                            ensure!(lines > 0.0 && cpu_ns > 0.0, "the workload reported no CPU time");
                            figures.push((vec![ops / lines, ops / (cpu_ns / 1e9)], cpu_ns / 1e9 / lines));
                        }
                        let (untraced, _) = figures.pop().unwrap_or_default();
                        let (traced, cpu_rate) = figures.pop().unwrap_or_default();
                        Ok((traced, untraced, stolen, cpu_rate))
                    },
                    plan.window_secs as u64,
                ),
            )
        },
    );
    drop(workloads);
    Ok(cpu)
}

/// Starts `workloads ARGS`, on the workload's CPU when the CPUs are split.
fn start_workload(binary: &Path, args: &[&str], split: Option<&CpuSplit>) -> Result<Proc> {
    let mut command = Command::new(binary);
    command.args(args);
    if let Some(split) = split {
        split.pin_workload(&mut command);
    }
    Proc::start(&format!("workloads {}", args.join(" ")), &mut command, false)
}

/// The realistic table's rows from the HTTP and CPU-bound runs of `tracers`, with each
/// tracer's peak RSS.
fn realistic_rows(tracers: &[Tracer], http: &SideBySide, cpu: &SideBySide, rss: &[Option<f64>]) -> Vec<RealisticRow> {
    let median = |s: Option<Stat>| s.map(|s| s.median);
    (0..tracers.len())
        .map(|i| RealisticRow {
            tracer: tracers[i],
            http_requests_per_sec: http.stat(i, 0),
            http_p99_ms: http.stat(i, 1),
            http_requests_per_cpu_sec: http.stat(i, 2),
            cpu_ops_per_sec: cpu.stat(i, 0),
            cpu_ops_per_cpu_sec: cpu.stat(i, 1),
            http_ratio: median(http.ratio(i, 0)),
            http_per_cpu_ratio: median(http.ratio(i, 2)),
            http_p99_ratio: http.ratio(i, 1),
            cpu_ratio: median(cpu.ratio(i, 0)),
            cpu_per_cpu_ratio: median(cpu.ratio(i, 1)),
            ratio_ranges: [http.ratio(i, 0), http.ratio(i, 2), cpu.ratio(i, 0), cpu.ratio(i, 1)],
            accounts: [
                Account::of(http, i, 3, http.ratio(i, 2)),
                Account::of(cpu, i, 2, cpu.ratio(i, 1)),
            ],
            tracer_peak_rss_mib: rss[i],
            error: http.errors[i].clone().or_else(|| cpu.errors[i].clone()),
        })
        .collect()
}

/// One window of a realistic workload's two instances: attaches `tracer` to `traced_pid` (gotrace's
/// modes timing their probes), lets it settle, measures, stops it and appends the window's
/// account ([`WindowAccount`]) to the traced instance's figures: `settle` (skipped untraced),
/// then `measure`, which is given the window's length in seconds (`window_secs`, or
/// duty-cycled span's period) and returns the traced and the untraced instance's figures, the
/// steal share and the traced instance's CPU seconds per second.
fn paired_window(
    env: &Env,
    (tracer, span_period_secs): (Tracer, Option<u64>),
    traced_pid: u32,
    binary: &Path,
    note_rss: &mut impl FnMut(Tracer, Option<&Attached>),
    (settle, measure, window_secs): (
        impl Fn() -> Result<()>,
        impl FnOnce(u64) -> Result<(Vec<f64>, Vec<f64>, f64, f64)>,
        u64,
    ),
) -> Result<PairedWindow> {
    // Duty-cycled span mode measures its rate over the first second, detaches, and attaches
    // again ~0.95 of a period later, so with the window as long as the period (and the
    // settling 2–3 s) each window holds one attach and one detach, what the cycle costs most
    // for (see `tracer/src/duty.rs`). A window shorter than the period would hold none, and
    // measure only the detached target.
    let window_secs = match tracer {
        Tracer::Span => span_period_secs.unwrap_or(window_secs),
        _ => window_secs,
    };
    let period = format!("{window_secs}s");
    let extra: Vec<&str> = if tracer == Tracer::Span {
        [TIME_PROBES, &["--span-period", period.as_str()][..]].concat()
    } else {
        TIME_PROBES.to_vec()
    };
    let attached = attach(env, tracer, traced_pid, binary, &[], &extra)?;
    if attached.is_some() {
        settle()?;
    }
    let window = Window::start(attached.as_ref())?;
    let (mut under_tracer, beside_it, steal, target_cpu_rate) = measure(window_secs)?;
    let window = window.end()?;
    note_rss(tracer, attached.as_ref());
    if let Some(attached) = attached {
        attached.stop()?;
        let account = WindowAccount::read(env, tracer, traced_pid, target_cpu_rate, window)?;
        under_tracer.extend(account.figures());
        // The instance takes a while to recover from exact mode: in the A/A window right
        // after it, with none of this, the instance that had been traced ran 4–19% slower per
        // CPU-second than the other in three runs of five (CPU-bound; none after the sampled
        // modes). Measured windows must not hold that.
        settle()?;
        settle()?;
    }
    Ok(PairedWindow {
        traced: under_tracer,
        untraced: beside_it,
        steal,
    })
}

/// Bytes per allocating line (`function:line`) of a gotrace JSON report.
fn bytes_by_line(report: &serde_json::Value) -> Result<std::collections::BTreeMap<String, f64>> {
    let mut out = std::collections::BTreeMap::new();
    for c in report["callsites"].as_array().context("report without callsites")? {
        let key = format!("{}:{}", c["function"].as_str().unwrap_or("?"), c["line"]);
        *out.entry(key).or_insert(0.0) += c["bytes"].as_f64().unwrap_or(0.0);
    }
    Ok(out)
}

/// Span and go-sampler against exact mode, all three attached to one run of the `classes`
/// workload before its first allocation.
fn accuracy(repo: &Path, env: &Env, plan: &Plan) -> Vec<AccuracyRow> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let sampled = [
        (Tracer::Span, &[][..]),
        (Tracer::GoSampler, &["--set-mem-profile-rate", ACCURACY_SAMPLE_RATE][..]),
    ];
    let mut max_errors = vec![Vec::new(); sampled.len()];
    let mut mean_errors = vec![Vec::new(); sampled.len()];
    let mut error = None;
    for run in 1..=plan.accuracy_runs {
        let measured = (|| -> Result<Vec<(f64, f64)>> {
            let mut target = Proc::start(
                "workloads classes",
                Command::new(&binary).args(["classes", "--rounds", &plan.classes_rounds.to_string(), "--wait"]),
                false,
            )?;
            target.wait_for("ready", false, Duration::from_secs(20))?;
            let mut tracers = Vec::new();
            for &(tracer, extra) in std::iter::once(&(Tracer::Exact, &[][..])).chain(&sampled) {
                let attached = attach(env, tracer, target.pid(), &binary, &[], extra)?.context("no tracer")?;
                tracers.push((tracer, attached));
            }
            target.send_line("")?;
            target.close_stdin();
            target.wait_for("{", false, Duration::from_mins(5))?;
            target.wait(Duration::from_secs(30))?;
            let mut reports = Vec::new();
            for (tracer, mut attached) in tracers {
                // Each reports and exits on its own once the target has exited.
                let status = attached.proc.wait(Duration::from_mins(1))?;
                ensure!(
                    status.success(),
                    "gotrace --mode {:?} exited with {status}",
                    tracer.mode()
                );
                let path = env
                    .scratch
                    .join(format!("{}-{}.json", tracer.mode().unwrap_or("?"), target.pid()));
                let report: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
                )
                .context("bad report")?;
                reports.push(bytes_by_line(&report)?);
            }
            let exact = &reports[0];
            let mut top: Vec<(&String, f64)> = exact.iter().map(|(k, v)| (k, *v)).collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            top.truncate(10);
            Ok(reports[1..]
                .iter()
                .map(|sampled| {
                    let errors: Vec<f64> = top
                        .iter()
                        .map(|(line, e)| (sampled.get(*line).copied().unwrap_or(0.0) - e).abs() / e)
                        .collect();
                    #[expect(clippy::cast_precision_loss, reason = "ten callsites")]
                    let mean = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
                    (errors.iter().copied().fold(0.0, f64::max), mean)
                })
                .collect())
        })();
        match measured {
            Ok(per_mode) => {
                for (i, (max, mean)) in per_mode.into_iter().enumerate() {
                    eprintln!(
                        "bench: accuracy, run {run}/{}: {:<20} top-10 error max {:.1}%, mean {:.1}%",
                        plan.accuracy_runs,
                        sampled[i].0.label(),
                        max * 100.0,
                        mean * 100.0
                    );
                    max_errors[i].push(max);
                    mean_errors[i].push(mean);
                }
            }
            Err(e) => {
                eprintln!("bench: accuracy: {e:#}");
                error = Some(format!("{e:#}"));
                break;
            }
        }
    }
    sampled
        .iter()
        .enumerate()
        .map(|(i, &(tracer, _))| AccuracyRow {
            tracer,
            setting: if tracer == Tracer::GoSampler {
                format!("MemProfileRate {ACCURACY_SAMPLE_RATE} (--set-mem-profile-rate)")
            } else {
                "default".to_owned()
            },
            max_abs_error: Stat::of(&max_errors[i]),
            mean_abs_error: Stat::of(&mean_errors[i]),
            error: error.clone(),
        })
        .collect()
}

fn tracer_costs(repo: &Path, env: &Env, plan: &Plan) -> Result<TracerCosts> {
    let mut costs = TracerCosts {
        symbolize_stacks: SYMBOLIZE_STACKS,
        ..TracerCosts::default()
    };
    match attach_time(repo, env, plan) {
        Ok((binary, total, probes)) => {
            costs.attach_binary = binary;
            costs.attach_ms = Stat::of(&total);
            costs.attach_probes_ms = Stat::of(&probes);
        }
        Err(e) => {
            eprintln!("bench: attach time: {e:#}");
            costs.attach_error = Some(format!("{e:#}"));
        }
    }
    match symbolize_time(repo, env, plan) {
        Ok((frames, cold, warm)) => {
            costs.symbolize_frames = frames;
            costs.symbolize_ms = Stat::of(&cold);
            costs.symbolize_warm_ms = Stat::of(&warm);
        }
        Err(e) => {
            eprintln!("bench: symbolization: {e:#}");
            costs.symbolize_error = Some(format!("{e:#}"));
        }
    }
    costs.cpu_at_rate = tracer_cpu(repo, env, plan)?;
    Ok(costs)
}

/// From starting `gotrace attach --mode exact` to its "attached" line, on a running `compile`
/// of the Go distribution (held still: it waits to open its input, a FIFO).
fn attach_time(repo: &Path, env: &Env, plan: &Plan) -> Result<(String, Vec<f64>, Vec<f64>)> {
    let toolchain = go::Toolchain::find(repo, REALISTIC_GO)?;
    let compile = toolchain.goroot.join(format!("pkg/tool/linux_{}/compile", env.goarch));
    ensure!(compile.is_file(), "no {}", compile.display());
    let fifo = env.scratch.join("input.go");
    let _ = std::fs::remove_file(&fifo);
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).context("bad scratch path")?;
    // SAFETY: a valid C string; mkfifo has no other preconditions.
    ensure!(
        unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } == 0,
        "cannot make a FIFO at {}",
        fifo.display()
    );
    let (mut total, mut probes) = (Vec::new(), Vec::new());
    for run in 1..=plan.runs {
        let compiler = Proc::start(
            "compile",
            Command::new(&compile)
                .args(["-p", "main", "-o"])
                .arg(env.scratch.join("input.o"))
                .arg(&fifo),
            false,
        )?;
        // Let it start up and block opening its input.
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let tracer = Proc::start(
            "gotrace attach",
            Command::new(&env.gotrace)
                .args([
                    "attach",
                    &compiler.pid().to_string(),
                    "--mode",
                    "exact",
                    "-f",
                    "json",
                    "-o",
                ])
                .arg(env.scratch.join("compile.json")),
            true,
        )?;
        let line = tracer.wait_for("gotrace: attached", true, Duration::from_mins(1))?;
        #[expect(clippy::cast_precision_loss, reason = "milliseconds")]
        let ms = started.elapsed().as_micros() as f64 / 1000.0;
        // "… in 226 ms, exact mode; …"
        let reported = line
            .split(" in ")
            .nth(1)
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no attach time in gotrace's line")?;
        eprintln!(
            "bench: attach to compile, run {run}/{}: {ms:.0} ms from start ({reported:.0} ms loading and attaching the probes)",
            plan.runs
        );
        total.push(ms);
        probes.push(reported);
        // Detaching waits out an RCU grace period per probe, one after the other: once, on a
        // host whose other VMs were busy, that took over 30 s. Nothing is measured meanwhile.
        tracer.stop(libc::SIGINT, STOP_GRACE)?;
        drop(compiler);
    }
    let _ = std::fs::remove_file(&fifo);
    Ok((toolchain.version + " compile", total, probes))
}

/// `gotrace bench symbolize` on the churn workload (ever new stacks).
fn symbolize_time(repo: &Path, env: &Env, plan: &Plan) -> Result<(usize, Vec<f64>, Vec<f64>)> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let (mut cold, mut warm, mut frames) = (Vec::new(), Vec::new(), 0);
    for run in 1..=plan.symbolize_runs {
        let churn = Proc::start("workloads churn", Command::new(&binary).arg("churn"), false)?;
        churn.wait_for("ready", false, Duration::from_secs(20))?;
        let out = Command::new(&env.gotrace)
            .args(["bench", "symbolize", &churn.pid().to_string(), "--stacks"])
            .arg(SYMBOLIZE_STACKS.to_string())
            .output()
            .context("cannot run gotrace bench symbolize")?;
        drop(churn);
        ensure!(
            out.status.success(),
            "gotrace bench symbolize failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let doc: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("bad JSON from gotrace bench symbolize")?;
        let seconds = doc["seconds"].as_f64().context("no seconds")?;
        let warm_seconds = doc["warm_seconds"].as_f64().context("no warm_seconds")?;
        frames = usize::try_from(doc["frames"].as_u64().unwrap_or(0)).unwrap_or(0);
        eprintln!(
            "bench: symbolization, run {run}/{}: {} stacks ({frames} frames) in {:.0} ms cold, {:.1} ms warm",
            plan.symbolize_runs,
            doc["stacks"],
            seconds * 1000.0,
            warm_seconds * 1000.0
        );
        cold.push(seconds * 1000.0);
        warm.push(warm_seconds * 1000.0);
    }
    Ok((frames, cold, warm))
}

/// gotrace's own CPU while the target allocates about `TRACER_CPU_RATE` times a second.
fn tracer_cpu(repo: &Path, env: &Env, plan: &Plan) -> Result<Vec<TracerCpu>> {
    let binary = env.workloads(repo, REALISTIC_GO);
    let target = Proc::start(
        "workloads loop (paced)",
        Command::new(&binary).args(["loop", "--workers", "2", "--rate", &TRACER_CPU_RATE.to_string()]),
        false,
    )?;
    target.wait_for("ready", false, Duration::from_secs(20))?;
    let mut rows = Vec::new();
    for tracer in Tracer::MODES {
        let (mut rates, mut cpu) = (Vec::new(), Vec::new());
        let mut error = None;
        for run in 1..=plan.runs {
            let measured = (|| -> Result<(f64, f64)> {
                let attached = attach(env, tracer, target.pid(), &binary, &[], &[])?.context("no tracer")?;
                let _ = target.drain_stdout();
                let _partial = target.next_line(Duration::from_secs(10))?;
                let (cpu0, t0) = (cpu_seconds(attached.pid())?, Instant::now());
                let mut allocs = 0.0;
                for _ in 0..plan.window_secs {
                    let line = target.next_line(Duration::from_secs(10))?;
                    allocs += report_line(&line).map_or(0.0, |(n, _)| n);
                }
                let (cpu1, wall) = (cpu_seconds(attached.pid())?, t0.elapsed().as_secs_f64());
                attached.stop()?;
                #[expect(clippy::cast_precision_loss, reason = "a few seconds")]
                Ok((allocs / plan.window_secs as f64, (cpu1 - cpu0) / wall * 100.0))
            })();
            match measured {
                Ok((rate, percent)) => {
                    eprintln!(
                        "bench: tracer CPU, run {run}/{}: {:<20} {percent:.2}% of a core, target at {:.2} M allocs/s",
                        plan.runs,
                        tracer.label(),
                        rate / 1e6
                    );
                    rates.push(rate);
                    cpu.push(percent);
                }
                Err(e) => {
                    eprintln!("bench: tracer CPU: {}: {e:#}", tracer.label());
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        rows.push(TracerCpu {
            tracer,
            target_allocs_per_sec: Stat::of(&rates),
            cpu_percent: Stat::of(&cpu),
            error,
        });
    }
    Ok(rows)
}

/// The targets, each with the figure that decides it.
/// A realistic target's verdict from its runs' losses (percent) and the A/A windows' largest
/// difference between two untraced instances (percent): undecided when that noise is above the
/// limit, else met only when every run is within it.
fn side_by_side_verdict(losses: Option<&Stat>, noise: Option<f64>, limit: f64) -> Verdict {
    let Some(losses) = losses else {
        return Verdict::NotMeasured;
    };
    if noise.is_none_or(|noise| noise > limit) {
        Verdict::Undecided
    } else if losses.max <= limit {
        Verdict::Met
    } else {
        Verdict::Missed
    }
}

fn targets(cost: &[CostTable], realistic: &[RealisticRow], noise: &SideBySideNoise) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    for table in cost {
        let row = |t: Tracer, depth: u32| table.rows.iter().find(|r| r.tracer == t && r.depth == depth);
        for (depth, limit) in [(30, 1.3), (90, 1.6)] {
            let vs_floor = row(Tracer::Exact, depth).and_then(|r| r.vs_floor);
            out.push(TargetCheck {
                what: format!(
                    "{}: exact mode's added cost over the empty-probe floor's, {depth} frames deep",
                    table.go_version
                ),
                value: vs_floor,
                limit: format!("≤ {limit}×"),
                verdict: Verdict::of(vs_floor.map(|v| v <= limit)),
                range: None,
                noise: None,
            });
        }
        let cheaper = row(Tracer::Exact, 0).and_then(|r| r.bpftrace_over_this);
        out.push(TargetCheck {
            what: format!(
                "{}: bpftrace one-liner's added cost over exact mode's",
                table.go_version
            ),
            value: cheaper,
            limit: "≥ 4×".to_owned(),
            verdict: Verdict::of(cheaper.map(|v| v >= 4.0)),
            range: None,
            noise: None,
        });
    }
    for row in realistic
        .iter()
        .filter(|r| matches!(r.tracer, Tracer::GoSampler | Tracer::Span))
    {
        // What each target holds, its runs' traced-over-untraced ratios, the A/A noise of the
        // same figure, the limit in percent, and whether a higher figure is the loss (latency).
        // HTTP requests/s has none: the load is paced, so it is set by wrk, and what tracing
        // costs the service shows as CPU time per request and as latency.
        let checks = [
            (
                "HTTP requests per service CPU-second lost to tracing",
                row.ratio_ranges[1].as_ref(),
                noise.http_per_cpu.as_ref(),
                3.0,
                false,
            ),
            (
                "HTTP p99 latency added by tracing",
                row.http_p99_ratio.as_ref(),
                noise.http_p99.as_ref(),
                10.0,
                true,
            ),
            (
                "CPU-bound ops/s lost to tracing",
                row.ratio_ranges[2].as_ref(),
                noise.cpu_ops.as_ref(),
                3.0,
                false,
            ),
            (
                "CPU-bound ops per CPU-second lost to tracing",
                row.ratio_ranges[3].as_ref(),
                noise.cpu_per_cpu.as_ref(),
                3.0,
                false,
            ),
        ];
        for (what, ratios, noise, limit, higher_is_loss) in checks {
            let loss = |ratio: f64| {
                if higher_is_loss {
                    (ratio - 1.0) * 100.0
                } else {
                    (1.0 - ratio) * 100.0
                }
            };
            let losses = ratios.and_then(|r| Stat::of(&r.runs.iter().map(|&x| loss(x)).collect::<Vec<_>>()));
            let noise = noise.map(|n| n.max);
            out.push(TargetCheck {
                what: format!("{}: {what}, %", row.tracer.label()),
                value: losses.as_ref().map(|l| l.median),
                limit: format!("≤ {limit}% in every run"),
                verdict: side_by_side_verdict(losses.as_ref(), noise, limit),
                range: losses.as_ref().map(|l| [l.min, l.max]),
                noise,
            });
        }
        for (workload, account) in ["HTTP", "CPU-bound"].into_iter().zip(&row.accounts) {
            let share = account.as_ref().and_then(|a| a.probe_cpu_share.as_ref());
            out.push(TargetCheck {
                what: format!(
                    "{}: {workload} work per CPU-second lost to the probes, accounted bottom-up, %",
                    row.tracer.label()
                ),
                value: share.map(|s| s.median * 100.0),
                limit: "≤ 3%".to_owned(),
                // Every window's, not just the median's.
                verdict: Verdict::of(share.map(|s| s.max <= 0.03)),
                range: share.map(|s| [s.min * 100.0, s.max * 100.0]),
                noise: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{
        PairedWindow, Plan, SPAN_PERIOD_SECS, SideBySide, Stat, Tracer, Verdict, latency_ms, report_line,
        side_by_side_verdict,
    };

    #[test]
    fn parses_wrk_latencies() {
        assert_eq!(latency_ms("456.00us"), Some(0.456));
        assert_eq!(latency_ms("1.50ms"), Some(1.5));
        assert_eq!(latency_ms("2.00s"), Some(2000.0));
        assert_eq!(latency_ms("1.00m"), Some(60_000.0));
        assert_eq!(latency_ms("fast"), None);
    }

    #[test]
    fn parses_workload_report_lines() {
        assert_eq!(report_line("allocs 100 cpu_ns 2500"), Some((100.0, 2500.0)));
        assert_eq!(report_line("ops 42"), Some((42.0, 0.0)));
        assert_eq!(report_line("ready"), None);
    }

    /// Each window compares the traced instance with the untraced one of the same seconds,
    /// whatever the host did to both; the A/A windows give the noise; the traced instance
    /// alternates.
    #[test]
    fn side_by_side_windows_compare_the_instances_of_the_same_window() {
        let plan = Plan {
            runs: 2,
            window_secs: 1,
            wrk_secs: 1,
            span_period_secs: Some(SPAN_PERIOD_SECS),
            classes_rounds: 1,
            accuracy_runs: 1,
            symbolize_runs: 1,
        };
        // A host twice as slow in the second run: the changes do not see it. Each run is A/A,
        // exact, A/A, span.
        let mut host = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5].into_iter();
        let mut traced_instances = Vec::new();
        let windows = SideBySide::run(
            &plan,
            &[Tracer::Untraced, Tracer::Exact, Tracer::Span],
            (1, 2),
            "test",
            |tracer, traced| {
                traced_instances.push(traced);
                let speed = host.next().expect("one window each");
                let (traced_figure, account) = match tracer {
                    Tracer::Untraced => (102.0, vec![]),
                    Tracer::Exact => (20.0, vec![7.0]),
                    _ => (98.0, vec![7.0]),
                };
                Ok(PairedWindow {
                    traced: [vec![traced_figure * speed], account].concat(),
                    untraced: vec![100.0 * speed],
                    steal: speed / 10.0,
                })
            },
        );
        let change = |i| windows.ratio(i, 0).expect("a ratio");
        assert!((change(1).median - 0.2).abs() < 1e-9 && (change(1).max - 0.2).abs() < 1e-9);
        assert!((change(2).min - 0.98).abs() < 1e-9 && (change(2).max - 0.98).abs() < 1e-9);
        let noise = windows.noise(0).expect("A/A windows");
        assert!((noise.max - 2.0).abs() < 1e-9, "{noise:?}");
        assert_eq!(windows.noise(0).expect("A/A windows").runs.len(), 4);
        // The untraced row holds the untraced instance of every window and both of the A/A's.
        assert_eq!(windows.stat(0, 0).expect("untraced").runs.len(), 12);
        assert_eq!(windows.stat(1, 1).expect("account").runs, vec![7.0, 7.0]);
        // Each mode on instance 1 in the first run and 0 in the second; its A/A window likewise.
        assert_eq!(traced_instances, vec![1, 1, 0, 0, 0, 0, 1, 1]);
        let steal = windows.steal_percent().expect("steal");
        assert!((steal.min - 5.0).abs() < 1e-9 && (steal.max - 10.0).abs() < 1e-9);
    }

    #[test]
    fn a_target_is_undecided_when_the_noise_exceeds_its_limit_and_met_only_in_every_run() {
        let losses = Stat::of(&[1.0, 2.5, 2.9]);
        assert_eq!(side_by_side_verdict(losses.as_ref(), Some(1.5), 3.0), Verdict::Met);
        assert_eq!(
            side_by_side_verdict(losses.as_ref(), Some(3.5), 3.0),
            Verdict::Undecided
        );
        assert_eq!(side_by_side_verdict(losses.as_ref(), None, 3.0), Verdict::Undecided);
        let one_run_over = Stat::of(&[1.0, 2.5, 3.4]);
        assert_eq!(
            side_by_side_verdict(one_run_over.as_ref(), Some(1.5), 3.0),
            Verdict::Missed
        );
        assert_eq!(side_by_side_verdict(None, Some(1.5), 3.0), Verdict::NotMeasured);
    }
}
