//! `gotrace explain`: the traced callsites with the most bytes, each joined by file and line
//! with what the Go compiler's escape analysis decided there (`go build -gcflags=-m=2`) and
//! why, or, where the compiler has nothing to say, the runtime's reason for the allocation.

mod diagnostics;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use self::diagnostics::{Diagnostic, What};
use crate::report::{human_bytes, thousands};

/// What to explain, resolved from `gotrace explain`'s arguments.
#[derive(Debug)]
pub struct ExplainConfig {
    pub input: Input,
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

#[derive(Debug)]
pub enum Input {
    /// A saved JSON report or pprof profile of `gotrace attach` or `run`.
    File(PathBuf),
    /// Trace this process for this long first.
    Live { pid: u32, duration: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    /// A table: per callsite, the measured allocations and the compiler's verdict and reason.
    Table,
    /// JSON: {"callsites": [{"function", "file", "line", "allocations", "bytes", "verdict",
    /// "compiler", "reason", …}]}.
    Json,
}

/// What the compiler decided at a callsite's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An expression on the line escapes to the heap.
    Escapes,
    /// A variable declared on the line lives on the heap.
    MovedToHeap,
    /// The compiler keeps the line's values on the stack.
    DoesNotEscape,
    /// The runtime allocates on its own account (append growth, maps, strings, interfaces).
    Runtime,
    /// Neither the compiler nor the kind of allocation says why.
    Unknown,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Escapes => "escapes",
            Self::MovedToHeap => "moved_to_heap",
            Self::DoesNotEscape => "does_not_escape",
            Self::Runtime => "runtime",
            Self::Unknown => "unknown",
        }
    }
}

/// A traced callsite: one source line of one function, and one kind of allocation there
/// (`s = append(s, &T{})` is two: the `&T{}` the compiler decided about, and the append
/// growth the runtime does on its own account).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u64,
    /// `new`, `makeslice`, `growslice`, `makemap`, `string`, `convT` or `other` (empty when the
    /// input does not say).
    pub kind: String,
    pub allocations: u64,
    pub bytes: u64,
    /// The types seen there (absent in sampled modes).
    pub types: Vec<String>,
    /// Where the line's code was inlined, if it was: the compiler reports its decisions for
    /// inlined code at those positions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inlined_into: Vec<Position>,
    /// Object sizes, when the input has them (JSON reports do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Sizes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub function: String,
    pub file: String,
    pub line: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sizes {
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// What was traced, from whichever input.
#[derive(Debug, Default)]
struct Traced {
    go_version: Option<String>,
    mode: Option<String>,
    estimated: bool,
    sites: Vec<Site>,
}

/// One callsite explained.
#[derive(Debug, Serialize)]
struct Explained {
    #[serde(flatten)]
    site: Site,
    verdict: Verdict,
    /// The compiler's verdicts at the line, as it printed them.
    compiler: Vec<String>,
    /// Why, in plain words ("returned to the caller", "append growth", …).
    reason: String,
    /// The `-m=2` explanation of the escape(s) at the line.
    flow: Vec<String>,
    /// Calls inlined at the line (code of other functions that runs there).
    inlined: Vec<String>,
    /// When the compiler and the trace disagree: what that usually means here.
    #[serde(skip_serializing_if = "Option::is_none")]
    contradiction: Option<String>,
}

/// The go command that produced the diagnostics, or the saved log.
#[derive(Debug, Serialize)]
struct Compiler {
    #[serde(skip_serializing_if = "Option::is_none")]
    go: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    go_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
    /// Set when the compiler's release is not the target's: its decisions may differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    mismatch: Option<String>,
}

#[derive(Serialize)]
struct Output<'a> {
    target_go_version: Option<&'a str>,
    mode: Option<&'a str>,
    estimated: bool,
    compiler: &'a Compiler,
    callsites: &'a [Explained],
}

pub fn run(config: &ExplainConfig) -> anyhow::Result<()> {
    // Everything that can fail without the trace comes first: with --pid, the module and the
    // compiler are checked before the process is traced for --duration.
    let module = Module::open(&config.src)?;
    let (mut traced, log, compiler) = match &config.input {
        Input::File(path) => {
            let traced = read_result(path)?;
            let (log, compiler) = diagnostics_for(config, &module, traced.go_version.as_deref())?;
            (traced, log, compiler)
        }
        Input::Live { pid, duration } => {
            let version = live_go_version(*pid)?;
            let (log, compiler) = diagnostics_for(config, &module, Some(&version))?;
            (trace_live(*pid, *duration)?, log, compiler)
        }
    };
    if let Some(mismatch) = &compiler.mismatch {
        eprintln!("gotrace: {mismatch}");
    }
    let diagnostics = diagnostics::parse(&log);
    if diagnostics.is_empty() {
        eprintln!(
            "gotrace: the compiler printed no escape-analysis diagnostics for {}",
            module.dir.display()
        );
    }
    let index = DiagnosticIndex::new(&module, &diagnostics);
    if !diagnostics.is_empty() && !traced.sites.iter().any(|s| index.knows_file(&s.file)) {
        eprintln!(
            "gotrace: no traced callsite is in a file the compiler reported on in {}: was the binary built from \
             this module?",
            module.dir.display()
        );
    }

    let mut sites = std::mem::take(&mut traced.sites);
    sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.function.cmp(&b.function)));
    if let Some(function) = &config.list {
        // The function's own lines and its closures' (`main.f.func1`), which are in its body.
        let closure_prefix = format!("{function}.func");
        let in_function: Vec<Site> = sites
            .iter()
            .filter(|s| s.function == *function || s.function.starts_with(&closure_prefix))
            .cloned()
            .collect();
        if in_function.is_empty() {
            bail!(
                "no traced allocations in {function}; the functions with the most bytes are: {}",
                top_functions(&sites)
            );
        }
        let explained: Vec<Explained> = in_function.into_iter().map(|s| explain(s, &index)).collect();
        let listing = list_function(function, &explained, &index)?;
        print!("{listing}");
        return Ok(());
    }
    let explained: Vec<Explained> = sites.into_iter().take(config.top).map(|s| explain(s, &index)).collect();
    match config.format {
        ExplainFormat::Json => {
            let output = Output {
                target_go_version: traced.go_version.as_deref(),
                mode: traced.mode.as_deref(),
                estimated: traced.estimated,
                compiler: &compiler,
                callsites: &explained,
            };
            let text = serde_json::to_string_pretty(&output).context("cannot encode the JSON output")?;
            println!("{text}");
        }
        ExplainFormat::Table => print!("{}", table(&explained, &traced)),
    }
    Ok(())
}

/// The `-m=2` diagnostics: the saved log, or the compiler's output now.
fn diagnostics_for(
    config: &ExplainConfig,
    module: &Module,
    target_version: Option<&str>,
) -> anyhow::Result<(String, Compiler)> {
    match &config.m2_log {
        Some(path) => Ok((
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
            Compiler {
                go: None,
                go_version: None,
                log: Some(path.display().to_string()),
                mismatch: None,
            },
        )),
        None => compile(module, target_version, config.go.as_deref()),
    }
}

/// The Go release that built process `pid`'s executable (its build info).
fn live_go_version(pid: u32) -> anyhow::Result<String> {
    let (exe, data) = crate::process::read_executable(pid)?;
    let binary = gobin::GoBinary::parse(&data)
        .with_context(|| format!("process {pid} ({}) cannot be traced", exe.path_in_process.display()))?;
    Ok(binary.build_info().go_version.clone())
}

// --- inputs ------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct JsonReport {
    target: JsonTarget,
    mode: Option<String>,
    #[serde(default)]
    estimated: bool,
    callsites: Vec<JsonCallsite>,
}

#[derive(Deserialize)]
struct JsonTarget {
    go_version: Option<String>,
}

#[derive(Deserialize)]
struct JsonCallsite {
    function: String,
    #[serde(default)]
    file: String,
    #[serde(default)]
    line: u64,
    #[serde(rename = "type")]
    type_name: Option<String>,
    kind: Option<String>,
    allocations: u64,
    bytes: u64,
    size: Option<Sizes>,
    #[serde(default)]
    inlined_into: Vec<Position>,
}

/// A saved result: gotrace's JSON report, or a pprof profile (gzip-compressed or not).
fn read_result(path: &Path) -> anyhow::Result<Traced> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        let report: JsonReport = serde_json::from_slice(&data).with_context(|| {
            format!(
                "{} is not a gotrace JSON report (gotrace attach/run --format json)",
                path.display()
            )
        })?;
        return Ok(from_json(report));
    }
    read_pprof(&data).with_context(|| {
        format!(
            "{} is neither a gotrace JSON report nor a pprof profile",
            path.display()
        )
    })
}

fn from_json(report: JsonReport) -> Traced {
    let mut by_line: BTreeMap<SiteKey, (Site, u64)> = BTreeMap::new();
    for c in report.callsites {
        let kind = c.kind.unwrap_or_default();
        let key = (c.function.clone(), c.file.clone(), c.line, kind.clone());
        let (site, biggest) = by_line.entry(key).or_insert_with(|| {
            (
                Site {
                    function: c.function.clone(),
                    file: c.file.clone(),
                    line: c.line,
                    kind,
                    ..Site::default()
                },
                0,
            )
        });
        site.allocations += c.allocations;
        site.bytes += c.bytes;
        push_unique(&mut site.types, c.type_name);
        for at in c.inlined_into {
            if !site.inlined_into.contains(&at) {
                site.inlined_into.push(at);
            }
        }
        // Sizes of a line with several (type, kind) rows: the extremes over all rows, the
        // percentiles of the row with the most bytes.
        if let Some(size) = c.size {
            let merged = site.size.get_or_insert(size);
            merged.min = merged.min.min(size.min);
            merged.max = merged.max.max(size.max);
            if c.bytes > *biggest {
                (merged.p50, merged.p99) = (size.p50, size.p99);
                *biggest = c.bytes;
            }
        }
    }
    Traced {
        go_version: report.target.go_version,
        mode: report.mode,
        estimated: report.estimated,
        sites: by_line.into_values().map(|(site, _)| site).collect(),
    }
}

/// A site: function, file, line, kind.
type SiteKey = (String, String, u64, String);

fn push_unique(list: &mut Vec<String>, item: Option<String>) {
    if let Some(item) = item
        && !list.contains(&item)
    {
        list.push(item);
    }
}

/// A pprof profile as gotrace writes it (and Go's own heap profiles): samples of
/// `alloc_objects` and `alloc_space`, whose first location is the allocating line.
fn read_pprof(data: &[u8]) -> anyhow::Result<Traced> {
    use pprof_proto::Message as _;
    let raw = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .context("cannot decompress it")?;
        out
    } else {
        data.to_vec()
    };
    let profile = pprof_proto::Profile::decode(raw.as_slice()).context("cannot decode it as a pprof profile")?;
    let string = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .map_or("", String::as_str)
    };
    let index_of = |name: &str| profile.sample_type.iter().position(|t| string(t.r#type) == name);
    let (Some(objects), Some(space)) = (index_of("alloc_objects"), index_of("alloc_space")) else {
        bail!("it has no alloc_objects and alloc_space samples (not an allocation profile)");
    };
    let locations: HashMap<u64, &pprof_proto::Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &pprof_proto::Function> = profile.function.iter().map(|f| (f.id, f)).collect();
    let position = |line: &pprof_proto::Line| -> Option<Position> {
        let function = functions.get(&line.function_id)?;
        Some(Position {
            function: string(function.name).to_owned(),
            file: string(function.filename).to_owned(),
            line: u64::try_from(line.line).unwrap_or(0),
        })
    };
    let mut by_line: BTreeMap<SiteKey, Site> = BTreeMap::new();
    for sample in &profile.sample {
        // A location's lines are its inlined calls, innermost first: the first is the
        // allocating line, the last the function it was inlined into.
        let Some(lines) = sample
            .location_id
            .first()
            .and_then(|id| locations.get(id))
            .map(|l| &l.line)
        else {
            continue;
        };
        let (Some(at), Some(outer)) = (lines.first().and_then(position), lines.last().and_then(position)) else {
            continue;
        };
        let label = |key: &str| {
            sample
                .label
                .iter()
                .find(|l| string(l.key) == key)
                .map(|l| string(l.str).to_owned())
        };
        let kind = label("kind").unwrap_or_default();
        let key = (at.function.clone(), at.file.clone(), at.line, kind.clone());
        let site = by_line.entry(key).or_insert_with(|| Site {
            function: at.function.clone(),
            file: at.file.clone(),
            line: at.line,
            kind,
            ..Site::default()
        });
        let value = |i: usize| sample.value.get(i).and_then(|v| u64::try_from(*v).ok()).unwrap_or(0);
        site.allocations += value(objects);
        site.bytes += value(space);
        push_unique(&mut site.types, label("type"));
        if lines.len() > 1 && !site.inlined_into.contains(&outer) {
            site.inlined_into.push(outer);
        }
    }
    // gotrace's comments name the target's release ("…, go1.27.3)").
    let go_version = profile.comment.iter().find_map(|&c| {
        string(c)
            .split([' ', '(', ')', ','])
            .find(|w| w.starts_with("go1."))
            .map(str::to_owned)
    });
    Ok(Traced {
        go_version,
        mode: None,
        estimated: false,
        sites: by_line.into_values().collect(),
    })
}

/// Traces `pid` with `gotrace attach` (this same executable) into a temporary JSON report.
fn trace_live(pid: u32, duration: Duration) -> anyhow::Result<Traced> {
    let dir = TempDir::new()?;
    let report = dir.path.join("report.json");
    let me = std::env::current_exe().context("cannot find gotrace's own executable")?;
    eprintln!("gotrace: tracing process {pid} for {} s", duration.as_secs_f64());
    let status = Command::new(me)
        .arg("attach")
        .arg(pid.to_string())
        .arg("--duration")
        .arg(format!("{}ms", duration.as_millis()))
        .args(["--format", "json", "-o"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("cannot run gotrace attach")?;
    if !status.success() {
        bail!("tracing process {pid} failed ({status})");
    }
    read_result(&report)
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new directory only this user can enter: its name is unpredictable and it must not
    /// exist yet (gotrace may run as root in a world-writable temporary directory).
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("gotrace-explain-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// --- the module and its compiler ----------------------------------------------------------------

/// The Go module whose code the target runs.
#[derive(Debug)]
struct Module {
    dir: PathBuf,
    /// The `module` line of go.mod: the prefix of file names in `-trimpath` builds.
    path: String,
}

impl Module {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open the module directory {}", dir.display()))?;
        let go_mod = dir.join("go.mod");
        let text = std::fs::read_to_string(&go_mod)
            .with_context(|| format!("{} is not a Go module: cannot read {}", dir.display(), go_mod.display()))?;
        let path = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("module "))
            .map(|p| p.trim().trim_matches('"').to_owned())
            .with_context(|| format!("{} has no module line", go_mod.display()))?;
        Ok(Self { dir, path })
    }
}

/// Runs `go build -gcflags=-m=2` on the module with the target's Go release when it can find
/// it; returns the diagnostics and which compiler printed them.
fn compile(module: &Module, target_version: Option<&str>, go: Option<&Path>) -> anyhow::Result<(String, Compiler)> {
    let candidates: Vec<PathBuf> = match go {
        Some(go) => vec![go.to_path_buf()],
        None => go_candidates(target_version),
    };
    let mut found: Option<(PathBuf, String)> = None;
    for candidate in candidates {
        let Some(version) = go_version(&candidate, &module.dir) else {
            continue;
        };
        let matches = target_version == Some(version.as_str());
        if found.is_none() || matches {
            found = Some((candidate, version));
        }
        if matches {
            break;
        }
    }
    let Some((go, version)) = found else {
        bail!(match go {
            Some(go) => format!("{} does not run as a go command", go.display()),
            None => "no Go toolchain found (not on PATH, nor in ~/sdk): pass --go PATH, or --m2-log FILE with the \
                     output of go build -gcflags=-m=2"
                .to_owned(),
        });
    };
    let mismatch = match target_version {
        Some(target) if target != version => Some(format!(
            "the target was built with {target}, but the compiler here is {version} ({}): its escape decisions \
             may differ (install {target}, or pass --go)",
            go.display()
        )),
        None => Some(format!(
            "the target's Go release is unknown; using {version} ({})",
            go.display()
        )),
        Some(_) => None,
    };
    let out_dir = TempDir::new()?;
    eprintln!(
        "gotrace: running {} build -gcflags=-m=2 ./... in {}",
        go.display(),
        module.dir.display()
    );
    // `-o DIR/` keeps the built binaries out of the user's module; the compiler's output is
    // replayed from the build cache when nothing changed.
    let output = Command::new(&go)
        .current_dir(&module.dir)
        .args(["build", "-gcflags=-m=2", "-o"])
        .arg(format!("{}/", out_dir.path.display()))
        .arg("./...")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", go.display()))?;
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        // The -m=2 output buries the error: build again without it for a plain message.
        let plain = Command::new(&go)
            .current_dir(&module.dir)
            .args(["build", "-o"])
            .arg(format!("{}/", out_dir.path.display()))
            .arg("./...")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        let errors: Vec<&str> = plain.lines().filter(|l| !l.starts_with('#')).take(5).collect();
        bail!(
            "go build failed in {} ({}): {}",
            module.dir.display(),
            output.status,
            errors.join(" / ")
        );
    }
    Ok((
        log,
        Compiler {
            go: Some(go.display().to_string()),
            go_version: Some(version),
            log: None,
            mismatch,
        },
    ))
}

/// Where the target's release may be: `go` on PATH, then `~/sdk/goX.Y.Z/bin/go` (where
/// `golang.org/dl/goX.Y.Z download` puts it).
fn go_candidates(target_version: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(paths) = std::env::var_os("PATH") {
        out.extend(
            std::env::split_paths(&paths)
                .map(|d| d.join("go"))
                .filter(|p| p.is_file()),
        );
    }
    if let (Some(home), Some(version)) = (std::env::var_os("HOME"), target_version) {
        let sdk = PathBuf::from(home).join("sdk").join(version).join("bin/go");
        if sdk.is_file() {
            out.push(sdk);
        }
    }
    out
}

/// `go env GOVERSION` of a go command (`go1.27.3`), asked in the module's directory: there a
/// `go`/`toolchain` line of go.mod may switch to another toolchain, which is the one that will
/// compile.
fn go_version(go: &Path, module_dir: &Path) -> Option<String> {
    let out = Command::new(go)
        .current_dir(module_dir)
        .args(["env", "GOVERSION"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && version.starts_with("go")).then_some(version)
}

// --- the join -----------------------------------------------------------------------------------

/// Diagnostics by absolute file and line.
struct DiagnosticIndex<'d> {
    by_line: HashMap<(PathBuf, u64), Vec<&'d Diagnostic>>,
    /// The files the compiler reported on.
    files: std::collections::HashSet<PathBuf>,
    module_dir: PathBuf,
    module_path: String,
    /// Source files read so far, by absolute path.
    sources: std::cell::RefCell<HashMap<PathBuf, Option<Vec<String>>>>,
}

impl<'d> DiagnosticIndex<'d> {
    fn new(module: &Module, diagnostics: &'d [Diagnostic]) -> Self {
        let mut by_line: HashMap<(PathBuf, u64), Vec<&Diagnostic>> = HashMap::new();
        for d in diagnostics {
            let relative = d.file.trim_start_matches("./");
            let file = if Path::new(&d.file).is_absolute() {
                PathBuf::from(&d.file)
            } else {
                module.dir.join(relative)
            };
            by_line.entry((file, d.line)).or_default().push(d);
        }
        let files = by_line.keys().map(|(file, _)| file.clone()).collect();
        Self {
            by_line,
            files,
            module_dir: module.dir.clone(),
            module_path: module.path.clone(),
            sources: std::cell::RefCell::default(),
        }
    }

    /// The traced file as a path in the module:
    /// - as recorded, when that is where the module is (symlinks resolved);
    /// - in `-trimpath` builds, `MODULE/rel/file.go` under the module's directory;
    /// - for a binary built elsewhere (a container's `/app`, a CI checkout), the longest tail
    ///   of the recorded path that names a file of the module.
    fn local_path(&self, traced_file: &str) -> PathBuf {
        if let Some(relative) = traced_file.strip_prefix(&format!("{}/", self.module_path))
            && !Path::new(traced_file).is_absolute()
        {
            return self.module_dir.join(relative);
        }
        let recorded = PathBuf::from(traced_file);
        if recorded.starts_with(&self.module_dir) {
            return recorded;
        }
        if let Ok(real) = recorded.canonicalize()
            && real.starts_with(&self.module_dir)
        {
            return real;
        }
        let parts: Vec<&str> = traced_file.split('/').filter(|p| !p.is_empty()).collect();
        (0..parts.len())
            .map(|skip| self.module_dir.join(parts[skip..].join("/")))
            .find(|candidate| self.files.contains(candidate))
            .unwrap_or(recorded)
    }

    /// Whether the compiler reported on the traced file at all (it is one of the module's).
    fn knows_file(&self, traced_file: &str) -> bool {
        self.files.contains(&self.local_path(traced_file))
    }

    fn at(&self, traced_file: &str, line: u64) -> &[&'d Diagnostic] {
        self.by_line
            .get(&(self.local_path(traced_file), line))
            .map_or(&[], Vec::as_slice)
    }

    /// Line `line` (1-based) of the source file, when it can be read.
    fn source_line(&self, traced_file: &str, line: u64) -> Option<String> {
        let path = self.local_path(traced_file);
        let mut sources = self.sources.borrow_mut();
        let lines = sources.entry(path.clone()).or_insert_with(|| {
            std::fs::read_to_string(&path)
                .ok()
                .map(|t| t.lines().map(str::to_owned).collect())
        });
        lines
            .as_ref()?
            .get(usize::try_from(line).ok()?.checked_sub(1)?)
            .cloned()
    }
}

/// The runtime's reason for an allocation of `kind` when the compiler has none at the line.
/// `always` kinds are never the compiler's decision: the runtime grows slices and maps on its
/// own account, whatever escape analysis decided about the values involved.
fn runtime_reason(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "growslice" => ("append growth: the runtime grows the slice's backing array", true),
        "makemap" => ("map: the runtime allocates the map's storage as it grows", true),
        "string" => (
            "string concatenation or conversion: the runtime allocates the result",
            false,
        ),
        "convT" => (
            "interface conversion: the runtime boxes the value to store it in an interface",
            false,
        ),
        _ => return None,
    })
}

fn explain(site: Site, index: &DiagnosticIndex<'_>) -> Explained {
    // Code inlined into another function is compiled, and its escapes decided, as part of
    // that function: the compiler prints those decisions at the call's position in it
    // (`base.FmtPos` prints the outermost position of an inlined node).
    let positions: Vec<(String, u64)> = if site.inlined_into.is_empty() {
        vec![(site.file.clone(), site.line)]
    } else {
        site.inlined_into.iter().map(|p| (p.file.clone(), p.line)).collect()
    };
    let here: Vec<&Diagnostic> = positions
        .iter()
        .flat_map(|(file, line)| index.at(file, *line).iter().copied())
        .collect();
    let verdicts: Vec<&Diagnostic> = here.iter().copied().filter(|d| d.what != What::Inlined).collect();
    let inlined: Vec<String> = here
        .iter()
        .filter(|d| d.what == What::Inlined)
        .map(|d| d.text.clone())
        .collect();
    let has = |what: What| verdicts.iter().any(|d| d.what == what);
    let runtime = runtime_reason(&site.kind);
    let verdict = match runtime {
        Some((_, true)) => Verdict::Runtime,
        _ if has(What::MovedToHeap) => Verdict::MovedToHeap,
        _ if has(What::Escapes) => Verdict::Escapes,
        Some(_) => Verdict::Runtime,
        None if has(What::DoesNotEscape) => Verdict::DoesNotEscape,
        None => Verdict::Unknown,
    };
    let escaping: Vec<&Diagnostic> = verdicts
        .iter()
        .copied()
        .filter(|d| matches!(d.what, What::MovedToHeap | What::Escapes))
        .collect();
    let source = index.source_line(&site.file, site.line).unwrap_or_default();
    let (reason, contradiction) = match verdict {
        Verdict::Escapes | Verdict::MovedToHeap => (escape_reason(&escaping, &source, &site), None),
        Verdict::Runtime => (runtime.map(|(r, _)| r).unwrap_or_default().to_owned(), None),
        Verdict::DoesNotEscape => contradiction(&verdicts, &site),
        Verdict::Unknown if index.knows_file(&site.file) => (
            "the compiler says nothing about this line (code it did not see: a dependency, the standard \
             library, or source that differs from the binary)"
                .to_owned(),
            None,
        ),
        Verdict::Unknown => (
            "outside the module: go build -gcflags=-m=2 only reports on the module's own packages".to_owned(),
            None,
        ),
    };
    Explained {
        compiler: verdicts.iter().map(|d| d.text.clone()).collect(),
        flow: escaping.iter().flat_map(|d| d.flow.iter().cloned()).collect(),
        site,
        verdict,
        reason,
        inlined,
        contradiction,
    }
}

/// Why a value escapes, from the compiler's explanation (the parenthesised reasons of its
/// `from … (reason) at …` lines, `src/cmd/compile/internal/escape`), the kind of allocation
/// and the statement.
fn escape_reason(escaping: &[&Diagnostic], source: &str, site: &Site) -> String {
    let flow: String = escaping
        .iter()
        .flat_map(|d| d.flow.iter().map(String::as_str).chain([d.text.as_str()]))
        .collect::<Vec<_>>()
        .join("\n");
    let statement = source.trim_start();
    let closure_made_here = escaping
        .iter()
        .any(|d| d.text.ends_with("func literal escapes to heap"));
    let reason = if flow.contains("(too large for stack)") {
        "too large for the stack"
    } else if flow.contains("(non-constant size)") {
        "make with a size not known at compile time"
    } else if closure_made_here && statement.starts_with("go ") {
        "captured by a goroutine: the closure started with go outlives the call"
    } else if closure_made_here && statement.starts_with("defer ") {
        "captured by a deferred closure"
    } else if flow.contains("(captured by a closure)") {
        "captured by a closure that outlives the call"
    } else if flow.contains("(return)") {
        "returned to the caller"
    } else if flow.contains("(interface-converted)") || site.kind == "convT" {
        "stored in an interface"
    } else if flow.contains("(call parameter)") {
        "passed to a function that keeps it"
    } else if flow.contains("(assign)") && flow.contains("{heap}") {
        "assigned to a heap location (a global, or through a pointer)"
    } else if closure_made_here {
        "a closure that outlives the call"
    } else if flow.contains("(slice-literal-element)") {
        "an element of an escaping slice literal"
    } else {
        "escapes (see the compiler's flow)"
    };
    reason.to_owned()
}

/// A "does not escape" line where heap allocations were traced: the reason, and what the
/// disagreement usually means.
fn contradiction(verdicts: &[&Diagnostic], site: &Site) -> (String, Option<String>) {
    let non_constant_make = verdicts
        .iter()
        .any(|d| d.what == What::DoesNotEscape && d.text.contains("make(") && !d.text.contains("make(map"));
    if non_constant_make && site.kind == "makeslice" {
        return (
            "make with a size not known at compile time: sizes above its 32-byte stack buffer (Go 1.25 and \
             later) are allocated on the heap by the runtime"
                .to_owned(),
            Some(
                "the compiler says this make does not escape, yet the heap was used: since Go 1.25 a make with a \
                 non-constant size gets a small stack buffer, and larger sizes go to the heap"
                    .to_owned(),
            ),
        );
    }
    let why = if site.inlined_into.is_empty() {
        "the compiler says this line's values do not escape, yet heap allocations were traced here: another \
         expression on the line allocates, or the binary was built from other source or with other flags than \
         this module"
    } else {
        "the compiler says the values do not escape where this code was inlined, yet heap allocations were \
         traced: another expression at that call allocates, or the binary was built from other source or with \
         other flags than this module"
    };
    ("the compiler keeps this on the stack".to_owned(), Some(why.to_owned()))
}

fn top_functions(sites: &[Site]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for s in sites {
        if !seen.contains(&s.function.as_str()) {
            seen.push(&s.function);
        }
        if seen.len() == 5 {
            break;
        }
    }
    seen.join(", ")
}

// --- outputs ------------------------------------------------------------------------------------

fn table(explained: &[Explained], traced: &Traced) -> String {
    let mut out = String::new();
    if traced.estimated {
        let _ = writeln!(
            out,
            "(estimates: traced in {} mode)",
            traced.mode.as_deref().unwrap_or("a sampled")
        );
    }
    let _ = writeln!(
        out,
        "{:>10}  {:>10}  {:>8}  {:<15}  CALLSITE",
        "BYTES", "ALLOCS", "SIZE P50", "VERDICT"
    );
    for e in explained {
        let p50 = e.site.size.map_or_else(|| "-".to_owned(), |s| human_bytes(s.p50));
        let _ = writeln!(
            out,
            "{:>10}  {:>10}  {:>8}  {:<15}  {} {}:{}",
            human_bytes(e.site.bytes),
            thousands(e.site.allocations),
            p50,
            e.verdict.as_str(),
            e.site.function,
            crate::report::short_path(&e.site.file),
            e.site.line
        );
        let _ = writeln!(out, "{:56}why: {}", "", e.reason);
        if let Some(s) = e.site.size {
            let _ = writeln!(
                out,
                "{:56}sizes: min {}, p50 {}, p99 {}, max {}",
                "",
                human_bytes(s.min),
                human_bytes(s.p50),
                human_bytes(s.p99),
                human_bytes(s.max)
            );
        }
        for line in &e.compiler {
            let _ = writeln!(out, "{:56}compiler: {line}", "");
        }
        for line in &e.flow {
            let _ = writeln!(out, "{:58}{line}", "");
        }
        if let Some(why) = &e.contradiction {
            let _ = writeln!(out, "{:56}! {why}", "");
        }
    }
    out
}

/// The name in the `func` declaration of a Go symbol: `main.(*T).m.func1` → `m`,
/// `main.f[...]` → `f`, `a/b.g` → `g` (a closure is listed in its enclosing function).
fn declared_name(function: &str) -> &str {
    let after_path = function.rsplit('/').next().unwrap_or(function);
    let after_package = after_path.split_once('.').map_or(after_path, |(_, rest)| rest);
    let after_receiver = match after_package.strip_prefix('(') {
        Some(rest) => rest.split_once(").").map_or(rest, |(_, name)| name),
        None => after_package,
    };
    let name = after_receiver.split('.').next().unwrap_or(after_receiver);
    name.split('[').next().unwrap_or(name)
}

/// An annotated listing of `function`'s source, like `pprof -list`: per line the traced bytes
/// and allocations, and the compiler's verdicts there.
fn list_function(function: &str, explained: &[Explained], index: &DiagnosticIndex<'_>) -> anyhow::Result<String> {
    let file = &explained[0].site.file;
    let path = index.local_path(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the source {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let name = declared_name(function);
    let is_declaration = |l: &str| {
        l.starts_with("func ")
            && (l.contains(&format!(" {name}("))
                || l.contains(&format!(" {name}["))
                || l.contains(&format!("){name}(")))
    };
    let first_traced = explained.iter().map(|e| e.site.line).min().unwrap_or(1);
    // The declaration at or before the first traced line.
    let start = (0..usize::try_from(first_traced).unwrap_or(1).min(lines.len()))
        .rev()
        .find(|&i| is_declaration(lines[i]))
        .with_context(|| format!("cannot find the declaration of {function} in {}", path.display()))?;
    let end = (start..lines.len())
        .find(|&i| lines[i] == "}")
        .unwrap_or(lines.len() - 1);
    let mut out = String::new();
    let _ = writeln!(out, "ROUTINE ======================== {function} in {}", path.display());
    let _ = writeln!(out, "{:>10} {:>10} {:>6}  source", "bytes", "allocs", "line");
    for (i, source) in lines.iter().enumerate().take(end + 1).skip(start) {
        let number = u64::try_from(i + 1).unwrap_or(0);
        let here: Vec<&Explained> = explained.iter().filter(|e| e.site.line == number).collect();
        let (bytes, allocs) = if here.is_empty() {
            (".".to_owned(), ".".to_owned())
        } else {
            (
                human_bytes(here.iter().map(|e| e.site.bytes).sum()),
                thousands(here.iter().map(|e| e.site.allocations).sum()),
            )
        };
        let _ = writeln!(out, "{bytes:>10} {allocs:>10} {number:>6}  {source}");
        for e in &here {
            let _ = writeln!(out, "{:30}^ {}: {}", "", e.verdict.as_str(), e.reason);
            if let Some(why) = &e.contradiction {
                let _ = writeln!(out, "{:30}! {why}", "");
            }
        }
        // The compiler's verdicts on untraced lines too: what stayed on the stack, and why
        // something would not.
        for d in index.at(file, number) {
            if d.what != What::Inlined {
                let message = d.text.splitn(4, ':').nth(3).unwrap_or(&d.text).trim();
                let _ = writeln!(out, "{:30}| {message}", "");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(line: u64, kind: &str) -> Site {
        Site {
            function: "main.f".to_owned(),
            file: "/m/x.go".to_owned(),
            line,
            kind: kind.to_owned(),
            allocations: 10,
            bytes: 160,
            ..Site::default()
        }
    }

    /// `s = append(s, &T{})` on line 3: the `&T{}` is the compiler's decision, the growth the
    /// runtime's; a map literal that stays on the stack still grows on the heap; a line the
    /// compiler keeps on the stack but that allocated anyway is a contradiction.
    #[test]
    fn each_kind_at_a_line_gets_its_own_verdict() {
        let module = Module {
            dir: PathBuf::from("/m"),
            path: "example.com/m".to_owned(),
        };
        let log = "\
./x.go:3:18: &T{} escapes to heap:
./x.go:3:18:   flow: {heap} ← &{storage for &T{}}:
./x.go:3:18:     from append(s, &T{}) (call parameter) at ./x.go:3:12
./x.go:3:18: &T{} escapes to heap
./x.go:5:7: map[int]int{} does not escape
./x.go:7:9: &U{} does not escape
";
        let diagnostics = diagnostics::parse(log);
        let index = DiagnosticIndex::new(&module, &diagnostics);
        let pointer = explain(site(3, "new"), &index);
        assert_eq!(
            (pointer.verdict, pointer.reason.as_str()),
            (Verdict::Escapes, "passed to a function that keeps it")
        );
        assert_eq!(pointer.flow.len(), 2);
        let growth = explain(site(3, "growslice"), &index);
        assert_eq!(growth.verdict, Verdict::Runtime);
        assert!(growth.reason.starts_with("append growth"), "{}", growth.reason);
        let map = explain(site(5, "makemap"), &index);
        assert_eq!((map.verdict, map.contradiction.is_none()), (Verdict::Runtime, true));
        let odd = explain(site(7, "new"), &index);
        assert_eq!(odd.verdict, Verdict::DoesNotEscape);
        assert!(odd.contradiction.is_some());
        let elsewhere = explain(
            Site {
                file: "/usr/lib/go/src/fmt/print.go".to_owned(),
                ..site(1, "new")
            },
            &index,
        );
        assert_eq!(elsewhere.verdict, Verdict::Unknown);
        assert!(elsewhere.reason.contains("outside the module"), "{}", elsewhere.reason);
    }

    #[test]
    fn traced_paths_find_module_files_when_built_elsewhere() {
        let module = Module {
            dir: PathBuf::from("/home/me/src/m"),
            path: "example.com/m".to_owned(),
        };
        let diagnostics = diagnostics::parse("./sub/x.go:3:18: &T{} escapes to heap\n");
        let index = DiagnosticIndex::new(&module, &diagnostics);
        let here = PathBuf::from("/home/me/src/m/sub/x.go");
        assert_eq!(index.local_path("/home/me/src/m/sub/x.go"), here);
        assert_eq!(index.local_path("example.com/m/sub/x.go"), here, "-trimpath");
        assert_eq!(index.local_path("/app/sub/x.go"), here, "built in a container's /app");
        assert_eq!(index.at("/app/sub/x.go", 3).len(), 1);
        assert!(!index.knows_file("/app/other.go"));
    }

    #[test]
    fn declared_names_of_methods_closures_and_generics() {
        assert_eq!(declared_name("main.f"), "f");
        assert_eq!(declared_name("main.(*T).m"), "m");
        assert_eq!(declared_name("main.(*T).m.func1"), "m");
        assert_eq!(declared_name("main.f.func2.1"), "f");
        assert_eq!(declared_name("example.com/a/b.g[...]"), "g");
        assert_eq!(declared_name("example.com/a/b.T[...].m"), "T");
    }
}
