//! Helpers shared by the integration tests that run the `gotrace` binary (each test file
//! includes this module with `mod common;` and uses what it needs).
#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::PathBuf;
use std::process::Command;

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
