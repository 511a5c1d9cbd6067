//! `gotrace serve` with real parts: real uprobes on real Go processes, a real Prometheus server
//! (Debian's, unpacked by `scripts/setup.sh`), `go tool pprof` on the endpoint, restarts,
//! `kill -9`, a target in its own PID and mount namespaces, and least privilege under `capsh`.
//!
//! Root only: without root each test says why and passes (CI runs as root). The tests share
//! kernel state, so they take a lock and run one at a time.

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::{gotrace, scratch, signal as kill};
use testkit::{fixture, lines_of, output, repo_root, root_only};

/// A child that is killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// A running `gotrace serve` and the port it listens on.
struct Server {
    child: Guard,
    port: u16,
}

fn start_serve(mut command: Command) -> Server {
    let mut child = Guard(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gotrace serve"),
    );
    // The reader thread drains the rest of stderr after the port line, so gotrace never
    // blocks on a full pipe.
    let stderr: Receiver<String> = lines_of(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("gotrace serve says where it listens");
        if let Some(rest) = line.split("serving http://").nth(1) {
            let addr = rest.split('/').next().expect("address");
            let port = addr.rsplit(':').next().expect("port").parse().expect("port number");
            return Server { child, port };
        }
    }
}

fn serve_command(args: &[&str]) -> Command {
    let mut c = gotrace();
    c.args(["serve", "--listen", "127.0.0.1:0", "--interval", "300ms"])
        .args(args);
    c
}

/// A GET with HTTP/1.1 over a plain socket: status, headers (lowercased names) and body.
fn http(port: u16, method: &str, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_mins(1))).expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).expect("hex").trim(), 16).expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

fn metrics(port: u16) -> String {
    let (status, _, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200);
    String::from_utf8(body).expect("utf-8 metrics")
}

/// The value of the first sample line that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls until `check` passes on the metrics text, or fails after `limit`.
fn wait_for(port: u16, limit: Duration, what: &str, check: impl Fn(&str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let text = metrics(port);
        if check(&text) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no {what} within {limit:?}; metrics:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let prometheus = repo_root().join(".cache/prometheus/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "scripts/setup.sh unpacks Prometheus into {}",
        prometheus.display()
    );
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

    let dir = scratch("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gotrace\n    static_configs:\n      \
             - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
    )
    .expect("config");
    let web_port = free_port();
    let _prom = Guard(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = "/api/v1/query?query=gotrace_alloc_bytes_total%7Bfunction%3D%22main.runSites%22%7D";
    let deadline = Instant::now() + Duration::from_mins(1);
    let result = loop {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", web_port)) {
            drop(stream.write_all(b""));
            let (status, _, body) = http(web_port, "GET", query);
            if status == 200 {
                let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
                let result = doc["data"]["result"].as_array().cloned().unwrap_or_default();
                if !result.is_empty() {
                    break result;
                }
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never returned gotrace's series");
        std::thread::sleep(Duration::from_millis(500));
    };
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
    let status = loop {
        if let Some(status) = server.child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "gotrace did not stop within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status}");
    assert_eq!(waiting.join().expect("request"), 503);
    assert!(target.0.id() > 0 && Path::new(&format!("/proc/{}", target.0.id())).exists());
}
