//! Command-line interface: raw arguments, and their resolution into validated configurations
//! before any work starts.
// Doc comments here are `--help` text, where Markdown backticks would show as they are.
#![expect(clippy::doc_markdown, reason = "doc comments are --help text")]

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracer::config::{
    AgentConfig, ExplainConfig, ExplainFormat, ExplainInput, InspectConfig, InspectFormat, InspectTarget, LiveMode,
    OutputFormat, Scope, Selector, ServeConfig, TraceConfig,
};
use tracer::duty::DutyCycleOptions;
use tracer::mode::Mode;
use tracer::probes::ProbeOptions;
use tracer::profile::Grouping;

pub mod meta;

/// `--span-budget`'s default: probe hits per second of the target's CPU time (see `crate::duty`).
const DEFAULT_SPAN_BUDGET: u32 = 1000;

/// See where a running Go program allocates heap memory: each callsite, the type it
/// allocates, how often and how big. No recompiling, no pprof import, no restart.
#[derive(Debug, Parser)]
#[command(
    name = "gotrace",
    version,
    disable_version_flag = true,
    arg_required_else_help = true,
    max_term_width = 100,
    after_help = "Start with: gotrace doctor (can this host trace?), then gotrace inspect BINARY or \
                  sudo gotrace attach PID. Each command has its own --help."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print the version, the git commit and build date, and the kernel features the probes
    /// need, each checked against the running kernel
    #[arg(long, short = 'V')]
    pub version: bool,

    /// Print no progress on stderr (reading, attached, a status line every interval, where a
    /// file went); warnings and errors still show.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what gotrace knows about a Go binary: build facts, the allocation entry points it
    /// would probe and how, symbols and type names. Needs no root and does not stop the
    /// process.
    #[command(after_help = "Examples:\n  \
        gotrace inspect ./server                   build facts and probe points\n  \
        gotrace inspect 4242                       the executable of process 4242\n  \
        gotrace inspect ./server --format json     the same, as JSON\n  \
        gotrace inspect 4242 --pc 0x55d0c0a1b2c3   symbolize a runtime address of the process\n  \
        gotrace inspect ./server --type 0x4a1b20   name the type whose descriptor is at 0x4a1b20\n  \
        gotrace inspect ./server --functions main. list functions whose name contains \"main.\"")]
    Inspect(InspectArgs),

    /// Trace a running Go process: count every heap allocation per allocating line of code,
    /// with its type, kind and size distribution. Needs root (or CAP_BPF and CAP_PERFMON).
    ///
    /// Probes go on the runtime's allocation entry points of that process only; other processes
    /// running the same binary are not slowed. The table refreshes every --interval; the final
    /// report comes on Ctrl-C, at the end of --duration, or when the process exits. Killing
    /// gotrace, even with SIGKILL, removes every probe: the process runs on unharmed.
    #[command(after_help = "Examples:\n  \
        sudo gotrace attach 4242                         live table until Ctrl-C\n  \
        sudo gotrace attach 4242 --duration 10s --top 5  the five callsites with the most bytes\n  \
        sudo gotrace attach 4242 -d 30s --format json -o allocs.json\n  \
        sudo gotrace attach 4242 -d 30s --format pprof -o allocs.pb.gz   then: go tool pprof allocs.pb.gz\n  \
        sudo gotrace attach 4242 -d 30s --format svg -o allocs.svg       a flame graph\n  \
        sudo gotrace attach 4242 --format jsonl --interval 1s | jq .totals\n\n\
        Live view keys: b/a/s sort by bytes, allocations, size; / filter; p pause; q quit.\n\
        Set NO_COLOR to turn colours off.")]
    Attach(AttachArgs),

    /// Start a Go program and trace it from its first allocation, with the same options as
    /// attach. When the program ends, gotrace reports and exits with the program's exit status.
    /// Ctrl-C and SIGTERM are passed on to the program, and gotrace reports once it has exited;
    /// --duration ends the trace but not the program, which keeps running untraced.
    #[command(after_help = "Examples:\n  \
        sudo gotrace run -- ./server --port 8080\n  \
        sudo gotrace run --format json -o allocs.json -- go-program arg1 arg2")]
    Run(RunArgs),

    /// Run as a sidecar: follow one Go process (by --pid, --exe or --name), trace it with low
    /// overhead for as long as it runs, and serve what was collected over HTTP. Or, with --all,
    /// as a node agent: follow every Go process on the host, each labelled with its pid,
    /// executable, container and pod. Runs until SIGINT or SIGTERM.
    ///
    /// Endpoints (GET only; none can change what is traced): /metrics (Prometheus text:
    /// per-callsite byte and object counters for the top --top-k callsites plus an "other"
    /// series, and gotrace's own health), /debug/pprof/allocs (a pprof profile like Go's
    /// net/http/pprof serves: cumulative, or the next N seconds with ?seconds=N), /healthz.
    ///
    /// When the target exits, its last data stays served, marked stale, until a new process
    /// running the same executable (or with the same name) appears; gotrace attaches to it
    /// within about a second. Processes in containers work: the binary is read through
    /// /proc/PID/root. Needs CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or root).
    ///
    /// With --all, /targets lists the processes followed (JSON), every series has pid, exe,
    /// container and pod labels, and the profiles take ?pid=N or ?container=ID (all processes
    /// of one container, merged). Non-Go processes are left alone; new ones are found within
    /// a second.
    #[command(after_help = "Examples:
          sudo gotrace serve --name my-service                    span or go-sampler, on 127.0.0.1:9464
          sudo gotrace serve --all --listen 0.0.0.0:9464           every Go process on the host
          curl -s localhost:9464/targets
          go tool pprof -top 'http://127.0.0.1:9464/debug/pprof/allocs?pid=4242'
          sudo gotrace serve --exe /srv/app/server --listen 0.0.0.0:9464
          sudo gotrace serve --pid 4242 --mode go-sampler --set-mem-profile-rate 524288
          curl -s localhost:9464/metrics | grep gotrace_alloc_bytes_total
          go tool pprof -top http://127.0.0.1:9464/debug/pprof/allocs
          go tool pprof http://127.0.0.1:9464/debug/pprof/allocs?seconds=30")]
    Serve(ServeArgs),

    /// Join what was allocated with why the compiler put it on the heap: for the callsites with
    /// the most bytes, the compiler's escape-analysis verdict at that line (go build
    /// -gcflags=-m=2, run in --src with the Go release that built the target), its reasoning,
    /// or the runtime's reason (append growth, maps, strings, interfaces). Flags lines the
    /// compiler says do not escape where heap allocations were seen anyway.
    ///
    /// Reads a saved result (JSON or pprof from attach or run), or traces --pid for --duration.
    /// Needs root only with --pid.
    #[command(after_help = "Examples:
          sudo gotrace attach 4242 -d 30s -f json -o allocs.json
          gotrace explain --src ~/src/server allocs.json                  the top 20 callsites
          gotrace explain --src ~/src/server allocs.json --format json    the same, as JSON
          gotrace explain --src ~/src/server allocs.json --list main.handle   annotated source
          sudo gotrace explain --src ~/src/server --pid 4242 -d 10s --go $(which go)
          gotrace explain --src . allocs.pb.gz --m2-log build.log        a -m=2 log saved in --src

Verdicts: escapes, moved_to_heap, does_not_escape (with a contradiction note when the heap
was used anyway), runtime, unknown. The compiler that built the target is found on PATH or in
~/sdk/goX.Y.Z; another release is used with a warning, since its decisions may differ.")]
    Explain(ExplainArgs),

    /// Say, on one screen, whether this host can trace Go programs and what is missing: the
    /// kernel release and features, privileges, the kernel's verdict on the probes (loaded,
    /// then unloaded), lockdown, ptrace_scope, perf_event_paranoid and the BPF JIT. Exits 0
    /// when tracing can work, 1 when a line says FAIL. Run it as the user (and in the
    /// container) that will run gotrace.
    #[command(after_help = "Examples:\n  \
        sudo gotrace doctor\n  \
        kubectl exec -n monitoring ds/gotrace -- gotrace doctor")]
    Doctor,

    /// Write the man pages or a shell's completions into a directory (for packagers).
    #[command(hide = true)]
    Generate(meta::GenerateArgs),
}

/// `--mode` (attach, run, serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Count every heap allocation, with its type (a probe on the runtime's malloc entry
    /// points). Exact, but each allocation costs a trap: several times slower allocation.
    Exact,
    /// Go's own heap-profile sampler: a probe on runtime.profilealloc, which the runtime calls
    /// about once per runtime.MemProfileRate bytes (512 KiB by default). Nearly free; scaled
    /// the way pprof scales. Needs the target's memory profiling on (see --set-mem-profile-rate).
    GoSampler,
    /// Span refills: a probe on runtime.(*mcache).refill, which runs when a P's cached span of
    /// one size class is used up, weighted by the objects it handed out, plus one on
    /// runtime.(*mcache).allocLarge for objects over 32 KiB. Works on every target.
    Span,
    /// go-sampler when the target's memory profiling is on, else span.
    Auto,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Exact => Self::Exact,
            ModeArg::GoSampler => Self::GoSampler,
            ModeArg::Span => Self::Span,
            ModeArg::Auto => Self::Auto,
        }
    }
}

/// `--callsite` (attach, run, serve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallsiteArg {
    /// The first frame outside the runtime, as Go's heap profile names it: the line that
    /// allocates, in the standard library or a dependency if that is where it is (the first
    /// frame of the main module is shown next to it).
    First,
    /// The first frame in the program's own code (its main module): rows of the same line of
    /// yours add up, whichever library call allocated for it (that callsite is shown next to
    /// it). Allocations with no frame of the main module keep the first frame.
    User,
}

impl From<CallsiteArg> for Grouping {
    fn from(callsite: CallsiteArg) -> Self {
        match callsite {
            CallsiteArg::First => Self::First,
            CallsiteArg::User => Self::User,
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "exe", "name", "all"])))]
pub struct ServeArgs {
    /// Follow this process; after it exits, processes running the same executable.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Follow processes running this executable (the oldest, when several do).
    #[arg(long, value_name = "PATH")]
    pub exe: Option<PathBuf>,

    /// Follow processes with this name (as in /proc/PID/comm: its first 15 characters).
    #[arg(long, value_name = "COMM")]
    pub name: Option<String>,

    /// Node agent: follow every Go process this gotrace can see (all of the host's with
    /// hostPID), each traced in --mode from when it is found until it exits.
    #[arg(long, conflicts_with_all = ["pid", "exe", "name"])]
    pub all: bool,

    /// With --all: never trace processes of this name (/proc/PID/comm). Repeatable.
    #[arg(long, value_name = "COMM", requires = "all")]
    pub exclude_name: Vec<String>,

    /// With --all: never trace this executable (the path as the process sees it). Repeatable.
    #[arg(long, value_name = "PATH", requires = "all")]
    pub exclude_exe: Vec<PathBuf>,

    /// With --all: processes traced at once. Further ones are skipped until one exits, and
    /// counted in gotrace_agent_skipped_processes_total{reason="max_targets"}.
    #[arg(long, value_name = "N", default_value_t = 64, requires = "all")]
    pub max_targets: usize,

    /// With --all: callsite series in /metrics over all targets. Each target may have up to
    /// --max-series / --max-targets (and its --top-k rules); callsites beyond that stay in its
    /// "other" series, counted in gotrace_agent_folded_series.
    #[arg(long, value_name = "N", default_value_t = 5000, requires = "all")]
    pub max_series: usize,

    /// Address to serve HTTP on. The default is loopback only: expose it deliberately.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: std::net::SocketAddr,

    /// Callsites with series of their own in /metrics (the first N by bytes; the rest add up
    /// in "other").
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub top_k: usize,

    /// How often the probes' counts are collected and the served data renewed [default: 2s;
    /// with --all, 10s: the agent collects dozens of targets, and scrapers come every 15 s or
    /// more].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<Duration>,

    /// Which frame names a series: first, the line that allocates; user, the first line of
    /// the program's own code (see attach --help). The other one is in
    /// gotrace_callsite_user_info (or gotrace_callsite_via_info), one series per callsite.
    #[arg(long, value_enum, value_name = "FRAME", default_value_t = CallsiteArg::First)]
    pub callsite: CallsiteArg,

    /// Distinct (stack, size) keys kept per target; beyond it, new ones are added to one
    /// "other callsites" entry. Bounds gotrace's memory: under 64 MiB at the default (measured
    /// with `cargo xtask soak`); each 10,000 more keys cost about 15 MiB.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_keys: usize,

    /// How allocations are observed; see attach --help. auto: go-sampler when the target's
    /// memory profiling is on, else span.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// For go-sampler: set the target's runtime.MemProfileRate to BYTES while tracing it; see
    /// attach --help for the risk.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub set_mem_profile_rate: Option<u64>,

    /// Frames recorded per allocation stack (1 to 96): fewer cost the target less per sample
    /// and the sidecar less memory; the callsite is always within the first few.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=96))]
    pub stack_depth: u16,

    #[command(flatten)]
    pub span_budget: SpanBudgetArg,

    /// Have the kernel time each run of gotrace's probes and report their total: what they
    /// cost the target beyond the traps that start them (JSON: probes.run_time; serve:
    /// gotrace_probe_run_seconds_total). While on, the kernel times every BPF program on the
    /// host, two clock reads a run (Linux 5.8+, BPF_ENABLE_STATS).
    #[arg(long)]
    pub time_probes: bool,

    /// Do not track in-use heap in go-sampler mode. By default go-sampler also follows each
    /// of Go's heap-profile samples until the runtime frees it (two more probes, on
    /// runtime.setprofilebucket and runtime.freeSpecial), which gives in-use objects and bytes
    /// per callsite for objects sampled since attach.
    #[arg(long)]
    pub no_inuse: bool,
}

impl ServeArgs {
    /// Validates the options.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let scope = match (self.pid, self.exe, self.name, self.all) {
            (Some(0), _, _, _) => bail!("0 is not a valid process id"),
            (Some(pid), None, None, false) => Scope::One(Selector::Pid(pid)),
            (None, Some(exe), None, false) => Scope::One(Selector::Exe(exe)),
            (None, None, Some(name), false) if !name.is_empty() => Scope::One(Selector::Name(name)),
            (None, None, Some(_), false) => bail!("--name must not be empty"),
            (None, None, None, true) => {
                if self.max_targets == 0 {
                    bail!("--max-targets must be at least 1");
                }
                if self.max_series < self.max_targets {
                    bail!("--max-series must be at least --max-targets (one series per target)");
                }
                if self.exclude_name.iter().any(String::is_empty) {
                    bail!("--exclude-name must not be empty");
                }
                Scope::All(AgentConfig {
                    exclude_names: self.exclude_name,
                    exclude_exes: self.exclude_exe,
                    max_targets: self.max_targets,
                    max_series: self.max_series,
                })
            }
            _ => bail!("give exactly one of --pid, --exe, --name and --all"),
        };
        if self.top_k == 0 {
            bail!("--top-k must be at least 1");
        }
        if self.max_keys < 100 {
            bail!("--max-keys must be at least 100");
        }
        let (default_interval, poll) = match scope {
            Scope::One(_) => (Duration::from_secs(2), Duration::from_millis(100)),
            Scope::All(_) => (Duration::from_secs(10), Duration::from_millis(500)),
        };
        let interval = self.interval.unwrap_or(default_interval);
        if interval < Duration::from_millis(100) || interval > Duration::from_hours(1) {
            bail!("--interval must be between 100ms and 1h");
        }
        let series_per_target = match &scope {
            Scope::All(agent) => (agent.max_series / agent.max_targets).max(1),
            Scope::One(_) => usize::MAX,
        };
        Ok(ServeConfig {
            scope,
            listen: self.listen,
            mode: self.mode.into(),
            set_mem_profile_rate: self.set_mem_profile_rate,
            top_k: self.top_k,
            series_per_target,
            interval,
            poll,
            max_keys: self.max_keys,
            probe_options: ProbeOptions {
                stack_depth: usize::from(self.stack_depth),
                span_duty_cycle: self.span_budget.duty_cycle()?,
                time_probes: self.time_probes,
                inuse: !self.no_inuse,
            },
            grouping: self.callsite.into(),
        })
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// The process id of a running Go program.
    pub pid: u32,

    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceArgs,

    /// The program and its arguments (after --).
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// Options shared by `attach` and `run`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Stop after this long (e.g. 500ms, 10s, 2m) and report; without it, trace until Ctrl-C
    /// or until the process exits.
    #[arg(long, short = 'd', value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Leak hunting: rank callsites by how much their in-use bytes grew over WINDOW (e.g.
    /// 60s). gotrace traces for WINDOW, takes a baseline of what each callsite holds, traces
    /// another WINDOW and reports the growth (JSON: inuse_growth_bytes), largest first, so a
    /// steady working set cancels out and what keeps growing comes first. go-sampler mode
    /// only; with a pprof output it also writes the baseline next to it (FILE.base), for
    /// `go tool pprof -base FILE.base FILE`.
    #[arg(long, value_name = "WINDOW", value_parser = parse_duration, conflicts_with = "duration")]
    pub growth: Option<Duration>,

    /// How often the table refreshes (or a jsonl document is written; or, when stdout is taken,
    /// a progress line is printed to stderr).
    #[arg(long, short = 'i', value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub interval: Duration,

    /// Show only the N callsites with the most bytes (the table shows 20 unless told otherwise;
    /// JSON has all unless told otherwise).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,

    /// Format of the report (and of -o files whose extension names no format).
    #[arg(long, short = 'f', value_enum, default_value_t = OutputFormatArg::Table)]
    pub format: OutputFormatArg,

    /// Write the report to FILE instead of stdout. Repeatable, for several formats from one
    /// trace; the extension picks the format: .json, .jsonl, .pb.gz or .pprof, .folded, .svg
    /// (anything else: --format).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Vec<PathBuf>,

    /// Which frame names a row: first, the line that allocates (as Go's heap profile names
    /// it, possibly in the standard library or a dependency), with the first line of your own
    /// code (the main module) shown next to it; or user, your line, with the library line
    /// next to it.
    #[arg(long, value_enum, value_name = "FRAME", default_value_t = CallsiteArg::First)]
    pub callsite: CallsiteArg,

    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// How allocations are observed (shared by attach, run and serve).
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// How allocations are observed. exact counts every allocation with its type but slows
    /// allocation-heavy programs several times; the sampled modes cost the target almost
    /// nothing, report estimates (scaled, marked as such in every output) and cannot know
    /// types ("unknown").
    /// Default: exact, or go-sampler with --growth.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,

    /// For go-sampler: set the target's runtime.MemProfileRate to BYTES while tracing (put
    /// back on exit), e.g. 524288 when the target's memory profiling is off. Risk: it writes
    /// into the running process's memory; the target then pays for its own heap profiling,
    /// whose records Go never frees (memory grows with distinct allocation stacks); and if
    /// gotrace is killed with SIGKILL the rate stays set. Needs Go 1.24+ when profiling was
    /// off from the start.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub set_mem_profile_rate: Option<u64>,

    /// Frames recorded per allocation stack (1 to 96). Exact mode copies the goroutine's live
    /// stack in one read (up to 16 KiB; deeper records a page at a time) and walks it in the
    /// copy, so a deep stack costs a few ns per frame per hit; the sampled modes read the stack
    /// a page at a time.
    #[arg(long, value_name = "N", default_value_t = 96, value_parser = clap::value_parser!(u16).range(1..=96))]
    pub stack_depth: u16,

    #[command(flatten)]
    pub span_budget: SpanBudgetArg,

    /// Have the kernel time each run of gotrace's probes and report their total: what they
    /// cost the target beyond the traps that start them (JSON: probes.run_time; serve:
    /// gotrace_probe_run_seconds_total). While on, the kernel times every BPF program on the
    /// host, two clock reads a run (Linux 5.8+, BPF_ENABLE_STATS).
    #[arg(long)]
    pub time_probes: bool,

    /// Do not track in-use heap in go-sampler mode. By default go-sampler also follows each
    /// of Go's heap-profile samples until the runtime frees it (two more probes, on
    /// runtime.setprofilebucket and runtime.freeSpecial), which gives in-use objects and bytes
    /// per callsite for objects sampled since attach.
    #[arg(long)]
    pub no_inuse: bool,
}

/// `--span-budget` (attach, run and serve).
#[derive(Debug, Args)]
pub struct SpanBudgetArg {
    /// Span mode: the probe hits per second of the target's own CPU time (user and system)
    /// that it pays for, on average, so that the cost is a share of its work whether it is
    /// busy or mostly waiting. Each hit costs a trap, the probe, and the cache misses they
    /// leave behind: ~3.6 µs on the CPU-bound benchmark workload, ~8 µs (up to ~14 µs) on a
    /// `net/http` service whose caches the network code keeps cold (2-core VM), so 1000 holds a
    /// target to ~0.4–0.8%, at most ~1.4%. A target that refills spans more than twice as fast gets the probes
    /// attached for only the first part of each --span-period (a duty cycle, down to 5% of
    /// it), and the estimates are scaled by the inverse of that part. 0: always attached.
    #[arg(long, value_name = "HITS", default_value_t = DEFAULT_SPAN_BUDGET)]
    pub span_budget: u32,

    /// Span mode: how long one duty cycle lasts (the probes attached for the first part of
    /// it, detached for the rest; 1s to 10m). Each cycle costs the target a little: on Linux
    /// 6.6+ gotrace attaches through uprobe_multi links, whose detach blocks nothing; on older
    /// kernels, through perf events, each detach makes the target's threads that hit a probe
    /// meanwhile wait ~10 ms, which added ~13% to the `net/http` benchmark service's p99 at a
    /// 3 s cycle and nothing measurable at 30 s (docs/sampled-overhead.md). Shorter cycles
    /// spread the samples more evenly over time, which only matters for a workload that
    /// changes within a cycle.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub span_period: Duration,
}

impl SpanBudgetArg {
    /// The duty cycle, `None` for none (a budget of 0); the period is checked either way, so
    /// that a bad one is an error whatever the budget.
    fn duty_cycle(&self) -> anyhow::Result<Option<DutyCycleOptions>> {
        if self.span_period < Duration::from_secs(1) || self.span_period > Duration::from_mins(10) {
            bail!("--span-period must be between 1s and 10m");
        }
        Ok((self.span_budget > 0).then_some(DutyCycleOptions {
            budget: self.span_budget,
            period: self.span_period,
        }))
    }
}

/// Report formats of `attach` and `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormatArg {
    /// An aligned table, most bytes first; on a terminal, a live view while tracing.
    Table,
    /// One JSON document (keys: target, mode, duration_secs, totals, callsites, probes).
    Json,
    /// One JSON document per --interval, each with that interval's deltas.
    Jsonl,
    /// A gzipped pprof profile (alloc_objects, alloc_space), for go tool pprof, Parca,
    /// Pyroscope. Binary: needs -o or a redirected stdout.
    Pprof,
    /// Folded stacks for flame graph tools, weighted by bytes, the type as the leaf frame.
    Folded,
    /// An interactive flame graph (SVG), weighted by bytes.
    Svg,
}

impl From<OutputFormatArg> for OutputFormat {
    fn from(format: OutputFormatArg) -> Self {
        match format {
            OutputFormatArg::Table => Self::Table,
            OutputFormatArg::Json => Self::Json,
            OutputFormatArg::Jsonl => Self::Jsonl,
            OutputFormatArg::Pprof => Self::Pprof,
            OutputFormatArg::Folded => Self::Folded,
            OutputFormatArg::Svg => Self::Svg,
        }
    }
}

/// The table's default length.
const DEFAULT_TABLE_TOP: usize = 20;

impl TraceArgs {
    /// Validates the options. `program_owns_stdout`: a started program writes to the same
    /// stdout, so periodic tables would mix with its output.
    pub fn resolve(self, program_owns_stdout: bool) -> anyhow::Result<TraceConfig> {
        if self.interval < Duration::from_millis(100) {
            bail!("--interval must be at least 100ms");
        }
        if self.duration == Some(Duration::ZERO) {
            bail!("--duration must be longer than 0");
        }
        if self.top == Some(0) {
            bail!("--top must be at least 1");
        }
        let format = OutputFormat::from(self.format);
        let outputs: Vec<(Option<PathBuf>, OutputFormat)> = if self.output.is_empty() {
            vec![(None, format)]
        } else {
            self.output
                .iter()
                .map(|p| Ok((Some(check_output(p)?), OutputFormat::of_path(p).unwrap_or(format))))
                .collect::<anyhow::Result<_>>()?
        };
        if outputs.iter().filter(|(_, f)| *f == OutputFormat::Jsonl).count() > 1 {
            bail!("only one jsonl stream per trace");
        }
        let to_stdout = outputs.iter().find(|(p, _)| p.is_none()).map(|&(_, f)| f);
        let top = match (self.top, to_stdout) {
            (Some(n), _) => Some(n),
            (None, Some(OutputFormat::Table)) => Some(DEFAULT_TABLE_TOP),
            (None, _) => None,
        };
        let stdout_is_terminal = std::io::stdout().is_terminal();
        if to_stdout == Some(OutputFormat::Pprof) && stdout_is_terminal {
            bail!("a pprof profile is binary: write it with -o FILE (e.g. -o allocs.pb.gz) or redirect stdout");
        }
        let live = if outputs.iter().any(|(_, f)| *f == OutputFormat::Jsonl) {
            LiveMode::Stream
        } else if program_owns_stdout {
            LiveMode::Status
        } else {
            match to_stdout {
                // Reports go to files (or a table follows): the terminal is free for the view.
                None | Some(OutputFormat::Table) if stdout_is_terminal => LiveMode::View,
                Some(OutputFormat::Table) => LiveMode::Tables,
                _ => LiveMode::Status,
            }
        };
        if self.growth.is_some_and(|w| w < Duration::from_millis(100)) {
            bail!("--growth must be at least 100ms");
        }
        let mode = match (self.sampling.mode, self.growth) {
            (Some(mode), None) => mode,
            (None, None) => ModeArg::Exact,
            (None | Some(ModeArg::GoSampler | ModeArg::Auto), Some(_)) => ModeArg::GoSampler,
            (Some(_), Some(_)) => bail!("--growth needs in-use heap, which only --mode go-sampler tracks"),
        };
        Ok(TraceConfig {
            duration: self.growth.map_or(self.duration, |w| Some(w.saturating_mul(2))),
            growth: self.growth,
            interval: self.interval,
            top,
            outputs,
            live,
            mode: mode.into(),
            set_mem_profile_rate: self.sampling.set_mem_profile_rate,
            probe_options: ProbeOptions {
                stack_depth: usize::from(self.sampling.stack_depth),
                span_duty_cycle: self.sampling.span_budget.duty_cycle()?,
                time_probes: self.sampling.time_probes,
                inuse: !self.sampling.no_inuse,
            },
            grouping: self.callsite.into(),
        })
    }
}

/// Fails unless `path` can be created, before any tracing starts.
fn check_output(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", path.display(), dir.display());
    }
    Ok(path.to_path_buf())
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a plain number of seconds (`1.5`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 500ms, 10s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Output formats of `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned, human-readable text.
    Text,
    /// One JSON document.
    Json,
}

/// Output formats of `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormatArg {
    /// A table: per callsite, the measured allocations and the compiler's verdict and reason.
    Table,
    /// JSON: {"callsites": [{"function", "file", "line", "allocations", "bytes", "verdict",
    /// "compiler", "reason", …}]}.
    Json,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A Go binary, or the PID of a running Go process (a number; write ./123 for a file
    /// named 123). A process's executable is read through /proc/PID/root, so processes in
    /// containers work.
    pub target: String,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Symbolize a program counter (hex, e.g. 0x49a01d), with inlined frames. With a PID it
    /// is an address in the process, translated through /proc/PID/maps. Repeatable.
    #[arg(long = "pc", value_name = "ADDR", value_parser = parse_address)]
    pub pcs: Vec<u64>,

    /// Name the Go type whose runtime type descriptor is at this address (hex). With a PID it
    /// is an address in the process. Repeatable.
    #[arg(long = "type", value_name = "ADDR", value_parser = parse_address)]
    pub types: Vec<u64>,

    /// Also list functions with their address ranges; with a value, only names containing it.
    #[arg(long, value_name = "SUBSTRING", num_args = 0..=1, default_missing_value = "")]
    pub functions: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A saved result of gotrace attach or run: a JSON report (--format json) or a pprof
    /// profile (.pb.gz). Not with --pid.
    #[arg(value_name = "RESULT", required_unless_present = "pid", conflicts_with = "pid")]
    pub result: Option<PathBuf>,

    /// Trace this running process for --duration instead of reading a saved result (needs
    /// root, like attach).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// How long to trace --pid [default: 10s].
    #[arg(long, short = 'd', value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// The Go module the target was built from: go build runs there.
    #[arg(long, value_name = "MODULE_DIR")]
    pub src: PathBuf,

    /// Read the compiler's diagnostics from this saved output of `go build -gcflags=-m=2`
    /// instead of running it.
    #[arg(long, value_name = "FILE")]
    pub m2_log: Option<PathBuf>,

    /// The go command to run (default: the target's release, on PATH or in ~/sdk; under sudo,
    /// PATH is usually reset, so name it here).
    #[arg(long, value_name = "PATH", conflicts_with = "m2_log")]
    pub go: Option<PathBuf>,

    /// Explain the N callsites with the most bytes.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,

    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = ExplainFormatArg::Table)]
    pub format: ExplainFormatArg,

    /// Print an annotated source listing of this function (e.g. main.handle) instead: per line
    /// the bytes and allocations traced, and the compiler's verdicts.
    #[arg(long, value_name = "FUNC", conflicts_with_all = ["format", "top"])]
    pub list: Option<String>,
}

impl ExplainArgs {
    /// Checks the arguments and turns them into a configuration.
    pub fn resolve(self) -> anyhow::Result<ExplainConfig> {
        if self.duration.is_some() && self.pid.is_none() {
            bail!("--duration only applies with --pid (a saved result was traced already)");
        }
        let input = match (self.result, self.pid) {
            (Some(path), None) => {
                if !path.is_file() {
                    bail!("{} is not a file", path.display());
                }
                ExplainInput::File(path)
            }
            (None, Some(0)) => bail!("0 is not a valid process id"),
            (None, Some(pid)) => ExplainInput::Live {
                pid,
                duration: self.duration.unwrap_or(Duration::from_secs(10)),
            },
            _ => bail!("give either a saved RESULT or --pid"),
        };
        if !self.src.is_dir() {
            bail!("--src {} is not a directory", self.src.display());
        }
        if self.top == 0 {
            bail!("--top must be at least 1");
        }
        if let Some(log) = &self.m2_log
            && !log.is_file()
        {
            bail!("--m2-log {} is not a file", log.display());
        }
        // go build runs in --src: a relative --go must not be taken from there. A bare name
        // (`go1.22.3`) is looked up on PATH.
        let go = match self.go {
            Some(go) if go.components().count() > 1 => Some(
                std::path::absolute(&go).with_context(|| format!("--go {} cannot be made absolute", go.display()))?,
            ),
            other => other,
        };
        Ok(ExplainConfig {
            input,
            src: self.src,
            m2_log: self.m2_log,
            go,
            top: self.top,
            format: match self.format {
                ExplainFormatArg::Table => ExplainFormat::Table,
                ExplainFormatArg::Json => ExplainFormat::Json,
            },
            list: self.list,
        })
    }
}

impl InspectArgs {
    /// Checks the arguments and turns them into a configuration.
    pub fn resolve(self) -> anyhow::Result<InspectConfig> {
        let target = if !self.target.is_empty() && self.target.bytes().all(|b| b.is_ascii_digit()) {
            let pid: u32 = self
                .target
                .parse()
                .with_context(|| format!("{:?} is not a valid process id", self.target))?;
            if pid == 0 {
                bail!("0 is not a valid process id");
            }
            InspectTarget::Pid(pid)
        } else if self.target.is_empty() {
            bail!("the target is empty: give a Go binary or a process id");
        } else {
            InspectTarget::File(PathBuf::from(self.target))
        };
        Ok(InspectConfig {
            target,
            format: match self.format {
                Format::Text => InspectFormat::Text,
                Format::Json => InspectFormat::Json,
            },
            pcs: self.pcs,
            types: self.types,
            functions: self.functions,
        })
    }
}

/// Parses `0x1234` or `1234` (hex either way, as addresses are always written).
fn parse_address(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u64::from_str_radix(digits, 16).map_err(|e| format!("{text:?} is not a hex address: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn numbers_are_pids_and_paths_are_files() {
        let resolve = |t: &str| {
            InspectArgs {
                target: t.to_owned(),
                format: Format::Text,
                pcs: vec![],
                types: vec![],
                functions: None,
            }
            .resolve()
        };
        assert_eq!(resolve("4242").unwrap().target, InspectTarget::Pid(4242));
        assert_eq!(resolve("./4242").unwrap().target, InspectTarget::File("./4242".into()));
        assert!(resolve("0").is_err());
        assert!(resolve("99999999999").is_err());
        assert!(resolve("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn span_period_is_bounded() {
        use clap::Parser as _;
        let period = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["gotrace", "serve", "--pid", "42"][..], args].concat()).unwrap();
            let Some(Command::Serve(serve)) = cli.command else {
                panic!("not serve")
            };
            serve.resolve().map(|config| {
                config
                    .probe_options
                    .span_duty_cycle
                    .expect("a budget by default")
                    .period
            })
        };
        assert_eq!(period(&[]).unwrap(), Duration::from_secs(30));
        assert_eq!(period(&["--span-period", "1s"]).unwrap(), Duration::from_secs(1));
        assert_eq!(period(&["--span-period", "10m"]).unwrap(), Duration::from_mins(10));
        let short = period(&["--span-period", "500ms"]).unwrap_err();
        assert_eq!(short.to_string(), "--span-period must be between 1s and 10m");
        assert!(period(&["--span-period", "11m"]).is_err());
    }

    #[test]
    fn addresses_are_hex() {
        assert_eq!(parse_address("0x49a01d"), Ok(0x0049_a01d));
        assert_eq!(parse_address("49a01d"), Ok(0x0049_a01d));
        assert!(parse_address("0xzz").is_err());
    }
}
