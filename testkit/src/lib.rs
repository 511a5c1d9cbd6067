//! Test support shared by the workspace's integration tests: the Go fixtures that
//! `cargo xtask fixtures` builds (read from `target/fixtures/manifest.json`), the fixtures' own
//! runtime view of their stacks and types (`allocs oracle`), and `go tool objdump` listings.
#![expect(clippy::missing_panics_doc, reason = "test support panics with a message by design")]
#![expect(
    clippy::must_use_candidate,
    reason = "test helpers; an unused result fails the test anyway"
)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Deserialize;

pub mod ground_truth;

/// One built fixture, as listed in `target/fixtures/manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    pub path: PathBuf,
    pub go_version: String,
    pub go_minor: String,
    pub goarch: String,
    pub variant: String,
    pub program: String,
    pub goroot: PathBuf,
    pub go: PathBuf,
    pub source_dir: PathBuf,
}

impl Fixture {
    pub fn name(&self) -> String {
        format!("{} {} {}-{}", self.go_version, self.goarch, self.program, self.variant)
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap_or_else(|e| panic!("reading {}: {e}", self.path.display()))
    }

    /// Whether this machine can run it.
    pub fn runnable(&self) -> bool {
        self.goarch == host_goarch()
    }

    pub fn has_symtab(&self) -> bool {
        self.variant != "stripped"
    }

    pub fn has_dwarf(&self) -> bool {
        !matches!(self.variant.as_str(), "stripped" | "nodwarf")
    }

    /// A `go` command of the fixture's toolchain that never downloads another one.
    pub fn go_command(&self) -> Command {
        let mut cmd = Command::new(&self.go);
        cmd.env("GOTOOLCHAIN", "local");
        let cache = repo_root().join(".cache");
        cmd.env("GOCACHE", cache.join("go-build"));
        cmd.env("GOPATH", cache.join("gopath"));
        cmd
    }
}

pub fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// All fixtures. Fails with instructions when they have not been built.
pub fn fixtures() -> Vec<Fixture> {
    let manifest = repo_root().join("target/fixtures/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\nbuild the Go fixtures first: scripts/setup.sh && cargo xtask fixtures",
            manifest.display()
        )
    });
    let all: Vec<Fixture> = serde_json::from_str(&text).expect("manifest.json is valid");
    assert!(!all.is_empty(), "the fixture manifest is empty");
    all
}

/// The `allocs` fixtures.
pub fn allocs_fixtures() -> Vec<Fixture> {
    fixtures().into_iter().filter(|f| f.program == "allocs").collect()
}

/// The same program, version and architecture in the `default` variant.
pub fn default_variant_of<'a>(all: &'a [Fixture], f: &Fixture) -> &'a Fixture {
    all.iter()
        .find(|d| {
            d.program == f.program && d.go_version == f.go_version && d.goarch == f.goarch && d.variant == "default"
        })
        .unwrap_or_else(|| panic!("no default variant for {}", f.name()))
}

/// What `allocs oracle` prints: Go's own view of type descriptors and stacks.
#[derive(Debug, Clone, Deserialize)]
pub struct Oracle {
    pub go_version: String,
    pub goarch: String,
    pub types: Vec<OracleType>,
    pub stacks: Vec<OracleStack>,
    /// `runtime.MemStats.TotalAlloc` just before the document was encoded.
    pub total_alloc: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OracleType {
    pub name: String,
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OracleStack {
    pub label: String,
    pub frames: Vec<OracleFrame>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OracleFrame {
    pub pc: String,
    pub function: String,
    pub file: String,
    pub line: u32,
}

pub fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Runs `allocs oracle` to completion.
pub fn run_oracle(f: &Fixture) -> Oracle {
    let out = Command::new(&f.path)
        .arg("oracle")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", f.path.display()));
    assert!(
        out.status.success(),
        "{} oracle failed: {}",
        f.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{} oracle output: {e}", f.name()))
}

/// A running `allocs oracle --wait`: the process stays alive until dropped.
#[derive(Debug)]
pub struct LiveOracle {
    pub child: Child,
    pub oracle: Oracle,
}

impl LiveOracle {
    pub fn start(f: &Fixture) -> Self {
        let mut child = Command::new(&f.path)
            .args(["oracle", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", f.path.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        // The document is printed whole before the program waits; read until it parses.
        let mut reader = BufReader::new(stdout);
        let mut text = String::new();
        let oracle = loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("reading oracle output");
            assert!(n > 0, "{} exited before printing its oracle", f.name());
            text.push_str(&line);
            if let Ok(o) = serde_json::from_str::<Oracle>(&text) {
                break o;
            }
        };
        Self { child, oracle }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LiveOracle {
    fn drop(&mut self) {
        // Closing stdin ends the program; kill it if it does not go.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instruction as `go tool objdump` prints it.
#[derive(Debug, Clone)]
pub struct ObjdumpInsn {
    pub file_line: String,
    pub address: u64,
    pub bytes: Vec<u8>,
    pub text: String,
}

/// Disassembles the named functions with the fixture's own `go tool objdump`.
pub fn objdump(go: &Fixture, binary: &Path, functions: &[&str]) -> HashMap<String, Vec<ObjdumpInsn>> {
    let pattern = format!(
        "^({})$",
        functions.iter().map(|f| regex_escape(f)).collect::<Vec<_>>().join("|")
    );
    let out = go
        .go_command()
        .args(["tool", "objdump", "-s", &pattern])
        .arg(binary)
        .output()
        .expect("running go tool objdump");
    assert!(
        out.status.success(),
        "objdump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_objdump(&String::from_utf8_lossy(&out.stdout))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

pub fn parse_objdump(text: &str) -> HashMap<String, Vec<ObjdumpInsn>> {
    let mut out: HashMap<String, Vec<ObjdumpInsn>> = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("TEXT ") {
            // "TEXT runtime.mallocgc(SB) /path/malloc.go"
            let name = rest.split("(SB)").next().unwrap_or(rest).to_owned();
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(name) = &current else { continue };
        // "  malloc.go:1067\t0x477ce0\t\t493b6610\t\tCMPQ SP, 0x10(R14)"
        let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
        if fields.len() < 4 {
            continue;
        }
        let Some(addr) = fields[1].trim().strip_prefix("0x") else {
            continue;
        };
        let Ok(address) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        let hex_bytes = fields[2].trim();
        let bytes = (0..hex_bytes.len() / 2)
            .map(|i| u8::from_str_radix(&hex_bytes[2 * i..2 * i + 2], 16).expect("hex byte"))
            .collect();
        out.get_mut(name).expect("current function").push(ObjdumpInsn {
            file_line: fields[0].trim().to_owned(),
            address,
            bytes,
            text: fields[3].trim().to_owned(),
        });
    }
    out
}

/// Whether the tests run as root (the tracing tests need it; without it they skip).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Root-only tests share kernel state (uprobes on the same fixture binaries, BPF maps), so a
/// test binary runs them one at a time under this lock.
static ROOT_TESTS: Mutex<()> = Mutex::new(());

/// Takes the lock of root-only tests, or returns `None` (and says why the test skips) when not
/// root.
pub fn root_only(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        eprintln!("skipping {test}: attaching uprobes needs root (CI runs this as root)");
        return None;
    }
    Some(ROOT_TESTS.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The `allocs` fixture of a Go minor version and variant, for this machine's architecture.
pub fn fixture(minor: &str, variant: &str) -> Fixture {
    allocs_fixtures()
        .into_iter()
        .find(|f| f.go_minor == minor && f.goarch == host_goarch() && f.variant == variant)
        .unwrap_or_else(|| panic!("no go{minor} {variant} fixture"))
}

/// No single command of the tests takes this long unless something hangs.
pub const TIMEOUT: Duration = Duration::from_mins(2);

/// Runs a command to completion like `Command::output`, but kills it and fails the test when
/// it takes longer than [`TIMEOUT`].
pub fn output(command: &mut Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child)
}

/// `Child::wait_with_output` under [`TIMEOUT`].
pub fn wait_output(child: Child) -> Output {
    wait_output_within(child, TIMEOUT)
}

/// `Child::wait_with_output`, killing the child and every process descended from it after
/// `timeout` and then failing. The descendants too: a program the child started (`gotrace run`'s
/// target, a shell's background job) keeps the child's stdout and stderr open, and
/// `wait_with_output` reads them to the end, so killing only the child would leave the test
/// hanging instead of failing.
pub fn wait_output_within(child: Child, timeout: Duration) -> Output {
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(timeout).is_err() {
            for process in process_tree(pid) {
                let _ = Command::new("kill").args(["-KILL", &process.to_string()]).status();
            }
            return true;
        }
        false
    });
    let out = child.wait_with_output().expect("wait");
    let _ = done.send(());
    assert!(!watchdog.join().expect("watchdog"), "killed after {timeout:?}: {out:?}");
    out
}

/// `pid` and the processes descended from it now, parents first, from each process's parent in
/// `/proc/PID/stat` (its 4th field, after the command name in parentheses, which may itself
/// hold spaces and parentheses: proc(5)).
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let process: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{process}/stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 1..];
            let parent = after_name.split_whitespace().nth(1)?.parse().ok()?;
            Some((process, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(process, _)| process),
        );
        next += 1;
    }
    tree
}

/// The lines of a child's output, read on a thread of their own (so the child never blocks on
/// a full pipe) and handed over as they come.
pub fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even when nobody listens any more, so the child never blocks.
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    lines
}

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A child whose background job holds its stdout open: the watchdog kills both, so the
    /// test fails in time instead of waiting for the job (this hung a test before).
    #[test]
    fn the_watchdog_kills_the_childs_descendants_too() {
        let child = Command::new("sh")
            .args(["-c", "sleep 300 & wait"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            super::wait_output_within(child, Duration::from_millis(500))
        }));
        let message = *outcome
            .expect_err("the watchdog fails the wait")
            .downcast::<String>()
            .expect("a formatted message");
        assert!(message.starts_with("killed after 500ms"), "{message}");
        assert!(started.elapsed() < Duration::from_mins(1), "{:?}", started.elapsed());
    }
}
