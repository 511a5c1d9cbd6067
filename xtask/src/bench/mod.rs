//! `cargo xtask bench`: gotrace's overhead and accuracy, measured side by side in one run on
//! this machine, against no tracing, an empty probe at the same addresses, and bpftrace.
//!
//! Absolute times on a 2-core VM are noise; the figures are the ratios between rows measured
//! minutes apart in the same run. Every measurement is repeated (`--runs`); the tables show
//! the median and the range, so the noise is visible. Nothing here fails on a missed target:
//! the tables say which targets were met.
//!
//! One module per part: `cost` (the cost per allocation at several stack depths), `realistic`
//! (the HTTP service and the CPU-bound workload, each as two instances `side_by_side`, with the
//! bottom-up `account` of their windows), `accuracy` and `tracer_costs`; then `targets` (the
//! verdicts), `report` (the Markdown) and `readme` (where `--readme` puts it). `tracers` attaches
//! what observes the target; `proc` and `stats` are the processes and the figures.

mod account;
mod accuracy;
mod cost;
mod latency;
mod proc;
mod readme;
mod realistic;
mod report;
mod side_by_side;
mod stats;
mod targets;
mod tracer_costs;
mod tracers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use self::accuracy::AccuracyRow;
use self::cost::CostTable;
use self::realistic::RealisticRow;
use self::side_by_side::SideBySideNoise;
use self::targets::TargetCheck;
use self::tracer_costs::TracerCosts;
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
    /// Also write the Markdown tables into docs/performance.md (between its bench markers) and
    /// the headline, the targets, into README.md (between its headline markers)
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

/// Paths every part needs.
struct Env {
    gotrace: PathBuf,
    /// `tracer/examples/bench-probes.rs`: the empty probe and the symbolization timing, built
    /// on the tracer library (not shipped in gotrace).
    bench_probes: PathBuf,
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

pub fn run(repo: &Path, args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark loads eBPF programs and attaches uprobes: run it as root"
    );
    if args.readme {
        readme::check(repo)?;
    }
    let plan = Plan::new(args);
    let started = Instant::now();
    build_tracer(repo)?;
    fixtures::run(repo, &fixtures::Args::all())?;
    let out_dir = repo.join(&args.out);
    let scratch = out_dir.join("scratch");
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let env = Env {
        gotrace: repo.join("target/release/gotrace"),
        bench_probes: repo.join("target/release/examples/bench-probes"),
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
            cost.push(cost::measure(repo, &env, &plan, minor)?);
        }
    }
    let (mut realistic, cpus, noise) = if wanted(Part::Realistic) {
        realistic::measure(repo, &env, &plan)?
    } else {
        (Vec::new(), String::new(), SideBySideNoise::default())
    };
    let accuracy = if wanted(Part::Accuracy) {
        accuracy::measure(repo, &env, &plan)
    } else {
        Vec::new()
    };
    let tracer = if wanted(Part::Tracer) {
        tracer_costs::measure(repo, &env, &plan)?
    } else {
        TracerCosts::default()
    };
    account::price_accounts(&mut realistic, &cost);
    let targets = targets::check(&cost, &realistic, &noise);
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

/// Builds gotrace and `bench-probes` (the tracer library's example) in release.
fn build_tracer(repo: &Path) -> Result<()> {
    eprintln!("bench: building gotrace and bench-probes (release) and the Go fixtures");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(repo)
        .args([
            "build",
            "--release",
            "-p",
            "tracer",
            "--bin",
            "gotrace",
            "--example",
            "bench-probes",
        ])
        .status()
        .context("cannot run cargo build")?;
    ensure!(
        status.success(),
        "cargo build --release -p tracer --bin gotrace --example bench-probes failed"
    );
    Ok(())
}

/// Writes the results (`results.md`, `results.json`, and when asked docs/performance.md's tables
/// and README.md's headline) and prints them.
fn publish(repo: &Path, out_dir: &Path, readme: bool, results: &Results, started: Instant) -> Result<()> {
    let markdown = report::markdown(results);
    let json = serde_json::to_string_pretty(results).context("cannot encode the results")?;
    std::fs::write(out_dir.join("results.json"), json + "\n").context("cannot write results.json")?;
    std::fs::write(out_dir.join("results.md"), &markdown).context("cannot write results.md")?;
    if readme {
        readme::write(repo, &markdown, &report::headline(results))?;
        eprintln!("bench: docs/performance.md and README.md updated");
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

#[cfg(test)]
mod tests {
    use super::report_line;

    #[test]
    fn parses_workload_report_lines() {
        assert_eq!(report_line("allocs 100 cpu_ns 2500"), Some((100.0, 2500.0)));
        assert_eq!(report_line("ops 42"), Some((42.0, 0.0)));
        assert_eq!(report_line("ready"), None);
    }
}
