//! `bench-probes`: measures parts of gotrace in isolation, for `cargo xtask bench`, built on
//! the `tracer` library (`cargo build --release -p tracer --example bench-probes`). Not
//! shipped: operators never need it. `symbolize` prints one JSON line on stdout for the
//! benchmark to read.
//!
//! - `bench-probes empty-probe PID --at entry|placement [--duration-ms N]`: an empty uprobe
//!   on each counting allocation entry point, the cost of the trap alone;
//! - `bench-probes symbolize PID [--stacks N] [--timeout-secs S]`: the time to build a
//!   profile of N distinct stacks from cold symbol caches;
//! - `bench-probes cycle-empty PID --via perf|multi`: attaches and detaches an empty uprobe on
//!   span mode's functions over and over, as span mode's duty cycle does, through per-probe
//!   perf events (through aya, as before Linux 6.6) or one `uprobe_multi` link (as gotrace's
//!   duty cycle on Linux 6.6+): what attaching and detaching cost the target
//!   (`docs/sampled-overhead.md`, *What a detach costs the target*).

use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use gobin::GoBinary;
use serde::Serialize;
use tracer::mode::{Mode, Weighing};
use tracer::probes::{EmptyAt, EmptyProbes, ProbeOptions, Probes};
use tracer::store::Store;
use tracer::tracee::{Executable, ProcessSymbols};

#[derive(Debug, Parser)]
#[command(name = "bench-probes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Put an empty uprobe on each counting allocation entry point of PID until SIGINT or
    /// SIGTERM: the cost of the trap alone.
    EmptyProbe {
        /// The process.
        pid: u32,
        /// entry: each function's first instruction (where probing by symbol puts it);
        /// placement: where exact mode's probe goes.
        #[arg(long, value_enum)]
        at: At,
        /// Detach after this many milliseconds.
        #[arg(long)]
        duration_ms: Option<u64>,
    },
    /// Trace PID in exact mode until N distinct stacks were seen, detach, and time building a
    /// profile of them from cold symbol caches; prints one JSON line.
    Symbolize {
        /// The process.
        pid: u32,
        /// Distinct stacks to symbolize.
        #[arg(long, default_value_t = 10_000)]
        stacks: usize,
        /// Give up when that many stacks were not seen within this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Attach an empty uprobe on span mode's functions of PID, detach it, and again, as span
    /// mode's duty cycle does; prints how long attaching and detaching took this side.
    CycleEmpty {
        /// The process.
        pid: u32,
        /// perf: one perf event per probe, through aya (before Linux 6.6); multi: one
        /// `uprobe_multi` BPF link for all of them (Linux 6.6+).
        #[arg(long, value_enum)]
        via: Via,
        /// Milliseconds attached in each cycle.
        #[arg(long, default_value_t = 300)]
        on_ms: u64,
        /// Milliseconds detached in each cycle.
        #[arg(long, default_value_t = 700)]
        off_ms: u64,
        /// Seconds to go on cycling.
        #[arg(long, default_value_t = 18)]
        secs: u64,
    },
}

/// How `cycle-empty` attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    Perf,
    Multi,
}

/// Where `empty-probe` puts its probes.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum At {
    /// Each function's first instruction.
    Entry,
    /// Where exact mode's probe goes.
    Placement,
    /// Where span mode's probes go.
    Span,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::EmptyProbe { pid, at, duration_ms } => {
            let at = match at {
                At::Entry => EmptyAt::Entry,
                At::Placement => EmptyAt::Placement,
                At::Span => EmptyAt::Span,
            };
            empty_probe(pid, at, duration_ms.map(Duration::from_millis))
        }
        Command::Symbolize {
            pid,
            stacks,
            timeout_secs,
        } => symbolize(pid, stacks, Duration::from_secs(timeout_secs)),
        Command::CycleEmpty {
            pid,
            via,
            on_ms,
            off_ms,
            secs,
        } => cycle_empty(
            pid,
            via,
            [on_ms, off_ms].map(Duration::from_millis),
            Duration::from_secs(secs),
        ),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench-probes: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `gotrace bench empty-probe`: an empty uprobe on each counting entry point of the process
/// (at the function's first instruction, or where exact mode's probe goes) until SIGINT,
/// SIGTERM or the end of `duration`.
fn empty_probe(pid: u32, at: EmptyAt, duration: Option<Duration>) -> anyhow::Result<()> {
    tracer::privileges::check_tracing_privileges()?;
    let executable = Executable::read(pid)?;
    let binary = GoBinary::parse(executable.data()).with_context(|| format!("process {pid} cannot be traced"))?;
    let probes = EmptyProbes::attach(&binary, &executable.exe().path, pid, at)?;
    eprintln!(
        "gotrace: attached {} empty probes to pid {pid} ({at:?})",
        probes.attached
    );
    wait_for_stop(duration)?;
    drop(probes);
    Ok(())
}

/// What `gotrace bench symbolize` prints.
#[derive(Debug, Serialize)]
struct SymbolizeResult {
    /// Distinct stacks symbolized.
    stacks: usize,
    /// Their frames (program counters), in all.
    frames: usize,
    /// Distinct (stack, caller, type, size) keys built into the profile.
    keys: usize,
    /// Callsites the profile ended up with.
    callsites: usize,
    /// Seconds to build the profile from cold caches: every pc and type looked up once.
    seconds: f64,
    /// Seconds for a second build with the caches warm, as every later interval of a trace.
    warm_seconds: f64,
}

/// `gotrace bench symbolize`: traces the process in exact mode until it has seen `stacks`
/// distinct stacks (or `timeout` passed), detaches, then times building a profile (symbolizing
/// every stack, with inlined frames, callsites and type names) from cold caches, as the first
/// report of a trace does.
fn symbolize(pid: u32, stacks: usize, timeout: Duration) -> anyhow::Result<()> {
    tracer::privileges::check_tracing_privileges()?;
    let executable = Executable::read(pid)?;
    let tracee = executable.parse()?;
    let depth = tracer_common::MAX_STACK_DEPTH;
    let target = tracee.attach_target();
    let options = ProbeOptions {
        stack_depth: depth,
        span_duty_cycle: None,
        time_probes: false,
        inuse: false,
    };
    let mut probes = Probes::attach(&target, Mode::Exact, options, None)?;
    let mut store = Store::new(usize::MAX, depth);
    let started = Instant::now();
    while store.stack_count() < stacks {
        if started.elapsed() > timeout {
            bail!(
                "saw only {} distinct stacks in {:.0} s, not {stacks}",
                store.stack_count(),
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        store.collect(&mut probes, Weighing::Exact)?;
    }
    let stats = probes.stats()?;
    drop(probes);
    eprintln!(
        "gotrace: collected {} stacks in {:.1} s; symbolizing",
        store.stack_count(),
        started.elapsed().as_secs_f64()
    );
    // Exactly `stacks` distinct stacks: the keys of the first ones, in a fixed order.
    let mut counts = store.counts();
    counts.sort_unstable_by_key(|(key, _)| (key.stack, key.return_address, key.type_address, key.size));
    let mut kept = std::collections::HashSet::new();
    counts.retain(|(key, _)| kept.contains(&key.stack) || (kept.len() < stacks && kept.insert(key.stack)));
    let frames = kept.iter().map(|id| store.stack(*id).map_or(0, |s| s.len())).sum();
    let mut symbols = tracee.symbols();
    let build = |symbols: &mut ProcessSymbols<'_>| {
        let started = Instant::now();
        let profile = tracer::profile::build(
            Mode::Exact,
            stats,
            &counts,
            &tracer::profile::InuseInput::default(),
            |id| store.stack(id),
            symbols,
            3,
            tracer::profile::Grouping::First,
        );
        (started.elapsed().as_secs_f64(), profile.callsites.len())
    };
    let (seconds, callsites) = build(&mut symbols);
    let (warm_seconds, _) = build(&mut symbols);
    let result = SymbolizeResult {
        stacks: kept.len(),
        frames,
        keys: counts.len(),
        callsites,
        seconds,
        warm_seconds,
    };
    println!(
        "{}",
        serde_json::to_string(&result).context("cannot encode the result")?
    );
    Ok(())
}

/// Blocks until SIGINT, SIGTERM or the end of `duration`.
fn wait_for_stop(duration: Option<Duration>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            () = sleep => {}
        }
        Ok(())
    })
}

/// `bench-probes cycle-empty`: attaches and detaches the empty program on span mode's functions
/// of `pid`, `on_off[0]` attached and `on_off[1]` detached, until `total` has passed.
fn cycle_empty(pid: u32, via: Via, on_off: [Duration; 2], total: Duration) -> anyhow::Result<()> {
    tracer::privileges::check_tracing_privileges()?;
    let executable = Executable::read(pid)?;
    let path = executable.exe().path.clone();
    let binary = GoBinary::parse(executable.data()).with_context(|| format!("process {pid} cannot be traced"))?;
    let offsets: Vec<u64> = EmptyProbes::offsets(&binary, EmptyAt::Span)?
        .into_iter()
        .map(|(_, offset)| offset)
        .collect();
    let multi_program = (via == Via::Multi)
        .then(tracer::uprobe_multi::load_empty_program)
        .transpose()?;
    let started = Instant::now();
    let (mut attaching, mut detaching, mut cycles) = (Duration::ZERO, Duration::ZERO, 0_u32);
    while started.elapsed() < total {
        let attach_started = Instant::now();
        let attached: Box<dyn std::any::Any> = match &multi_program {
            Some(program) => Box::new(tracer::uprobe_multi::attach(program.as_fd(), &path, &offsets, pid)?),
            None => Box::new(EmptyProbes::attach(&binary, &path, pid, EmptyAt::Span)?),
        };
        attaching += attach_started.elapsed();
        std::thread::sleep(on_off[0]);
        let detach_started = Instant::now();
        drop(attached);
        detaching += detach_started.elapsed();
        cycles += 1;
        std::thread::sleep(on_off[1]);
    }
    let per_cycle = |d: Duration| d.as_secs_f64() * 1e3 / f64::from(cycles.max(1));
    println!(
        "{via:?}: {cycles} cycles of {} probes; attaching took {:.1} ms and detaching {:.1} ms a cycle",
        offsets.len(),
        per_cycle(attaching),
        per_cycle(detaching)
    );
    Ok(())
}
