//! `gotrace serve --all`, the node agent, with real parts: Go processes of several releases
//! started before and after it, a non-Go process, a process in its own PID and mount
//! namespaces inside a Kubernetes-shaped cgroup, a Go binary gotrace refuses, processes that
//! exit as soon as they start, `go tool pprof` on the per-process endpoints and a real
//! Prometheus scraping it.
//!
//! Root only: without root each test says why and passes (CI runs as root). The tests share
//! kernel state, so they take a lock and run one at a time.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serving::{Guard, Prometheus, http, metrics, start_serve, wait_for};
use common::{Pprof, gotrace, scratch, signal};
use testkit::{fixture, output, repo_root, root_only};

fn go_tool(minor: &str) -> PathBuf {
    repo_root().join(format!(".cache/go/{minor}/bin/go"))
}

fn agent_command(extra: &[&str]) -> Command {
    let mut c = gotrace();
    c.args(["serve", "--all", "--listen", "127.0.0.1:0", "--interval", "300ms"])
        .args(extra);
    c
}

/// A Go fixture allocating in a loop until killed.
fn start_loop(binary: &Path) -> Guard {
    Guard(
        Command::new(binary)
            .arg("loop")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the fixture"),
    )
}

/// The fixture's allocating function has a series of its own for process `pid`.
fn has_series_of(text: &str, pid: u32) -> bool {
    text.lines().any(|l| {
        l.starts_with("gotrace_alloc_bytes_total{")
            && l.contains(&format!("pid=\"{pid}\""))
            && l.contains("function=\"main.runSites\"")
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    })
}

fn targets(port: u16) -> serde_json::Value {
    let (status, _, body) = http(port, "GET", "/targets");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).expect("/targets is JSON")
}

fn target_of(doc: &serde_json::Value, pid: u32) -> Option<serde_json::Value> {
    doc["targets"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["pid"] == pid).cloned())
}

/// `go tool pprof -top` of a profile endpoint.
fn pprof_top(port: u16, path: &str) -> String {
    let out = output(
        Command::new(go_tool("1.27"))
            .args(["tool", "pprof", "-top", "-sample_index=alloc_space"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .env("PPROF_TMPDIR", scratch("pprof")),
    );
    assert!(
        out.status.success(),
        "go tool pprof {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two Go processes of different releases started before the agent and one after it each get
/// their own series and profile; a non-Go process gets nothing; an exited process's data
/// stays, marked; SIGTERM detaches everything and leaves the targets running.
#[test]
fn agent_follows_every_go_process_and_only_those() {
    let Some(_lock) = root_only("agent_follows_every_go_process_and_only_those") else {
        return;
    };
    let (old, new, late) = (
        fixture("1.21", "default"),
        fixture("1.27", "stripped"),
        fixture("1.24", "pie"),
    );
    let first = start_loop(&old.path);
    let second = start_loop(&new.path);
    let not_go = Guard(Command::new("sleep").arg("600").spawn().expect("sleep"));
    let mut server = start_serve(agent_command(&[]));
    let port = server.port;
    for pid in [first.0.id(), second.0.id()] {
        wait_for(
            port,
            Duration::from_secs(30),
            "series of a process started before",
            |t| has_series_of(t, pid),
        );
    }
    let third = start_loop(&late.path);
    let noticed = wait_for(
        port,
        Duration::from_secs(30),
        "series of a process started after",
        |t| has_series_of(t, third.0.id()),
    );
    eprintln!("a process started after the agent had series {noticed:?} later");

    let doc = targets(port);
    for (guard, f) in [(&first, &old), (&second, &new), (&third, &late)] {
        let t = target_of(&doc, guard.0.id()).unwrap_or_else(|| panic!("{} not in /targets: {doc}", guard.0.id()));
        assert_eq!(t["state"], "tracing", "{t}");
        assert!(
            t["go_version"]
                .as_str()
                .is_some_and(|v| v.starts_with(&format!("go{}.", f.go_minor))),
            "{t}"
        );
        assert_eq!(t["exe"], f.path.to_str().expect("utf-8"), "{t}");
        // Each process's own profile, which go tool pprof reads, with the fixture's callsites.
        let top = pprof_top(port, &format!("/debug/pprof/allocs?pid={}", guard.0.id()));
        assert!(top.contains("main.runSites"), "{top}");
    }
    // Nothing of the non-Go process.
    assert!(target_of(&doc, not_go.0.id()).is_none(), "{doc}");
    let text = metrics(port);
    assert!(!text.contains(&format!("pid=\"{}\"", not_go.0.id())), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("gotrace_agent_skipped_processes_total{reason=\"not_go\"}")),
        "{text}"
    );
    // Every series of a target says which process it is.
    for line in text.lines().filter(|l| l.starts_with("gotrace_alloc_bytes_total{")) {
        for label in ["pid=\"", "exe=\"", "container=\"", "pod=\""] {
            assert!(line.contains(label), "{label} missing: {line}");
        }
    }
    // The node-wide profile has all three, each sample labelled with its process.
    let pids = merged_profile_pids(port);
    for guard in [&first, &second, &third] {
        assert!(pids.contains(&guard.0.id().to_string()), "{pids:?}");
    }
    assert_eq!(http(port, "GET", "/debug/pprof/allocs?pid=999999").0, 404);
    assert_eq!(http(port, "GET", "/debug/pprof/allocs?container=abc").0, 404);

    // An exited process: its last data stays, marked.
    let gone = first.0.id();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = targets(port);
        if target_of(&doc, gone).is_some_and(|t| t["state"] == "exited") {
            break;
        }
        assert!(Instant::now() < deadline, "pid {gone} not marked exited: {doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metrics(port).contains(&format!("pid=\"{gone}\"")));

    stop_with_sigterm(&mut server, &[&second, &third]);
}

/// The pids the samples of the node-wide profile are labelled with.
fn merged_profile_pids(port: u16) -> std::collections::BTreeSet<String> {
    let (status, _, body) = http(port, "GET", "/debug/pprof/allocs");
    assert_eq!(status, 200);
    let merged = Pprof::decode(&body);
    merged
        .0
        .sample
        .iter()
        .flat_map(|s| &s.label)
        .filter(|l| merged.string(l.key) == "pid")
        .map(|l| merged.string(l.str).to_owned())
        .collect()
}

/// SIGTERM: gotrace detaches and exits 0 promptly; the processes run on.
fn stop_with_sigterm(server: &mut common::serving::Server, survivors: &[&Guard]) {
    let asked = Instant::now();
    signal(server.child.0.id(), libc::SIGTERM);
    let status = common::serving::exit_within(&mut server.child.0, Duration::from_secs(15), "SIGTERM");
    assert!(status.success(), "{status}");
    eprintln!("stopped {:?} after SIGTERM", asked.elapsed());
    for guard in survivors {
        assert!(Path::new(&format!("/proc/{}", guard.0.id())).exists());
    }
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    mounts
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup2 mount (the agent reads /proc/PID/cgroup's unified line)")
}

/// Removes a cgroup and its parents up to the mount, once its processes are gone.
struct CgroupGuard(Vec<PathBuf>);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A process in its own PID and mount namespaces, in a cgroup shaped as containerd's under
/// the kubelet's systemd driver, with a pod's HOSTNAME and service-account namespace: its
/// series carry the container id and pod name, `/targets` has the pod uid and namespace, and
/// `?container=` serves its profile.
#[test]
fn agent_labels_a_container_process_with_its_container_and_pod() {
    let Some(_lock) = root_only("agent_labels_a_container_process_with_its_container_and_pod") else {
        return;
    };
    let container = format!("{:0>64x}", u128::from(std::process::id()) << 40 | 0x00c0_ffee);
    let uid = format!("0badcafe-0000-4000-8000-{:012x}", std::process::id());
    let mount = cgroup2_mount();
    let slices = [
        "kubepods.slice".to_owned(),
        "kubepods-burstable.slice".to_owned(),
        format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
        format!("cri-containerd-{container}.scope"),
    ];
    let mut dirs = Vec::new();
    let mut dir = mount.clone();
    for slice in &slices {
        dir = dir.join(slice);
        if !dir.exists() {
            std::fs::create_dir(&dir).expect("create the cgroup");
            dirs.push(dir.clone());
        }
    }
    let _cgroup = CgroupGuard(dirs);
    let f = fixture("1.23", "default");
    let root = scratch("pod-root");
    // As in Debian-based images, /var/run is an absolute link to /run, where the kubelet's
    // service-account mount then is: read through /proc/PID/root, the link must not be
    // followed into the agent's own root.
    let secrets = root.join("run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    std::fs::write(secrets.join("namespace"), "shop\n").expect("namespace file");
    std::fs::create_dir_all(root.join("var")).expect("var");
    let _ = std::fs::remove_file(root.join("var/run"));
    std::os::unix::fs::symlink("/run", root.join("var/run")).expect("var/run link");
    std::fs::copy(&f.path, root.join("server")).expect("copy the fixture");
    // The shell moves itself into the cgroup, then becomes unshare, whose child (the fixture,
    // pid 1 of its namespace) inherits both.
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --pid --mount --fork --kill-child chroot {} /server loop",
        dir.display(),
        root.display()
    );
    let _pod = Guard(
        Command::new("sh")
            .args(["-c", &script])
            .env("HOSTNAME", "checkout-7d9f8-x2x4q")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the pod"),
    );
    let server = start_serve(agent_command(&[]));
    let port = server.port;
    let labelled = |text: &str| {
        text.lines().any(|l| {
            l.starts_with("gotrace_alloc_bytes_total{")
                && l.contains(&format!("container=\"{container}\""))
                && l.contains("pod=\"checkout-7d9f8-x2x4q\"")
                && l.contains("exe=\"/server\"")
                && l.contains("function=\"main.runSites\"")
        })
    };
    wait_for(
        port,
        Duration::from_secs(30),
        "the container's labelled series",
        labelled,
    );
    let text = metrics(port);
    let info = text
        .lines()
        .find(|l| l.starts_with("gotrace_target_info{") && l.contains(&container))
        .expect("the container's target_info");
    assert!(info.contains(&format!("pod_uid=\"{uid}\"")), "{info}");
    assert!(info.contains("namespace=\"shop\""), "{info}");
    let doc = targets(port);
    let target = doc["targets"]
        .as_array()
        .and_then(|all| all.iter().find(|t| t["container"] == container.as_str()))
        .unwrap_or_else(|| panic!("no target in container {container}: {doc}"));
    assert_eq!(target["pod_uid"], uid.as_str());
    assert_eq!(target["namespace"], "shop");
    assert!(
        target["cgroup"].as_str().is_some_and(|c| c.ends_with(&slices[3])),
        "{target}"
    );
    // Its pid namespace is not the agent's.
    let pid = target["pid"].as_u64().expect("pid");
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).expect("pid ns");
    assert_ne!(ns(&pid.to_string()), ns("self"));
    // The container's profile, by its id and by the short id tools print.
    for id in [container.as_str(), &container[..12]] {
        let top = pprof_top(port, &format!("/debug/pprof/allocs?container={id}"));
        assert!(top.contains("main.runSites"), "{top}");
    }
}

/// What the agent cannot trace never stops it: a Go binary it refuses (its build info says a
/// release older than 1.18: one log line, an error counter), and a stream of Go processes that
/// exit as soon as they start. The filters skip what they name.
#[test]
fn agent_survives_what_it_cannot_trace() {
    let Some(_lock) = root_only("agent_survives_what_it_cannot_trace") else {
        return;
    };
    // A working Go program whose .go.buildinfo claims go1.17: the runtime never reads it,
    // gotrace refuses it.
    let f = fixture("1.27", "default");
    let mut bytes = std::fs::read(&f.path).expect("fixture");
    // The version in .go.buildinfo (after its magic), not runtime.buildVersion's copy.
    let magic = b"\xff Go buildinf:";
    let section = bytes.windows(magic.len()).position(|w| w == magic).expect("build info");
    let version = b"go1.27.";
    let at = section
        + bytes[section..]
            .windows(version.len())
            .position(|w| w == version)
            .expect("the version string");
    bytes[at..at + version.len()].copy_from_slice(b"go1.17.");
    let old = scratch("claims-go1.17");
    std::fs::write(&old, &bytes).expect("write");
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let refused = start_loop(&old);
    let excluded = fixture("1.22", "default");
    let copy = scratch("excluded-by-exe");
    std::fs::copy(&excluded.path, &copy).expect("copy");
    let skipped = start_loop(&copy);
    let traced = start_loop(&fixture("1.25", "default").path);
    let server = start_serve(agent_command(&["--exclude-exe", copy.to_str().expect("utf-8")]));
    let port = server.port;
    wait_for(port, Duration::from_secs(30), "the traceable process's series", |t| {
        has_series_of(t, traced.0.id())
    });
    wait_for(port, Duration::from_secs(30), "the refusal counted", |t| {
        t.contains("gotrace_agent_errors_total{reason=\"unsupported\"} 1")
    });
    // Go processes that are gone before, during or just after being found and attached: lives
    // of 0.1 to 1.5 s, against scans a second apart and attaches of a few hundred ms.
    let short = fixture("1.26", "default");
    for life in [100, 400, 700, 1000, 1300, 1500, 200, 600, 900, 1200] {
        let mut child = Command::new(&short.path)
            .arg("loop")
            .stdout(Stdio::null())
            .spawn()
            .expect("start");
        std::thread::sleep(Duration::from_millis(life));
        let _ = child.kill();
        let _ = child.wait();
    }
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "after short-lived processes: {:?}",
        metrics(port)
            .lines()
            .filter(|l| l.starts_with("gotrace_agent_errors_total{"))
            .collect::<Vec<_>>()
    );
    let text = metrics(port);
    assert!(has_series_of(&text, traced.0.id()), "{text}");
    for pid in [refused.0.id(), skipped.0.id()] {
        assert!(!text.contains(&format!("pid=\"{pid}\"")), "{text}");
    }
    assert!(
        text.contains("gotrace_agent_skipped_processes_total{reason=\"excluded_exe\"} 1"),
        "{text}"
    );
    let (status, _, body) = http(port, "GET", "/healthz");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// A real Prometheus scrapes the agent: each process's series arrive with its labels.
#[test]
fn prometheus_scrapes_the_agent() {
    let Some(_lock) = root_only("prometheus_scrapes_the_agent") else {
        return;
    };
    let a = start_loop(&fixture("1.22", "default").path);
    let b = start_loop(&fixture("1.26", "default").path);
    // Prometheus is a Go program too; the agent leaves it alone when told.
    let server = start_serve(agent_command(&["--exclude-name", "prometheus"]));
    for pid in [a.0.id(), b.0.id()] {
        wait_for(server.port, Duration::from_secs(30), "series", |t| {
            has_series_of(t, pid)
        });
    }
    let prometheus = Prometheus::scraping(server.port, &scratch("prometheus-agent"));
    let wanted = [a.0.id().to_string(), b.0.id().to_string()];
    prometheus.wait_for(
        "gotrace_alloc_bytes_total%7Bfunction%3D%22main.runSites%22%7D",
        |result| {
            let found: Vec<&str> = result
                .iter()
                .filter(|r| r["metric"]["exe"].as_str().is_some_and(|e| e.contains("/allocs-")))
                .filter_map(|r| r["metric"]["pid"].as_str())
                .collect();
            wanted.iter().all(|pid| found.contains(&pid.as_str()))
        },
    );
    // Prometheus itself was skipped by name.
    let text = metrics(server.port);
    assert!(
        text.contains("gotrace_agent_skipped_processes_total{reason=\"excluded_name\"}"),
        "{text}"
    );
}
