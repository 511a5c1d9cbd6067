//! `gotrace bench …`: hidden commands that measure parts of gotrace in isolation, for
//! `cargo xtask bench`. They are not for operators: their output is one JSON line on stdout
//! for the benchmark to read.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gobin::GoBinary;
use gobin::procmaps::AddressMap;
use serde::Serialize;

use crate::mode::{Mode, Weighing};
use crate::probes::{AttachTarget, EmptyAt, EmptyProbes, ProbeOptions, Probes};
use crate::process::read_executable;
use crate::session::ProcessSymbols;
use crate::store::Store;

/// `gotrace bench empty-probe`: an empty uprobe on each counting entry point of the process
/// (at the function's first instruction, or where exact mode's probe goes) until SIGINT,
/// SIGTERM or the end of `duration`.
pub fn empty_probe(pid: u32, at: EmptyAt, duration: Option<Duration>) -> anyhow::Result<()> {
    crate::privileges::check_tracing_privileges()?;
    let (exe, data) = read_executable(pid)?;
    let binary = GoBinary::parse(&data).with_context(|| format!("process {pid} cannot be traced"))?;
    let probes = EmptyProbes::attach(&binary, &exe.path, pid, at)?;
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
pub fn symbolize(pid: u32, stacks: usize, timeout: Duration) -> anyhow::Result<()> {
    crate::privileges::check_tracing_privileges()?;
    let (exe, data) = read_executable(pid)?;
    let binary = GoBinary::parse(&data).with_context(|| format!("process {pid} cannot be traced"))?;
    let addresses = AddressMap::for_process(pid, &exe, binary.load_segments())
        .with_context(|| format!("cannot read the memory map of process {pid}"))?;
    let depth = tracer_common::MAX_STACK_DEPTH;
    let target = AttachTarget {
        binary: &binary,
        binary_path: &exe.path,
        pid,
        addresses: &addresses,
    };
    let options = ProbeOptions {
        stack_depth: depth,
        span_duty_cycle: None,
        time_probes: false,
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
    let mut symbols = ProcessSymbols::new(&binary, &addresses);
    let build = |symbols: &mut ProcessSymbols<'_>| {
        let started = Instant::now();
        let profile = crate::profile::build(
            Mode::Exact,
            stats,
            &counts,
            |id| store.stack(id),
            symbols,
            3,
            crate::profile::Grouping::First,
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
