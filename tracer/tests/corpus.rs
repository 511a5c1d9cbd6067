//! gotrace on Go programs published by others: the corpus of `corpus/programs.tsv`, release
//! builds from npm, `PyPI` and Debian that `scripts/corpus.sh` fetches by name and version.
//!
//! - `inspect` succeeds on every one, with the facts each build is known to have.
//! - `gotrace run` works on every `x86_64` one: the program's output is what it is untraced.
//! - Where the program writes its own heap profile (`esbuild --heap`, `hugo --profile-mem`,
//!   `rclone --memprofile`), the allocations per function are checked against that profile,
//!   from the same run, under `GODEBUG=memprofilerate=1` (Go records every allocation) and
//!   `GOGC=1` (Go's profile leaves out what was allocated since the last completed GC cycle,
//!   so cycles must be frequent). Both sides name an allocation by the first frame outside
//!   the runtime, decided by the same rule (gobin's compilation units). For the 15 functions
//!   with the most allocations in Go's profile, gotrace's count is within 3%, except for
//!   tiny allocations: Go's tiny allocator returns a slot of its current 16-byte block before
//!   `profilealloc` is reached (`mallocgc`'s tiny path, src/runtime/malloc.go), so those are
//!   missing from Go's profile, and gotrace's excess must not exceed what it saw of them.
//!
//! Each test prints a line per program (inspect time, slowdown, agreement) for the notes.
//! Root only where a probe is attached: without root those tests say why and pass.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Pprof, gotrace};
use gobin::GoBinary;
use serde_json::Value;
use testkit::{output, repo_root, root_only};

/// What a corpus program is known to be (from `file`, `go version -m` and how it was
/// published), and how it is exercised.
struct Program {
    id: &'static str,
    go_version: &'static str,
    arch: &'static str,
    pie: bool,
    cgo: bool,
    symtab: bool,
    /// `.go.buildinfo` present (`buildinfo`), or how the version must be found without it.
    version_source: &'static str,
    /// The import path of the program's own code.
    main_module: &'static str,
    workload: Workload,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Not run here (another architecture).
    None,
    /// `esbuild` bundling generated modules; `--heap` writes Go's heap profile when
    /// `own_profile` (Go 1.19 resets `MemProfileRate` after reading GODEBUG, so its profile is
    /// sampled and is not compared).
    Esbuild { own_profile: bool },
    /// `age` encrypting, then decrypting, a file.
    Age,
    /// `rclone copy` of many small files with checksums, `--memprofile`.
    Rclone,
    /// `hugo build` of a generated site, `--profile-mem`.
    Hugo,
}

const PROGRAMS: &[Program] = &[
    Program {
        id: "esbuild-0.15.18",
        go_version: "go1.19.3",
        arch: "x86_64",
        pie: false,
        cgo: false,
        symtab: false,
        version_source: "buildinfo",
        main_module: "github.com/evanw/esbuild",
        workload: Workload::Esbuild { own_profile: false },
    },
    Program {
        id: "esbuild-debian-0.17.0",
        go_version: "go1.19.8",
        arch: "x86_64",
        pie: false,
        cgo: true,
        symtab: false,
        version_source: "buildinfo",
        main_module: "github.com/evanw/esbuild",
        workload: Workload::Esbuild { own_profile: false },
    },
    Program {
        id: "age-debian-1.1.1",
        go_version: "go1.19.8",
        arch: "x86_64",
        pie: true,
        cgo: true,
        symtab: false,
        version_source: "buildinfo",
        main_module: "filippo.io/age",
        workload: Workload::Age,
    },
    Program {
        id: "esbuild-0.17.19",
        go_version: "go1.20.4",
        arch: "x86_64",
        pie: false,
        cgo: false,
        symtab: false,
        version_source: "buildinfo",
        main_module: "github.com/evanw/esbuild",
        workload: Workload::Esbuild { own_profile: true },
    },
    Program {
        id: "rclone-1.65.2",
        go_version: "go1.21.6",
        arch: "x86_64",
        pie: false,
        cgo: false,
        symtab: false,
        version_source: "buildinfo",
        main_module: "github.com/rclone/rclone",
        workload: Workload::Rclone,
    },
    Program {
        id: "esbuild-0.28.2",
        go_version: "go1.26.5",
        arch: "x86_64",
        pie: false,
        cgo: false,
        symtab: false,
        version_source: "build_version_search",
        main_module: "github.com/evanw/esbuild",
        workload: Workload::Esbuild { own_profile: true },
    },
    Program {
        id: "esbuild-arm64-0.28.2",
        go_version: "go1.26.5",
        arch: "aarch64",
        pie: false,
        cgo: false,
        symtab: false,
        version_source: "build_version_search",
        main_module: "github.com/evanw/esbuild",
        workload: Workload::None,
    },
    Program {
        id: "hugo-0.168.0",
        go_version: "go1.27.2",
        arch: "x86_64",
        pie: false,
        cgo: true,
        symtab: false,
        version_source: "buildinfo",
        main_module: "github.com/gohugoio/hugo",
        workload: Workload::Hugo,
    },
];

/// The manifest's (id, binary path) pairs.
fn manifest() -> Vec<(String, PathBuf)> {
    let root = repo_root();
    let text = std::fs::read_to_string(root.join("corpus/programs.tsv")).expect("corpus/programs.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            assert_eq!(fields.len(), 6, "corpus/programs.tsv: {l}");
            let member = Path::new(fields[5]).file_name().expect("member name");
            let path = root.join(".cache/corpus").join(fields[0]).join(member);
            (fields[0].to_owned(), path)
        })
        .collect()
}

fn binary_of(id: &str) -> PathBuf {
    let (_, path) = manifest()
        .into_iter()
        .find(|(m, _)| m == id)
        .unwrap_or_else(|| panic!("{id} is not in corpus/programs.tsv"));
    assert!(path.exists(), "{} missing: run scripts/corpus.sh", path.display());
    path
}

#[test]
fn every_manifest_program_is_tested_and_the_corpus_spans_what_users_run() {
    let mut ids: Vec<String> = manifest().into_iter().map(|(id, _)| id).collect();
    let mut known: Vec<&str> = PROGRAMS.iter().map(|p| p.id).collect();
    ids.sort();
    known.sort_unstable();
    assert_eq!(ids, known, "corpus/programs.tsv and PROGRAMS differ");
    let minors: Vec<u32> = PROGRAMS
        .iter()
        .filter_map(|p| p.go_version.strip_prefix("go1.")?.split('.').next()?.parse().ok())
        .collect();
    assert!(
        minors.contains(&19) && minors.contains(&27),
        "Go 1.19 to 1.27: {minors:?}"
    );
    assert!(PROGRAMS.iter().any(|p| p.pie));
    assert!(PROGRAMS.iter().any(|p| p.cgo));
    assert!(PROGRAMS.iter().any(|p| p.version_source != "buildinfo"));
    assert!(PROGRAMS.iter().any(|p| p.arch == "aarch64"));
    assert!(PROGRAMS.iter().all(|p| !p.symtab), "all stripped");
    let largest = PROGRAMS
        .iter()
        .map(|p| std::fs::metadata(binary_of(p.id)).map_or(0, |m| m.len()))
        .max()
        .unwrap_or(0);
    assert!(largest > 50 << 20, "a binary over 50 MB: largest is {largest} bytes");
}

#[test]
fn inspect_succeeds_on_every_program() {
    let mut lines = String::new();
    for p in PROGRAMS {
        let bin = binary_of(p.id);
        let started = Instant::now();
        let out = output(gotrace().args(["inspect", "--format", "json"]).arg(&bin));
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "{}: {}",
            p.id,
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let id = p.id;
        assert_eq!(report["go_version"], p.go_version, "{id}");
        assert_eq!(report["go_version_source"], p.version_source, "{id}");
        assert_eq!(report["arch"], p.arch, "{id}");
        assert_eq!(report["pie"], p.pie, "{id}");
        assert_eq!(report["linkage"]["cgo"], p.cgo, "{id}");
        assert_eq!(report["has_symtab"], p.symtab, "{id}");
        assert_eq!(report["main_module"], p.main_module, "{id}");
        // Runtime code pushed into reflect is known as such in these -trimpath builds too.
        let data = std::fs::read(&bin).expect("binary");
        let parsed = GoBinary::parse(&data).expect("parse");
        for function in ["reflect.unsafe_New", "reflect.unsafe_NewArray"] {
            let f = parsed.functions().by_name(function).expect(function);
            assert!(parsed.is_runtime_code(f.start), "{id}: {function}");
        }
        let probes = report["probes"].as_array().expect("probes");
        assert!(
            probes.iter().any(|probe| probe["function"] == "runtime.mallocgc"),
            "{id}: no mallocgc probe"
        );
        let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
        let _ = writeln!(
            lines,
            "{id:<22} {:<9} {:>4} MB  inspect {:>4} ms",
            p.go_version,
            size >> 20,
            took.as_millis()
        );
    }
    eprintln!("{lines}");
}

/// A scratch directory under the target directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = repo_root().join("target/corpus-tests").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// 600 ES modules that import each other, with classes, async functions, template literals,
/// optional chaining and object spreads: esbuild parses, links, lowers and minifies them.
fn esbuild_project(dir: &Path) {
    const MODULES: usize = 600;
    let mut index = String::new();
    for i in 0..MODULES {
        let mut deps: Vec<usize> = [i * 7 + 1, i * 13 + 5, i * 3 + 2]
            .into_iter()
            .filter(|&j| j < MODULES && j != i)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        let mut m = String::new();
        for j in &deps {
            let _ = writeln!(m, "import {{ f{j} }} from './m{j}.js';");
        }
        let _ = write!(
            m,
            "export class C{i} {{\n  constructor(x) {{ this.x = x; this.items = [1, 2, 3, {i}].map(v => v * x); }}\n  \
             get total() {{ return this.items.reduce((a, b) => a + b, 0); }}\n  \
             async run(opts = {{}}) {{ const {{ a = 1, ...rest }} = opts; return `${{a}}-${{JSON.stringify(rest)}}-{i}`; }}\n}}\n\
             export function f{i}(n) {{\n  let s = 0;\n  for (let k = 0; k < n; k++) {{ s += k % {} ? k * 2 : -k; }}\n  \
             const o = {{ id: {i}, name: \"module{i}\", tags: [\"a\", \"b\", \"c\"], nested: {{ deep: {{ v: s }} }} }};\n  \
             return o?.nested?.deep?.v ?? {i};\n}}\n",
            i + 3
        );
        for j in &deps {
            let _ = writeln!(m, "export const u{j} = f{j}({});", i % 10);
        }
        write(&dir.join(format!("src/m{i}.js")), &m);
        let _ = writeln!(index, "export * as m{i} from './m{i}.js';");
    }
    write(&dir.join("src/index.js"), &index);
}

/// A 60-post Hugo site: Markdown with code blocks (highlighted by chroma), taxonomies,
/// pagination and templates.
fn hugo_site(dir: &Path) {
    const POSTS: usize = 60;
    write(
        &dir.join("hugo.toml"),
        "baseURL = \"http://example.org/\"\ntitle = \"Corpus\"\n[taxonomies]\n  tag = \"tags\"\n  category = \"categories\"\n",
    );
    let layouts = dir.join("layouts/_default");
    for (name, template) in [
        (
            "baseof.html",
            "<!doctype html><html><head><title>{{ .Title }}</title></head><body>{{ block \"main\" . }}{{ end }}</body></html>\n",
        ),
        (
            "single.html",
            "{{ define \"main\" }}<h1>{{ .Title | upper }}</h1>{{ .Content }}<ul>{{ range .Params.tags }}<li>{{ . | urlize }}</li>{{ end }}</ul>{{ end }}\n",
        ),
        (
            "list.html",
            "{{ define \"main\" }}<h1>{{ .Title }}</h1>{{ range .Paginator.Pages }}<p><a href=\"{{ .RelPermalink }}\">{{ .Title }}</a> {{ .Summary | plainify | truncate 80 }}</p>{{ end }}{{ end }}\n",
        ),
        (
            "index.html",
            "{{ define \"main\" }}{{ range first 50 (where .Site.RegularPages \"Section\" \"posts\") }}<p>{{ .Title }} {{ .WordCount }}</p>{{ end }}{{ end }}\n",
        ),
    ] {
        write(&layouts.join(name), template);
    }
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
    ];
    for i in 0..POSTS {
        let mut body = String::new();
        for s in 0..6 {
            let text: Vec<&str> = (0..60).map(|j| words[(i + s + j) % words.len()]).collect();
            let _ = write!(
                body,
                "## Section {s}\n\n{} **bold {i}** and `code{s}` [link](/posts/p{}/)\n\n- item {s}a\n- item {s}b\n\n```go\nfunc f{i}() int {{ return {s} }}\n```\n\n",
                text.join(" "),
                (i + s) % POSTS
            );
        }
        write(
            &dir.join(format!("content/posts/p{i}.md")),
            &format!(
                "---\ntitle: \"Post {i}\"\ndate: 2024-01-{:02}\ntags: [\"t{}\", \"t{}\", \"t{}\"]\ncategories: [\"c{}\"]\n---\n\n{body}",
                i % 28 + 1,
                i % 40,
                (i * 3) % 40,
                (i * 7) % 40,
                i % 9
            ),
        );
    }
}

/// 3,000 small files in 30 directories: enough that the last two GC cycles, which Go's profile
/// may not include yet (`runtime.MemProfile`), stay well under the tolerance.
fn rclone_tree(dir: &Path) {
    for d in 0..30 {
        for f in 0..100 {
            write(
                &dir.join(format!("d{d}/f{f}.txt")),
                &format!("line {d} {f}\n").repeat(50 + f),
            );
        }
    }
}

/// A test-only age key pair (made by `age-keygen`; protects nothing).
const AGE_RECIPIENT: &str = "age1s5jeff9m5a3atz23nfva36wpdd2803ml8ccukk0mtxa6d0t6xg0qj7ynar";
const AGE_IDENTITY: &str = "AGE-SECRET-KEY-1XV3F49V872S7N3GQCYJV0X05HHU5Y8LKL98LKRM08KSZ08UKY8GQS5UQCZ";

/// One run of a workload: the command, run in `dir`, and the file it writes whose contents
/// must not change under tracing (and, for programs that have one, where it writes its own
/// heap profile).
struct Run {
    command: Command,
    result: PathBuf,
    profile: Option<PathBuf>,
}

/// Sets up `dir` for a workload and returns how to run it; `tag` keeps the outputs of the
/// untraced and the traced run apart.
fn prepare(program: &Program, bin: &Path, dir: &Path, tag: &str) -> Run {
    let mut command = Command::new(bin);
    command.current_dir(dir);
    let (result, profile) = match program.workload {
        Workload::None => unreachable!("not run"),
        Workload::Esbuild { own_profile } => {
            if !dir.join("src").exists() {
                esbuild_project(dir);
            }
            let out = dir.join(format!("out-{tag}.js"));
            let profile = dir.join(format!("heap-{tag}.pprof"));
            command
                .args([
                    "src/index.js",
                    "--bundle",
                    "--minify",
                    "--format=esm",
                    "--target=es2017",
                    "--log-level=warning",
                ])
                .arg(format!("--outfile={}", out.display()));
            if own_profile {
                command.arg(format!("--heap={}", profile.display()));
            }
            (out, own_profile.then_some(profile))
        }
        Workload::Age => {
            write(&dir.join("identity.txt"), &format!("{AGE_IDENTITY}\n"));
            let plain = (0..20_000).fold(String::new(), |mut text, i| {
                let _ = writeln!(text, "secret line {i}");
                text
            });
            write(&dir.join("plain.txt"), &plain);
            let sealed = dir.join(format!("sealed-{tag}.age"));
            let opened = dir.join(format!("opened-{tag}.txt"));
            let age = bin.display().to_string();
            // Encrypt and decrypt in one traced process tree is not what `run` traces (one
            // process), so the traced process is the decryption of a file sealed just before.
            let seal = Command::new(&age)
                .current_dir(dir)
                .args(["-r", AGE_RECIPIENT, "-o"])
                .arg(&sealed)
                .arg("plain.txt")
                .status()
                .expect("age -r");
            assert!(seal.success(), "age encrypt");
            command
                .args(["-d", "-i", "identity.txt", "-o"])
                .arg(&opened)
                .arg(&sealed);
            (opened, None)
        }
        Workload::Rclone => {
            if !dir.join("src").exists() {
                rclone_tree(&dir.join("src"));
            }
            let dst = dir.join(format!("dst-{tag}"));
            let listing = dir.join(format!("listing-{tag}.txt"));
            let profile = dir.join(format!("mem-{tag}.pprof"));
            command
                .env("RCLONE_CONFIG", "/dev/null")
                .args(["copy", "src"])
                .arg(&dst)
                .args(["--checksum", "--transfers", "1", "--checkers", "1", "--memprofile"])
                .arg(&profile);
            (listing, Some(profile))
        }
        Workload::Hugo => {
            if !dir.join("content").exists() {
                hugo_site(dir);
            }
            let public = dir.join(format!("public-{tag}"));
            let profile = dir.join(format!("mem-{tag}.pprof"));
            command
                .args(["build", "--quiet", "--destination"])
                .arg(&public)
                .arg("--profile-mem")
                .arg(&profile);
            (public.join("index.html"), Some(profile))
        }
    };
    Run {
        command,
        result,
        profile,
    }
}

/// What a run produced, for comparing the traced with the untraced run: the result file, or
/// for rclone a listing of the copied tree (file names and sizes).
fn result_of(program: &Program, run: &Run, dir: &Path, tag: &str) -> Vec<u8> {
    if program.workload == Workload::Rclone {
        let dst = dir.join(format!("dst-{tag}"));
        let mut listing: Vec<String> = Vec::new();
        for d in std::fs::read_dir(&dst).expect("dst") {
            let d = d.expect("entry").path();
            for f in std::fs::read_dir(&d).expect("dir") {
                let f = f.expect("entry").path();
                let size = std::fs::metadata(&f).map_or(0, |m| m.len());
                listing.push(format!("{} {size}", f.strip_prefix(&dst).expect("under dst").display()));
            }
        }
        listing.sort();
        return listing.join("\n").into_bytes();
    }
    std::fs::read(&run.result).unwrap_or_else(|e| panic!("{}: {e}", run.result.display()))
}

/// Runs the workload untraced and then under `gotrace run --mode exact`, with `env`; checks
/// both succeed with the same result and returns (untraced time, traced time, gotrace's JSON
/// report, the traced run's own heap profile if it writes one).
fn untraced_and_traced(
    program: &Program,
    env: &[(&str, &str)],
) -> (Duration, Duration, Value, Option<PathBuf>, Scratch) {
    let bin = binary_of(program.id);
    let scratch = Scratch::new(program.id);
    let dir = &scratch.0;

    let mut plain = prepare(program, &bin, dir, "plain");
    plain.command.envs(env.iter().copied());
    let started = Instant::now();
    let out = output(&mut plain.command);
    let untraced = started.elapsed();
    assert!(
        out.status.success(),
        "{} untraced: {}",
        program.id,
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = result_of(program, &plain, dir, "plain");

    let traced_run = prepare(program, &bin, dir, "traced");
    let report_path = dir.join("report.json");
    let mut command = gotrace();
    command
        .current_dir(dir)
        .envs(env.iter().copied())
        .envs(traced_run.command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .args(["run", "--mode", "exact", "-f", "json", "-o"])
        .arg(&report_path)
        .arg("--")
        .arg(traced_run.command.get_program())
        .args(traced_run.command.get_args());
    let started = Instant::now();
    let out = output(&mut command);
    let traced = started.elapsed();
    assert!(
        out.status.success(),
        "{} traced: {}",
        program.id,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        result_of(program, &traced_run, dir, "traced") == expected,
        "{}: the traced run's output differs from the untraced run's",
        program.id
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("JSON");
    (untraced, traced, report, traced_run.profile, scratch)
}

#[test]
fn run_works_on_every_x86_64_program_without_changing_its_output() {
    let Some(_root) = root_only("run_works_on_every_x86_64_program_without_changing_its_output") else {
        return;
    };
    let mut lines = String::new();
    for p in PROGRAMS.iter().filter(|p| p.arch == "x86_64" && !has_own_profile(p)) {
        let (untraced, traced, report, _, _scratch) = untraced_and_traced(p, &[]);
        let total = report["totals"]["allocations"].as_u64().expect("totals");
        assert!(total > 500, "{}: only {total} allocations", p.id);
        assert_eq!(report["totals"]["dropped"], 0, "{}", p.id);
        assert_eq!(report["probes"]["without_stack"], 0, "{}", p.id);
        // Callsites are found in the program's own code, not in the runtime. (age allocates
        // most in golang.org/x/crypto, esbuild in its own packages.)
        let (main_path, share) = match p.workload {
            Workload::Age => ("filippo.io/age", 40),
            _ => ("github.com/evanw/esbuild", 4),
        };
        let in_program: u64 = report["callsites"]
            .as_array()
            .expect("callsites")
            .iter()
            .filter(|c| c["function"].as_str().is_some_and(|f| f.starts_with(main_path)))
            .map(|c| c["allocations"].as_u64().unwrap_or(0))
            .sum();
        let data = std::fs::read(binary_of(p.id)).expect("binary");
        let bin = GoBinary::parse(&data).expect("parse");
        let broken = runtime_callsites_below_a_stack_top(&report, &bin);
        assert!(broken.is_empty(), "{}: {}", p.id, broken.join("\n"));
        assert!(
            in_program * share > total,
            "{}: {in_program} of {total} allocations in {main_path}",
            p.id
        );
        let _ = writeln!(
            lines,
            "{:<22} {:<9} {total:>8} allocations, exact-mode slowdown {:.2}x",
            p.id,
            p.go_version,
            traced.as_secs_f64() / untraced.as_secs_f64()
        );
    }
    eprintln!("{lines}");
}

/// Callsites in the runtime that are not where Go's unwinder stops (the top of a system or
/// goroutine stack: `runtime.systemstack`, `mstart`, `rt0_go`, `goexit`): a walk that ended
/// early, so that an allocation is charged to `runtime.makeslice` rather than to its caller.
fn runtime_callsites_below_a_stack_top(report: &Value, bin: &GoBinary<'_>) -> Vec<String> {
    report["callsites"]
        .as_array()
        .expect("callsites")
        .iter()
        .filter_map(|c| {
            let function = c["function"].as_str()?;
            let top = bin
                .functions()
                .by_name(function)
                .is_some_and(|f| bin.unwind_at(f.start) == gobin::Unwind::StopAfter);
            (gobin::is_runtime_function(function) && !top)
                .then(|| format!("{function}:{} {} allocations", c["line"], c["allocations"]))
        })
        .collect()
}

fn has_own_profile(p: &Program) -> bool {
    matches!(
        p.workload,
        Workload::Esbuild { own_profile: true } | Workload::Rclone | Workload::Hugo
    )
}

/// Allocations per callsite function in a Go heap profile (`alloc_objects`), the callsite
/// being the first frame, inlined ones included, that is not runtime code.
fn profile_by_function(profile: &Path, bin: &GoBinary<'_>) -> HashMap<String, u64> {
    let p = Pprof::read(profile);
    let objects = p.sample_index("alloc_objects");
    let locations = p.location_lines();
    let mut runtime_memo: HashMap<String, bool> = HashMap::new();
    let mut is_runtime = |name: &str| -> bool {
        *runtime_memo.entry(name.to_owned()).or_insert_with(|| {
            gobin::is_runtime_function(name)
                || bin
                    .functions()
                    .by_name(name)
                    .is_some_and(|f| bin.is_runtime_code(f.start))
        })
    };
    let mut out: HashMap<String, u64> = HashMap::new();
    for s in &p.0.sample {
        let frames = s
            .location_id
            .iter()
            .flat_map(|id| locations[id].iter().map(|&(function, _)| function));
        let mut site = None;
        for f in frames {
            if !is_runtime(f) {
                site = Some(f);
                break;
            }
        }
        if let Some(site) = site {
            *out.entry(site.to_owned()).or_default() += u64::try_from(s.value[objects]).unwrap_or(0);
        }
    }
    out
}

/// gotrace's allocations per callsite function, and how many of them may have been tiny
/// allocations: those of rows (line, type, kind) whose smallest allocation is under 16 bytes.
/// (The report has no per-allocation sizes; a row of `[]byte` appends from 8 to 64 bytes
/// counts whole.)
fn report_by_function(report: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in report["callsites"].as_array().expect("callsites") {
        let n = c["allocations"].as_u64().unwrap_or(0);
        let e = out.entry(c["function"].as_str().unwrap_or("?").to_owned()).or_default();
        e.0 += n;
        if c["size"]["min"].as_u64().is_some_and(|min| min < 16) {
            e.1 += n;
        }
    }
    out
}

/// Tolerance of the per-function comparison, in percent of Go's count.
const TOLERANCE_PERCENT: u64 = 3;
/// Functions compared, by Go's count.
const TOP: usize = 15;

#[test]
fn exact_counts_match_each_programs_own_heap_profile() {
    let Some(_root) = root_only("exact_counts_match_each_programs_own_heap_profile") else {
        return;
    };
    let env = [("GODEBUG", "memprofilerate=1"), ("GOGC", "1")];
    let mut lines = String::new();
    let mut problems = Vec::new();
    for p in PROGRAMS.iter().filter(|p| has_own_profile(p)) {
        let (untraced, traced, report, profile, _scratch) = untraced_and_traced(p, &env);
        let data = std::fs::read(binary_of(p.id)).expect("binary");
        let bin = GoBinary::parse(&data).expect("parse");
        assert_eq!(report["probes"]["without_stack"], 0, "{}", p.id);
        let broken = runtime_callsites_below_a_stack_top(&report, &bin);
        if !broken.is_empty() {
            problems.push(format!("{}: walks that ended early:\n{}", p.id, broken.join("\n")));
        }
        let theirs = profile_by_function(&profile.expect("a profile"), &bin);
        let ours = report_by_function(&report);
        let mut top: Vec<(&String, &u64)> = theirs.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut worst: f64 = 0.0;
        let mut beyond = Vec::new();
        for (function, &go_count) in top.into_iter().take(TOP) {
            let (count, tiny) = ours.get(function).copied().unwrap_or_default();
            let slack = go_count * TOLERANCE_PERCENT / 100;
            #[expect(clippy::cast_precision_loss, reason = "allocation counts, far below 2^52")]
            let deviation = count as f64 / go_count as f64 - 1.0;
            let excess_ok = count <= go_count + slack + tiny;
            let deficit_ok = count + slack >= go_count;
            if !(excess_ok && deficit_ok) {
                problems.push(format!(
                    "{}: {function}: gotrace {count} ({tiny} tiny), Go's profile {go_count}",
                    p.id
                ));
            }
            if count <= go_count + slack {
                worst = worst.max(deviation.abs());
            } else {
                beyond.push(format!("{function} {:+.1}%", deviation * 100.0));
            }
        }
        let _ = writeln!(
            lines,
            "{:<22} {:<9} exact-mode slowdown {:.2}x; {} of the top {TOP} functions within {:.2}% of Go's \
             profile; beyond 3%, by no more than their rows under 16 bytes: [{}]",
            p.id,
            p.go_version,
            traced.as_secs_f64() / untraced.as_secs_f64(),
            TOP - beyond.len(),
            worst * 100.0,
            beyond.join(", ")
        );
    }
    eprintln!("{lines}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
