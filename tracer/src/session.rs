//! A tracing session: attach to a process (or start one), collect until told to stop, report.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use gobin::procmaps::{AddressMap, process_exe};
use gobin::{Frame, GoBinary};

use crate::cli::{OutputFormat, TraceConfig};
use crate::probes::{Probes, StackCache};
use crate::process::{self, Child, ExitWatch};
use crate::profile::{self, Profile, RuntimeFrames, Symbols};
use crate::report::{Exporter, JsonExporter, Report, TableExporter, TargetInfo, human_bytes, thousands};

/// What to trace.
#[derive(Debug)]
pub enum Target {
    /// A running process.
    Attach(u32),
    /// A program to start, traced from its first instruction.
    Run {
        /// The command as given.
        command: OsString,
        /// Its arguments.
        args: Vec<OsString>,
    },
}

/// Runs a whole session and returns the exit code: 0, or a started program's own.
pub fn run(target: Target, config: &TraceConfig) -> anyhow::Result<ExitCode> {
    crate::privileges::check_tracing_privileges()?;
    // For `run`, the program is started stopped at its first instruction; for `attach`, it is
    // already running. From here on both are a pid.
    let (pid, stopped) = match target {
        Target::Attach(pid) => (pid, None),
        Target::Run { command, args } => {
            let program = process::resolve_command(&command)?;
            // Refuse a non-Go program before starting it.
            let data = std::fs::read(&program).with_context(|| format!("cannot read {}", program.display()))?;
            GoBinary::parse(&data).with_context(|| format!("{} cannot be traced", program.display()))?;
            let stopped = process::spawn_stopped(&program, &command, &args)?;
            (stopped.pid(), Some(stopped))
        }
    };
    // The probes go on the file the process really executes (for `run`: read after the exec,
    // so a binary replaced in between cannot get probes placed for the old one).
    let exe = process_exe(pid).with_context(|| format!("cannot find the executable of process {pid}"))?;
    let data = std::fs::read(&exe.path).with_context(|| format!("cannot read {}", exe.path.display()))?;
    let binary = GoBinary::parse(&data)
        .with_context(|| format!("process {pid} ({}) cannot be traced", exe.path_in_process.display()))?;
    let addresses = AddressMap::for_process(pid, &exe, binary.load_segments())
        .with_context(|| format!("cannot read the memory map of process {pid}"))?;
    let probes = Probes::attach(&binary, &exe.path, pid, &addresses)?;
    let child = stopped.map(process::StoppedChild::resume).transpose()?;
    let session = Session {
        binary: &binary,
        addresses: &addresses,
        probes: &probes,
        runtime: runtime_frames(&binary),
        target: TargetInfo {
            pid,
            exe: exe.path_in_process.display().to_string(),
            go_version: binary.build_info().go_version.clone(),
            arch: binary.arch().name().to_owned(),
        },
        config,
    };
    session.announce();
    let (report, exit_code) = session.collect(child)?;
    finish(&report, config)?;
    Ok(exit_code.map_or(ExitCode::SUCCESS, |code| {
        ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
    }))
}

/// Where this binary's runtime sources are, from the file of `runtime.mallocgc`.
fn runtime_frames(binary: &GoBinary<'_>) -> RuntimeFrames {
    binary
        .functions()
        .by_name("runtime.mallocgc")
        .and_then(|f| binary.symbolize(f.start).pop())
        .map(|frame| RuntimeFrames::from_runtime_file(&frame.file))
        .unwrap_or_default()
}

/// How long a started program gets to exit after gotrace passes it SIGINT or SIGTERM.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(10);

struct Session<'a> {
    binary: &'a GoBinary<'a>,
    addresses: &'a AddressMap,
    probes: &'a Probes,
    runtime: RuntimeFrames,
    target: TargetInfo,
    config: &'a TraceConfig,
}

/// Why collection stopped.
enum Stop {
    /// Ctrl-C, SIGTERM, or the end of `--duration`.
    Asked,
    /// The traced process ended.
    TargetExited,
}

impl Session<'_> {
    fn announce(&self) {
        eprintln!(
            "gotrace: attached {} probes to pid {} ({}, {}) in {} ms; {}",
            self.probes.attached,
            self.target.pid,
            self.target.exe,
            self.target.go_version,
            self.probes.attach_time.as_millis(),
            match self.config.duration {
                Some(d) => format!("tracing for {:.1} s (Ctrl-C stops early)", d.as_secs_f64()),
                None => "tracing until Ctrl-C or until the target exits".to_owned(),
            }
        );
    }

    /// Collects until Ctrl-C, SIGTERM, the end of `--duration` or the target's exit, then
    /// builds the final report. With a started program, Ctrl-C and SIGTERM are passed on to it
    /// and collection goes on until it has exited (or [`CHILD_EXIT_GRACE`] has passed), so
    /// its last allocations and its exit status are in the report. `--duration` ends the trace
    /// only; a started program keeps running.
    fn collect(&self, child: Option<Child>) -> anyhow::Result<(Report, Option<i32>)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let started = Instant::now();
        let mut symbols = ProcessSymbols::new(self.binary, self.addresses);
        let mut stacks = StackCache::default();
        let stop = runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let exit = ExitWatch::new(self.target.pid);
            // Made once: a signal must not be lost between two iterations of the loop.
            let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
            let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
            let deadline = tokio::time::sleep(self.config.duration.unwrap_or(Duration::MAX / 4));
            tokio::pin!(deadline);
            let mut ticker = tokio::time::interval(self.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            let signal_number = loop {
                tokio::select! {
                    biased;
                    () = exit.exited() => return Ok::<_, anyhow::Error>(Stop::TargetExited),
                    _ = interrupt.recv() => break libc::SIGINT,
                    _ = terminate.recv() => break libc::SIGTERM,
                    () = &mut deadline => return Ok(Stop::Asked),
                    _ = ticker.tick() => self.refresh(started, &mut symbols, &mut stacks)?,
                }
            };
            let Some(child) = child else {
                return Ok(Stop::Asked);
            };
            child.signal(signal_number);
            eprintln!(
                "gotrace: passed the signal on to pid {}; waiting for it to exit",
                self.target.pid
            );
            match tokio::time::timeout(CHILD_EXIT_GRACE, exit.exited()).await {
                Ok(()) => Ok(Stop::TargetExited),
                Err(_) => Ok(Stop::Asked),
            }
        })?;
        let exit_code = child.and_then(Child::try_exit_code);
        let profile = self.profile(&mut symbols, &mut stacks)?;
        let mut report = self.report(&profile, started);
        if matches!(stop, Stop::TargetExited) {
            let why = match exit_code {
                Some(code) => format!("target exited with status {code}"),
                None => "target exited".to_owned(),
            };
            eprintln!("gotrace: the {why}; reporting what was collected until then");
            report.ended = Some(why);
        }
        Ok((report, exit_code))
    }

    fn profile(&self, symbols: &mut ProcessSymbols<'_>, stacks: &mut StackCache) -> anyhow::Result<Profile> {
        let snapshot = self.probes.snapshot()?;
        Ok(profile::build(
            snapshot.stats,
            &snapshot.counts,
            |id| stacks.get(self.probes, id).map(<[u64]>::to_vec),
            symbols,
            &self.runtime,
        ))
    }

    fn report(&self, profile: &Profile, started: Instant) -> Report {
        Report::new(
            self.target.clone(),
            profile,
            self.probes.attached,
            started.elapsed().as_secs_f64(),
            self.config.top,
        )
    }

    /// Every `--interval`: redraw the table on a terminal, or print a status line to stderr
    /// when stdout is taken (by `-o`, JSON, a pipe or a started program's own output).
    fn refresh(
        &self,
        started: Instant,
        symbols: &mut ProcessSymbols<'_>,
        stacks: &mut StackCache,
    ) -> anyhow::Result<()> {
        let profile = self.profile(symbols, stacks)?;
        let report = self.report(&profile, started);
        if self.config.live_table {
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                // Home the cursor and clear the screen, like top.
                write!(out, "\x1b[H\x1b[2J")?;
            }
            TableExporter.export(&report, &mut out)?;
            writeln!(out)?;
            out.flush()?;
        } else {
            eprintln!(
                "gotrace: {:.0} s: {} allocations, {}, {} dropped",
                report.duration_secs,
                thousands(report.totals.allocations),
                human_bytes(report.totals.bytes),
                thousands(report.totals.dropped)
            );
        }
        Ok(())
    }
}

/// Writes the final report where the configuration says.
fn finish(report: &Report, config: &TraceConfig) -> anyhow::Result<()> {
    let exporter: &dyn Exporter = match config.format {
        OutputFormat::Table => &TableExporter,
        OutputFormat::Json => &JsonExporter,
    };
    if let Some(path) = &config.output {
        let mut file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        exporter
            .export(report, &mut file)
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("gotrace: wrote {}", path.display());
    } else {
        let mut out = std::io::stdout().lock();
        exporter.export(report, &mut out).context("cannot write the report")?;
    }
    Ok(())
}

/// Symbols of the traced process: the binary's, through the process's address map, cached.
struct ProcessSymbols<'a> {
    binary: &'a GoBinary<'a>,
    addresses: &'a AddressMap,
    frames: HashMap<(u64, bool), Arc<[Frame]>>,
    types: HashMap<u64, Option<Arc<str>>>,
}

impl<'a> ProcessSymbols<'a> {
    fn new(binary: &'a GoBinary<'a>, addresses: &'a AddressMap) -> Self {
        Self {
            binary,
            addresses,
            frames: HashMap::new(),
            types: HashMap::new(),
        }
    }
}

impl Symbols for ProcessSymbols<'_> {
    fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
        let (binary, addresses) = (self.binary, self.addresses);
        self.frames
            .entry((pc, return_address))
            .or_insert_with(|| {
                let lookup = if return_address { pc.saturating_sub(1) } else { pc };
                match addresses.to_static(lookup) {
                    Some(static_pc) => binary.symbolize(static_pc).into(),
                    // Outside the binary (a cgo library, the vDSO): keep the address visible.
                    None => vec![Frame {
                        function: format!("{pc:#x}"),
                        file: "?".to_owned(),
                        line: 0,
                        inlined: false,
                    }]
                    .into(),
                }
            })
            .clone()
    }

    fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
        let (binary, addresses) = (self.binary, self.addresses);
        self.types
            .entry(address)
            .or_insert_with(|| {
                let static_address = addresses.to_static(address)?;
                binary.type_name(static_address).map(|(name, _)| name.into())
            })
            .clone()
    }
}

/// Fails unless `path` can be created, before any tracing starts.
pub fn check_output(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a directory", path.display(), dir.display());
    }
    Ok(path.to_path_buf())
}
