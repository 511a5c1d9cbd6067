//! Processes the benchmark starts, watches and stops.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A started process with its stdout (and, when piped, stderr) read line by line on threads,
/// so it never blocks on a full pipe. Dropping it kills the process.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub stdout: Receiver<String>,
    pub stderr: Option<Receiver<String>>,
}

impl Proc {
    /// Starts `command` with stdout piped (and stderr piped when `stderr` is set, else
    /// discarded). stdin is a pipe that stays open until [`Proc::close_stdin`] or drop.
    pub fn start(name: &str, command: &mut Command, stderr: bool) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if stderr { Stdio::piped() } else { Stdio::null() })
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let stdout = lines_of(child.stdout.take().context("no stdout pipe")?);
        let stderr = child.stderr.take().map(lines_of);
        Ok(Self {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one line to the process's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().context("stdin is closed")?;
        writeln!(stdin, "{line}").with_context(|| format!("cannot write to {}", self.name))
    }

    /// The next stdout line, within `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Result<String> {
        next_line(&self.stdout, timeout).with_context(|| format!("{}: no output line", self.name))
    }

    /// Waits for a stdout line (or stderr line, `on_stderr`) starting with `prefix`.
    pub fn wait_for(&self, prefix: &str, on_stderr: bool, timeout: Duration) -> Result<String> {
        let lines = if on_stderr {
            self.stderr.as_ref().context("stderr is not piped")?
        } else {
            &self.stdout
        };
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => seen.push(line),
                Err(_) => bail!(
                    "{} did not print a line starting with {prefix:?} within {timeout:?}; it printed: {}",
                    self.name,
                    seen.join(" | ")
                ),
            }
        }
    }

    /// Stdout lines that arrived so far, without waiting.
    pub fn drain_stdout(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Sends `signal`, then waits up to `grace` for the exit (SIGKILL after that).
    pub fn stop(mut self, signal: libc::c_int, grace: Duration) -> Result<std::process::ExitStatus> {
        send_signal(self.pid(), signal);
        self.wait(grace)
    }

    /// Waits up to `grace` for the process to exit on its own, then kills it.
    pub fn wait(&mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.child.try_wait().context("cannot wait for a child")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().context("cannot wait for a child")?;
                bail!("{} did not exit within {grace:?}; killed ({status})", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn next_line(lines: &Receiver<String>, timeout: Duration) -> Result<String> {
    match lines.recv_timeout(timeout) {
        Ok(line) => Ok(line),
        Err(RecvTimeoutError::Timeout) => bail!("nothing within {timeout:?}"),
        Err(RecvTimeoutError::Disconnected) => bail!("the output ended"),
    }
}

/// Reads lines on a thread until the end, even when nobody listens any more.
fn lines_of(output: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            let _ = send.send(line);
        }
    });
    lines
}

pub fn send_signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, signal) };
    }
}

/// CPU time (user + system) the process used so far, in seconds: fields 14 and 15 of
/// `/proc/PID/stat`, in clock ticks.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid} is gone"))?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("bad /proc stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let ticks: f64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .sum();
    Ok(ticks_to_seconds(ticks))
}

/// `/proc`'s clock ticks (`USER_HZ`) in seconds.
fn ticks_to_seconds(ticks: f64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second, about 100")]
    let per_second = per_second.max(1) as f64;
    ticks / per_second
}

/// CPU time the process's threads used so far, in seconds, to the nanosecond: the sum of each
/// thread's run time in `/proc/PID/task/TID/schedstat` (the scheduler's own account). Two
/// processes sharing a CPU are told apart by it where `/proc/PID/stat`'s clock ticks, which
/// charge each 10 ms tick to whoever runs at that instant, came out 2% apart for two
/// identical untraced services. A thread that has exited is no longer counted (a Go program
/// keeps its threads).
pub fn cpu_seconds_exact(pid: u32) -> Result<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("process {pid} is gone"))?;
    let mut nanoseconds = 0_u64;
    for task in tasks {
        let path = task
            .context("cannot list a process's threads")?
            .path()
            .join("schedstat");
        // A thread that exits meanwhile simply stops counting.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ran: u64 = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {}: {text:?}", path.display()))?;
        nanoseconds += ran;
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds, far below 2^53 for a bench")]
    Ok(nanoseconds as f64 / 1e9)
}

/// Seconds the hypervisor has taken from `cpu` (all CPUs when `None`) so far, for other guests:
/// the steal column of `/proc/stat`.
pub fn steal_seconds(cpu: Option<usize>) -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let name = cpu.map_or_else(|| "cpu".to_owned(), |cpu| format!("cpu{cpu}"));
    let steal: f64 = stat
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(name.as_str())).then(|| fields.nth(7).and_then(|v| v.parse().ok()))?
        })
        .with_context(|| format!("no steal time for {name} in /proc/stat"))?;
    Ok(ticks_to_seconds(steal))
}

/// The process's peak resident set (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid} is gone"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    Ok(kib / 1024.0)
}

/// The CPUs split between a workload under test and everything that loads or traces it.
///
/// Sharing two CPUs, wrk, the HTTP service and gotrace take turns on both, and the service's
/// requests per CPU-second moved ±5% between two *untraced* windows of the same run: the
/// scheduler's placement, not the tracer. With the service alone on one CPU and wrk and gotrace
/// on the other, untraced windows side by side agreed within ~1% in runs by hand and 1–3% in
/// the bench (the host drifts over its minutes), which a 3% target needs. The CPU-bound
/// workload sharing both CPUs with gotrace drifted more still: 8.6% between neighbours (median)
/// in one full bench, against 2.7% for the pinned service in the same run.
pub struct CpuSplit {
    workload_cpu: usize,
    other_cpus: Vec<usize>,
}

impl CpuSplit {
    /// The last CPU this thread may run on for the service, the rest for everything else;
    /// `None` when it may run on only one.
    pub fn of_this_thread() -> Result<Option<Self>> {
        let allowed = affinity_of_this_thread()?;
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `allowed` is an initialised set and the index is below CPU_SETSIZE.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
            .collect();
        let Some((&workload_cpu, other_cpus)) = cpus.split_last() else {
            return Ok(None);
        };
        if other_cpus.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self {
            workload_cpu,
            other_cpus: other_cpus.to_vec(),
        }))
    }

    /// The CPU the workload runs on.
    pub fn workload_cpu(&self) -> usize {
        self.workload_cpu
    }

    /// For the report: which CPU runs what.
    pub fn describe(&self) -> String {
        let others: Vec<String> = self.other_cpus.iter().map(ToString::to_string).collect();
        format!(
            "the workload's two instances run on CPU {} (a Go program so pinned runs with \
             GOMAXPROCS 1), and wrk (for HTTP), gotrace and the bench on CPU {}",
            self.workload_cpu,
            others.join(", ")
        )
    }

    /// Makes `command`'s process run on the workload's CPU only, from its first instruction,
    /// so that every thread it starts (a Go program's Ms) inherits the mask.
    pub fn pin_workload(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt as _;
        // Built here: the closure must not allocate.
        let set = cpu_set(&[self.workload_cpu]);
        // SAFETY: the closure runs between fork and exec and only makes one system call,
        // which is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// Moves this thread, and so every process it starts from now on, to the other CPUs
    /// until the guard is dropped.
    pub fn pin_this_thread_to_others(&self) -> Result<PinnedThread> {
        let previous = affinity_of_this_thread()?;
        set_affinity_of_this_thread(&cpu_set(&self.other_cpus))?;
        Ok(PinnedThread { previous })
    }
}

/// Restores the thread's CPU mask when dropped.
pub struct PinnedThread {
    previous: libc::cpu_set_t,
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        if let Err(e) = set_affinity_of_this_thread(&self.previous) {
            eprintln!("bench: cannot restore the CPU mask: {e:#}");
        }
    }
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array, valid all zeros.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: every CPU number came from a set of CPU_SETSIZE bits.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

fn affinity_of_this_thread() -> Result<libc::cpu_set_t> {
    let mut set = cpu_set(&[]);
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity failed");
    }
    Ok(set)
}

fn set_affinity_of_this_thread(set: &libc::cpu_set_t) -> Result<()> {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_list(status: &str) -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .expect("Cpus_allowed_list in /proc status")
            .trim()
            .to_owned()
    }

    #[test]
    fn the_service_and_this_thread_run_on_disjoint_cpus() {
        let Some(split) = CpuSplit::of_this_thread().unwrap() else {
            eprintln!("one CPU: nothing to split");
            return;
        };
        let mut service = Command::new("cat");
        service.arg("/proc/self/status");
        split.pin_workload(&mut service);
        let out = service.output().unwrap();
        assert!(out.status.success());
        let service_cpus = allowed_list(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(service_cpus, split.workload_cpu.to_string());

        // On a thread of its own, so that the test harness's other threads keep their mask.
        let (others_seen, restored) = std::thread::spawn(move || {
            let before = allowed_list(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
            let pinned = split.pin_this_thread_to_others().unwrap();
            let child = Command::new("cat").arg("/proc/self/status").output().unwrap();
            let others = allowed_list(&String::from_utf8_lossy(&child.stdout));
            drop(pinned);
            let after = allowed_list(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
            (others, before == after)
        })
        .join()
        .unwrap();
        assert!(
            !others_seen.split([',', '-']).any(|cpu| cpu == service_cpus),
            "{others_seen}"
        );
        assert!(restored, "the thread's mask was not restored");
    }
}
