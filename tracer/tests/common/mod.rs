//! Helpers shared by the integration tests that run the `gotrace` binary (each test file
//! includes this module with `mod common;` and uses what it needs).
#![allow(dead_code, reason = "each test file uses a different part")]

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pprof_proto::Message as _;

pub mod serving;

/// The `gotrace` binary of this build.
pub fn gotrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gotrace"))
}

/// A path in this test process's own scratch directory (created on first use).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gotrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Sends `signal` to a process the test started.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill on a process this test started.
    unsafe { libc::kill(libc::pid_t::try_from(pid).expect("pid"), signal) };
}

/// Starts `gotrace attach PID EXTRA…` and waits until its probes are live (it says
/// "attached"); kills it and fails the test when that takes over 30 s.
pub fn attach(pid: u32, extra: &[&str]) -> Child {
    let mut child = gotrace()
        .arg("attach")
        .arg(pid.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gotrace attach");
    let lines = testkit::lines_of(child.stderr.take().expect("stderr"));
    loop {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gotrace did not attach within 30 s");
        };
        if line.contains("attached") {
            return child;
        }
    }
}

/// A gzipped pprof file (Go's own heap profiles, gotrace's), decoded.
pub struct Pprof(pub pprof_proto::Profile);

impl Pprof {
    /// Reads and decodes the file.
    pub fn read(path: &Path) -> Self {
        Self::decode(&std::fs::read(path).expect("pprof file"))
    }

    /// Decodes a gzipped profile.
    pub fn decode(gzipped: &[u8]) -> Self {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gzipped)
            .read_to_end(&mut bytes)
            .expect("gunzip");
        Self(pprof_proto::Profile::decode(bytes.as_slice()).expect("pprof"))
    }

    /// The string at index `i` of the string table.
    pub fn string(&self, i: i64) -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.0.string_table.get(i))
            .map_or("", String::as_str)
    }

    /// Where the sample type `name` (`alloc_objects`, `inuse_space`, …) is in each sample's values.
    pub fn sample_index(&self, name: &str) -> usize {
        self.0
            .sample_type
            .iter()
            .position(|t| self.string(t.r#type) == name)
            .unwrap_or_else(|| panic!("no sample type {name}"))
    }

    /// Each location's lines, innermost (inlined) first: function name and line.
    pub fn location_lines(&self) -> HashMap<u64, Vec<(&str, i64)>> {
        let functions: HashMap<u64, &str> = self.0.function.iter().map(|f| (f.id, self.string(f.name))).collect();
        self.0
            .location
            .iter()
            .map(|l| {
                (
                    l.id,
                    l.line
                        .iter()
                        .map(|line| (functions[&line.function_id], line.line))
                        .collect(),
                )
            })
            .collect()
    }
}
