//! `cargo xtask demo`: README's main job. Builds gotrace and the bundled demo Go program,
//! starts the demo, and points gotrace at the running process.
//!
//! Today gotrace inspects the process (build facts, the probe points it would attach,
//! symbolization of a live address); once `gotrace attach` exists this is where it attaches.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::go::{self, Toolchain};

/// Kills the demo when the task ends, however it ends.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(repo: &Path) -> Result<()> {
    eprintln!("demo: building gotrace");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(repo)
        .args(["build", "--quiet", "--package", "tracer", "--bin", "gotrace"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building gotrace failed");
    }
    let gotrace = repo.join("target/debug/gotrace");

    let newest = go::MINORS.last().context("no Go versions are known")?;
    let toolchain = Toolchain::find(repo, newest)?;
    let demo_bin = repo.join("target/demo/demo");
    eprintln!("demo: building the demo Go program with {}", toolchain.version);
    let status = toolchain
        .command(repo)
        .current_dir(repo.join("demo"))
        .env("CGO_ENABLED", "0")
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&demo_bin)
        .arg(".")
        .status()
        .with_context(|| format!("cannot run {}", toolchain.go.display()))?;
    if !status.success() {
        bail!("building the demo failed");
    }

    eprintln!("demo: starting {}", demo_bin.display());
    let mut demo = Demo(
        Command::new(&demo_bin)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", demo_bin.display()))?,
    );
    let pid = demo.0.id();
    // Wait for its first status line: by then it is allocating in its main loop.
    let stdout = demo.0.stdout.take().context("the demo's stdout is not piped")?;
    let mut first_line = String::new();
    let started = Instant::now();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .context("cannot read the demo's output")?;
    if first_line.is_empty() {
        bail!("the demo exited before printing anything");
    }
    eprintln!(
        "demo: pid {pid} is running ({}s): {}",
        started.elapsed().as_secs(),
        first_line.trim_end()
    );
    std::thread::sleep(Duration::from_millis(200));

    eprintln!("demo: gotrace inspect {pid}");
    let status = Command::new(&gotrace)
        .arg("inspect")
        .arg(pid.to_string())
        .status()
        .with_context(|| format!("cannot run {}", gotrace.display()))?;
    if !status.success() {
        bail!("gotrace inspect {pid} failed ({status})");
    }
    Ok(())
}
