//! `gotrace serve`: a sidecar that follows one target process, traces it in a sampled mode for
//! as long as it runs, and serves what it collected over HTTP: Prometheus metrics, a pprof
//! profile with `net/http/pprof`'s semantics, and a health check.
//!
//! Two threads: the collector owns the probes and the target's binary (attaching, draining,
//! symbolizing, re-attaching after a restart) and publishes an immutable snapshot every
//! interval; the HTTP server only reads the latest snapshot. No endpoint can change what is
//! traced: the server has no handle on the collector but the snapshot.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gobin::GoBinary;
use gobin::procmaps::{AddressMap, process_exe};
use serde::Deserialize;
use tracer_common::ProbeStats;

use crate::export::{Exporter as _, MappingInfo, PprofExporter, Trace};
use crate::memprofile::{self, PreparedProbes};
use crate::mode::Mode;
use crate::probes::{AttachTarget, ProbeOptions, ProbeRunTime};
use crate::process::{ProcessId, exe_identity};
use crate::profile::{self, CallsiteKey, Profile};
use crate::remote::HeapCounter;
use crate::report::{Report, TargetInfo};
use crate::session::{ProcessSymbols, mapping_info, target_info, unix_nanos};
use crate::store::Store;

/// Which process to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// This process first; after it ends, processes running the same executable.
    Pid(u32),
    /// Processes running this executable (the same file: device and inode, so a path inside
    /// a container's root matches too).
    Exe(PathBuf),
    /// Processes whose `comm` (the kernel's 15-character process name) is this.
    Name(String),
}

/// `gotrace serve`, validated.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub selector: Selector,
    pub listen: SocketAddr,
    pub mode: Mode,
    pub set_mem_profile_rate: Option<u64>,
    /// Callsites with series of their own in `/metrics`.
    pub top_k: usize,
    /// How often the probes are drained and the snapshot renewed.
    pub interval: Duration,
    /// Distinct keys the store keeps per target.
    pub max_keys: usize,
    /// Frames walked and kept per stack, span mode's budget.
    pub probe_options: ProbeOptions,
    /// `--callsite`.
    pub grouping: profile::Grouping,
}

/// How often the probes' maps are drained between collections, as `gotrace attach` does
/// (see session.rs): often enough that the kernel's stack map cannot fill. Duty-cycled modes
/// drain once per interval, which their scaling is measured over.
const DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// How often the collector checks whether its target still lives, and looks for a new one.
const POLL: Duration = Duration::from_millis(100);
/// A process that could not be traced is tried again after this long, then twice as long
/// after each further failure, up to [`RETRY_FAILED_MAX`].
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);
const RETRY_FAILED_MAX: Duration = Duration::from_mins(10);
/// At most this many `?seconds=N` requests wait at once; more get 429.
const MAX_WAITING_DELTAS: usize = 4;
/// Size histograms are not shown by the sidecar; one significant figure keeps them tiny.
const SERVE_SIZE_SIGFIGS: u8 = 1;
/// The longest `?seconds=N` a profile request may ask for.
const MAX_DELTA_SECONDS: u64 = 3600;

/// What the collector publishes, read by every request.
#[derive(Debug, Default)]
struct Snapshot {
    target: Option<TargetInfo>,
    mode: Option<Mode>,
    /// Counts one traced process; a new process starts a new generation (and fresh counters).
    generation: u64,
    /// The target has exited; the data is its last.
    stale: bool,
    profile: Option<Arc<Profile>>,
    mapping: MappingInfo,
    /// When tracing of the current generation started.
    started: Option<(Instant, i64)>,
    attached_probes: usize,
    /// The fraction of each duty cycle the probes are attached (below 1 while span mode's
    /// cycle engages).
    attached_fraction: f64,
    /// The bytes the target's runtime has counted as allocated since it started (`None`
    /// without a symbol table to find the count by).
    runtime_allocated_bytes: Option<u64>,
    /// Probe statistics of earlier generations, summed.
    earlier_stats: ProbeStats,
    /// How long the current generation's probes ran, when the kernel times them.
    probe_run_time: Option<ProbeRunTime>,
    /// The same of earlier generations, summed.
    earlier_run_time: ProbeRunTime,
    reattaches: u64,
    last_error: Option<String>,
    store_keys: usize,
    overflowed_keys: u64,
    /// When the collector last published; `/healthz` fails when it stops doing so.
    last_collection: Option<Instant>,
    /// The collector thread has ended (it only does when gotrace stops, or on a bug).
    collector_gone: bool,
    /// Sticky membership of the callsites with series of their own (see `metrics`).
    exported: HashSet<CallsiteKey>,
}

type Shared = Arc<Mutex<Snapshot>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Snapshot> {
    // A panic while holding the lock leaves a snapshot that is still consistent enough to read.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs until SIGINT or SIGTERM.
pub fn run(config: &ServeConfig) -> anyhow::Result<()> {
    crate::privileges::check_tracing_privileges()?;
    match &config.selector {
        Selector::Pid(pid) => {
            process_exe(*pid).with_context(|| format!("cannot follow process {pid}"))?;
        }
        Selector::Exe(path) => {
            std::fs::metadata(path).with_context(|| format!("cannot follow {}", path.display()))?;
        }
        Selector::Name(_) => {}
    }
    let shared: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(config.listen))
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr().context("cannot read the listening address")?;
    // Tests and scripts read this line to find the port of --listen 127.0.0.1:0.
    eprintln!("gotrace: serving http://{local}/metrics, /debug/pprof/allocs and /healthz");
    let collector = {
        let (config, shared, stop) = (config.clone(), shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("collector".to_owned())
            .spawn(move || {
                /// Marks the collector gone however it ends, a panic included.
                struct Gone(Shared);
                impl Drop for Gone {
                    fn drop(&mut self) {
                        lock(&self.0).collector_gone = true;
                    }
                }
                let _gone = Gone(shared.clone());
                collect(&config, &shared, &stop);
            })
            .context("cannot start the collector thread")?
    };
    let (stopping, stopping_seen) = tokio::sync::watch::channel(false);
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/pprof/allocs", get(pprof_allocs))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            shared,
            top_k: config.top_k,
            interval: config.interval,
            stopping: stopping_seen,
            waiting_deltas: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_DELTAS)),
        });
    let stop_now = stop.clone();
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            // The collector starts detaching (and putting a changed rate back) at once, and
            // requests waiting out a ?seconds=N end now rather than hold the shutdown up.
            stop_now.store(true, Ordering::Relaxed);
            let _ = stopping.send(true);
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("the HTTP server failed")
    })?;
    eprintln!("gotrace: stopping");
    stop.store(true, Ordering::Relaxed);
    // The collector notices within one poll; it detaches its probes and puts a changed rate
    // back as it goes.
    let _ = collector.join();
    Ok(())
}

/// What the collector follows once it has seen its first target.
#[derive(Debug, Clone)]
enum Follow {
    Pid(u32),
    /// A program: processes whose executable is this path (as gotrace sees it, stat'd afresh
    /// on each look, so a binary replaced by a deploy still matches), or this very file (a
    /// path inside a container's root).
    Exe {
        path: PathBuf,
        file: Option<(u64, u64)>,
    },
    Name(String),
}

/// `readlink /proc/PID/exe`, without the " (deleted)" the kernel appends once the file was
/// replaced.
fn exe_path(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.to_str()?;
    Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text)))
}

impl std::fmt::Display for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "pid {pid}"),
            Self::Exe { path, .. } => write!(f, "executable {}", path.display()),
            Self::Name(name) => write!(f, "name {name}"),
        }
    }
}

impl Follow {
    fn matches(&self, pid: u32, fresh_file: Option<(u64, u64)>) -> bool {
        match self {
            Self::Pid(wanted) => pid == *wanted,
            Self::Exe { path, file } => {
                let identity = exe_identity(pid);
                (identity.is_some() && (identity == *file || identity == fresh_file))
                    || exe_path(pid).as_deref() == Some(path.as_path())
            }
            Self::Name(name) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end_matches('\n') == comm_of(name)),
        }
    }
}

/// Processes that could not be traced, and when each may be tried again.
type Failed = HashMap<ProcessId, (Instant, Duration)>;

/// The oldest live process that matches, other than gotrace itself and those that failed
/// recently.
fn find_target(follow: &Follow, failed: &Failed) -> Option<ProcessId> {
    let own = std::process::id();
    let candidates: Vec<u32> = match follow {
        Follow::Pid(pid) => vec![*pid],
        _ => std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&pid| pid != own)
            .collect(),
    };
    let fresh_file = match follow {
        Follow::Exe { path, .. } => std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
        _ => None,
    };
    let now = Instant::now();
    candidates
        .into_iter()
        .filter(|&pid| follow.matches(pid, fresh_file))
        .filter_map(ProcessId::of)
        .filter(|id| failed.get(id).is_none_or(|(retry_at, _)| now >= *retry_at))
        .min_by_key(|id| (id.start_time, id.pid))
}

/// The kernel keeps the first 15 bytes of a process's name (`TASK_COMM_LEN` is 16 with the
/// terminating zero).
fn comm_of(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The collector thread: find the target, trace it until it exits, find the next.
fn collect(config: &ServeConfig, shared: &Shared, stop: &AtomicBool) {
    let mut follow = match &config.selector {
        Selector::Pid(pid) => Follow::Pid(*pid),
        Selector::Exe(path) => Follow::Exe {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
            file: std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
        },
        Selector::Name(name) => Follow::Name(name.clone()),
    };
    let mut failed = Failed::new();
    let mut announced_wait = false;
    while !stop.load(Ordering::Relaxed) {
        let Some(target) = find_target(&follow, &failed) else {
            if !announced_wait {
                eprintln!("gotrace: waiting for a process to trace ({follow})");
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
        if let Err(error) = trace_target(config, target, shared, stop) {
            eprintln!("gotrace: cannot trace process {}: {error:#}", target.pid);
            lock(shared).last_error = Some(format!("process {}: {error:#}", target.pid));
            let backoff = failed
                .get(&target)
                .map_or(RETRY_FAILED_AFTER, |(_, b)| (*b * 2).min(RETRY_FAILED_MAX));
            failed.insert(target, (Instant::now() + backoff, backoff));
        }
        failed.retain(|id, _| id.alive());
    }
}

/// Traces one process until it exits or gotrace is stopped.
fn trace_target(config: &ServeConfig, target: ProcessId, shared: &Shared, stop: &AtomicBool) -> anyhow::Result<()> {
    let pid = target.pid;
    let (exe, data) = crate::process::read_executable(pid)?;
    let binary =
        GoBinary::parse(&data).with_context(|| format!("{} cannot be traced", exe.path_in_process.display()))?;
    let addresses = AddressMap::for_process(pid, &exe, binary.load_segments())
        .with_context(|| format!("cannot read the memory map of process {pid}"))?;
    let attach_target = AttachTarget {
        binary: &binary,
        binary_path: &exe.path,
        pid,
        addresses: &addresses,
    };
    let PreparedProbes {
        mut probes,
        mode,
        rate,
        rate_override: _rate_override,
    } = memprofile::prepare_and_attach(
        config.mode,
        config.set_mem_profile_rate,
        &attach_target,
        config.probe_options,
    )?;
    let target_info = target_info(pid, &exe.path_in_process, &binary);
    eprintln!(
        "gotrace: attached {} probes to pid {pid} ({}, {}) in {} ms, {} mode",
        probes.attached,
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
        s.target = Some(target_info);
        s.mode = Some(mode);
        s.stale = false;
        s.profile = None;
        s.exported.clear();
        s.mapping = mapping_info(&addresses, &exe.path_in_process, &binary);
        s.started = Some((Instant::now(), unix_nanos()));
        s.attached_probes = probes.attached;
        s.attached_fraction = probes.attached_fraction();
        s.runtime_allocated_bytes = None;
        s.last_error = None;
        s.last_collection = Some(Instant::now());
        s.overflowed_keys
    };
    // Attaching parsed the binary's tables and dropped some; give the memory back.
    release_free_memory();
    let mut symbols = ProcessSymbols::new(&binary, &addresses);
    let mut store = Store::new(config.max_keys, config.probe_options.stack_depth);
    let heap = HeapCounter::locate(&binary, pid, &addresses);
    let mut last_rate = memprofile::DEFAULT_RATE;
    let (mut next_collect, mut next_drain) = (Instant::now() + config.interval, Instant::now());
    loop {
        let ended = !target.alive();
        let stopping = stop.load(Ordering::Relaxed);
        let collect_now = ended || stopping || Instant::now() >= next_collect;
        // Drained between collections too, so the stack map cannot fill ([`DRAIN_INTERVAL`]).
        if collect_now || (!probes.duty_cycled() && Instant::now() >= next_drain) {
            let weighing = memprofile::weighing(mode, probes.sampler_rate(), rate.as_ref(), &mut last_rate);
            store.collect(&mut probes, weighing)?;
            next_drain = Instant::now() + DRAIN_INTERVAL;
        }
        if collect_now {
            let profile = profile::build(
                mode,
                probes.stats()?,
                &store.counts(),
                |id| store.stack(id),
                &mut symbols,
                SERVE_SIZE_SIGFIGS,
                config.grouping,
            );
            let mut s = lock(shared);
            s.profile = Some(Arc::new(profile));
            drop(s);
            // The previous profile is gone now (unless a request still reads it).
            release_free_memory();
            publish_figures(shared, &store, &probes, heap.as_ref(), overflowed_before, ended);
            next_collect = Instant::now() + config.interval;
        }
        if ended {
            eprintln!("gotrace: process {pid} exited; serving its last data (stale) until a new one appears");
            // Detaching can take a while (one RCU grace period per probe); the next target
            // should not wait for it.
            std::thread::spawn(move || drop(probes));
            return Ok(());
        }
        if stopping {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

/// Publishes what a collection learnt besides the profile: the store's size, the probes'
/// duty cycle, the runtime's own allocation count (the last reading stays once the target is
/// gone), whether the target is gone.
fn publish_figures(
    shared: &Shared,
    store: &Store,
    probes: &crate::probes::Probes,
    heap: Option<&HeapCounter>,
    overflowed_before: u64,
    ended: bool,
) {
    let runtime_allocated_bytes = heap.and_then(HeapCounter::allocated_bytes);
    let probe_run_time = probes.run_time();
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
/// so a sidecar that once parsed the kernel's BTF, or built one big profile, would keep that
/// high-water mark as RSS for good.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// What the HTTP handlers share: the snapshot, and nothing that reaches the probes.
#[derive(Debug, Clone)]
struct AppState {
    shared: Shared,
    top_k: usize,
    interval: Duration,
    /// Becomes true when gotrace is asked to stop.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// Permits for `?seconds=N` requests, which each hold a profile while they wait.
    waiting_deltas: Arc<tokio::sync::Semaphore>,
}

/// `/healthz`: 200 while the tracer works, with what it is doing; 503 when the collector has
/// stopped publishing (it ended, or it is stuck).
async fn healthz(State(app): State<AppState>) -> Response {
    let s = lock(&app.shared);
    let stuck = s.target.is_some()
        && !s.stale
        && s.last_collection
            .is_some_and(|at| at.elapsed() > app.interval.saturating_mul(5) + Duration::from_secs(10));
    if s.collector_gone || stuck {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the collector stopped publishing\n",
        )
            .into_response();
    }
    let status = match (&s.target, s.stale) {
        (None, _) => "waiting for a target".to_owned(),
        (Some(t), false) => format!("tracing pid {}", t.pid),
        (Some(t), true) => format!("pid {} exited; serving its last data (stale)", t.pid),
    };
    let error = s
        .last_error
        .as_deref()
        .map_or_else(String::new, |e| format!("\nlast error: {e}"));
    (StatusCode::OK, format!("ok: {status}{error}\n")).into_response()
}

/// Escapes a Prometheus label value: backslash, double quote and newline.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The tracer's resident memory, from `/proc/self/statm` (pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

/// `/metrics`: the Prometheus text format (version 0.0.4).
///
/// Cardinality is bounded: the first `top_k` callsites by bytes get series of their own, and
/// keep them for the life of the target (so that a series never disappears while its process
/// runs); everything else adds up in one `other` series per counter.
async fn metrics(State(app): State<AppState>) -> Response {
    let mut s = lock(&app.shared);
    let text = render_metrics(&mut s, app.top_k);
    drop(s);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn render_metrics(s: &mut Snapshot, top_k: usize) -> String {
    let mut out = String::new();
    let profile = s.profile.clone();
    if let Some(profile) = &profile {
        render_callsites(&mut out, s, profile, top_k);
    }
    render_own_metrics(&mut out, s, profile.as_deref());
    out
}

/// The per-callsite counters: the sticky top K, and `other`.
fn render_callsites(out: &mut String, s: &mut Snapshot, profile: &Profile, top_k: usize) {
    {
        // Membership only grows, so no series disappears while its process lives: the first
        // `top_k` callsites by bytes get in, and later a callsite that outgrows the smallest
        // member, up to twice `top_k` series.
        let mut smallest = profile
            .callsites
            .iter()
            .filter(|c| s.exported.contains(&c.key))
            .map(|c| c.bytes)
            .min();
        for callsite in &profile.callsites {
            if s.exported.contains(&callsite.key) {
                continue;
            }
            let admit = s.exported.len() < top_k
                || (s.exported.len() < top_k.saturating_mul(2) && smallest.is_some_and(|m| callsite.bytes > m));
            if !admit {
                break;
            }
            s.exported.insert(callsite.key.clone());
            smallest = Some(smallest.map_or(callsite.bytes, |m| m.min(callsite.bytes)));
        }
        let estimated = if s.mode.is_some_and(Mode::is_sampled) {
            " Estimated from samples, scaled (see gotrace_target_info's mode)."
        } else {
            ""
        };
        let mut other = (0u64, 0u64);
        let mut series = Vec::new();
        for c in &profile.callsites {
            if s.exported.contains(&c.key) {
                series.push(c);
            } else {
                other.0 = other.0.saturating_add(c.bytes);
                other.1 = other.1.saturating_add(c.allocations);
            }
        }
        for (name, help, value_of, other_value) in [
            (
                "gotrace_alloc_bytes_total",
                "Heap bytes allocated, per callsite.",
                (|c: &profile::Callsite| c.bytes) as fn(&profile::Callsite) -> u64,
                other.0,
            ),
            (
                "gotrace_alloc_objects_total",
                "Heap objects allocated, per callsite.",
                |c: &profile::Callsite| c.allocations,
                other.1,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}{estimated}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for c in &series {
                let _ = writeln!(
                    out,
                    "{name}{{function=\"{}\",file=\"{}\",line=\"{}\",type=\"{}\",kind=\"{}\"}} {}",
                    label(&c.key.function),
                    label(&c.key.file),
                    c.key.line,
                    label(c.key.type_name.as_deref().unwrap_or("-")),
                    c.key.kind.as_str(),
                    value_of(c)
                );
            }
            let _ = writeln!(
                out,
                "{name}{{function=\"other\",file=\"\",line=\"0\",type=\"\",kind=\"other\"}} {other_value}"
            );
        }
        // The other frame of --callsite, in a metric of its own: as labels of the counters it
        // would change their identity whenever the most frequent one changes.
        let (info, help, function_label, line_label) = if series.iter().any(|c| c.via.is_some()) {
            (
                "gotrace_callsite_via_info",
                "The line that allocated, outside the program's own code, of a callsite named by the program's line (--callsite user).",
                "via_function",
                "via_line",
            )
        } else {
            (
                "gotrace_callsite_user_info",
                "The first line of the program's own code on the way to a callsite outside it.",
                "user_function",
                "user_line",
            )
        };
        let _ = writeln!(out, "# HELP {info} {help}");
        let _ = writeln!(out, "# TYPE {info} gauge");
        for c in &series {
            let Some((function, _, line)) = c.user.as_ref().or(c.via.as_ref()) else {
                continue;
            };
            let _ = writeln!(
                out,
                "{info}{{function=\"{}\",file=\"{}\",line=\"{}\",type=\"{}\",kind=\"{}\",{function_label}=\"{}\",{line_label}=\"{line}\"}} 1",
                label(&c.key.function),
                label(&c.key.file),
                c.key.line,
                label(c.key.type_name.as_deref().unwrap_or("-")),
                c.key.kind.as_str(),
                label(function),
            );
        }
    }
}

/// What was counted in the target without sampling: its runtime's own allocation total, and
/// the time the probes took in it (when the kernel timed them).
fn render_target_counts(out: &mut String, s: &Snapshot) {
    if let Some(bytes) = s.runtime_allocated_bytes {
        let _ = writeln!(
            out,
            "# HELP gotrace_target_runtime_allocated_bytes_total Heap bytes the target's own runtime has \
             counted as allocated since it started (what runtime.MemStats.TotalAlloc reports, read from \
             its memory): not sampled, whatever the mode; a cached span's objects count when it is given back."
        );
        let _ = writeln!(out, "# TYPE gotrace_target_runtime_allocated_bytes_total counter");
        let _ = writeln!(out, "gotrace_target_runtime_allocated_bytes_total {bytes}");
    }
    let run_time = s.earlier_run_time.plus(s.probe_run_time.unwrap_or_default());
    if run_time.runs > 0 {
        let _ = writeln!(
            out,
            "# HELP gotrace_probe_run_seconds_total CPU time gotrace's probes took in the target, as the \
             kernel timed them (--time-probes), without the traps that start them."
        );
        let _ = writeln!(out, "# TYPE gotrace_probe_run_seconds_total counter");
        #[expect(clippy::cast_precision_loss, reason = "seconds to show")]
        let seconds = run_time.nanoseconds as f64 / 1e9;
        let _ = writeln!(out, "gotrace_probe_run_seconds_total {seconds}");
        let _ = writeln!(
            out,
            "# HELP gotrace_probe_timed_runs_total Probe runs the kernel timed."
        );
        let _ = writeln!(out, "# TYPE gotrace_probe_timed_runs_total counter");
        let _ = writeln!(out, "gotrace_probe_timed_runs_total {}", run_time.runs);
    }
}

/// gotrace's own health, and what it traces.
fn render_own_metrics(out: &mut String, s: &Snapshot, profile: Option<&Profile>) {
    let stats = profile.map_or(s.earlier_stats, |p| s.earlier_stats.merged(p.stats));
    let attached = u8::from(s.target.is_some() && !s.stale);
    let gauges: [(&str, &str, &str, u64); 8] = [
        (
            "gotrace_probe_hits_total",
            "counter",
            "Times gotrace's probes fired.",
            stats.hits,
        ),
        (
            "gotrace_dropped_events_total",
            "counter",
            "Allocations or samples the probes saw but could not record.",
            stats.dropped(),
        ),
        (
            "gotrace_without_stack_total",
            "counter",
            "Allocations or samples recorded without their stack (stack map full).",
            stats.without_stack,
        ),
        (
            "gotrace_attached_targets",
            "gauge",
            "Processes traced now (0 while waiting, or after the target exited).",
            u64::from(attached),
        ),
        (
            "gotrace_reattaches_total",
            "counter",
            "Times gotrace attached to a new process after the first.",
            s.reattaches,
        ),
        (
            "gotrace_resident_memory_bytes",
            "gauge",
            "gotrace's own resident memory.",
            resident_bytes(),
        ),
        (
            "gotrace_store_keys",
            "gauge",
            "Distinct (stack, size) keys held for the current target.",
            u64::try_from(s.store_keys).unwrap_or(u64::MAX),
        ),
        (
            "gotrace_store_overflowed_keys_total",
            "counter",
            "Keys folded into the other callsite because the key limit was reached.",
            s.overflowed_keys,
        ),
    ];
    for (name, kind, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    let _ = writeln!(
        out,
        "# HELP gotrace_probe_attached_ratio The fraction of each duty cycle (--span-period) the probes are attached: \
         below 1 while span mode's duty cycle keeps them within --span-budget (estimates are scaled up)."
    );
    let _ = writeln!(out, "# TYPE gotrace_probe_attached_ratio gauge");
    let _ = writeln!(out, "gotrace_probe_attached_ratio {}", s.attached_fraction);
    render_target_counts(out, s);
    if let (Some(t), Some(mode)) = (&s.target, s.mode) {
        let _ = writeln!(
            out,
            "# HELP gotrace_target_info The traced process; stale=\"true\" after it exited."
        );
        let _ = writeln!(out, "# TYPE gotrace_target_info gauge");
        let _ = writeln!(
            out,
            "gotrace_target_info{{pid=\"{}\",exe=\"{}\",go_version=\"{}\",mode=\"{}\",stale=\"{}\"}} 1",
            t.pid,
            label(&t.exe),
            label(&t.go_version),
            mode.as_str(),
            s.stale
        );
    }
}

#[derive(Debug, Deserialize)]
struct PprofQuery {
    seconds: Option<u64>,
}

/// `/debug/pprof/allocs`: as Go's `net/http/pprof` serves it, a gzipped pprof profile of every
/// allocation since the target started being traced; with `?seconds=N`, only those of the
/// next N seconds.
async fn pprof_allocs(State(app): State<AppState>, Query(query): Query<PprofQuery>) -> Response {
    let shared = &app.shared;
    let current = || {
        let s = lock(shared);
        (s.generation, s.profile.clone())
    };
    let (generation, first) = current();
    let Some(first) = first else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no profile yet: no target traced so far\n",
        )
            .into_response();
    };
    let profile = match query.seconds {
        None | Some(0) => first,
        Some(n) if n > MAX_DELTA_SECONDS => {
            return (
                StatusCode::BAD_REQUEST,
                format!("seconds must be at most {MAX_DELTA_SECONDS}\n"),
            )
                .into_response();
        }
        Some(n) => {
            let Ok(_permit) = app.waiting_deltas.clone().try_acquire_owned() else {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("at most {MAX_WAITING_DELTAS} ?seconds=N requests at a time\n"),
                )
                    .into_response();
            };
            let mut stopping = app.stopping.clone();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(n)) => {}
                _ = stopping.wait_for(|stop| *stop) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, "gotrace is stopping\n").into_response();
                }
            }
            let (generation_now, last) = current();
            match last {
                Some(last) if generation_now == generation => Arc::new(last.since(&first)),
                // A new process: all of its profile is new.
                Some(last) => last,
                None => {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the target restarted during the window and has no profile yet\n",
                    )
                        .into_response();
                }
            }
        }
    };
    pprof_response(shared, &profile, query.seconds.filter(|&n| n > 0))
}

/// The profile as a gzipped pprof file, with the metadata of the current target; `window`:
/// the delta's length in seconds.
fn pprof_response(shared: &Shared, profile: &Profile, window: Option<u64>) -> Response {
    let s = lock(shared);
    let Some(target) = s.target.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no target\n").into_response();
    };
    let (mut elapsed, mut started_unix_nanos) = s
        .started
        .map_or((0.0, 0), |(at, unix)| (at.elapsed().as_secs_f64(), unix));
    if let Some(n) = window {
        // A delta covers the last N seconds.
        #[expect(clippy::cast_precision_loss, reason = "seconds, at most an hour")]
        let seconds = n as f64;
        elapsed = elapsed.min(seconds);
        #[expect(clippy::cast_possible_truncation, reason = "an hour of nanoseconds fits")]
        let back = (elapsed * 1e9) as i64;
        started_unix_nanos = unix_nanos().saturating_sub(back);
    }
    let mapping = s.mapping.clone();
    let attached = s.attached_probes;
    let stale = s.stale;
    drop(s);
    let report = Report::new(target, profile, attached, elapsed, Some(0));
    let mut body = Vec::new();
    if let Err(e) = PprofExporter.export(
        &Trace {
            report: &report,
            profile,
            mapping: &mapping,
            started_unix_nanos,
        },
        &mut body,
    ) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the profile: {e}\n"),
        )
            .into_response();
    }
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"allocs\""),
    );
    if stale {
        headers.insert("x-gotrace-stale", HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }

    fn profile_of(callsites: &[(&str, u64)]) -> Profile {
        let callsites = callsites
            .iter()
            .map(|&(function, bytes)| profile::Callsite {
                key: CallsiteKey {
                    function: function.into(),
                    file: "/app/main.go".into(),
                    line: 7,
                    type_name: Some("unknown".into()),
                    kind: profile::Kind::New,
                },
                allocations: bytes / 8,
                bytes,
                sizes: hdrhistogram::Histogram::new(1).unwrap(),
                min_size: 8,
                max_size: 8,
                inlined_into: Vec::new(),
                user: None,
                via: None,
                also_counts: HashMap::new(),
            })
            .collect();
        Profile {
            mode: Mode::Span,
            stats: ProbeStats::default(),
            totals: profile::Totals::default(),
            callsites,
            samples: Vec::new(),
            grouping: profile::Grouping::First,
        }
    }

    fn series(text: &str, name: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| {
                let function = l.split("function=\"").nth(1).unwrap().split('"').next().unwrap();
                (function.to_owned(), l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// The top K get series, the rest add up in `other`; membership only grows, and a
    /// callsite that outgrows the smallest member joins, up to 2K.
    #[test]
    fn metrics_keep_cardinality_bounded_and_series_stable() {
        let mut s = Snapshot {
            target: Some(TargetInfo {
                pid: 7,
                exe: "/app/with \"quotes\"".to_owned(),
                go_version: "go1.27.3".to_owned(),
                arch: "x86_64".to_owned(),
            }),
            mode: Some(Mode::Span),
            profile: Some(Arc::new(profile_of(&[
                ("main.a", 800),
                ("main.b", 400),
                ("main.c", 200),
                ("main.d", 100),
            ]))),
            ..Snapshot::default()
        };
        let text = render_metrics(&mut s, 2);
        assert_eq!(
            series(&text, "gotrace_alloc_bytes_total"),
            [
                ("main.a".to_owned(), 800),
                ("main.b".to_owned(), 400),
                ("other".to_owned(), 300)
            ]
        );
        assert!(text.contains("# TYPE gotrace_alloc_bytes_total counter"));
        assert!(text.contains("exe=\"/app/with \\\"quotes\\\"\""), "{text}");
        assert!(text.contains("Estimated from samples"));
        // main.d grows past main.b: it joins; main.b keeps its series.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.a", 900),
            ("main.d", 500),
            ("main.b", 450),
            ("main.c", 300),
        ])));
        let text = render_metrics(&mut s, 2);
        let names: Vec<String> = series(&text, "gotrace_alloc_bytes_total")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(names, ["main.a", "main.d", "main.b", "other"]);
        // main.c outgrows them too and is the fourth member: 2K, the limit.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.c", 5000),
            ("main.a", 900),
            ("main.d", 500),
            ("main.b", 450),
        ])));
        let text = render_metrics(&mut s, 2);
        let bytes = series(&text, "gotrace_alloc_bytes_total");
        assert!(bytes.contains(&("main.c".to_owned(), 5000)), "{bytes:?}");
        assert_eq!(s.exported.len(), 4);
        // Past 2K nobody else joins, however big.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.e", 9000),
            ("main.c", 5000),
            ("main.a", 900),
        ])));
        let text = render_metrics(&mut s, 2);
        let bytes = series(&text, "gotrace_alloc_bytes_total");
        assert!(bytes.contains(&("other".to_owned(), 9000)), "{bytes:?}");
        assert_eq!(s.exported.len(), 4);
    }

    /// The main module's line of a library callsite is a series of its own: as labels of the
    /// counters it would change their identity when the most frequent one changes.
    #[test]
    fn the_programs_own_line_is_an_info_series() {
        let mut profile = profile_of(&[("strings.(*Builder).grow", 800), ("main.a", 400)]);
        profile.callsites[0].user = Some(("main.render".into(), "/app/main.go".into(), 40));
        let mut s = Snapshot {
            mode: Some(Mode::Span),
            profile: Some(Arc::new(profile)),
            ..Snapshot::default()
        };
        let text = render_metrics(&mut s, 5);
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gotrace_alloc_bytes_total{"))
            .collect();
        assert!(counters.iter().all(|l| !l.contains("user_")), "{text}");
        let info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gotrace_callsite_user_info{"))
            .collect();
        assert_eq!(info.len(), 1, "{text}");
        assert!(
            info[0].contains("function=\"strings.(*Builder).grow\"")
                && info[0].contains("user_function=\"main.render\",user_line=\"40\"")
                && info[0].ends_with(" 1"),
            "{text}"
        );
    }

    #[test]
    fn comm_is_cut_like_the_kernel_cuts_it() {
        assert_eq!(comm_of("my-go-service-with-a-long-name"), "my-go-service-w");
        assert_eq!(comm_of("short"), "short");
    }

    #[test]
    fn own_process_has_an_identity() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert_eq!(exe_identity(std::process::id()), Some(me.exe));
        assert_eq!(exe_path(std::process::id()), std::env::current_exe().ok());
    }
}
