//! Which process `serve` traces: the one it was pointed at, and after that process ends, the
//! next one running the same program.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::Selector;
use crate::process::{ProcessId, exe_identity};

/// What the collector follows once it has seen its first target.
#[derive(Debug, Clone)]
pub(super) enum Follow {
    Pid(u32),
    /// A program: processes whose executable is this path (as gotrace sees it, stat'd afresh
    /// on each look, so a binary replaced by a deploy still matches), or this very file (a
    /// path inside a container's root).
    Exe {
        path: PathBuf,
        file: Option<(u64, u64)>,
    },
    Name(String),
}

/// `readlink /proc/PID/exe`, without the " (deleted)" the kernel appends once the file was
/// replaced.
pub(super) fn exe_path(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let text = link.to_str()?;
    Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text)))
}

impl std::fmt::Display for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pid(pid) => write!(f, "pid {pid}"),
            Self::Exe { path, .. } => write!(f, "executable {}", path.display()),
            Self::Name(name) => write!(f, "name {name}"),
        }
    }
}

impl Follow {
    fn matches(&self, pid: u32, fresh_file: Option<(u64, u64)>) -> bool {
        match self {
            Self::Pid(wanted) => pid == *wanted,
            Self::Exe { path, file } => {
                let identity = exe_identity(pid);
                (identity.is_some() && (identity == *file || identity == fresh_file))
                    || exe_path(pid).as_deref() == Some(path.as_path())
            }
            Self::Name(name) => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end_matches('\n') == comm_of(name)),
        }
    }
}

/// Processes that could not be traced, and when each may be tried again.
pub(super) type Failed = HashMap<ProcessId, (Instant, Duration)>;

/// The oldest live process that matches, other than gotrace itself and those that failed
/// recently.
pub(super) fn find_target(follow: &Follow, failed: &Failed) -> Option<ProcessId> {
    let own = std::process::id();
    let candidates: Vec<u32> = match follow {
        Follow::Pid(pid) => vec![*pid],
        _ => std::fs::read_dir("/proc")
            .ok()?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&pid| pid != own)
            .collect(),
    };
    let fresh_file = match follow {
        Follow::Exe { path, .. } => std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
        _ => None,
    };
    let now = Instant::now();
    candidates
        .into_iter()
        .filter(|&pid| follow.matches(pid, fresh_file))
        .filter_map(ProcessId::of)
        .filter(|id| failed.get(id).is_none_or(|(retry_at, _)| now >= *retry_at))
        .min_by_key(|id| (id.start_time, id.pid))
}

/// The kernel keeps the first 15 bytes of a process's name (`TASK_COMM_LEN` is 16 with the
/// terminating zero).
pub(super) fn comm_of(name: &str) -> &str {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

impl Follow {
    /// What `serve --pid`, `--exe` or `--name` asks to follow.
    pub(super) fn from_selector(selector: &Selector) -> Self {
        match selector {
            Selector::Pid(pid) => Self::Pid(*pid),
            Selector::Exe(path) => Self::Exe {
                path: std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
                file: std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino())),
            },
            Selector::Name(name) => Self::Name(name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_cut_like_the_kernel_cuts_it() {
        assert_eq!(comm_of("my-go-service-with-a-long-name"), "my-go-service-w");
        assert_eq!(comm_of("short"), "short");
    }

    #[test]
    fn own_process_has_an_identity() {
        let me = ProcessId::of(std::process::id()).unwrap();
        assert!(me.alive());
        assert_eq!(exe_identity(std::process::id()), Some(me.exe));
        assert_eq!(exe_path(std::process::id()), std::env::current_exe().ok());
    }
}
