//! What observes the target in each measurement: the [`Tracer`]s, and attaching them (gotrace's
//! modes, its empty probe, the bpftrace one-liner) to a running target.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::Env;
use super::proc::Proc;

/// What observes the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Tracer {
    Untraced,
    /// gotrace's empty program at each counting function's first instruction.
    EmptyEntry,
    /// gotrace's empty program where exact mode's probe goes.
    EmptyPlacement,
    /// The naive bpftrace one-liner.
    Bpftrace,
    Exact,
    /// Exact mode with `--time-probes`: the kernel times each run of the probe, which says how
    /// much of exact mode's cost is the probe's own work (the rest is the trap).
    ExactTimed,
    GoSampler,
    Span,
    /// Span mode without its duty cycle (`--span-budget 0`): what each of its hits costs, in
    /// a change large enough to measure.
    SpanAttached,
}

impl Tracer {
    pub(super) const MODES: [Self; 3] = [Self::Exact, Self::GoSampler, Self::Span];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Untraced => "untraced",
            Self::EmptyEntry => "empty uprobe at the function's first instruction",
            Self::EmptyPlacement => "empty uprobe at gotrace's probe address (the floor)",
            Self::Bpftrace => "bpftrace one-liner",
            Self::Exact => "gotrace exact",
            Self::ExactTimed => "gotrace exact, timed by the kernel",
            Self::GoSampler => "gotrace go-sampler",
            Self::Span => "gotrace span",
            Self::SpanAttached => "gotrace span, always attached",
        }
    }

    pub(super) fn mode(self) -> Option<&'static str> {
        match self {
            Self::Exact | Self::ExactTimed => Some("exact"),
            Self::GoSampler => Some("go-sampler"),
            Self::Span | Self::SpanAttached => Some("span"),
            _ => None,
        }
    }
}

/// gotrace's modes are timed by the kernel in the realistic windows (`--time-probes`): two
/// clock reads per probe run, which the measured changes then include too.
pub(super) const TIME_PROBES: &[&str] = &["--time-probes"];

/// Where `attach` has a gotrace mode's tracer write its jsonl stream.
pub(super) fn stream_path(env: &Env, mode: &str, pid: u32) -> PathBuf {
    env.scratch.join(format!("{mode}-{pid}.jsonl"))
}

/// How long a tracer gets to exit after SIGINT (see [`Attached::stop`]).
pub(super) const STOP_GRACE: Duration = Duration::from_mins(2);

/// A tracer attached to a target, ready.
pub(super) struct Attached {
    pub(super) proc: Proc,
    tracer: Tracer,
}

impl Attached {
    pub(super) fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Detaches (SIGINT) and waits for the tracer to exit. Generously: bpftrace, on Go 1.27's
    /// ~70 size-specialised entry points, once took more than 30 s to print its map and detach
    /// on a loaded 2-core VM (a CI run failed so); nothing is measured while it does.
    ///
    /// bpftrace is the one tracer whose hang here is a warning, not an error: the window was
    /// measured before the SIGINT, and a baseline we did not write hanging on its way out says
    /// nothing about what it cost while attached. It happened once in a full bench of
    /// 2026-12-04 (Go 1.25, one probe, run 5 of 5: no exit within 2 minutes) and not in six
    /// tries by hand; gotrace's own modes must still exit, cleanly and in time.
    pub(super) fn stop(self) -> Result<()> {
        let name = self.proc.name.clone();
        match self.proc.stop(libc::SIGINT, STOP_GRACE) {
            Err(e) if self.tracer == Tracer::Bpftrace => {
                eprintln!("bench: warning: {e:#}; its window was measured before it was stopped");
                Ok(())
            }
            stopped => {
                let status = stopped?;
                ensure!(status.success(), "{name} exited with {status}");
                Ok(())
            }
        }
    }
}

/// Attaches `tracer` to process `pid` of `binary` and waits until its probes are live.
/// `extra` goes to `gotrace attach`.
pub(super) fn attach(
    env: &Env,
    tracer: Tracer,
    pid: u32,
    binary: &Path,
    functions: &[String],
    extra: &[&str],
) -> Result<Option<Attached>> {
    let pid_arg = pid.to_string();
    let timeout = Duration::from_mins(1);
    let proc = match tracer {
        Tracer::Untraced => return Ok(None),
        Tracer::EmptyEntry | Tracer::EmptyPlacement => {
            let at = if tracer == Tracer::EmptyEntry {
                "entry"
            } else {
                "placement"
            };
            let proc = Proc::start(
                "bench-probes empty-probe",
                Command::new(&env.bench_probes).args(["empty-probe", &pid_arg, "--at", at]),
                true,
            )?;
            proc.wait_for("gotrace: attached", true, timeout)?;
            proc
        }
        Tracer::Bpftrace => {
            let bpftrace = env
                .bpftrace
                .as_ref()
                .context("bpftrace is not installed (scripts/setup.sh installs it)")?;
            let probes: Vec<String> = functions
                .iter()
                .map(|f| format!("uprobe:{}:{f}", binary.display()))
                .collect();
            // bpftrace runs BEGIN once every probe is attached.
            let program = format!(
                "BEGIN {{ printf(\"live\\n\"); }} {} {{ @[ustack, reg(\"ax\")] = count(); }}",
                probes.join(", ")
            );
            let proc = Proc::start("bpftrace", Command::new(bpftrace).arg("-e").arg(program), true)?;
            proc.wait_for("live", false, timeout)?;
            proc
        }
        Tracer::Exact | Tracer::ExactTimed | Tracer::GoSampler | Tracer::Span | Tracer::SpanAttached => {
            let mode = tracer.mode().unwrap_or("exact");
            let always = match tracer {
                Tracer::SpanAttached => &["--span-budget", "0"][..],
                Tracer::ExactTimed => TIME_PROBES,
                _ => &[],
            };
            let proc = Proc::start(
                "gotrace attach",
                Command::new(&env.gotrace)
                    .args(["attach", &pid_arg, "--mode", mode, "-f", "json", "-o"])
                    .arg(env.scratch.join(format!("{mode}-{pid}.json")))
                    .arg("-o")
                    .arg(stream_path(env, mode, pid))
                    .args(always)
                    .args(extra),
                true,
            )?;
            proc.wait_for("gotrace: attached", true, timeout)?;
            proc
        }
    };
    Ok(Some(Attached { proc, tracer }))
}
