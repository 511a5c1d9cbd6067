//! `gotrace attach` and `gotrace run` on real Go processes, with real uprobes. Root only: without
//! root each test says why and passes (CI runs as root).
//!
//! The truth comes from outside: the fixture run with `GODEBUG=memprofilerate=1` records every
//! allocation in Go's own heap profile, and writes it per callsite (`allocs profile`).
//!
//! The tests share kernel state (uprobes on the same binaries, CPU time for rate measurements),
//! so they take a lock and run one at a time.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{Fixture, allocs_fixtures};

static SERIAL: Mutex<()> = Mutex::new(());

/// Rounds of the fixture's allocation sites in the ground-truth runs.
const ROUNDS: u64 = 200;

/// Takes the lock, or returns `None` (and says so) when not root.
fn root_only(test: &str) -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: attaching uprobes needs root (CI runs this as root)");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn gotrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gotrace"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gotrace-attach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

fn fixture(minor: &str, variant: &str) -> Fixture {
    allocs_fixtures()
        .into_iter()
        .find(|f| f.go_minor == minor && f.goarch == testkit::host_goarch() && f.variant == variant)
        .unwrap_or_else(|| panic!("no go{minor} {variant} fixture"))
}

/// Line numbers of the `// gotrace:site NAME` markers in the fixture's source.
fn site_lines(f: &Fixture) -> (PathBuf, BTreeMap<String, u32>) {
    let file = f.source_dir.join("allocs.go");
    let text = std::fs::read_to_string(&file).expect("fixture source");
    let sites = text
        .lines()
        .zip(1..)
        .filter_map(|(l, n)| {
            let name = l.split("// gotrace:site ").nth(1)?.trim();
            (!name.is_empty() && !l.trim_start().starts_with("//")).then(|| (name.to_owned(), n))
        })
        .collect();
    (file, sites)
}

/// Sums per line of the fixture's source: (allocations, bytes, [(type, kind)]).
type LineTotals = BTreeMap<u32, (u64, u64, Vec<(Option<String>, String)>)>;

fn gotrace_lines(report: &Value, file: &Path) -> LineTotals {
    let mut out = LineTotals::new();
    for c in report["callsites"].as_array().expect("callsites") {
        if c["file"].as_str() != file.to_str() {
            continue;
        }
        let line = u32::try_from(c["line"].as_u64().expect("line")).expect("line");
        let e = out.entry(line).or_default();
        e.0 += c["allocations"].as_u64().expect("allocations");
        e.1 += c["bytes"].as_u64().expect("bytes");
        e.2.push((
            c["type"].as_str().map(str::to_owned),
            c["kind"].as_str().expect("kind").to_owned(),
        ));
    }
    out
}

fn profile_lines(profile: &Value, file: &Path) -> BTreeMap<u32, (u64, u64)> {
    let mut out = BTreeMap::new();
    for c in profile["callsites"].as_array().expect("callsites") {
        if c["file"].as_str() != file.to_str() {
            continue;
        }
        let line = u32::try_from(c["line"].as_u64().expect("line")).expect("line");
        let e: &mut (u64, u64) = out.entry(line).or_default();
        e.0 += c["objects"].as_u64().expect("objects");
        e.1 += c["bytes"].as_u64().expect("bytes");
    }
    out
}

/// The type and kind each site must report (a type of `None` is untyped memory).
fn expected_type_and_kind(site: &str) -> Option<(Option<&'static str>, &'static str)> {
    Some(match site {
        "new_point" | "inline_new_point" => (Some("main.Point"), "new"),
        "new_node" => (Some("main.Node"), "new"),
        "new_point_ptr" => (Some("*main.Point"), "new"),
        "new_point_slice" => (Some("[]main.Point"), "new"),
        "make_points" => (Some("main.Point"), "makeslice"),
        "make_bytes" => (Some("uint8"), "makeslice"),
        "new_bytes_slice" => (Some("[]uint8"), "new"),
        "new_string" => (Some("string"), "new"),
        "new_map_header" => (Some("map[string]int"), "new"),
        "new_pair" => (Some("main.Pair[int,string]"), "new"),
        "new_holder" => (Some("main.Holder"), "new"),
        "new_big" => (Some("main.Big"), "new"),
        "append_grow" => (Some("*main.Node"), "growslice"),
        "concat" | "bytes_to_string" => (None, "string"),
        "box_point" => (Some("main.Point"), "convT"),
        // Map internals differ by release (buckets before 1.24, swiss tables after): the kind
        // is checked, the types are runtime-internal.
        "make_map" | "map_insert" | "box_string" => return None,
        _ => panic!("unknown site {site}"),
    })
}

/// `concat` allocates 11 or 12 pointer-free bytes: a tiny allocation, which Go's profile
/// merges into 16-byte blocks. Its counts are known by construction instead.
fn concat_by_construction(rounds: u64) -> (u64, u64) {
    let prefixes = ["order-", "item-", "user-"];
    let bytes = (0..rounds)
        .map(|r| {
            let n = 16 + r % 16;
            (prefixes[usize::try_from(r % 3).expect("small")].len() + format!("key-{n}").len()) as u64
        })
        .sum();
    (rounds, bytes)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn counts_equal_go_heap_profile_on_every_version_and_variant() {
    let Some(_lock) = root_only("counts_equal_go_heap_profile") else {
        return;
    };
    let mut checked = 0;
    for f in allocs_fixtures()
        .into_iter()
        .filter(|f| f.runnable() && matches!(f.variant.as_str(), "default" | "stripped" | "pie" | "cgo"))
    {
        let name = f.name();
        let (file, sites) = site_lines(&f);
        let out = scratch(&format!("{}-{}-gotrace.json", f.go_minor, f.variant));
        let prof = scratch(&format!("{}-{}-profile.json", f.go_minor, f.variant));
        let run = gotrace()
            .args(["run", "--format", "json", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&f.path)
            .args(["profile", &ROUNDS.to_string()])
            .arg(&prof)
            .env("GODEBUG", "memprofilerate=1")
            .output()
            .expect("gotrace run");
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let report = read_json(&out);
        let profile = read_json(&prof);
        assert_eq!(report["mode"], "exact");
        assert_eq!(report["target"]["go_version"], f.go_version.as_str());
        assert_eq!(report["totals"]["dropped"], 0, "{name}: {}", report["probes"]);
        let ours = gotrace_lines(&report, &file);
        let theirs = profile_lines(&profile, &file);
        for (site, line) in &sites {
            let (count, bytes, types) = ours.get(line).cloned().unwrap_or_default();
            if site == "concat" {
                assert_eq!((count, bytes), concat_by_construction(ROUNDS), "{name}: {site}");
            } else {
                let (objects, profile_bytes) = theirs.get(line).copied().unwrap_or_default();
                assert!(objects > 0, "{name}: {site} (line {line}) is not in Go's profile");
                assert_eq!(count, objects, "{name}: {site} (line {line}) allocations");
                // Go's profile counts the size class an object got; gotrace the bytes asked for.
                assert!(
                    bytes <= profile_bytes && bytes * 2 >= profile_bytes,
                    "{name}: {site} bytes {bytes} vs {profile_bytes}"
                );
            }
            match expected_type_and_kind(site) {
                Some((typ, kind)) => {
                    let want = vec![(typ.map(str::to_owned), kind.to_owned())];
                    assert_eq!(types, want, "{name}: {site} type and kind");
                }
                None => assert!(
                    types
                        .iter()
                        .all(|(_, k)| k == if site == "box_string" { "convT" } else { "makemap" }),
                    "{name}: {site} kinds {types:?}"
                ),
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 28, "seven Go releases × four variants");
}

#[test]
fn target_output_is_identical_when_traced() {
    let Some(_lock) = root_only("target_output_is_identical_when_traced") else {
        return;
    };
    let f = fixture("1.27", "pie");
    let plain = Command::new(&f.path)
        .args(["loop", "300"])
        .output()
        .expect("untraced run");
    assert!(plain.status.success());
    let out = scratch("identical.txt");
    let traced = gotrace()
        .args(["run", "-o"])
        .arg(&out)
        .arg("--")
        .arg(&f.path)
        .args(["loop", "300"])
        .output()
        .expect("traced run");
    assert!(traced.status.success(), "{}", String::from_utf8_lossy(&traced.stderr));
    assert_eq!(
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "the target's own output must not change"
    );
    let table = std::fs::read_to_string(&out).expect("report");
    assert!(table.contains("main.runSites"), "{table}");
}

/// Reads the window counts `allocs rate` prints, one per line.
struct RateReader {
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl RateReader {
    /// The median of the next `n` windows.
    fn median(&mut self, n: usize) -> u64 {
        let mut v: Vec<u64> = (0..n)
            .map(|_| {
                self.lines
                    .next()
                    .expect("a window")
                    .expect("readable")
                    .trim()
                    .parse()
                    .expect("a count")
            })
            .collect();
        v.sort_unstable();
        v[n / 2]
    }
}

fn start_rate(f: &Fixture) -> (Child, RateReader) {
    let mut child = Command::new(&f.path)
        .args(["rate", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start allocs rate");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, RateReader { lines })
}

/// Starts `gotrace attach` and waits until its probes are live.
fn attach(pid: u32, extra: &[&str]) -> Child {
    let mut child = gotrace()
        .arg("attach")
        .arg(pid.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gotrace attach");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !line.contains("attached") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "gotrace exited before attaching"
        );
        assert!(Instant::now() < deadline, "gotrace did not attach in time");
    }
    // Keep draining stderr so gotrace never blocks on it.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    });
    child
}

#[test]
fn sigkill_leaves_the_target_running_at_full_speed() {
    let Some(_lock) = root_only("sigkill_leaves_the_target_running_at_full_speed") else {
        return;
    };
    let f = fixture("1.26", "default");
    let (mut target, mut rate) = start_rate(&f);
    rate.median(3); // warm-up
    let untraced = rate.median(5);
    let mut gotrace_process = attach(target.id(), &["--format", "json", "-o", "/dev/null"]);
    rate.median(2); // windows that straddle the attach
    let traced = rate.median(5);
    gotrace_process.kill().expect("SIGKILL gotrace");
    let _ = gotrace_process.wait();
    rate.median(2);
    let after = rate.median(5);
    eprintln!("rounds per 100 ms window: untraced {untraced}, traced {traced}, after SIGKILL {after}");
    assert!(
        traced * 2 < untraced,
        "the probes should slow the target measurably: {untraced} rounds/window untraced, {traced} traced"
    );
    assert!(
        after * 10 >= untraced * 6,
        "after SIGKILL the probes must be gone: {untraced} rounds/window untraced, {traced} traced, {after} after"
    );
    assert!(target.try_wait().expect("wait").is_none(), "the target must survive");
    drop(target.stdin.take());
    let status = target.wait().expect("target exits");
    assert!(status.success(), "{status}");
}

#[test]
fn target_exit_mid_trace_reports_what_was_collected() {
    let Some(_lock) = root_only("target_exit_mid_trace_reports_what_was_collected") else {
        return;
    };
    let f = fixture("1.24", "pie");
    let (mut target, mut rate) = start_rate(&f);
    let pid = target.id();
    rate.median(1);
    let gotrace_process = attach(pid, &["--format", "json"]);
    rate.median(3);
    drop(target.stdin.take());
    assert!(target.wait().expect("target exits").success());
    let out = gotrace_process.wait_with_output().expect("gotrace ends");
    assert!(out.status.success(), "gotrace must exit 0 when the target ends");
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["ended"], "target exited");
    assert!(
        report["totals"]["allocations"].as_u64().expect("count") > 1000,
        "{}",
        report["totals"]
    );
    assert_eq!(report["target"]["pid"].as_u64(), Some(u64::from(pid)));
}

#[test]
fn attach_shows_a_table_and_stops_after_duration() {
    let Some(_lock) = root_only("attach_shows_a_table_and_stops_after_duration") else {
        return;
    };
    let f = fixture("1.21", "cgo");
    let (mut target, mut rate) = start_rate(&f);
    rate.median(1);
    let started = Instant::now();
    let out = gotrace()
        .args([
            "attach",
            &target.id().to_string(),
            "--duration",
            "1500ms",
            "--top",
            "3",
            "--interval",
            "500ms",
        ])
        .output()
        .expect("gotrace attach");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out.stdout);
    // Refreshed tables (stdout is a pipe: one after the other), then the final one.
    let tables: Vec<&str> = text.split("BYTES").skip(1).collect();
    assert!(tables.len() >= 2, "{text}");
    let last = tables.last().expect("final table");
    assert_eq!(
        last.lines().filter(|l| l.contains("allocs.go:")).count(),
        3,
        "--top 3:\n{last}"
    );
    assert!(text.contains(&format!("pid {}", target.id())), "{text}");
    drop(target.stdin.take());
    let _ = target.wait();
}

#[test]
fn run_passes_on_the_program_exit_status() {
    let Some(_lock) = root_only("run_passes_on_the_program_exit_status") else {
        return;
    };
    let f = fixture("1.22", "default");
    let out = gotrace()
        .args(["run", "-o", "/dev/null", "--"])
        .arg(&f.path)
        .arg("no-such-mode")
        .output()
        .expect("gotrace run");
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allocs: usage"));

    let out = gotrace()
        .args(["run", "--", "/nonexistent/program"])
        .output()
        .expect("gotrace run");
    assert_clean_error(&out, "no such file");
}

fn assert_clean_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("gotrace: error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(expected), "expected {expected:?} in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_targets_get_one_line_errors() {
    let Some(_lock) = root_only("bad_targets_get_one_line_errors") else {
        return;
    };
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let out = gotrace()
        .args(["attach", &(pid_max + 1).to_string()])
        .output()
        .expect("gotrace");
    assert_clean_error(&out, "no such process");

    // Not a Go program.
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = gotrace()
        .args(["attach", &sleep.id().to_string()])
        .output()
        .expect("gotrace");
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_clean_error(&out, "not a Go binary");

    // A Go release gotrace does not support: the same program, claiming go1.16.
    let f = fixture("1.27", "default");
    let mut data = f.bytes();
    let at = data
        .windows(9)
        .position(|w| w == b"\x08go1.27.3")
        .expect("version in buildinfo");
    data[at + 1..at + 9].copy_from_slice(b"go1.16.1");
    let old = scratch("old-go");
    std::fs::write(&old, &data).expect("write");
    let mut perms = std::fs::metadata(&old).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&old, perms).expect("chmod");
    let mut target = Command::new(&old)
        .args(["rate", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("old go");
    let mut first = [0u8; 1];
    target
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut first)
        .expect("running");
    let out = gotrace()
        .args(["attach", &target.id().to_string()])
        .output()
        .expect("gotrace");
    let _ = target.kill();
    let _ = target.wait();
    assert_clean_error(&out, "go1.16.1 is too old");

    // Without privileges: the same command as an unprivileged user.
    let (mut target, mut rate) = start_rate(&fixture("1.27", "default"));
    rate.median(1);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(env!("CARGO_BIN_EXE_gotrace"))
        .args(["attach", &target.id().to_string()])
        .output()
        .expect("setpriv");
    drop(target.stdin.take());
    let _ = target.wait();
    assert_clean_error(&out, "CAP_BPF and CAP_PERFMON");
}
