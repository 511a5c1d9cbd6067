//! A tracing session: attach to a process (or start one), collect until told to stop, report.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gobin::GoBinary;

use crate::collector::{Collector, DRAIN_INTERVAL};
use crate::config::{LiveMode, OutputFormat, TraceConfig};
use crate::export::{
    Exporter, FoldedExporter, JsonExporter, MappingInfo, PprofExporter, SvgExporter, TableExporter, Trace,
    jsonl::JsonlStream,
};
use crate::live::{self, LiveView};
use crate::mode::Mode;
use crate::probes::{InuseTracking, ProbeOptions};
use crate::process::{self, Child, ExitWatch, ProcessId};
use crate::profile::{Grouping, Profile};
use crate::progress;
use crate::report::{Report, TargetInfo, human_bytes, thousands};
use crate::store::Store;
use crate::tracee::{Executable, ProcessSymbols, Tracee, unix_nanos};

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
    let executable = Executable::read(pid)?;
    progress!(
        "reading {} and finding its allocation entry points…",
        executable.exe().path_in_process.display()
    );
    let tracee = executable.parse()?;
    let prepared = tracee.attach(config.mode, config.set_mem_profile_rate, config.probe_options)?;
    let child = stopped.map(process::StoppedChild::resume).transpose()?;
    let session = Session {
        tracee: &tracee,
        collector: RefCell::new(Collector::new(
            prepared,
            Store::new(ATTACH_MAX_KEYS, config.probe_options.stack_depth),
            config.grouping,
            REPORT_SIZE_SIGFIGS,
        )),
        mapping: tracee.mapping(),
        baseline: RefCell::new(None),
        target: tracee.info(),
        config,
    };
    let exit_code = session.collect(child)?;
    Ok(exit_code.map_or(ExitCode::SUCCESS, |code| {
        ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX))
    }))
}

/// Traces process `pid` in exact mode, with the deepest stacks, for `duration` or until it
/// exits, with no output but progress: what `explain --pid` joins with the compiler's
/// decisions. Returns the report of every callsite.
pub fn trace_for(pid: u32, duration: Duration) -> anyhow::Result<Report> {
    crate::privileges::check_tracing_privileges()?;
    let process = ProcessId::of(pid).with_context(|| format!("process {pid} is not running"))?;
    let executable = Executable::read(pid)?;
    let tracee = executable.parse()?;
    let options = ProbeOptions {
        stack_depth: tracer_common::MAX_STACK_DEPTH,
        span_duty_cycle: None,
        time_probes: false,
        inuse: false,
    };
    let prepared = tracee.attach(Mode::Exact, None, options)?;
    let mut collector = Collector::new(
        prepared,
        Store::new(ATTACH_MAX_KEYS, options.stack_depth),
        Grouping::First,
        REPORT_SIZE_SIGFIGS,
    );
    let started = Instant::now();
    while started.elapsed() < duration && process.alive() {
        std::thread::sleep(DRAIN_INTERVAL.min(duration.saturating_sub(started.elapsed())));
        collector.drain()?;
    }
    let profile = collector.profile(&mut tracee.symbols())?;
    Ok(Report::new(
        tracee.info(),
        &profile,
        collector.probes().attached,
        started.elapsed().as_secs_f64(),
        None,
    ))
}

/// Precision of the size quantiles in reports.
const REPORT_SIZE_SIGFIGS: u8 = 3;

/// How long a started program gets to exit after gotrace passes it SIGINT or SIGTERM.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(10);

/// How many distinct (stack, caller, type, size) keys `attach` and `run` keep before folding
/// new ones into "other callsites": far more than any real program has in a trace, yet a
/// bound (about 100 bytes each).
const ATTACH_MAX_KEYS: usize = 1_000_000;

struct Session<'a> {
    tracee: &'a Tracee<'a>,
    collector: RefCell<Collector>,
    target: TargetInfo,
    mapping: MappingInfo,
    config: &'a TraceConfig,
    /// `--growth`'s baseline once taken, and when (seconds since the trace started).
    baseline: RefCell<Option<(Profile, f64)>>,
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
        let collector = self.collector.borrow();
        let probes = collector.probes();
        progress!(
            "attached {} probes{} to pid {} ({}, {}) in {} ms, {} mode; {}",
            probes.attached,
            if probes.through_multi_links {
                " (uprobe_multi links)"
            } else {
                ""
            },
            self.target.pid,
            self.target.exe,
            self.target.go_version,
            probes.attach_time.as_millis(),
            probes.mode.as_str(),
            match self.config.duration {
                Some(d) => format!("tracing for {:.1} s (Ctrl-C stops early)", d.as_secs_f64()),
                None => "tracing until Ctrl-C or until the target exits".to_owned(),
            }
        );
    }

    /// Collects until Ctrl-C, SIGTERM, the end of `--duration`, `q` in the live view or the
    /// target's exit, then writes the final output. With a started program, Ctrl-C and SIGTERM
    /// are passed on to it and collection goes on until it has exited (or
    /// [`CHILD_EXIT_GRACE`] has passed), so its last allocations and its exit status are in the
    /// report. `--duration` ends the trace only; a started program keeps running. Returns the
    /// started program's exit status, if it ended.
    fn collect(&self, child: Option<Child>) -> anyhow::Result<Option<i32>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let started = Instant::now();
        let started_unix_nanos = unix_nanos();
        let mut symbols = self.tracee.symbols();
        let mut stream = self.open_stream()?;
        let stop = runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let exit = ExitWatch::new(self.target.pid);
            // Made once: a signal must not be lost between two iterations of the loop.
            let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
            let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
            // Only now: a Ctrl-C or SIGTERM sent as soon as "attached" is read must find its
            // handler. (Announced before, a SIGINT sent at once was lost now and then, and the
            // trace ran on until killed: `cargo xtask bench`'s attach time, twice in a day.)
            self.announce();
            let deadline = tokio::time::sleep(self.config.duration.unwrap_or(Duration::MAX / 4));
            tokio::pin!(deadline);
            self.check_growth()?;
            let growth_baseline = tokio::time::sleep(self.config.growth.unwrap_or(Duration::MAX / 4));
            tokio::pin!(growth_baseline);
            let mut baseline_pending = self.config.growth.is_some();
            // The live view draws at once; tables, lines and documents come once there is an
            // interval's worth to show.
            let first = match self.config.live {
                LiveMode::View => tokio::time::Instant::now(),
                _ => tokio::time::Instant::now() + self.config.interval,
            };
            let mut ticker = tokio::time::interval_at(first, self.config.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut drain_ticker = tokio::time::interval(DRAIN_INTERVAL.min(self.config.interval));
            drain_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut view = match self.config.live {
                LiveMode::View => Some(LiveView::start().context("cannot start the live view")?),
                _ => None,
            };
            let signal_number = loop {
                tokio::select! {
                    biased;
                    () = exit.exited() => return Ok::<_, anyhow::Error>(Stop::TargetExited),
                    _ = interrupt.recv() => break libc::SIGINT,
                    _ = terminate.recv() => break libc::SIGTERM,
                    () = &mut deadline => return Ok(Stop::Asked),
                    () = &mut growth_baseline, if baseline_pending => {
                        baseline_pending = false;
                        self.take_baseline(&mut symbols, started)?;
                    }
                    Some(key) = next_key(view.as_mut()) => {
                        if let Some(v) = view.as_mut()
                            && v.handle(key)? == live::Action::Quit
                        {
                            return Ok(Stop::Asked);
                        }
                    }
                    _ = ticker.tick() => {
                        let profile = self.profile(&mut symbols)?;
                        self.show(&profile, started.elapsed().as_secs_f64(), view.as_mut(), stream.as_mut())?;
                    }
                    _ = drain_ticker.tick(), if self.collector.borrow().drains_between_reports() => self.collector.borrow_mut().drain_if_filling()?,
                }
            };
            drop(view);
            let Some(child) = child else {
                return Ok(Stop::Asked);
            };
            child.signal(signal_number);
            progress!(
                "passed the signal on to pid {}; waiting for it to exit",
                self.target.pid
            );
            match tokio::time::timeout(CHILD_EXIT_GRACE, exit.exited()).await {
                Ok(()) => Ok(Stop::TargetExited),
                Err(_) => Ok(Stop::Asked),
            }
        })?;
        let exit_code = child.and_then(Child::try_exit_code);
        let ended = matches!(stop, Stop::TargetExited).then(|| match exit_code {
            Some(code) => format!("target exited with status {code}"),
            None => "target exited".to_owned(),
        });
        if let Some(why) = &ended {
            progress!("the {why}; reporting what was collected until then");
        }
        let profile = self.profile(&mut symbols)?;
        let elapsed = started.elapsed().as_secs_f64();
        if let Some((mut s, mut sink)) = stream {
            // The last document covers the time since the last interval.
            let mut doc = self.stream_document(&mut s, &profile, elapsed);
            doc.ended.clone_from(&ended);
            JsonlStream::write(&doc, sink.writer())?;
            sink.done();
        }
        let mut report = self.report(&profile, elapsed, self.config.top);
        report.ended = ended;
        self.finish(&Trace {
            report: &report,
            profile: &profile,
            mapping: &self.mapping,
            started_unix_nanos,
        })?;
        Ok(exit_code)
    }

    /// The jsonl stream and where it goes, when there is one.
    fn open_stream(&self) -> anyhow::Result<Option<(JsonlStream, Sink)>> {
        if self.config.live != LiveMode::Stream {
            return Ok(None);
        }
        let path = self
            .config
            .outputs
            .iter()
            .find(|(_, f)| *f == OutputFormat::Jsonl)
            .and_then(|(p, _)| p.as_deref());
        Ok(Some((JsonlStream::default(), Sink::open(path)?)))
    }

    /// What happens every `--interval`: the live view, the next jsonl document, or
    /// [`Self::refresh`].
    fn show(
        &self,
        profile: &Profile,
        elapsed: f64,
        view: Option<&mut LiveView>,
        stream: Option<&mut (JsonlStream, Sink)>,
    ) -> anyhow::Result<()> {
        match (view, stream) {
            (Some(v), _) => v.update(self.report(profile, elapsed, None))?,
            (None, Some((s, sink))) => {
                let doc = self.stream_document(s, profile, elapsed);
                JsonlStream::write(&doc, sink.writer())?;
            }
            (None, None) => self.refresh(&self.report(profile, elapsed, self.config.top))?,
        }
        Ok(())
    }

    /// `--growth` needs in-use heap, which the probes may not track.
    fn check_growth(&self) -> anyhow::Result<()> {
        if self.config.growth.is_some()
            && let InuseTracking::Off(why) = &self.collector.borrow().probes().inuse
        {
            anyhow::bail!("--growth needs in-use heap: {why}");
        }
        Ok(())
    }

    /// `--growth`'s baseline: what each callsite holds at the end of the first window.
    fn take_baseline(&self, symbols: &mut ProcessSymbols<'_>, started: Instant) -> anyhow::Result<()> {
        let profile = self.profile(symbols)?;
        progress!(
            "in-use baseline taken ({} held); measuring its growth for another {:.1} s",
            human_bytes(profile.inuse.bytes),
            self.config.growth.unwrap_or_default().as_secs_f64()
        );
        *self.baseline.borrow_mut() = Some((profile, started.elapsed().as_secs_f64()));
        Ok(())
    }

    fn profile(&self, symbols: &mut ProcessSymbols<'_>) -> anyhow::Result<Profile> {
        self.collector.borrow_mut().profile(symbols)
    }

    /// The jsonl stream's next document: the interval since the previous one.
    fn stream_document(&self, stream: &mut JsonlStream, profile: &Profile, elapsed: f64) -> Report {
        let collector = self.collector.borrow();
        let probes = collector.probes();
        let mut doc = stream.next(self.target.clone(), profile, probes.attached, elapsed, self.config.top);
        doc.probes.run_time = probes.run_time();
        doc
    }

    fn report(&self, profile: &Profile, elapsed: f64, top: Option<usize>) -> Report {
        let collector = self.collector.borrow();
        let probes = collector.probes();
        let baseline = self.baseline.borrow();
        let mut report = Report::new(
            self.target.clone(),
            profile,
            probes.attached,
            elapsed,
            if baseline.is_some() { None } else { top },
        );
        if let Some((baseline, at)) = baseline.as_ref() {
            report.rank_by_growth(baseline, *at, top);
        }
        report.probes.run_time = probes.run_time();
        report
    }

    /// Every `--interval` without the live view or a stream: a plain table on stdout when it
    /// is a pipe or file of its own, else a progress line on stderr.
    fn refresh(&self, report: &Report) -> anyhow::Result<()> {
        if self.config.live == LiveMode::Tables {
            let mut out = std::io::stdout().lock();
            TableExporter::write(report, &mut out)?;
            writeln!(out)?;
            out.flush()?;
        } else {
            progress!(
                "{:.0} s: {} allocations, {}, {} dropped",
                report.duration_secs,
                thousands(report.totals.allocations),
                human_bytes(report.totals.bytes),
                thousands(report.totals.dropped)
            );
        }
        Ok(())
    }

    /// Writes the final outputs where the configuration says (the jsonl stream is written
    /// already). After the live view, whose table vanished with it, the final table goes to
    /// stdout too.
    fn finish(&self, trace: &Trace<'_>) -> anyhow::Result<()> {
        let mut outputs: Vec<(Option<&Path>, OutputFormat)> = self
            .config
            .outputs
            .iter()
            .map(|(p, f)| (p.as_deref(), *f))
            .filter(|(_, f)| *f != OutputFormat::Jsonl)
            .collect();
        if self.config.live == LiveMode::View && !outputs.iter().any(|(p, _)| p.is_none()) {
            outputs.push((None, OutputFormat::Table));
        }
        for (path, format) in outputs {
            let exporter: &dyn Exporter = match format {
                OutputFormat::Table | OutputFormat::Jsonl => &TableExporter,
                OutputFormat::Json => &JsonExporter,
                OutputFormat::Pprof => &PprofExporter,
                OutputFormat::Folded => &FoldedExporter,
                OutputFormat::Svg => &SvgExporter,
            };
            let mut sink = Sink::open(path)?;
            exporter.export(trace, sink.writer()).with_context(|| {
                format!(
                    "cannot write {}",
                    path.map_or("the report".into(), |p| p.display().to_string())
                )
            })?;
            sink.done();
            if let (OutputFormat::Pprof, Some(path), Some((baseline, at))) =
                (format, path, self.baseline.borrow().as_ref())
            {
                self.write_baseline(trace, baseline, *at, path)?;
            }
        }
        Ok(())
    }

    /// `--growth`'s baseline as a pprof file next to `path` (`PATH.base`), for `go tool pprof
    /// -base`.
    fn write_baseline(&self, trace: &Trace<'_>, baseline: &Profile, at: f64, path: &Path) -> anyhow::Result<()> {
        let mut base_path = path.as_os_str().to_owned();
        base_path.push(".base");
        let base_path = PathBuf::from(base_path);
        let report = self.report(baseline, at, Some(0));
        let mut sink = Sink::open(Some(&base_path))?;
        PprofExporter
            .export(
                &Trace {
                    report: &report,
                    profile: baseline,
                    ..*trace
                },
                sink.writer(),
            )
            .with_context(|| format!("cannot write {}", base_path.display()))?;
        sink.done();
        progress!(
            "wrote the in-use baseline to {} (go tool pprof -base {} {})",
            base_path.display(),
            base_path.display(),
            path.display()
        );
        Ok(())
    }
}

/// Where the report goes: a file (`-o`) or stdout.
enum Sink {
    Stdout(std::io::Stdout),
    File(PathBuf, std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        Ok(match path {
            Some(p) => Self::File(
                p.to_path_buf(),
                std::io::BufWriter::new(
                    std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
                ),
            ),
            None => Self::Stdout(std::io::stdout()),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Self::Stdout(out) => out,
            Self::File(_, file) => file,
        }
    }

    /// Flushes, and says where a file went.
    fn done(mut self) {
        let _ = self.writer().flush();
        if let Self::File(path, _) = &self {
            progress!("wrote {}", path.display());
        }
    }
}

/// The next key of the live view; never, without one.
async fn next_key(view: Option<&mut LiveView>) -> Option<ratatui::crossterm::event::KeyEvent> {
    match view {
        Some(v) => v.next_key().await,
        None => std::future::pending().await,
    }
}
