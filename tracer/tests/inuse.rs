//! In-use heap against the program's own heap profile (issue 24), on Go 1.21 and 1.27.
//!
//! `workloads inuse` (`fixtures/go/workloads/inuse.go`) keeps some of what it allocates, drops
//! far more, and grows a map; after two GCs it writes Go's own heap profile with
//! `runtime/pprof`, then holds everything. `gotrace attach --mode go-sampler`, attached before
//! the work (it follows each sample) and attached after it (the runtime's own records tell
//! it), must give the same `inuse_space` per line within 15%, and next to nothing on the
//! garbage-only line. Both count the same samples (gotrace follows the runtime's own), so they
//! agree far closer than that in practice.
//!
//! `workloads leak` leaks 1 KiB a millisecond at one line while another allocates ten times
//! the bytes and keeps only its latest 256 KiB: `--growth` must rank the leak first.
//!
//! Root only: without root the tests say why and pass (CI runs as root).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testkit::{host_goarch, lines_of, repo_root, root_only, wait_output};

use crate::common::{Pprof, attach, gotrace, scratch, signal};

/// What gotrace's in-use per line may differ from the program's own.
const TOLERANCE: f64 = 0.15;

fn workloads(minor: &str) -> PathBuf {
    let path = repo_root().join(format!("target/fixtures/go{minor}/{}/workloads", host_goarch()));
    assert!(path.exists(), "{} is missing: run cargo xtask fixtures", path.display());
    path
}

/// The line of the fixture's `// gotrace:site NAME` marker in `inuse.go`.
fn site_line(name: &str) -> u32 {
    let text = std::fs::read_to_string(repo_root().join("fixtures/go/workloads/inuse.go")).expect("fixture source");
    text.lines()
        .zip(1..)
        .find_map(|(l, n)| l.trim_end().ends_with(&format!("// gotrace:site {name}")).then_some(n))
        .unwrap_or_else(|| panic!("no site {name} in inuse.go"))
}

/// `inuse_space` per `function:line` of the first frame outside the runtime, from a Go heap
/// profile as `runtime/pprof` wrote it.
fn own_inuse_by_line(profile: &Path) -> BTreeMap<String, f64> {
    let p = Pprof::read(profile);
    let space = p.sample_index("inuse_space");
    let lines = p.location_lines();
    let mut out = BTreeMap::new();
    for s in &p.0.sample {
        let site = s
            .location_id
            .iter()
            .flat_map(|id| lines[id].iter().copied())
            .find(|(f, _)| !gobin::is_runtime_function(f));
        if let Some((function, line)) = site {
            #[expect(clippy::cast_precision_loss, reason = "bytes, compared within 15%")]
            let bytes = s.value[space] as f64;
            *out.entry(format!("{function}:{line}")).or_insert(0.0) += bytes;
        }
    }
    out
}

/// gotrace's `inuse_bytes` per `function:line`.
fn traced_inuse_by_line(report: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for c in report["callsites"].as_array().expect("callsites") {
        let key = format!("{}:{}", c["function"].as_str().expect("function"), c["line"]);
        *out.entry(key).or_insert(0.0) += c["inuse_bytes"].as_f64().expect("inuse_bytes");
    }
    out
}

/// When gotrace attaches to `workloads inuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// Before the work: every retained object is sampled while traced.
    Before,
    /// After it: every retained object was sampled before gotrace came; only the runtime's
    /// own records (runtime.mbuckets) know them.
    After,
}

fn check_against_own_profile(minor: &str, when: Attach) {
    let heap = scratch(&format!("heap-{minor}-{when:?}.pb.gz"));
    let out = scratch(&format!("inuse-{minor}-{when:?}.json"));
    let mut target = Command::new(workloads(minor))
        .arg("inuse")
        .args(if when == Attach::Before {
            &["--wait"][..]
        } else {
            &[][..]
        })
        .arg("--heapprofile")
        .arg(&heap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let stdout = lines_of(target.stdout.take().expect("stdout"));
    assert_eq!(stdout.recv_timeout(Duration::from_secs(20)).expect("ready"), "ready");
    let args = ["--mode", "go-sampler", "-f", "json", "-o", out.to_str().expect("utf-8")];
    let mut stdin = target.stdin.take().expect("stdin");
    let tracer = if when == Attach::Before {
        let tracer = attach(target.id(), &args);
        stdin.write_all(b"\n").expect("start the work");
        assert_eq!(stdout.recv_timeout(Duration::from_mins(1)).expect("done"), "done");
        tracer
    } else {
        assert_eq!(stdout.recv_timeout(Duration::from_mins(1)).expect("done"), "done");
        attach(target.id(), &args)
    };
    // The program now holds what it kept, allocates nothing, and has written its profile.
    signal(tracer.id(), libc::SIGINT);
    let finished = wait_output(tracer);
    assert!(finished.status.success(), "gotrace: {finished:?}");
    drop(stdin);
    let _ = target.wait();

    let report: Value = serde_json::from_slice(&std::fs::read(&out).expect("report")).expect("json");
    assert_eq!(report["inuse"]["available"], true, "{}", report["inuse"]);
    assert!(
        report["inuse"]["note"]
            .as_str()
            .expect("note")
            .contains("before attach from the runtime's own records"),
        "{}",
        report["inuse"]
    );
    assert_eq!(report["inuse"]["probes"]["dropped_full"], 0, "{}", report["inuse"]);
    let own = own_inuse_by_line(&heap);
    let by_gotrace = traced_inuse_by_line(&report);
    let total: f64 = own
        .iter()
        .filter(|(line, _)| line.starts_with("main."))
        .map(|(_, b)| b)
        .sum();
    let mut table = format!("go{minor}, attached {when:?} the work: line, Go's own inuse_space, gotrace's, error\n");
    let mut failures = Vec::new();
    for site in ["retainBytes", "retainNodes", "retainLarge", "retainSome", "growMap"] {
        let line = format!("main.{site}:{}", site_line(site));
        let expected = own.get(&line).copied().unwrap_or(0.0);
        let got = by_gotrace.get(&line).copied().unwrap_or(0.0);
        let error = (got - expected) / expected;
        let _ = writeln!(
            table,
            "{line:>28} {expected:>10.0} {got:>10.0} {:>+6.1}%",
            error * 100.0
        );
        // Every retained site keeps at least 1% of the total (the smallest, retainNodes, ~3.7%).
        assert!(
            expected > total * 0.01,
            "{line}: the program's own profile has {expected} of {total}\n{table}"
        );
        if error.abs() > TOLERANCE || error.is_nan() {
            failures.push(line);
        }
    }
    let garbage = format!("main.garbage:{}", site_line("garbage"));
    let (own_garbage, traced_garbage) = (
        own.get(&garbage).copied().unwrap_or(0.0),
        by_gotrace.get(&garbage).copied().unwrap_or(0.0),
    );
    let _ = writeln!(table, "{garbage:>28} {own_garbage:>10.0} {traced_garbage:>10.0}");
    eprintln!("{table}");
    assert!(
        failures.is_empty(),
        "in-use beyond ±{:.0}% at {failures:?}\n{table}",
        TOLERANCE * 100.0
    );
    // 600,000 objects that die at once: at most the last one, still referenced, is alive.
    assert!(
        traced_garbage < total * 0.01,
        "garbage-only line holds {traced_garbage} of {total}\n{table}"
    );
    if when == Attach::Before {
        assert!(
            report["callsites"]
                .as_array()
                .expect("callsites")
                .iter()
                .any(|c| c["bytes"].as_f64() > Some(30e6) && c["function"] == "main.garbage"),
            "the garbage line must still show its allocations: {report}"
        );
    }
}

/// Both ways of attaching, on one release.
fn check_release(test: &str, minor: &str) {
    let Some(_root) = root_only(test) else {
        return;
    };
    check_against_own_profile(minor, Attach::Before);
    check_against_own_profile(minor, Attach::After);
}

#[test]
fn inuse_matches_the_programs_own_heap_profile_go1_21() {
    check_release("inuse_matches_the_programs_own_heap_profile_go1_21", "1.21");
}

#[test]
fn inuse_matches_the_programs_own_heap_profile_go1_27() {
    check_release("inuse_matches_the_programs_own_heap_profile_go1_27", "1.27");
}

/// `--growth`: the leaking line ranks first by in-use growth although the churning line
/// allocates ten times the bytes; the baseline goes next to the pprof output for `-base`.
#[test]
fn growth_ranks_the_leak_first() {
    let Some(_root) = root_only("growth_ranks_the_leak_first") else {
        return;
    };
    let out = scratch("leak.json");
    let pprof = scratch("leak.pb.gz");
    let mut target = Command::new(workloads("1.27"))
        .arg("leak")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the workload");
    let stdout = lines_of(target.stdout.take().expect("stdout"));
    assert_eq!(stdout.recv_timeout(Duration::from_secs(20)).expect("ready"), "ready");
    // Windows of several GC cycles: what died since the last sweep still counts as held.
    let traced = testkit::output(
        gotrace()
            .args(["attach", &target.id().to_string(), "--growth", "3s", "-o"])
            .arg(&out)
            .arg("-o")
            .arg(&pprof),
    );
    drop(target.stdin.take());
    let _ = target.wait();
    assert!(traced.status.success(), "{traced:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&out).expect("report")).expect("json");
    assert_eq!(report["mode"], "go-sampler");
    assert!(
        report["growth"]["start_secs"].as_f64().is_some(),
        "{}",
        report["growth"]
    );
    let callsites = report["callsites"].as_array().expect("callsites");
    // A line's allocated bytes and growth over its rows (objects sampled before attach come
    // from the runtime's records, whose stacks may name another kind).
    let line = |function: &str, field: &str| -> f64 {
        callsites
            .iter()
            .filter(|c| c["function"] == function && c["line"] == site_line(&function["main.".len()..]))
            .filter_map(|c| c[field].as_f64())
            .sum()
    };
    assert_eq!(callsites[0]["function"], "main.leakSlowly", "{report}");
    assert!(
        line("main.churnFast", "bytes") > 5.0 * line("main.leakSlowly", "bytes"),
        "{report}"
    );
    // 1 KiB a millisecond for 3 s, less the ticker's slack: over a megabyte.
    let grown = line("main.leakSlowly", "inuse_growth_bytes");
    assert!(grown > 1e6, "{report}");
    assert!(line("main.churnFast", "inuse_growth_bytes") < grown / 4.0, "{report}");
    let base = scratch("leak.pb.gz.base");
    assert!(base.exists(), "no baseline next to the pprof output");
}

/// Exact mode says it cannot tell in-use heap; a stripped binary (no symbol table, so no
/// `runtime.mbuckets`) gets in-use of what was sampled since attach, and says so.
#[test]
fn what_in_use_covers_is_said() {
    let Some(_root) = root_only("what_in_use_covers_is_said") else {
        return;
    };
    let f = testkit::fixture("1.27", "stripped");
    let trace = |mode: &str| -> Value {
        let out = scratch(&format!("covers-{mode}.json"));
        let run = testkit::output(
            gotrace()
                .args(["run", "--mode", mode, "-f", "json", "-o"])
                .arg(&out)
                .arg("--")
                .arg(&f.path)
                .args(["loop", "200"]),
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        serde_json::from_slice(&std::fs::read(&out).expect("report")).expect("json")
    };
    let exact = trace("exact");
    assert_eq!(exact["inuse"]["available"], false, "{}", exact["inuse"]);
    assert!(
        exact["inuse"]["note"]
            .as_str()
            .expect("note")
            .contains("exact mode cannot tell in-use heap"),
        "{}",
        exact["inuse"]
    );
    assert!(exact["callsites"][0].get("inuse_bytes").is_none(), "{exact}");
    let sampled = trace("go-sampler");
    assert_eq!(sampled["inuse"]["available"], true, "{}", sampled["inuse"]);
    assert!(
        sampled["inuse"]["note"]
            .as_str()
            .expect("note")
            .contains("objects allocated before attach are not included"),
        "{}",
        sampled["inuse"]
    );
    assert!(
        sampled["callsites"]
            .as_array()
            .expect("callsites")
            .iter()
            .all(|c| c["inuse_bytes"].is_u64()),
        "{sampled}"
    );
}
