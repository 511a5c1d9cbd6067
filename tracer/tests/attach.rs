//! `gotrace attach` and `gotrace run` on real Go processes, with real uprobes. Root only: without
//! root each test says why and passes (CI runs as root).
//!
//! The truth comes from outside: the fixture run with `GODEBUG=memprofilerate=1` records every
//! allocation in Go's own heap profile, and writes it per callsite (`allocs profile`).
//!
//! The tests share kernel state (uprobes on the same binaries, CPU time for rate measurements),
//! so they take a lock and run one at a time. Every command runs under a timeout, so a hang
//! fails the test instead of stalling CI.

mod common;

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{attach, gotrace, scratch, signal};
use serde_json::Value;
use testkit::ground_truth::{self, ROUNDS};
use testkit::{Fixture, TIMEOUT, allocs_fixtures, fixture, lines_of, output, root_only, wait_output};

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs the fixture's ground-truth round under `gotrace run --mode MODE`, with Go's profiling
/// of every allocation on: gotrace's report and the fixture's own profile. `GOGC`, when given,
/// makes GC cycles start inside the sites: the first one starts the mark workers, whose `g`s
/// the runtime allocates on the system stack, charged by Go to the runtime and by gotrace to
/// the same, not to the site's line.
fn ground_truth_run(f: &Fixture, mode: &str, gogc: Option<&str>) -> (Value, Value) {
    let name = f.name();
    let out = scratch(&format!("{}-{}-{mode}-gotrace.json", f.go_minor, f.variant));
    let prof = scratch(&format!("{}-{}-{mode}-profile.json", f.go_minor, f.variant));
    let run = output(
        gotrace()
            .args(["run", "--mode", mode, "--format", "json", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&f.path)
            .args(["profile", &ROUNDS.to_string()])
            .arg(&prof)
            .env("GODEBUG", "memprofilerate=1")
            .envs(gogc.map(|g| ("GOGC", g))),
    );
    assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
    (read_json(&out), read_json(&prof))
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
        let (report, profile) = ground_truth_run(&f, "exact", Some("5"));
        let problems = ground_truth::exact_mismatches(&f, &report, &profile, ROUNDS);
        assert!(problems.is_empty(), "{}:\n{}", f.name(), problems.join("\n"));
        checked += 1;
    }
    assert_eq!(checked, 28, "seven Go releases × four variants");
}

/// `--mode auto` on a program that profiles itself is go-sampler; with the rate at 1 it sees
/// every allocation Go's profile sees. The rate is set by `GODEBUG` in the runtime's start-up,
/// after the probes attached: the samples must be scaled by the rate they were taken at, not
/// by the default rate read at attach time (nor by a read after the program exited).
#[test]
fn auto_mode_equals_go_heap_profile_at_rate_one() {
    let Some(_lock) = root_only("auto_mode_equals_go_heap_profile_at_rate_one") else {
        return;
    };
    let mut checked = 0;
    for f in allocs_fixtures()
        .into_iter()
        // Not stripped: without a symbol table the rate cannot be found, and auto picks span.
        .filter(|f| f.runnable() && matches!(f.variant.as_str(), "default" | "pie"))
    {
        let (report, profile) = ground_truth_run(&f, "auto", None);
        let problems = ground_truth::sampler_mismatches(&f, &report, &profile);
        assert!(problems.is_empty(), "{}:\n{}", f.name(), problems.join("\n"));
        checked += 1;
    }
    assert_eq!(checked, 14, "seven Go releases × two variants");
}

/// `--callsite first` (the default) names rows by the line that allocates and shows the
/// program's own line next to it (`user`); `--callsite user` names them by the program's own
/// line, with the library's line as `via`. `strings.Repeat` allocates in
/// `strings.(*Builder).grow`, called from the fixture's `main.runSites`.
#[test]
fn callsite_first_or_user_names_rows_by_the_library_or_by_your_line() {
    let Some(_lock) = root_only("callsite_first_or_user") else {
        return;
    };
    let f = testkit::fixture("1.27", "stripped");
    let trace = |grouping: &str| -> Value {
        let out = scratch(&format!("callsite-{grouping}.json"));
        let run = output(
            gotrace()
                .args(["run", "--callsite", grouping, "--format", "json", "-o"])
                .arg(&out)
                .arg("--")
                .arg(&f.path)
                .args(["loop", "20"]),
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        read_json(&out)
    };
    let rows = |report: &Value| -> Vec<Value> { report["callsites"].as_array().expect("callsites").clone() };

    let first = trace("first");
    let grow: Vec<Value> = rows(&first)
        .into_iter()
        .filter(|c| c["function"] == "strings.(*Builder).grow")
        .collect();
    assert!(!grow.is_empty(), "a row at strings.(*Builder).grow");
    for c in &grow {
        assert_eq!(c["user"]["function"], "main.runSites", "{c}");
        assert!(c.get("via").is_none(), "{c}");
    }
    // A row already in the program's own code has no other line.
    assert!(
        rows(&first)
            .iter()
            .filter(|c| c["function"] == "main.runSites")
            .all(|c| c.get("user").is_none())
    );

    let user = trace("user");
    assert!(rows(&user).iter().all(|c| c["function"] != "strings.(*Builder).grow"));
    let via_grow: Vec<Value> = rows(&user)
        .into_iter()
        .filter(|c| c["via"]["function"] == "strings.(*Builder).grow")
        .collect();
    assert!(
        !via_grow.is_empty(),
        "a row of main.runSites via strings.(*Builder).grow"
    );
    for c in &via_grow {
        assert_eq!(c["function"], "main.runSites", "{c}");
        assert_eq!(c["kind"], "makeslice", "{c}");
    }
}

#[test]
fn target_output_is_identical_when_traced() {
    let Some(_lock) = root_only("target_output_is_identical_when_traced") else {
        return;
    };
    let f = fixture("1.27", "pie");
    let plain = output(Command::new(&f.path).args(["loop", "300"]));
    assert!(plain.status.success());
    let out = scratch("identical.txt");
    let traced = output(
        gotrace()
            .args(["run", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&f.path)
            .args(["loop", "300"]),
    );
    assert!(traced.status.success(), "{}", String::from_utf8_lossy(&traced.stderr));
    assert_eq!(
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "the target's own output must not change"
    );
    let table = std::fs::read_to_string(&out).expect("report");
    assert!(table.contains("main.runSites"), "{table}");
}

/// The windows `allocs rate` prints: rounds completed, and when the window started.
struct RateReader {
    lines: Receiver<String>,
}

impl RateReader {
    /// The median of the next `n` windows that started at `after` or later.
    fn median_after(&mut self, after: SystemTime, n: usize) -> u64 {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            let line = self.lines.recv_timeout(TIMEOUT).expect("a window");
            let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().expect("a number"));
            let (Some(count), Some(nanos)) = (fields.next(), fields.next()) else {
                panic!("unexpected line {line:?}");
            };
            if UNIX_EPOCH + Duration::from_nanos(nanos) >= after {
                v.push(count);
            }
        }
        v.sort_unstable();
        v[n / 2]
    }

    /// The median of the next `n` windows that start from now on.
    fn median(&mut self, n: usize) -> u64 {
        self.median_after(SystemTime::now(), n)
    }
}

fn start_rate(f: &Fixture) -> (Child, RateReader) {
    let mut child = Command::new(&f.path)
        .args(["rate", "100"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start allocs rate");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    (child, RateReader { lines })
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
    let traced = rate.median(5);
    gotrace_process.kill().expect("SIGKILL gotrace");
    let _ = gotrace_process.wait();
    // The kernel unregisters the uprobes as it closes the dead tracer's descriptors, which can
    // take a moment on a busy machine: poll the windows until the rate recovers, for a while.
    let killed = Instant::now();
    let recovered = |after: u64| after >= traced * 3 && after * 2 >= untraced;
    let mut after = rate.median(3);
    while !recovered(after) && killed.elapsed() < Duration::from_secs(10) {
        after = rate.median(3);
    }
    eprintln!(
        "rounds per 100 ms window: untraced {untraced}, traced {traced}, after SIGKILL {after} ({} ms after)",
        killed.elapsed().as_millis()
    );
    assert!(
        traced * 2 < untraced,
        "the probes should slow the target measurably: {untraced} rounds/window untraced, {traced} traced"
    );
    // Against the traced rate, measured moments before: the probes cost several times what the
    // allocations do, so anything short of their removal leaves `after` near `traced`. Against
    // the untraced rate only loosely, as the machine's load drifts.
    assert!(
        recovered(after),
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
    let out = wait_output(gotrace_process);
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
    let pid = target.id().to_string();
    let out = output(gotrace().args([
        "attach",
        &pid,
        "--duration",
        "1500ms",
        "--top",
        "3",
        "--interval",
        "500ms",
    ]));
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
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    drop(target.stdin.take());
    let _ = target.wait();
}

/// `--quiet`: the report and nothing else. Without it, the same trace says on stderr what
/// it read, that it attached and where the file went.
#[test]
fn quiet_leaves_stderr_to_warnings_and_errors() {
    let Some(_lock) = root_only("quiet_leaves_stderr_to_warnings_and_errors") else {
        return;
    };
    let f = fixture("1.27", "default");
    let (mut target, mut rate) = start_rate(&f);
    rate.median(1);
    let pid = target.id().to_string();
    for quiet in [false, true] {
        let report = scratch(&format!("quiet-{quiet}.json"));
        let mut cmd = gotrace();
        cmd.args(["attach", &pid, "--duration", "500ms", "-o"]).arg(&report);
        if quiet {
            cmd.arg("--quiet");
        }
        let out = output(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(read_json(&report)["totals"]["allocations"].as_u64() > Some(0));
        if quiet {
            assert_eq!(stderr, "", "--quiet");
        } else {
            for progress in ["reading ", "attached ", "wrote "] {
                assert!(stderr.contains(&format!("gotrace: {progress}")), "{stderr}");
            }
        }
    }
    drop(target.stdin.take());
    let _ = target.wait();
}

/// Exact mode reuses a goroutine's latest walk when the stack still holds it (see
/// `replay_walk` in the probe). Two stacks at the same addresses that differ only in a return
/// address three frames below the allocation are still told apart, allocation by allocation;
/// and a stack deeper than the probe's one read of the stack is walked to the default depth.
#[test]
fn stacks_that_differ_only_deep_down_are_counted_apart_and_deep_stacks_walked_in_full() {
    const ROUNDS: u64 = 100_000;
    let Some(_lock) = root_only("stacks_that_differ_only_deep_down_are_counted_apart_and_deep_stacks_walked_in_full")
    else {
        return;
    };
    for minor in ["1.21", "1.27"] {
        let f = fixture(minor, "default");
        let folded = scratch(&format!("stacks-{minor}.folded"));
        let out = output(
            gotrace()
                .args(["run", "-f", "folded", "-o"])
                .arg(&folded)
                .arg("--")
                .arg(&f.path)
                .args(["stacks", &ROUNDS.to_string()]),
        );
        assert!(
            out.status.success(),
            "go{minor}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&folded).expect("the folded stacks");
        // Folded lines: frames outermost first, the type as the leaf, then bytes.
        let lines: Vec<(Vec<&str>, u64)> = text
            .lines()
            .filter_map(|l| {
                let (stack, bytes) = l.rsplit_once(' ')?;
                Some((stack.split(';').collect(), bytes.parse().ok()?))
            })
            .collect();
        let objects_through = |caller: &str| -> u64 {
            lines
                .iter()
                .filter(|(frames, _)| frames.ends_with(&[caller, "main.twinMid", "main.twinLeaf", "[main.TwinNode]"]))
                .map(|(_, bytes)| bytes / 24)
                .sum()
        };
        assert_eq!(objects_through("main.twinA"), ROUNDS / 2, "go{minor}:\n{text}");
        assert_eq!(objects_through("main.twinB"), ROUNDS / 2, "go{minor}:\n{text}");

        let deep: Vec<&(Vec<&str>, u64)> = lines
            .iter()
            .filter(|(frames, _)| frames.last() == Some(&"[main.DeepNode]"))
            .collect();
        assert_eq!(
            deep.iter().map(|(_, bytes)| bytes / 32).sum::<u64>(),
            ROUNDS,
            "go{minor}:\n{text}"
        );
        for (frames, _) in deep {
            // 96 program counters, the runtime's own frames (mallocgc, newobject) not shown.
            let shown = &frames[..frames.len() - 1];
            assert!(
                shown.len() >= 93 && shown.iter().all(|f| *f == "main.deepFrame"),
                "go{minor}: {} frames: {frames:?}",
                shown.len()
            );
        }
    }
}

/// `--time-probes`: the kernel times every run of the probes, and the report says how long they
/// took; without it (and without the sysctl) the report has no run time.
#[test]
fn time_probes_reports_the_probes_run_time() {
    let Some(_lock) = root_only("time_probes_reports_the_probes_run_time") else {
        return;
    };
    let f = fixture("1.27", "default");
    let (mut target, mut rate) = start_rate(&f);
    rate.median(1);
    let pid = target.id().to_string();
    let (json, text) = (scratch("time-probes.json"), scratch("time-probes.txt"));
    let traced = |extra: &[&str]| {
        let out = output(
            gotrace()
                .args(["attach", &pid, "--duration", "1s", "--top", "3", "-o"])
                .arg(&json)
                .arg("-o")
                .arg(&text)
                .args(extra),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (read_json(&json), std::fs::read_to_string(&text).expect("the table"))
    };
    let (report, table) = traced(&["--time-probes"]);
    let probes = &report["probes"];
    let hits = probes["hits"].as_u64().expect("hits");
    let runs = probes["run_time"]["runs"].as_u64().expect("run_time.runs");
    let nanoseconds = probes["run_time"]["nanoseconds"]
        .as_u64()
        .expect("run_time.nanoseconds");
    assert!(hits > 1000, "{probes}");
    // Every hit is a run; runs that count nothing (nested calls) are runs too.
    assert!(runs >= hits, "{probes}");
    let each = nanoseconds / runs;
    assert!((20..100_000).contains(&each), "{each} ns a run: {probes}");
    assert!(table.contains(" runs took ") && table.contains("ns each"), "{table}");

    let stats_always_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1");
    if !stats_always_on {
        let (report, table) = traced(&[]);
        assert!(report["probes"].get("run_time").is_none(), "{}", report["probes"]);
        assert!(!table.contains(" runs took "), "{table}");
    }
    drop(target.stdin.take());
    let _ = target.wait();
}

#[test]
fn run_passes_on_signals_and_the_program_exit_status() {
    let Some(_lock) = root_only("run_passes_on_signals_and_the_program_exit_status") else {
        return;
    };
    let f = fixture("1.22", "default");
    let out = output(
        gotrace()
            .args(["run", "-o", "/dev/null", "--"])
            .arg(&f.path)
            .arg("no-such-mode"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allocs: usage"));

    let out = output(gotrace().args(["run", "--", "/nonexistent/program"]));
    assert_clean_error(&out, "no such file");

    // SIGINT to gotrace (alone, as `kill -INT` would) is passed on to the program, and
    // gotrace reports once the program has exited, with its status: killed by SIGINT, 128 + 2.
    let report_file = scratch("signalled.json");
    let mut command = gotrace();
    command
        .args(["run", "--format", "json", "-o"])
        .arg(&report_file)
        .arg("--")
        .arg(&f.path)
        .args(["rate", "100"]);
    // A test run started in the background by a shell without job control (`cmd &`, `nohup`)
    // inherits SIGINT ignored. gotrace's own handler replaces that, but the program it execs
    // keeps it (execve(2) keeps ignored dispositions), and Go leaves an ignored SIGINT ignored
    // (src/os/signal/doc.go: "If the Go program is started with either SIGHUP or SIGINT ignored
    // (signal handler set to SIG_IGN), they will remain ignored."), so the forwarded signal
    // would do nothing and this test would wait forever.
    // SAFETY: signal(2) is async-signal-safe, the only kind of call allowed between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gotrace run");
    // Held open until gotrace has exited: `allocs rate` also stops, with status 0, when its
    // stdin (gotrace's) reaches EOF, which would race the signal if waiting closed it.
    let stdin = child.stdin.take();
    std::thread::sleep(Duration::from_secs(2));
    signal(child.id(), libc::SIGINT);
    let out = wait_output(child);
    drop(stdin);
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let report = read_json(&report_file);
    assert_eq!(report["ended"], "target exited with status 130");
    assert!(report["totals"]["allocations"].as_u64().expect("count") > 1000);
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
    let out = output(gotrace().args(["attach", &(pid_max + 1).to_string()]));
    assert_clean_error(&out, "no such process");

    // Not a Go program.
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = output(gotrace().args(["attach", &sleep.id().to_string()]));
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
    let out = output(gotrace().args(["attach", &target.id().to_string()]));
    let _ = target.kill();
    let _ = target.wait();
    assert_clean_error(&out, "go1.16.1 is too old");

    // Without privileges: the same command as an unprivileged user.
    let (mut target, mut rate) = start_rate(&fixture("1.27", "default"));
    rate.median(1);
    let out = output(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
            .arg(env!("CARGO_BIN_EXE_gotrace"))
            .args(["attach", &target.id().to_string()]),
    );
    drop(target.stdin.take());
    let _ = target.wait();
    assert_clean_error(&out, "CAP_BPF and CAP_PERFMON");
}
