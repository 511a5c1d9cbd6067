//! `gotrace serve` with real parts: real uprobes on real Go processes, a real Prometheus server
//! (Debian's, unpacked by `scripts/setup.sh`), `go tool pprof` on the endpoint, restarts,
//! `kill -9`, a target in its own PID and mount namespaces, and least privilege under `capsh`.
//!
//! Root only: without root each test says why and passes (CI runs as root). The tests share
//! kernel state, so they take a lock and run one at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serving::{Guard, Prometheus, exit_within, http, metrics, sample, start_serve, wait_for};
use common::{gotrace, scratch, signal as kill};
use testkit::{fixture, lines_of, output, repo_root, root_only};

/// The allocs fixture looping until killed.
fn start_target(binary: &Path) -> Guard {
    Guard(
        Command::new(binary)
            .arg("loop")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the fixture"),
    )
}

fn serve_command(args: &[&str]) -> Command {
    let mut c = gotrace();
    c.args(["serve", "--listen", "127.0.0.1:0", "--interval", "300ms"])
        .args(args);
    c
}

fn has_fixture_series(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("gotrace_alloc_bytes_total{function=\"main.runSites\"")
            && l.contains("allocs.go")
            && sample(l, "gotrace_alloc_bytes_total").is_some_and(|v| v > 0.0)
    })
}

fn go_tool(minor: &str) -> PathBuf {
    repo_root().join(format!(".cache/go/{minor}/bin/go"))
}

/// What `gotrace serve` needs on this project's kernel (docs/serve.md, *Privileges, and why*).
const NEEDED: [&str; 4] = ["cap_bpf", "cap_perfmon", "cap_sys_ptrace", "cap_sys_admin"];

/// Follows a target through `kill -9` and a restart, and keeps serving meanwhile; `go tool
/// pprof` reads the profile endpoint, cumulative and as a delta.
#[test]
fn serve_follows_its_target_through_kill_and_restart() {
    let Some(_lock) = root_only("serve_follows_its_target_through_kill_and_restart") else {
        return;
    };
    let f = fixture("1.27", "default");
    let first = start_target(&f.path);
    let server = start_serve(serve_command(&[
        "--exe",
        f.path.to_str().expect("utf-8"),
        "--time-probes",
    ]));
    let port = server.port;
    wait_for(port, Duration::from_secs(20), "fixture series", has_fixture_series);
    let text = metrics(port);
    assert!(
        text.contains(&format!("pid=\"{}\"", first.0.id())) && text.contains("stale=\"false\""),
        "{text}"
    );
    assert_eq!(sample(&text, "gotrace_attached_targets"), Some(1.0), "{text}");
    // The default mode on a target with profiling on (it reads runtime.MemProfile).
    assert!(text.contains("mode=\"go-sampler\""), "{text}");
    // The runtime's own count, read from the target's memory, grows while it allocates.
    let counted = |t: &str| sample(t, "gotrace_target_runtime_allocated_bytes_total").unwrap_or(0.0);
    let first_count = counted(&text);
    assert!(first_count > 0.0, "{text}");
    wait_for(port, Duration::from_secs(10), "a growing runtime count", |t| {
        counted(t) > first_count
    });
    // --time-probes: the kernel timed the probes' runs.
    wait_for(port, Duration::from_secs(10), "timed probe runs", |t| {
        sample(t, "gotrace_probe_timed_runs_total").is_some_and(|runs| runs > 0.0)
            && sample(t, "gotrace_probe_run_seconds_total").is_some_and(|secs| secs > 0.0)
    });
    let (status, _, body) = http(port, "GET", "/healthz");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(&format!("tracing pid {}", first.0.id())));

    // go tool pprof reads the endpoint: the cumulative profile and a two-second delta.
    let go = go_tool("1.27");
    for url in [
        format!("http://127.0.0.1:{port}/debug/pprof/allocs"),
        format!("http://127.0.0.1:{port}/debug/pprof/allocs?seconds=2"),
    ] {
        let out = output(
            Command::new(&go)
                .args(["tool", "pprof", "-top", "-sample_index=alloc_space", &url])
                .env("PPROF_TMPDIR", scratch("pprof"))
                .env("GOTOOLCHAIN", "local"),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("main.runSites"), "{url}:\n{text}");
        assert!(text.contains("gotrace go-sampler mode"), "{url}:\n{text}");
    }

    // kill -9: the last data stays, marked stale.
    let first_pid = first.0.id();
    kill(first_pid, libc::SIGKILL);
    drop(first);
    let waited = wait_for(port, Duration::from_secs(2), "stale target", |t| {
        t.contains("stale=\"true\"") && sample(t, "gotrace_attached_targets") == Some(0.0)
    });
    let text = metrics(port);
    assert!(
        has_fixture_series(&text),
        "the last data is gone after kill -9:\n{text}"
    );
    let (status, headers, body) = http(port, "GET", "/debug/pprof/allocs");
    assert_eq!(status, 200);
    assert!(!body.is_empty());
    assert!(
        headers.iter().any(|(k, v)| k == "x-gotrace-stale" && v == "true"),
        "{headers:?}"
    );
    let (_, _, health) = http(port, "GET", "/healthz");
    assert!(String::from_utf8_lossy(&health).contains("stale"), "{waited:?}");

    // A new process of the same executable: re-attached within 2 s.
    let second = start_target(&f.path);
    let second_pid = second.0.id();
    let took = wait_for(port, Duration::from_secs(2), "re-attach", |t| {
        t.contains(&format!("pid=\"{second_pid}\"")) && t.contains("stale=\"false\"")
    });
    eprintln!("re-attached {took:?} after the restart");
    let text = metrics(port);
    assert_eq!(sample(&text, "gotrace_reattaches_total"), Some(1.0), "{text}");
    wait_for(port, Duration::from_secs(10), "fresh series", has_fixture_series);

    // Only GET: nothing can be changed over HTTP; unknown paths are not found.
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    assert_eq!(http(port, "DELETE", "/debug/pprof/allocs").0, 405);
    assert_eq!(http(port, "GET", "/debug/pprof/nothing").0, 404);
    // go-sampler tracks in-use heap: the heap profile is there.
    assert_eq!(http(port, "GET", "/debug/pprof/heap").0, 200);
    assert_eq!(http(port, "GET", "/debug/pprof/allocs?seconds=999999").0, 400);

    // kill -9 of gotrace: the target runs on.
    kill(server.child.0.id(), libc::SIGKILL);
    drop(server);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        Path::new(&format!("/proc/{second_pid}")).exists(),
        "the target died with gotrace"
    );
    let stat = std::fs::read_to_string(format!("/proc/{second_pid}/stat")).expect("stat");
    assert!(!stat.contains(") Z"), "the target is a zombie: {stat}");
}

/// A real Prometheus server scrapes `gotrace serve`; its query API returns the fixture's series.
#[test]
fn prometheus_scrapes_serve() {
    let Some(_lock) = root_only("prometheus_scrapes_serve") else {
        return;
    };
    let f = fixture("1.24", "default");
    let _target = start_target(&f.path);
    let server = start_serve(serve_command(&[
        "--exe",
        f.path.to_str().expect("utf-8"),
        "--mode",
        "span",
    ]));
    wait_for(
        server.port,
        Duration::from_secs(20),
        "fixture series",
        has_fixture_series,
    );

    let prometheus = Prometheus::scraping(server.port, &scratch("prometheus"));
    let result = prometheus.wait_for(
        "gotrace_alloc_bytes_total%7Bfunction%3D%22main.runSites%22%7D",
        |result| !result.is_empty(),
    );
    // The series carry every label, and name the fixture's allocating lines.
    let lines: Vec<&str> = result.iter().filter_map(|r| r["metric"]["line"].as_str()).collect();
    for r in &result {
        let m = &r["metric"];
        for label in ["function", "file", "line", "type", "kind"] {
            assert!(m[label].is_string(), "{label} missing in {m}");
        }
        assert_eq!(m["type"], "unknown", "span mode cannot know types: {m}");
        assert!(m["file"].as_str().is_some_and(|f| f.ends_with("allocs.go")), "{m}");
    }
    // allocs.go:191 is the map that grows (the most bytes in every version).
    assert!(lines.contains(&"191"), "{lines:?}");
}

/// A target in its own PID and mount namespaces, chrooted into a directory that holds only its
/// binary: gotrace finds it by name, reads the binary through /proc/PID/root, and reports the
/// path as the process sees it.
#[test]
fn serve_traces_a_target_in_another_pid_and_mount_namespace() {
    let Some(_lock) = root_only("serve_traces_a_target_in_another_pid_and_mount_namespace") else {
        return;
    };
    let f = fixture("1.22", "default");
    let root = scratch("container-root");
    std::fs::create_dir_all(&root).expect("root dir");
    let inside = root.join("gotrace-ctr");
    std::fs::copy(&f.path, &inside).expect("copy the fixture");
    let _container = Guard(
        Command::new("unshare")
            .args(["--pid", "--mount", "--fork", "--kill-child"])
            .arg("chroot")
            .arg(&root)
            .args(["/gotrace-ctr", "loop"])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    let server = start_serve(serve_command(&["--name", "gotrace-ctr", "--mode", "span"]));
    wait_for(
        server.port,
        Duration::from_secs(20),
        "fixture series",
        has_fixture_series,
    );
    let text = metrics(server.port);
    // The executable as the process sees it, inside its root.
    assert!(text.contains("exe=\"/gotrace-ctr\""), "{text}");
    // Its pid in this (the host's) namespace, where gotrace runs.
    let pid: u32 = text
        .split("pid=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|p| p.parse().ok())
        .expect("pid label");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).expect("pid ns");
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "the target should be in its own pid namespace"
    );
    let (status, _, body) = http(server.port, "GET", "/debug/pprof/allocs");
    assert_eq!(status, 200);
    assert!(body.len() > 100);
}

/// The capabilities docs/serve.md documents, and nothing else: `capsh` drops every other one from
/// the bounding set before gotrace starts, so it runs as uid 0 without `CAP_DAC_OVERRIDE`,
/// `CAP_SYS_RESOURCE` and the rest.
#[test]
fn serve_runs_with_only_the_documented_capabilities() {
    let Some(_lock) = root_only("serve_runs_with_only_the_documented_capabilities") else {
        return;
    };
    let decoded = output(Command::new("capsh").arg("--decode=0x1ffffffffff"));
    let all = String::from_utf8_lossy(&decoded.stdout);
    let others: Vec<&str> = all
        .trim()
        .rsplit('=')
        .next()
        .expect("capability names")
        .split(',')
        .filter(|c| !NEEDED.contains(c))
        .collect();
    let f = fixture("1.27", "default");
    let _target = start_target(&f.path);
    let mut command = Command::new("capsh");
    command
        .arg(format!("--drop={}", others.join(",")))
        .arg("--")
        .arg("-c")
        .arg(format!(
            "exec '{}' serve --listen 127.0.0.1:0 --interval 300ms --mode span --exe '{}'",
            env!("CARGO_BIN_EXE_gotrace"),
            f.path.display()
        ));
    let server = start_serve(command);
    wait_for(
        server.port,
        Duration::from_secs(20),
        "fixture series",
        has_fixture_series,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.0.id())).expect("status");
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).expect("hex"))
        .expect("CapEff");
    // CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
    assert_eq!(
        effective,
        (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39),
        "{effective:#x}"
    );
    drop(server);
}

/// A program whose memory profiling the linker turned off (`fixtures/go/noprof`): go-sampler
/// says so and refuses; `--set-mem-profile-rate` turns it on in Go 1.24+ (and samples come),
/// and is refused with a reason on older runtimes; `auto` falls back to span mode.
#[test]
fn memory_profiling_off_is_reported_and_can_be_turned_on() {
    let Some(_lock) = root_only("memory_profiling_off_is_reported_and_can_be_turned_on") else {
        return;
    };
    let start = start_noprof;
    let target = start("1.27");
    let pid = target.0.id().to_string();
    let refused = output(gotrace().args(["attach", &pid, "--mode", "go-sampler", "-d", "1s", "-f", "json"]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("memory profiling is off") && stderr.contains("runtime.disableMemoryProfiling"),
        "{stderr}"
    );
    let json = scratch("noprof-auto.json");
    let auto = output(
        gotrace()
            .args(["attach", &pid, "--mode", "auto", "-d", "2s", "-o"])
            .arg(&json),
    );
    assert!(auto.status.success(), "{}", String::from_utf8_lossy(&auto.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    assert_eq!(report["mode"], "span");
    assert!(report["totals"]["allocations"].as_u64().unwrap_or(0) > 0, "{report}");

    let json = scratch("noprof-rate.json");
    let opted_in = output(
        gotrace()
            .args([
                "attach",
                &pid,
                "--mode",
                "go-sampler",
                "--set-mem-profile-rate",
                "4096",
                "-d",
                "2s",
                "-o",
            ])
            .arg(&json),
    );
    assert!(
        opted_in.status.success(),
        "{}",
        String::from_utf8_lossy(&opted_in.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("report")).expect("json");
    assert_eq!(report["mode"], "go-sampler");
    assert!(
        report["probes"]["hits"].as_u64().unwrap_or(0) > 0,
        "no samples: {report}"
    );
    drop(target);

    let old = start("1.21");
    let pid = old.0.id().to_string();
    let refused = output(gotrace().args([
        "attach",
        &pid,
        "--mode",
        "go-sampler",
        "--set-mem-profile-rate",
        "4096",
        "-d",
        "1s",
    ]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("before Go 1.24"), "{stderr}");
}

/// The `noprof` fixture (no net/http/pprof, memory profiling off by the linker), running.
fn start_noprof(minor: &str) -> Guard {
    let binary = repo_root().join(format!("target/fixtures/go{minor}/{}/noprof", testkit::host_goarch()));
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start noprof");
    let lines = lines_of(child.stdout.take().expect("stdout"));
    assert!(
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("ready")
            .starts_with("ready")
    );
    Guard(child)
}

/// `go tool pprof http://…/debug/pprof/heap` opens on in-use heap for a program with no
/// net/http/pprof and its memory profiling off (turned on by `--set-mem-profile-rate`), and
/// `/metrics` has per-callsite in-use gauges.
#[test]
fn heap_endpoint_opens_on_in_use_for_a_program_without_net_http_pprof() {
    let Some(_lock) = root_only("heap_endpoint_opens_on_in_use_for_a_program_without_net_http_pprof") else {
        return;
    };
    let target = start_noprof("1.27");
    let pid = target.0.id().to_string();
    let server = start_serve(serve_command(&[
        "--pid",
        &pid,
        "--mode",
        "go-sampler",
        "--set-mem-profile-rate",
        "4096",
    ]));
    let port = server.port;
    wait_for(port, Duration::from_secs(20), "in-use series", |t| {
        t.contains("# TYPE gotrace_inuse_bytes gauge") && t.contains("gotrace_inuse_bytes{function=\"main.")
    });
    let text = metrics(port);
    assert!(text.contains("gotrace_inuse_objects{function=\"main."), "{text}");
    let url = format!("http://127.0.0.1:{port}/debug/pprof/heap");
    let out = output(
        Command::new(go_tool("1.27"))
            .args(["tool", "pprof", "-top", &url])
            .env("PPROF_TMPDIR", scratch("pprof-heap"))
            .env("GOTOOLCHAIN", "local"),
    );
    let top = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(top.contains("Type: inuse_space"), "{top}");
    assert!(top.contains("main."), "{top}");
    drop(server);
    drop(target);
}

/// SIGTERM ends gotrace promptly even while a `?seconds=N` request waits (that request gets
/// 503), with exit status 0, and the target runs on.
#[test]
fn serve_stops_promptly_on_sigterm() {
    let Some(_lock) = root_only("serve_stops_promptly_on_sigterm") else {
        return;
    };
    let f = fixture("1.25", "default");
    let target = start_target(&f.path);
    let mut server = start_serve(serve_command(&["--pid", &target.0.id().to_string()]));
    let port = server.port;
    wait_for(port, Duration::from_secs(20), "fixture series", has_fixture_series);
    let waiting = std::thread::spawn(move || http(port, "GET", "/debug/pprof/allocs?seconds=600").0);
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    kill(server.child.0.id(), libc::SIGTERM);
    let status = exit_within(&mut server.child.0, Duration::from_secs(10), "SIGTERM");
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status}");
    assert_eq!(waiting.join().expect("request"), 503);
    assert!(target.0.id() > 0 && Path::new(&format!("/proc/{}", target.0.id())).exists());
}
