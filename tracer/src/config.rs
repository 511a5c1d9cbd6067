//! What each command is asked to do, validated: the configurations the command line resolves
//! into before any work starts (`gotrace`'s `cli.rs`), and what a program using this library
//! builds directly. Nothing here knows about argument parsing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mode::Mode;
use crate::probes::ProbeOptions;
use crate::profile::Grouping;

/// Report formats of `attach` and `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned table, most bytes first.
    Table,
    /// One JSON document.
    Json,
    /// One JSON document per interval, each with that interval's deltas.
    Jsonl,
    /// A gzipped pprof profile.
    Pprof,
    /// Folded stacks for flame graph tools.
    Folded,
    /// An interactive flame graph (SVG).
    Svg,
}

impl OutputFormat {
    /// The format a file name asks for, by its extension.
    #[must_use]
    pub fn of_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let by_suffix = [
            (".pb.gz", Self::Pprof),
            (".pprof", Self::Pprof),
            (".pb", Self::Pprof),
            (".jsonl", Self::Jsonl),
            (".ndjson", Self::Jsonl),
            (".json", Self::Json),
            (".folded", Self::Folded),
            (".svg", Self::Svg),
        ];
        by_suffix
            .into_iter()
            .find(|(suffix, _)| name.ends_with(suffix))
            .map(|(_, format)| format)
    }
}

/// What gotrace shows while it traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveMode {
    /// The interactive view (stdout is a terminal, the format is a table).
    View,
    /// A plain table on stdout every interval (stdout is a pipe or a file).
    Tables,
    /// A `jsonl` document every interval.
    Stream,
    /// A progress line on stderr (stdout is taken by the report or the program).
    Status,
}

/// `attach` and `run`.
#[derive(Debug)]
pub struct TraceConfig {
    pub duration: Option<Duration>,
    pub interval: Duration,
    pub top: Option<usize>,
    /// Where the report goes, in which format: `None` is stdout.
    pub outputs: Vec<(Option<PathBuf>, OutputFormat)>,
    /// What to show while tracing.
    pub live: LiveMode,
    /// How allocations are observed (may still be `auto`).
    pub mode: Mode,
    /// `--set-mem-profile-rate`.
    pub set_mem_profile_rate: Option<u64>,
    /// `--stack-depth` and `--span-budget`.
    pub probe_options: ProbeOptions,
    /// `--callsite`.
    pub grouping: Grouping,
    /// `--growth`: the window whose in-use growth ranks the callsites (the trace then lasts
    /// twice as long: a baseline at the end of the first window).
    pub growth: Option<Duration>,
}

/// Which process `serve` follows.
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

/// What `serve` follows: one program, or every Go process it can see (`--all`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    One(Selector),
    All(AgentConfig),
}

/// `serve --all`: which processes the node agent leaves alone, and its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Process names (`comm`, as the kernel keeps it: 15 characters) never traced.
    pub exclude_names: Vec<String>,
    /// Executables (as the process sees them) never traced.
    pub exclude_exes: Vec<PathBuf>,
    /// Processes traced at once; more are skipped (and counted) until one exits.
    pub max_targets: usize,
    /// Callsite series in `/metrics` over all targets; beyond it, a target's smallest callsites
    /// fold into its `other` series.
    pub max_series: usize,
}

/// `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub scope: Scope,
    pub listen: SocketAddr,
    pub mode: Mode,
    pub set_mem_profile_rate: Option<u64>,
    /// Callsites with series of their own in `/metrics`.
    pub top_k: usize,
    /// At most this many callsite series per target: `serve --all`'s equal share of
    /// `--max-series` (`usize::MAX` for one target).
    pub series_per_target: usize,
    /// How often the probes are drained and the snapshot renewed.
    pub interval: Duration,
    /// How often a target's collector looks whether its process still runs (and whether
    /// gotrace is stopping): a sidecar's one target often, a node agent's dozens less often.
    pub poll: Duration,
    /// Distinct keys the store keeps per target.
    pub max_keys: usize,
    /// Frames walked and kept per stack, span mode's budget.
    pub probe_options: ProbeOptions,
    /// `--callsite`.
    pub grouping: Grouping,
}

/// What `inspect` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InspectTarget {
    /// A binary on disk.
    File(PathBuf),
    /// A running process.
    Pid(u32),
}

/// Output formats of `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InspectFormat {
    /// Aligned, human-readable text.
    Text,
    /// One JSON document.
    Json,
}

/// `inspect`.
#[derive(Debug)]
pub struct InspectConfig {
    pub target: InspectTarget,
    pub format: InspectFormat,
    pub pcs: Vec<u64>,
    pub types: Vec<u64>,
    pub functions: Option<String>,
}

/// `explain`.
#[derive(Debug)]
pub struct ExplainConfig {
    pub input: ExplainInput,
    /// The module's directory, absolute.
    pub src: PathBuf,
    /// A saved `-m=2` log, instead of running the compiler.
    pub m2_log: Option<PathBuf>,
    /// The go command to use, instead of searching for the target's release.
    pub go: Option<PathBuf>,
    pub top: usize,
    pub format: ExplainFormat,
    pub list: Option<String>,
}

/// What `explain` reads the traced callsites from.
#[derive(Debug)]
pub enum ExplainInput {
    /// A saved JSON report or pprof profile of `gotrace attach` or `run`.
    File(PathBuf),
    /// Trace this process for this long first.
    Live { pid: u32, duration: Duration },
}

/// Output formats of `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExplainFormat {
    /// A table.
    Table,
    /// JSON.
    Json,
}
