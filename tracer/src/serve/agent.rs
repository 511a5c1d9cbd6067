//! `serve --all`: the node agent. One discovery thread scans `/proc` every [`SCAN_INTERVAL`]
//! for Go processes; each process found gets a thread of its own that traces it exactly as
//! the sidecar traces its one target ([`super::collector::trace_target`]), publishing into a
//! snapshot of its own. The HTTP side reads the [`AgentState`] and the snapshots; it cannot
//! reach a probe.
//!
//! Why a periodic scan rather than an exec tracepoint: a scan finds processes that were
//! running before the agent started (which a tracepoint cannot), needs no further BPF program
//! or kernel feature, and costs about 4 ms of a 1 s period with 470 processes on the host
//! (`gotrace_agent_scan_seconds_total`; [`Discovery::settled`]): a new process is noticed
//! within a second (measured: its series ~0.7 s after it started, `tests/agent.rs`). An exec
//! tracepoint would still need the scan at start, and its program would run at every exec of
//! every shell on the node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::collector::trace_target;
use super::follow::Failed;
use super::identity::Placement;
use super::snapshot::{Shared, lock};
use crate::config::{AgentConfig, ServeConfig};
use crate::mapped::FileBytes;
use crate::process::{ProcessId, exe_identity};
use crate::tracee::Executable;
use crate::{progress, warning};

/// How often `/proc` is scanned for new processes.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the discovery thread looks at its stop flag between scans.
const STOP_POLL: Duration = Duration::from_millis(100);
/// An exited target's last data stays served this long (marked stale), so that a scrape after
/// its exit still gets its final counts; then its series go.
const KEEP_EXITED: Duration = Duration::from_mins(1);
/// A process whose tracing failed is tried again after this long (doubling up to ten minutes:
/// [`super::collector`]'s back-off).
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
const RETRY_FAILED_MAX: Duration = Duration::from_mins(10);

/// Why a process is not traced; each is a `reason` label of
/// `gotrace_agent_skipped_processes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum SkipReason {
    /// Not a Go binary (most processes on a host): skipped without a word.
    NotGo,
    ExcludedName,
    ExcludedExe,
    /// `--max-targets` were traced already.
    MaxTargets,
}

impl SkipReason {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Self::NotGo => "not_go",
            Self::ExcludedName => "excluded_name",
            Self::ExcludedExe => "excluded_exe",
            Self::MaxTargets => "max_targets",
        }
    }
}

/// Why tracing a Go process failed; each is a `reason` label of `gotrace_agent_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum FailReason {
    /// The process exited while gotrace read or attached to it.
    Exited,
    /// Its binary could not be read (another mount namespace gone, permissions).
    Unreadable,
    /// A Go binary gotrace cannot trace: too old a release, a version it cannot tell, or
    /// corrupt tables.
    Unsupported,
    /// Loading or attaching the probes failed.
    Attach,
}

impl FailReason {
    pub(super) const fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Unreadable => "unreadable",
            Self::Unsupported => "unsupported",
            Self::Attach => "attach",
        }
    }

    /// Why tracing `target` failed with `error`, after its executable was read.
    fn of(error: &anyhow::Error, target: ProcessId) -> Self {
        if !target.alive() {
            return Self::Exited;
        }
        let parsing = error.chain().find_map(|cause| cause.downcast_ref::<gobin::Error>());
        match parsing {
            Some(gobin::Error::Io { .. }) => Self::Unreadable,
            Some(_) => Self::Unsupported,
            None => Self::Attach,
        }
    }
}

/// One process the agent follows.
#[derive(Debug)]
pub(super) struct AgentTarget {
    pub id: ProcessId,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// The executable as the process sees it.
    pub exe: String,
    pub placement: Placement,
    /// What its tracing thread publishes.
    pub shared: Shared,
    /// When the process exited (its data is then stale, and goes after [`KEEP_EXITED`]).
    pub exited: Option<Instant>,
}

/// What the agent knows of the host, read by `/metrics` and `/targets`.
#[derive(Debug, Default)]
pub(super) struct AgentState {
    /// By pid.
    pub targets: BTreeMap<u32, AgentTarget>,
    /// Processes not traced, by reason (each process run counted once).
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Go processes whose tracing failed, by reason.
    pub errors: BTreeMap<FailReason, u64>,
    /// Scans of `/proc`, and the time they took.
    pub scans: u64,
    pub scan_time: Duration,
    /// The discovery thread has ended.
    pub gone: bool,
}

pub(super) type Agent = Arc<Mutex<AgentState>>;

pub(super) fn lock_agent(agent: &Agent) -> std::sync::MutexGuard<'_, AgentState> {
    agent.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A target's tracing thread ended in failure.
#[derive(Debug)]
struct Failure {
    /// Known where it failed (reading the executable); else found from the error.
    reason: Option<FailReason>,
    error: anyhow::Error,
}

/// What the discovery thread remembers of the processes it has looked at.
#[derive(Debug, Default)]
struct Discovery {
    /// Processes looked at and not to be looked at again (traced now, skipped, not Go), by
    /// pid, with the executable each ran (`None`: none, a kernel thread). A scan needs one
    /// `stat` of `/proc/PID/exe` to tell such a process still runs the same executable: an
    /// `execve` changes it (a shell script that ends in `exec ./server`, `runc init` becoming
    /// the container's program), and a pid reused by the same executable gets the same
    /// verdict. Measured with 470 processes on the host: 22 scans took 0.23 s with a full look
    /// at each process every time (`/proc/PID/stat` too), 23 scans 0.089 s with this, the
    /// first scan (which opens every new executable) included.
    settled: HashMap<u32, Option<(u64, u64)>>,
    /// Go processes skipped for `--max-targets`: counted once, taken when a slot frees.
    waiting: HashMap<ProcessId, (String, String)>,
    /// Executables known not to be Go, by file identity: a shell started a thousand times is
    /// opened once.
    not_go: HashSet<(u64, u64)>,
    /// Processes counted once as skipped for `--max-targets`.
    counted_waiting: HashSet<ProcessId>,
    failed: Failed,
    running: HashMap<ProcessId, JoinHandle<Result<(), Failure>>>,
}

/// Scans and traces until `stop`; then stops every target (each detaches its probes) and waits
/// for them.
pub(super) fn discover_and_trace(
    config: &Arc<ServeConfig>,
    agent_config: &AgentConfig,
    agent: &Agent,
    stop: &Arc<AtomicBool>,
) {
    let mut discovery = Discovery::default();
    let own = std::process::id();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        reap(&mut discovery, agent);
        scan(config, agent_config, agent, stop, own, &mut discovery);
        {
            let mut state = lock_agent(agent);
            state.scans += 1;
            state.scan_time += started.elapsed();
        }
        let next = started + SCAN_INTERVAL;
        while !stop.load(Ordering::Relaxed) && Instant::now() < next {
            std::thread::sleep(STOP_POLL.min(next.saturating_duration_since(Instant::now())));
        }
    }
    progress!("detaching from {} processes", discovery.running.len());
    for (_, handle) in discovery.running.drain() {
        let _ = handle.join();
    }
    lock_agent(agent).gone = true;
}

/// Collects the threads of targets that ended: exited processes stay (stale) for
/// [`KEEP_EXITED`]; failures are logged once and counted.
fn reap(discovery: &mut Discovery, agent: &Agent) {
    let ended: Vec<ProcessId> = discovery
        .running
        .iter()
        .filter(|(_, handle)| handle.is_finished())
        .map(|(id, _)| *id)
        .collect();
    for id in ended {
        let Some(handle) = discovery.running.remove(&id) else {
            continue;
        };
        let outcome = handle.join().unwrap_or_else(|_| {
            Err(Failure {
                reason: Some(FailReason::Attach),
                error: anyhow::anyhow!("the tracing thread panicked"),
            })
        });
        // The next scan looks at this pid afresh (it may run something new by then).
        if discovery.settled.get(&id.pid) == Some(&Some(id.exe)) {
            discovery.settled.remove(&id.pid);
        }
        let mut state = lock_agent(agent);
        match outcome {
            Ok(()) => {
                progress!(
                    "process {} exited; its last data stays served for {} s",
                    id.pid,
                    KEEP_EXITED.as_secs()
                );
                // Unless the pid already belongs to what the process exec'd, or to a new one.
                if let Some(target) = state.targets.get_mut(&id.pid)
                    && target.id == id
                {
                    target.exited = Some(Instant::now());
                }
            }
            Err(Failure { reason, error }) => {
                let reason = reason.unwrap_or_else(|| FailReason::of(&error, id));
                warning!(
                    "cannot trace process {} ({reason:?}): {error:#}",
                    id.pid,
                    reason = reason.as_str()
                );
                *state.errors.entry(reason).or_default() += 1;
                if state.targets.get(&id.pid).is_some_and(|t| t.id == id) {
                    state.targets.remove(&id.pid);
                }
                match reason {
                    // Gone: nothing to retry.
                    FailReason::Exited => {}
                    // The same binary will not become traceable.
                    FailReason::Unsupported => {
                        discovery.settled.insert(id.pid, Some(id.exe));
                    }
                    FailReason::Unreadable | FailReason::Attach => {
                        let backoff = discovery
                            .failed
                            .get(&id)
                            .map_or(RETRY_FAILED_AFTER, |(_, b)| (*b * 2).min(RETRY_FAILED_MAX));
                        discovery.failed.insert(id, (Instant::now() + backoff, backoff));
                    }
                }
            }
        }
    }
    let mut state = lock_agent(agent);
    state
        .targets
        .retain(|_, t| t.exited.is_none_or(|at| at.elapsed() < KEEP_EXITED));
}

/// One look at every process.
fn scan(
    config: &Arc<ServeConfig>,
    agent_config: &AgentConfig,
    agent: &Agent,
    stop: &Arc<AtomicBool>,
    own: u32,
    discovery: &mut Discovery,
) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut alive = HashSet::new();
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if pid == own {
            continue;
        }
        alive.insert(pid);
        if let Some(known) = discovery.settled.get(&pid)
            && *known == exe_identity(pid)
        {
            continue;
        }
        let Some(id) = ProcessId::of(pid) else {
            // A kernel thread (no executable), or a process that just exited.
            discovery.settled.insert(pid, None);
            continue;
        };
        if discovery.running.contains_key(&id) {
            discovery.settled.insert(pid, Some(id.exe));
            continue;
        }
        if discovery
            .failed
            .get(&id)
            .is_some_and(|(retry_at, _)| Instant::now() < *retry_at)
        {
            continue;
        }
        let verdict = match discovery.waiting.remove(&id) {
            Some((comm, exe)) => Verdict::Trace { comm, exe },
            None => classify(agent_config, discovery, id),
        };
        match verdict {
            Verdict::Skip(reason) => {
                discovery.settled.insert(pid, Some(id.exe));
                *lock_agent(agent).skipped.entry(reason).or_default() += 1;
            }
            // Looked at again next time: the process exec'd, or exited, while being read.
            Verdict::Unsure => {}
            Verdict::Trace { comm, exe } => {
                if discovery.running.len() >= agent_config.max_targets {
                    if !discovery.waiting.contains_key(&id) && !discovery.counted_waiting.contains(&id) {
                        *lock_agent(agent).skipped.entry(SkipReason::MaxTargets).or_default() += 1;
                        discovery.counted_waiting.insert(id);
                    }
                    discovery.waiting.insert(id, (comm, exe));
                    continue;
                }
                discovery.settled.insert(pid, Some(id.exe));
                start_target(config, agent, stop, discovery, id, comm, exe);
            }
        }
    }
    // Forget what has gone, so the maps stay the size of the host's process table.
    discovery.settled.retain(|pid, _| alive.contains(pid));
    discovery.waiting.retain(|id, _| alive.contains(&id.pid));
    discovery.counted_waiting.retain(|id| alive.contains(&id.pid));
    discovery.failed.retain(|id, _| alive.contains(&id.pid));
}

enum Verdict {
    Skip(SkipReason),
    /// The process changed or went while it was looked at.
    Unsure,
    Trace {
        comm: String,
        exe: String,
    },
}

fn classify(agent_config: &AgentConfig, discovery: &mut Discovery, id: ProcessId) -> Verdict {
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", id.pid))
        .unwrap_or_default()
        .trim_end_matches('\n')
        .to_owned();
    if agent_config
        .exclude_names
        .iter()
        .any(|name| super::follow::comm_of(name) == comm)
    {
        return Verdict::Skip(SkipReason::ExcludedName);
    }
    let Ok(exe) = gobin::procmaps::process_exe(id.pid) else {
        return Verdict::Skip(SkipReason::NotGo);
    };
    if agent_config.exclude_exes.contains(&exe.path_in_process) {
        return Verdict::Skip(SkipReason::ExcludedExe);
    }
    if discovery.not_go.contains(&id.exe) {
        return Verdict::Skip(SkipReason::NotGo);
    }
    // What is read must be the file the process runs, not what an exec replaced it with since.
    let Some(opened) = FileBytes::open(&exe.path).ok() else {
        return Verdict::Unsure;
    };
    if file_identity(&exe.path) != Some(id.exe) {
        return Verdict::Unsure;
    }
    // A parser bug on some executable of the host must not end discovery: such a file, like a
    // corrupt one, is not taken for Go (but not remembered as not Go either).
    match std::panic::catch_unwind(|| gobin::is_go(opened.bytes())) {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            discovery.not_go.insert(id.exe);
            return Verdict::Skip(SkipReason::NotGo);
        }
        Ok(Err(_)) | Err(_) => return Verdict::Skip(SkipReason::NotGo),
    }
    Verdict::Trace {
        comm,
        exe: exe.path_in_process.display().to_string(),
    }
}

/// Device and inode of a file.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn start_target(
    config: &Arc<ServeConfig>,
    agent: &Agent,
    stop: &Arc<AtomicBool>,
    discovery: &mut Discovery,
    id: ProcessId,
    comm: String,
    exe: String,
) {
    let shared: Shared = Arc::default();
    let placement = Placement::of_process(id.pid);
    {
        let mut state = lock_agent(agent);
        state.targets.insert(
            id.pid,
            AgentTarget {
                id,
                comm,
                exe,
                placement,
                shared: shared.clone(),
                exited: None,
            },
        );
    }
    let (config, stop) = (config.clone(), stop.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("trace-{}", id.pid))
        .spawn(move || {
            let result = match Executable::read(id.pid) {
                Ok(executable) => trace_target(&config, id, &executable, &shared, &stop)
                    .map(|_| ())
                    .map_err(|error| Failure { reason: None, error }),
                Err(error) => Err(Failure {
                    reason: Some(if id.alive() {
                        FailReason::Unreadable
                    } else {
                        FailReason::Exited
                    }),
                    error,
                }),
            };
            lock(&shared).collector_gone = true;
            result
        });
    match spawned {
        Ok(handle) => {
            discovery.running.insert(id, handle);
        }
        Err(error) => {
            warning!("cannot start a thread to trace process {}: {error}", id.pid);
            let mut state = lock_agent(agent);
            state.targets.remove(&id.pid);
            *state.errors.entry(FailReason::Attach).or_default() += 1;
        }
    }
}
