//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Commands:
//! - `demo`: README's main job: build gotrace and the demo Go program, run the demo, point
//!   gotrace at it;
//! - `dist`: the release artifacts (packages, tarballs, the container image) and, with
//!   `--check`, their tests;
//! - `fixtures`: build the Go fixture programs for every Go version and variant;
//! - `bench`: overhead and accuracy against no tracing, an empty probe and bpftrace, in one
//!   run (`--quick` for CI);
//! - `arm64`: cross-compile gotrace for arm64, boot an arm64 kernel under qemu and check the
//!   ground-truth counts there;
//! - `soak`: the full memory soak of `gotrace serve` (ten minutes, release build);
//! - `go <minor> -- ARGS...`: run one of the project's Go toolchains with the project's Go
//!   environment.

mod arm64;
mod bench;
mod demo;
mod dist;
mod fixtures;
mod go;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "gotrace project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build gotrace and the bundled demo Go program, start the demo, inspect it and trace
    /// it for five seconds with gotrace
    Demo,
    /// Build the release artifacts into target/dist: Debian packages and tarballs for amd64 and
    /// arm64, a two-platform OCI image, and SHA256SUMS (--check then tests them)
    Dist(dist::Args),
    /// Build the Go fixtures into target/fixtures and write target/fixtures/manifest.json
    Fixtures(fixtures::Args),
    /// Measure gotrace's overhead per allocation (against no tracing, an empty probe at the
    /// same address, and a bpftrace one-liner), on realistic workloads, its accuracy and its
    /// own costs, all in one run; writes target/bench/results.{md,json} (needs root)
    Bench(bench::Args),
    /// Cross-compile gotrace for arm64, boot Debian's arm64 kernel under qemu (software
    /// emulation) and check gotrace's counts there against Go's own heap profile, for exact and
    /// auto mode on Go 1.21, 1.24 and 1.27 (no root needed; parts from scripts/setup.sh)
    Arm64(arm64::Args),
    /// Soak `gotrace serve` against a target with churning stacks for --minutes (default 10)
    /// and check its memory stays under the documented cap; with --all, soak the node agent
    /// (`serve --all`) with --targets Go processes each asking for a million allocations a
    /// second, and check its memory and CPU budgets (needs root; builds in release)
    Soak {
        /// How long
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Soak the node agent instead of the sidecar
        #[arg(long)]
        all: bool,
        /// With --all: how many Go processes
        #[arg(long, default_value_t = 20, requires = "all")]
        targets: u32,
    },
    /// Run a project Go toolchain (GOTOOLCHAIN=local, caches under .cache/), e.g.
    /// `cargo xtask go 1.27 -- version`
    Go {
        /// Go minor version, e.g. 1.27
        minor: String,
        /// Arguments for the go command
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let repo = repo_root()?;
    match cli.command {
        Command::Demo => demo::run(&repo).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&repo, &args).map(|()| ExitCode::SUCCESS),
        Command::Arm64(args) => arm64::run(&repo, &args).map(|()| ExitCode::SUCCESS),
        Command::Dist(args) => dist::run(&repo, &args).map(|()| ExitCode::SUCCESS),
        Command::Fixtures(args) => fixtures::run(&repo, &args).map(|()| ExitCode::SUCCESS),
        Command::Go { minor, args } => run_go(&repo, &minor, &args),
        Command::Soak { minutes, all, targets } => soak(&repo, minutes, all.then_some(targets)),
    }
}

/// `cargo xtask soak`: a soak test of `tracer/tests/soak.rs`, at full length, on a release
/// build (what an operator would run), with the fixtures it needs: the sidecar's, or with
/// `agent_targets` the node agent's.
fn soak(repo: &Path, minutes: u64, agent_targets: Option<u32>) -> Result<ExitCode> {
    fixtures::run(repo, &fixtures::Args::all())?;
    let test = if let Some(n) = agent_targets {
        eprintln!("soak --all: {n} targets, {minutes} minutes; progress from the test follows");
        "agent_stays_within_its_memory_and_cpu_budget_with_many_targets"
    } else {
        eprintln!("soak: {minutes} minutes; progress from the test follows");
        "serve_memory_stays_under_its_cap_against_churning_stacks"
    };
    let status = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(repo)
        .args([
            "test",
            "--release",
            "-p",
            "tracer",
            "--test",
            "soak",
            "--",
            "--exact",
            test,
            "--nocapture",
        ])
        .env("GOTRACE_SOAK_SECONDS", (minutes * 60).to_string())
        .env("GOTRACE_SOAK_TARGETS", agent_targets.unwrap_or(20).to_string())
        .status()
        .context("cannot run cargo test")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The workspace root: the parent of this crate's directory, wherever cargo runs from.
fn repo_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

/// Runs the go command in the current directory and passes its exit status on.
fn run_go(repo: &Path, minor: &str, args: &[String]) -> Result<ExitCode> {
    let toolchain = go::Toolchain::find(repo, &go::normalize_minor(minor)?)?;
    let status = toolchain
        .command(repo)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", toolchain.go.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            // Killed by a signal: report it the way a shell does.
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
    })
}
