//! Processes gotrace traces: starting one paused at its first instruction (`gotrace run`), and
//! noticing when one ends.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Finds a command the way `execvp` does: a name with a slash is a path, anything else is
/// looked up in `PATH`.
pub fn resolve_command(command: &OsStr) -> anyhow::Result<PathBuf> {
    let as_path = Path::new(command);
    if command.as_bytes().contains(&b'/') {
        if !as_path.is_file() {
            bail!("{}: no such file", as_path.display());
        }
        return Ok(as_path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|candidate| is_executable(candidate))
        .with_context(|| format!("{}: command not found in PATH", as_path.display()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A child process started by [`spawn_stopped`]. It is killed if dropped before
/// [`StoppedChild::resume`], so that a failed attach never leaves a paused orphan behind.
#[derive(Debug)]
pub struct StoppedChild {
    pid: u32,
    resumed: bool,
}

impl StoppedChild {
    /// The child's process id (it keeps it across `exec`).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the child run from its first instruction.
    pub fn resume(mut self) -> anyhow::Result<Child> {
        // SAFETY: PTRACE_DETACH on our own stopped tracee; the null arguments mean "no signal".
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_DETACH,
                self.pid_t(),
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot resume the started program");
        }
        self.resumed = true;
        Ok(Child { pid: self.pid })
    }

    fn pid_t(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.pid).unwrap_or(libc::pid_t::MAX)
    }
}

impl Drop for StoppedChild {
    fn drop(&mut self) {
        if !self.resumed {
            // SAFETY: kill and waitpid on our own child.
            unsafe {
                libc::kill(self.pid_t(), libc::SIGKILL);
                libc::waitpid(self.pid_t(), std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A running child of gotrace.
#[derive(Debug, Clone, Copy)]
pub struct Child {
    pid: u32,
}

impl Child {
    /// Sends a signal to the child.
    pub fn signal(self, signal: libc::c_int) {
        // SAFETY: kill on our own child.
        unsafe { libc::kill(libc::pid_t::try_from(self.pid).unwrap_or(libc::pid_t::MAX), signal) };
    }

    /// The exit status if the child has ended: its exit code, or 128 + the signal that killed
    /// it, as a shell reports it.
    #[must_use]
    pub fn try_exit_code(self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let rc = unsafe {
            libc::waitpid(
                libc::pid_t::try_from(self.pid).unwrap_or(libc::pid_t::MAX),
                &raw mut status,
                libc::WNOHANG,
            )
        };
        if rc <= 0 {
            return None;
        }
        if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Some(128 + libc::WTERMSIG(status))
        } else {
            None
        }
    }
}

/// Which step of starting the program failed, as the child reports it.
const STEP_PTRACE: i32 = 1;
const STEP_EXEC: i32 = 2;

/// Starts `program` with `args`, stopped before its first instruction: the child asks to be
/// traced (`PTRACE_TRACEME`) and the kernel stops it with `SIGTRAP` right after `execve`. Its
/// binary is mapped by then, so probes can be attached before it allocates anything.
pub fn spawn_stopped(program: &Path, argv0: &OsStr, args: &[OsString]) -> anyhow::Result<StoppedChild> {
    let c = |s: &OsStr| CString::new(s.as_bytes()).with_context(|| format!("{} contains a NUL byte", s.display()));
    let path = c(program.as_os_str())?;
    let mut arguments: Vec<CString> = vec![c(argv0)?];
    for a in args {
        arguments.push(c(a)?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = arguments.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());

    // The child reports a failed exec through this pipe; a successful exec closes it
    // (O_CLOEXEC), so the parent reads end-of-file.
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    // SAFETY: fork in a process that has started no other threads yet (gotrace forks before it
    // builds its async runtime); the child only calls async-signal-safe functions (ptrace,
    // execv, write, _exit) before it execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot fork");
    }
    if pid == 0 {
        // SAFETY: see above; nothing here allocates or takes locks. Each failure reports its
        // errno, tagged with the step that failed, through the pipe and exits.
        unsafe {
            let fail = |step: i32| -> ! {
                let report = [step, *libc::__errno_location()];
                libc::write(write_end.as_raw_fd(), report.as_ptr().cast(), size_of_val(&report));
                libc::_exit(127);
            };
            if libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            ) != 0
            {
                fail(STEP_PTRACE);
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            fail(STEP_EXEC);
        }
    }
    drop(write_end);
    let child = StoppedChild {
        pid: u32::try_from(pid).context("fork returned a negative pid")?,
        resumed: false,
    };
    let mut report = [0i32; 2];
    // SAFETY: reading into an 8-byte buffer we own.
    let n = unsafe { libc::read(read_end.as_raw_fd(), report.as_mut_ptr().cast(), size_of_val(&report)) };
    if usize::try_from(n).ok() == Some(size_of_val(&report)) {
        let err = std::io::Error::from_raw_os_error(report[1]);
        return Err(err).with_context(|| match report[0] {
            STEP_PTRACE => "cannot start the program traced (ptrace: is kernel.yama.ptrace_scope 3, or is \
                            gotrace itself being traced?)"
                .to_owned(),
            _ => format!("cannot execute {}", program.display()),
        });
    }
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid status pointer.
    if unsafe { libc::waitpid(pid, &raw mut status, 0) } != pid {
        return Err(std::io::Error::last_os_error()).context("cannot wait for the started program");
    }
    if !(libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP) {
        bail!("{} did not stop after exec (status {status:#x})", program.display());
    }
    // Should gotrace die before it lets the program go (a signal during the attach), the
    // kernel kills the program instead of leaving it running untraced.
    // SAFETY: PTRACE_SETOPTIONS on our stopped tracee; the options travel in the data argument.
    unsafe {
        libc::ptrace(
            libc::PTRACE_SETOPTIONS,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            libc::PTRACE_O_EXITKILL as usize as *mut libc::c_void,
        );
    }
    Ok(child)
}

/// Resolves when a process has ended. It uses a pidfd, which becomes readable when the process
/// exits, so no polling is involved.
#[derive(Debug)]
pub struct ExitWatch {
    pidfd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    pid: u32,
}

impl ExitWatch {
    /// Watches `pid`. Must be called inside a tokio runtime.
    #[must_use]
    pub fn new(pid: u32) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::pid_t::try_from(pid).unwrap_or(0), 0) };
        let pidfd = i32::try_from(fd)
            .ok()
            .filter(|&fd| fd >= 0)
            // SAFETY: a descriptor pidfd_open just returned, owned from here on.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            // SAFETY: the OwnedFd is valid and open, and AsyncFd owns it until it is dropped.
            .and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok());
        Self { pidfd, pid }
    }

    /// Waits until the process has exited.
    pub async fn exited(&self) {
        match &self.pidfd {
            Some(fd) => {
                // A readable pidfd means the process has exited; the guard is not needed.
                let _ = fd.readable().await;
            }
            // pidfd_open failed: the process is gone already (ESRCH), or the kernel is older
            // than 5.3. Either way, poll.
            None => {
                while alive(self.pid) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The fields of `/proc/PID/stat` after the parenthesised name (which may contain spaces and
/// parentheses): the state (field 3) first, the start time (field 22) 20th.
fn stat_after_name(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.get(stat.rfind(')')? + 1..)?.to_owned())
}

/// Whether a `/proc/PID/stat` state is that of a process that has exited (a zombie, or dead).
fn has_exited(state: &str) -> bool {
    state == "Z" || state == "X"
}

/// Whether a process exists and has not exited (a zombie has exited).
#[must_use]
pub fn alive(pid: u32) -> bool {
    stat_after_name(pid)
        .and_then(|fields| fields.split_whitespace().next().map(has_exited))
        .is_some_and(|exited| !exited)
}

/// A process's CPU time so far, all threads, in clock ticks (`/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// In user mode (field 14): how far a program got, leaving out its threads' time in the
    /// kernel (probe traps included).
    pub user: u64,
    /// User and system (fields 14 and 15): what the program costs its host, traps included.
    pub total: u64,
}

/// The clock ticks [`CpuTicks`] counts in: `USER_HZ`, 100 on every Linux architecture gotrace
/// runs on (the kernel scales `/proc` times to it whatever its own tick rate).
pub const CPU_TICKS_PER_SEC: u64 = 100;

/// A process's CPU time so far ([`CpuTicks`]); `None` once it is gone.
#[must_use]
pub fn cpu_ticks(pid: u32) -> Option<CpuTicks> {
    let fields = stat_after_name(pid)?;
    let mut times = fields.split_whitespace().skip(11).map(str::parse::<u64>);
    let user = times.next()?.ok()?;
    let system = times.next()?.ok()?;
    Some(CpuTicks {
        user,
        total: user.saturating_add(system),
    })
}

/// The executable a process runs, as a file identity (device, inode).
#[must_use]
pub fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// One run of one program: a pid, when the process started (a pid can be reused; the pair
/// cannot) and the executable it runs (an `execve` keeps the pid and the start time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// The pid in gotrace's PID namespace.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`, in clock ticks since boot.
    pub start_time: u64,
    /// Device and inode of `/proc/PID/exe`.
    pub exe: (u64, u64),
}

impl ProcessId {
    /// The process with this pid now, unless it has exited (zombies included).
    #[must_use]
    pub fn of(pid: u32) -> Option<Self> {
        let stat = stat_after_name(pid)?;
        let mut fields = stat.split_whitespace();
        if has_exited(fields.next()?) {
            return None;
        }
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(Self {
            pid,
            start_time,
            exe: exe_identity(pid)?,
        })
    }

    /// Whether this same run of this program is still going.
    #[must_use]
    pub fn alive(self) -> bool {
        Self::of(self.pid) == Some(self)
    }
}
