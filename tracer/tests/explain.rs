//! `gotrace explain` on `fixtures/go/escapes`, whose sites each allocate once per round for a
//! known reason (`// gotrace:escape NAME` markers), built and traced with Go 1.21 and 1.27, whose
//! `-m=2` texts differ. For each site: the compiler's verdict at the right line, the reason,
//! and the counts gotrace measured (one allocation of the site's own type per round).
//!
//! Tracing needs root; without it the traced tests say why and pass (CI runs as root). The
//! argument errors need nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{gotrace, scratch};
use serde_json::Value;
use testkit::{Fixture, allocs_fixtures, output, repo_root, root_only};

const ROUNDS: u64 = 100;

/// Canonical: the path `go build` records in the binary, which the callsites carry.
fn source_dir() -> PathBuf {
    repo_root()
        .join("fixtures/go/escapes")
        .canonicalize()
        .expect("fixtures/go/escapes")
}

/// The project's toolchain of a Go release (that of its amd64 allocs fixture).
fn toolchain(minor: &str) -> Fixture {
    allocs_fixtures()
        .into_iter()
        .find(|f| f.go_minor == minor && f.goarch == testkit::host_goarch() && f.variant == "default")
        .unwrap_or_else(|| panic!("no Go {minor} toolchain (cargo xtask fixtures)"))
}

/// A `go` command with the project's environment (local toolchain, caches in .cache/).
fn with_go_env(mut cmd: Command, go: &Fixture) -> Command {
    for (key, value) in go.go_command().get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    cmd
}

/// The `// gotrace:escape NAME` markers: name → line.
fn markers() -> BTreeMap<String, u64> {
    let found = marked("// gotrace:escape ");
    assert!(found.len() >= 8, "markers: {found:?}");
    found
}

/// Lines marked with `TAG NAME` in the fixture (code lines, not comments): name → line.
fn marked(tag: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(source_dir().join("escapes.go")).expect("fixture source");
    text.lines()
        .zip(1..)
        .filter(|(l, _)| !l.trim_start().starts_with("//"))
        .filter_map(|(l, n)| Some((l.split(tag).nth(1)?.trim().to_owned(), n)))
        .collect()
}

/// What explain must say of each site: verdict, a phrase of the reason, and the allocation
/// (kind, type prefix) the site makes once per round.
fn expected(site: &str, minor: &str) -> (&'static str, &'static str, (&'static str, &'static str)) {
    match site {
        "return_pointer" => ("escapes", "returned", ("new", "main.point")),
        "closure_capture" => ("moved_to_heap", "closure", ("new", "int64")),
        "interface" => ("escapes", "interface", ("convT", "main.point")),
        "too_large" => ("escapes", "too large", ("makeslice", "uint8")),
        // Go 1.25 gave a non-constant make a 32-byte stack buffer: the compiler now says it
        // does not escape, and the 64-byte-plus slices go to the heap anyway.
        "non_constant_make" if minor == "1.21" => ("escapes", "not known at compile time", ("makeslice", "uint8")),
        "non_constant_make" => ("does_not_escape", "not known at compile time", ("makeslice", "uint8")),
        // newPair is inlined into main, where `kept = newPair(…)` makes the point escape: the
        // compiler says so at the call, not in newPair.
        "inlined" => ("escapes", "heap location", ("new", "main.point")),
        "map_grow" => ("runtime", "map", ("makemap", "")),
        "goroutine_capture" => ("escapes", "goroutine", ("new", "struct { F uintptr")),
        _ => panic!("unknown site {site}"),
    }
}

/// Builds the fixture with `go` into the scratch directory as `name`.
fn build(go: &Fixture, name: &str) -> PathBuf {
    let binary = scratch(name);
    let built = output(
        go.go_command()
            .current_dir(source_dir())
            .args(["build", "-o"])
            .arg(&binary)
            .arg("."),
    );
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    binary
}

/// Builds the fixture with `go`, traces one run of ROUNDS rounds; returns the JSON and pprof
/// results.
fn build_and_trace(go: &Fixture) -> (PathBuf, PathBuf) {
    let binary = build(go, &format!("escapes-{}", go.go_minor));
    let json = scratch(&format!("escapes-{}.json", go.go_minor));
    let pprof = scratch(&format!("escapes-{}.pb.gz", go.go_minor));
    let run = output(
        gotrace()
            .args(["run", "-o"])
            .arg(&json)
            .arg("-o")
            .arg(&pprof)
            .arg("--")
            .arg(&binary)
            .arg(ROUNDS.to_string()),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    (json, pprof)
}

fn explain_json(go: &Fixture, extra: &[&str], result: &Path) -> (Value, String) {
    let mut cmd = with_go_env(gotrace(), go);
    cmd.args(["explain", "--src"])
        .arg(source_dir())
        .args(["--format", "json", "--top", "200"])
        .args(extra)
        .arg(result);
    let out = output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (serde_json::from_slice(&out.stdout).expect("JSON"), stderr)
}

fn callsite_at(explained: &Value, line: u64) -> &Value {
    let file = source_dir().join("escapes.go");
    explained["callsites"]
        .as_array()
        .expect("callsites")
        .iter()
        .filter(|c| c["file"] == file.to_str().expect("utf-8") && c["line"] == line)
        // The site's own function (a closure on the same line, `main.spawn.func1`, may have a
        // runtime allocation or two of its own).
        .max_by_key(|c| c["allocations"].as_u64())
        .unwrap_or_else(|| panic!("no callsite at line {line}"))
}

/// The traced report's rows of a function at a line: (kind, type, allocations).
fn report_rows(report: &Value, function: &Value, line: u64) -> Vec<(String, String, u64)> {
    report["callsites"]
        .as_array()
        .expect("callsites")
        .iter()
        .filter(|c| c["line"] == line && c["function"] == *function)
        .map(|c| {
            (
                c["kind"].as_str().unwrap_or_default().to_owned(),
                c["type"].as_str().unwrap_or_default().to_owned(),
                c["allocations"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn check_sites(minor: &str, explained: &Value, report: &Value) {
    let calls = marked("// gotrace:inlined-at ");
    for (site, line) in markers() {
        let (verdict, reason, (kind, type_prefix)) = expected(&site, minor);
        let c = callsite_at(explained, line);
        let what = format!("go{minor} {site} (line {line}): {c:#}");
        assert_eq!(c["verdict"], verdict, "{what}");
        assert!(c["reason"].as_str().is_some_and(|r| r.contains(reason)), "{what}");
        if verdict != "runtime" {
            // Where the compiler decided: the line itself, or the call it was inlined at.
            let decided = calls.get(&site).copied().unwrap_or(line);
            let compiler = c["compiler"].as_array().expect("compiler");
            assert!(
                compiler.iter().any(|m| m
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("./escapes.go:{decided}:")))),
                "{what}"
            );
            assert_eq!(c.get("inlined_into").is_some(), calls.contains_key(&site), "{what}");
        }
        // The counts are the trace's: all of the line's of this kind.
        let rows: Vec<_> = report_rows(report, &c["function"], line)
            .into_iter()
            .filter(|r| c["kind"] == r.0.as_str())
            .collect();
        assert_eq!(
            c["allocations"].as_u64(),
            Some(rows.iter().map(|r| r.2).sum()),
            "{what}"
        );
        if site == "map_grow" {
            // Growth allocates several times per round, a few more with unlucky hash seeds.
            assert!(
                rows.iter().all(|r| r.0 == kind) && c["allocations"].as_u64() >= Some(ROUNDS),
                "{what} {rows:?}"
            );
        } else {
            let own: u64 = rows
                .iter()
                .filter(|r| r.0 == kind && r.1.starts_with(type_prefix))
                .map(|r| r.2)
                .sum();
            assert_eq!(own, ROUNDS, "{what}: rows {rows:?}");
        }
        let contradiction = c.get("contradiction").and_then(Value::as_str);
        if verdict == "does_not_escape" {
            assert!(contradiction.is_some_and(|t| t.contains("Go 1.25")), "{what}");
        } else {
            assert!(contradiction.is_none(), "{what}");
        }
    }
}

#[test]
fn escape_causes_get_their_verdicts_reasons_and_counts_on_two_releases() {
    let Some(_lock) = root_only("escape_causes_get_their_verdicts_reasons_and_counts_on_two_releases") else {
        return;
    };
    for minor in ["1.21", "1.27"] {
        let go = toolchain(minor);
        let (json, pprof) = build_and_trace(&go);
        let report: Value = serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("JSON");
        let go_path = go.go.to_str().expect("utf-8");

        let (explained, stderr) = explain_json(&go, &["--go", go_path], &json);
        assert_eq!(explained["compiler"]["go_version"], go.go_version.as_str(), "{stderr}");
        assert!(explained["compiler"].get("mismatch").is_none(), "{explained:#}");
        check_sites(minor, &explained, &report);

        // The same from the pprof output of the same trace.
        let (from_pprof, _) = explain_json(&go, &["--go", go_path], &pprof);
        check_sites(minor, &from_pprof, &report);

        // And from a saved -m=2 log instead of a compiler run.
        let log = scratch(&format!("m2-{minor}.log"));
        let built = output(
            go.go_command()
                .current_dir(source_dir())
                .args(["build", "-gcflags=-m=2", "-o"])
                .arg(scratch("m2-out"))
                .arg("."),
        );
        assert!(built.status.success());
        std::fs::write(&log, &built.stderr).expect("log");
        let (from_log, _) = explain_json(&go, &["--m2-log", log.to_str().expect("utf-8")], &json);
        check_sites(minor, &from_log, &report);
    }
}

#[test]
fn list_and_table_and_a_compiler_of_another_release() {
    let Some(_lock) = root_only("list_and_table_and_a_compiler_of_another_release") else {
        return;
    };
    let go27 = toolchain("1.27");
    let (json, _) = build_and_trace(&go27);
    let sites = markers();

    // --list: the function's source, with the traced lines and the compiler's verdicts.
    let mut cmd = with_go_env(gotrace(), &go27);
    cmd.args(["explain", "--src"])
        .arg(source_dir())
        .args(["--go", go27.go.to_str().expect("utf-8"), "--list", "main.counter"])
        .arg(&json);
    let out = output(&mut cmd);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        listing.starts_with("ROUTINE ======================== main.counter in "),
        "{listing}"
    );
    let line = sites["closure_capture"];
    let traced = listing
        .lines()
        .find(|l| l.contains(&format!(" {line}  ")) && l.contains("n := int64(0)"))
        .unwrap_or_else(|| panic!("no line {line}:\n{listing}"));
    assert!(traced.contains(&ROUNDS.to_string()), "{traced}");
    assert!(listing.contains("^ moved_to_heap: captured by a closure"), "{listing}");
    assert!(listing.contains("| moved to heap: n"), "{listing}");

    // The table: one row per callsite, its reason and the compiler's words under it.
    let mut cmd = with_go_env(gotrace(), &go27);
    cmd.args(["explain", "--src"])
        .arg(source_dir())
        .args(["--go", go27.go.to_str().expect("utf-8"), "--top", "5"])
        .arg(&json);
    let out = output(&mut cmd);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("VERDICT") && h.contains("CALLSITE")),
        "{table}"
    );
    assert!(
        table.contains("main.big") && table.contains("why: too large for the stack"),
        "{table}"
    );

    // Go 1.21's compiler on a Go 1.27 binary: named as a mismatch, and still explained.
    let go21 = toolchain("1.21");
    let (explained, stderr) = explain_json(&go21, &["--go", go21.go.to_str().expect("utf-8")], &json);
    assert!(
        stderr.contains(&format!("built with {}", go27.go_version)) && stderr.contains(&go21.go_version),
        "{stderr}"
    );
    assert!(explained["compiler"]["mismatch"].is_string(), "{explained:#}");
    assert_eq!(
        callsite_at(&explained, sites["non_constant_make"])["verdict"],
        "escapes"
    );
}

#[test]
fn bad_arguments_get_one_line_errors() {
    let report = scratch("empty.json");
    std::fs::write(&report, "{\"target\": {}, \"callsites\": []}").expect("write");
    let src = source_dir();
    let not_a_result = scratch("garbage.bin");
    std::fs::write(&not_a_result, b"\x00\x01garbage").expect("write");
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["--src", "/tmp", "x.json", "--duration", "5s"],
            "--duration only applies with --pid",
        ),
        (
            vec!["--src", "/nonexistent", report.to_str().expect("utf-8")],
            "is not a directory",
        ),
        (
            vec!["--src", "/", report.to_str().expect("utf-8")],
            "is not a Go module",
        ),
        (vec!["--src", "/tmp", "/nonexistent.json"], "is not a file"),
        (vec!["--src", "/tmp", "--pid", "0"], "not a valid process id"),
        (
            vec![
                "--src",
                src.to_str().expect("utf-8"),
                not_a_result.to_str().expect("utf-8"),
            ],
            "neither a gotrace JSON report nor a pprof profile",
        ),
    ];
    // Options that only make sense together are refused by the parser (usage, status 2).
    for args in [
        vec!["--src", "/tmp", "x.json", "--list", "main.f", "--format", "json"],
        vec!["--src", "/tmp", "x.json", "--go", "go", "--m2-log", "x.log"],
    ] {
        let out = output(gotrace().arg("explain").args(&args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (args, expected) in cases {
        let out = output(gotrace().arg("explain").args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("gotrace: error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

/// `--pid`: traces the running process itself (with `gotrace attach`), then explains.
#[test]
fn explains_a_running_process() {
    let Some(_lock) = root_only("explains_a_running_process") else {
        return;
    };
    let go = toolchain("1.27");
    let binary = build(&go, "escapes-live");
    // Enough rounds to outlive the trace; killed afterwards.
    let mut target = Command::new(&binary)
        .arg("100000000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the fixture");
    let mut cmd = with_go_env(gotrace(), &go);
    cmd.args(["explain", "--src"])
        .arg(source_dir())
        .args([
            "--go",
            go.go.to_str().expect("utf-8"),
            "--format",
            "json",
            "--top",
            "200",
        ])
        .args(["--pid", &target.id().to_string(), "--duration", "2s"]);
    let out = output(&mut cmd);
    let _ = target.kill();
    let _ = target.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tracing process"), "{stderr}");
    let explained: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(explained["target_go_version"], go.go_version.as_str());
    for (site, line) in markers() {
        let (verdict, _, _) = expected(&site, "1.27");
        let c = callsite_at(&explained, line);
        assert_eq!(c["verdict"], verdict, "{site}: {c:#}");
        assert!(c["allocations"].as_u64() > Some(0), "{site}: {c:#}");
    }
}
