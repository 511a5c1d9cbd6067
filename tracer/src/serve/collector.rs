//! The collector thread: find the target, trace it until it exits, publish what was collected
//! every interval, find the next target.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::follow::{Failed, Follow, exe_path, find_target};
use super::snapshot::{SeriesSelection, Shared, lock};
use crate::collector::{Collector, DRAIN_INTERVAL};
use crate::config::{Selector, ServeConfig};
use crate::mode::Mode;
use crate::process::ProcessId;
use crate::remote::HeapCounter;
use crate::store::Store;
use crate::tracee::{Executable, unix_nanos};
use crate::{progress, warning};

/// Held while a target's binary is parsed and its probes attached.
static ATTACHING: Mutex<()> = Mutex::new(());

/// How often the sidecar's collector looks for a new target.
const POLL: Duration = Duration::from_millis(100);
/// A process that could not be traced is tried again after this long, then twice as long
/// after each further failure, up to [`RETRY_FAILED_MAX`].
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
const RETRY_FAILED_MAX: Duration = Duration::from_mins(10);
/// The least time between two trims of the heap after collections.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Size histograms are not shown by the sidecar; one significant figure keeps them tiny.
const SERVE_SIZE_SIGFIGS: u8 = 1;

/// Follows the configured process and its successors until `stop`.
pub(super) fn follow_and_trace(config: &ServeConfig, selector: &Selector, shared: &Shared, stop: &AtomicBool) {
    let mut follow = Follow::from_selector(selector);
    let mut failed = Failed::new();
    let mut announced_wait = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(target) = find_target(&follow, &failed) else {
            if !announced_wait {
                progress!("waiting for a process to trace ({follow})");
                announced_wait = true;
            }
            std::thread::sleep(POLL);
            continue;
        };
        announced_wait = false;
        // After the first target, follow its executable: a restart has a new pid.
        if let Follow::Pid(pid) = follow
            && let Some(path) = exe_path(pid)
        {
            follow = Follow::Exe {
                path,
                file: Some(target.exe),
            };
        }
        let traced = Executable::read(target.pid).and_then(|executable| {
            let exited = trace_target(config, target, &executable, shared, stop)?;
            if exited {
                progress!(
                    "process {} exited; serving its last data (stale) until a new one appears",
                    target.pid
                );
            }
            Ok(())
        });
        if let Err(error) = traced {
            warning!("cannot trace process {}: {error:#}", target.pid);
            lock(shared).last_error = Some(format!("process {}: {error:#}", target.pid));
            let backoff = failed
                .get(&target)
                .map_or(RETRY_FAILED_AFTER, |(_, b)| (*b * 2).min(RETRY_FAILED_MAX));
            failed.insert(target, (Instant::now() + backoff, backoff));
        }
        failed.retain(|id, _| id.alive());
    }
}

/// Traces one process, whose executable was read, until it exits (`Ok(true)`) or gotrace is
/// stopped (`Ok(false)`).
pub(super) fn trace_target(
    config: &ServeConfig,
    target: ProcessId,
    executable: &Executable,
    shared: &Shared,
    stop: &AtomicBool,
) -> anyhow::Result<bool> {
    let pid = target.pid;
    // One attach at a time: parsing a binary and loading the probes (aya reads the kernel's
    // BTF for each load) take tens of MiB for a moment, and a node agent that finds twenty
    // processes at start would otherwise take them all at once.
    let attaching = ATTACHING.lock().unwrap_or_else(PoisonError::into_inner);
    // A node agent stopping while targets wait their turn: no attach just to detach.
    if stop.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let mut tracee = executable.parse()?;
    let prepared = tracee.attach(config.mode, config.set_mem_profile_rate, config.probe_options)?;
    let target_info = tracee.info();
    let mode = prepared.mode;
    let probes = &prepared.probes;
    progress!(
        "attached {} probes{} to pid {pid} ({}, {}) in {} ms, {} mode",
        probes.attached,
        if probes.through_multi_links {
            " (uprobe_multi links)"
        } else {
            ""
        },
        target_info.exe,
        target_info.go_version,
        probes.attach_time.as_millis(),
        mode.as_str()
    );
    let overflowed_before = {
        let mut s = lock(shared);
        if let Some(previous) = s.profile.as_ref() {
            s.earlier_stats = s.earlier_stats.merged(previous.stats);
        }
        if let Some(previous) = s.probe_run_time.take() {
            s.earlier_run_time = s.earlier_run_time.plus(previous);
        }
        if s.generation > 0 {
            s.reattaches += 1;
        }
        s.generation += 1;
        s.target = Some(target_info.clone());
        s.mode = Some(mode);
        s.stale = false;
        s.profile = None;
        s.series = None;
        s.mapping = tracee.mapping();
        s.started = Some((Instant::now(), unix_nanos()));
        s.attached_probes = probes.attached;
        s.attached_fraction = probes.attached_fraction();
        s.runtime_allocated_bytes = None;
        s.last_error = None;
        s.last_collection = Some(Instant::now());
        s.overflowed_keys
    };
    let heap = HeapCounter::locate(&tracee.binary, pid, &tracee.addresses);
    // What only DWARF tells was read while attaching; symbolizing needs only .gopclntab. Exact
    // mode keeps it: its type names take their import paths from DWARF.
    if mode != Mode::Exact {
        tracee.binary.forget_debug_info();
    }
    // Attaching parsed the binary's tables and dropped some; give the memory back, and the
    // pages of the binary parsing touched (symbolizing reads the few it needs again).
    release_free_memory(true);
    executable.release_pages();
    drop(attaching);
    let mut collector = Collector::new(
        prepared,
        Store::new(config.max_keys, config.probe_options.stack_depth),
        config.grouping,
        SERVE_SIZE_SIGFIGS,
    );
    let mut symbols = tracee.symbols();
    let mut series = SeriesSelection::capped(config.series_per_target);
    let (mut next_collect, mut next_drain) = (Instant::now() + config.interval, Instant::now());
    loop {
        let ended = !target.alive();
        let stopping = stop.load(Ordering::Relaxed);
        let collect_now = ended || stopping || Instant::now() >= next_collect;
        // Once the target has exited its executable may be rewritten (a deploy copying the new
        // build over it): reading a mapped file that shrank raises SIGBUS, so the last
        // collection is made only from an executable that is still as mapped.
        if collect_now && ended && !executable.unchanged() {
            warning!("the executable of process {pid} changed after it exited; its last interval is not collected");
            return Ok(true);
        }
        if collect_now {
            let profile = collector.profile(&mut symbols)?;
            // Which callsites get series is decided here, not while a scrape holds the lock.
            let chosen = series.select(&profile, target_info.clone(), collector.probes().attached, config.top_k);
            let mut s = lock(shared);
            s.profile = Some(Arc::new(profile));
            s.series = Some(Arc::new(chosen));
            s.folded_series = series.folded;
            drop(s);
            // The previous profile is gone now (unless a request still reads it).
            release_free_memory(false);
            publish_figures(shared, &collector, heap.as_ref(), overflowed_before, ended);
            next_collect = Instant::now() + config.interval;
            next_drain = Instant::now() + DRAIN_INTERVAL;
        } else if collector.drains_between_reports() && Instant::now() >= next_drain {
            // Drained between collections too, so the stack map cannot fill ([`DRAIN_INTERVAL`]).
            collector.drain_if_filling()?;
            next_drain = Instant::now() + DRAIN_INTERVAL;
        }
        if ended {
            // Detaching can take a while (one RCU grace period per probe); the next target
            // should not wait for it.
            std::thread::spawn(move || drop(collector));
            return Ok(true);
        }
        if stopping {
            return Ok(false);
        }
        std::thread::sleep(config.poll);
    }
}

/// Publishes what a collection learnt besides the profile: the store's size, the probes'
/// duty cycle, the runtime's own allocation count (the last reading stays once the target is
/// gone), whether the target is gone.
fn publish_figures(
    shared: &Shared,
    collector: &Collector,
    heap: Option<&HeapCounter>,
    overflowed_before: u64,
    ended: bool,
) {
    let runtime_allocated_bytes = heap.and_then(HeapCounter::allocated_bytes);
    let probes = collector.probes();
    let probe_run_time = probes.run_time();
    let store = collector.store();
    let mut s = lock(shared);
    s.probe_run_time = probe_run_time.or(s.probe_run_time);
    s.store_keys = store.len();
    s.attached_fraction = probes.attached_fraction();
    s.runtime_allocated_bytes = runtime_allocated_bytes.or(s.runtime_allocated_bytes);
    s.overflowed_keys = overflowed_before + store.overflowed;
    s.stale = ended;
    s.last_collection = Some(Instant::now());
}

/// Returns freed heap memory to the kernel. glibc keeps freed memory in its arenas for reuse,
/// so a sidecar that once parsed a binary's DWARF, or built one big profile, would keep that
/// high-water mark as RSS for good.
///
/// At most once per [`TRIM_EVERY`] unless `now`: `malloc_trim` walks every free chunk of
/// every arena, and a node agent collecting twenty targets every interval spent 6% of its CPU
/// there.
fn release_free_memory(now: bool) {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if !now && last.is_some_and(|at| at.elapsed() < TRIM_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}
