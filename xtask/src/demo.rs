//! `cargo xtask demo`: README's main job. Builds gotrace and the bundled demo Go program,
//! starts the demo, shows what gotrace knows about it (`gotrace inspect`), then attaches to it
//! for a few seconds and prints the allocation table (`gotrace attach`, as root: through sudo
//! when this is not already root).

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
    let mut reader = BufReader::new(stdout);
    reader
        .read_line(&mut first_line)
        .context("cannot read the demo's output")?;
    // Keep reading its status lines (to stderr), or it would die of a closed pipe.
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
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

    let pid_arg = pid.to_string();
    let attach = [
        "attach",
        pid_arg.as_str(),
        "--duration",
        "5s",
        "--interval",
        "5s",
        "--top",
        "15",
    ];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        Command::new(&gotrace)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(&gotrace);
        sudo
    };
    eprintln!(
        "\ndemo: {}gotrace {}",
        if root { "" } else { "sudo " },
        attach.join(" ")
    );
    let status = command
        .args(attach)
        .status()
        .context("cannot run gotrace attach (it needs root: run the demo as root or with sudo)")?;
    if !status.success() {
        bail!("gotrace attach {pid} failed ({status})");
    }
    Ok(())
}
