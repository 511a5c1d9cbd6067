//! What the running kernel offers gotrace, and what gotrace's probes need from it: the facts
//! behind `gotrace --version` and `gotrace doctor`.
//!
//! Everything here reads procfs or sysfs, or calls `bpf(2)` in a way that cannot change
//! anything (see [`bpf_syscall`]); nothing needs privileges. Loading the probes into the
//! verifier, the one check that does, is [`crate::probes::verify_all`].

use std::ffi::CStr;
use std::fmt;
use std::path::Path;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind, SymbolKind};

/// A kernel release as `uname -r` prints it, with the numbers gotrace compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRelease {
    /// The whole release string (`6.1.0-28-amd64`).
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl KernelRelease {
    /// Parses the leading `MAJOR.MINOR` of a release string.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let mut numbers = text.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
        let major = numbers.next()?.ok()?;
        let minor = numbers.next()?.ok()?;
        Some(Self {
            text: text.to_owned(),
            major,
            minor,
        })
    }

    /// Whether this release is `version` or later.
    #[must_use]
    pub fn at_least(&self, version: KernelVersion) -> bool {
        (self.major, self.minor) >= (version.0, version.1)
    }
}

/// A `MAJOR.MINOR` kernel version, for "since" and "needs".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion(pub u32, pub u32);

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The running kernel's release and machine (`uname(2)`).
#[must_use]
pub fn running_kernel() -> Option<(KernelRelease, String)> {
    // SAFETY: `utsname` is plain bytes; zeroed is a valid value and uname fills it.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname.
    if unsafe { libc::uname(&raw mut name) } != 0 {
        return None;
    }
    // SAFETY: the kernel NUL-terminates both fields within their arrays.
    let field = |f: &[libc::c_char]| unsafe { CStr::from_ptr(f.as_ptr()) }.to_string_lossy().into_owned();
    Some((KernelRelease::parse(&field(&name.release))?, field(&name.machine)))
}

/// One BPF helper function: its number in the kernel's UAPI (`__BPF_FUNC_MAPPER` in
/// `include/uapi/linux/bpf.h`), its name, and the release that added it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    pub id: u32,
    pub name: &'static str,
    pub since: KernelVersion,
}

/// The helpers a probe might call, with the release that added each. The releases are those
/// of the commits that added them to `include/uapi/linux/bpf.h`; the numbers are checked
/// against this machine's UAPI header by a test. A helper the probes call that is missing here
/// fails that test too.
const KNOWN_HELPERS: &[Helper] = &[
    helper(1, "map_lookup_elem", 3, 19),
    helper(2, "map_update_elem", 3, 19),
    helper(3, "map_delete_elem", 3, 19),
    helper(4, "probe_read", 4, 1),
    helper(5, "ktime_get_ns", 4, 1),
    helper(6, "trace_printk", 4, 1),
    helper(7, "get_prandom_u32", 4, 1),
    helper(8, "get_smp_processor_id", 4, 1),
    helper(14, "get_current_pid_tgid", 4, 2),
    helper(15, "get_current_uid_gid", 4, 2),
    helper(16, "get_current_comm", 4, 2),
    helper(25, "perf_event_output", 4, 4),
    helper(27, "get_stackid", 4, 6),
    helper(35, "get_current_task", 4, 8),
    helper(67, "get_stack", 4, 18),
    helper(112, "probe_read_user", 5, 5),
    helper(113, "probe_read_kernel", 5, 5),
    helper(114, "probe_read_user_str", 5, 5),
    helper(130, "ringbuf_output", 5, 8),
    helper(131, "ringbuf_reserve", 5, 8),
    helper(132, "ringbuf_submit", 5, 8),
    helper(133, "ringbuf_discard", 5, 8),
    helper(181, "loop", 5, 17),
];

const fn helper(id: u32, name: &'static str, major: u32, minor: u32) -> Helper {
    Helper {
        id,
        name,
        since: KernelVersion(major, minor),
    }
}

/// The uprobe PMU (`perf_event_open` with the type in this file) is how aya attaches uprobes
/// without tracefs; Linux 4.17 added it, with its kprobe sibling.
pub const UPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/uprobe/type";
const UPROBE_PMU_SINCE: KernelVersion = KernelVersion(4, 17);

/// What the embedded probes need from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The helpers the probes call, by number; unknown ones have no name or release.
    pub helpers: Vec<Result<Helper, u32>>,
    /// Number of BPF programs in the object.
    pub programs: usize,
}

impl Needs {
    /// The oldest kernel with everything: every helper and the uprobe PMU.
    #[must_use]
    pub fn kernel(&self) -> KernelVersion {
        self.helpers
            .iter()
            .filter_map(|h| h.as_ref().ok())
            .map(|h| h.since)
            .chain([UPROBE_PMU_SINCE])
            .max()
            .unwrap_or(UPROBE_PMU_SINCE)
    }

    /// The newest of the helpers, which sets [`Needs::kernel`] (for "needs 5.17 for `bpf_loop`").
    #[must_use]
    pub fn newest_helper(&self) -> Option<Helper> {
        self.helpers
            .iter()
            .filter_map(|h| h.as_ref().ok().copied())
            .max_by_key(|h| h.since)
    }
}

/// Errors reading an eBPF object.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("the eBPF object is not an ELF file")]
    NotElf(#[source] object::Error),
    #[error("cannot read section {section} of the eBPF object")]
    Section {
        section: String,
        #[source]
        source: object::Error,
    },
}

/// The helpers called by the programs of an eBPF object, found in its code: every `call`
/// instruction (`BPF_JMP | BPF_CALL`, opcode 0x85) whose source register is 0 calls helper
/// `imm` (1 is a call to another BPF function, 2 a kernel function), per the kernel's
/// `Documentation/bpf/standardization/instruction-set.rst`.
pub fn needs_of(object_bytes: &[u8]) -> Result<Needs, ObjectError> {
    const BPF_CALL: u8 = 0x85;
    let file = object::File::parse(object_bytes).map_err(ObjectError::NotElf)?;
    let mut ids = std::collections::BTreeSet::new();
    let mut code_sections = Vec::new();
    for section in file.sections() {
        if section.kind() != SectionKind::Text || section.size() == 0 {
            continue;
        }
        let name = section.name().unwrap_or_default();
        // `.text` holds BPF-to-BPF functions; the programs are the global functions of the
        // other code sections (aya-ebpf puts every `#[uprobe]` into one section, `uprobe`).
        if name != ".text" {
            code_sections.push(section.index());
        }
        let code = section.data().map_err(|source| ObjectError::Section {
            section: name.to_owned(),
            source,
        })?;
        for instruction in code.chunks_exact(8) {
            let source_register = instruction[1] >> 4;
            if instruction[0] == BPF_CALL && source_register == 0 {
                ids.insert(u32::from_le_bytes([
                    instruction[4],
                    instruction[5],
                    instruction[6],
                    instruction[7],
                ]));
            }
        }
    }
    let programs = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_global())
        .filter(|s| s.section_index().is_some_and(|i| code_sections.contains(&i)))
        .count();
    let helpers = ids
        .into_iter()
        .map(|id| KNOWN_HELPERS.iter().find(|h| h.id == id).copied().ok_or(id))
        .collect();
    Ok(Needs { helpers, programs })
}

/// The file offset of an executable's entry point (`e_entry`, in the `PT_LOAD` segment that
/// holds it): a valid instruction to attach a test uprobe to.
#[must_use]
pub fn entry_file_offset(executable: &[u8]) -> Option<u64> {
    use object::ObjectSegment as _;
    let file = object::File::parse(executable).ok()?;
    let entry = file.entry();
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (entry >= start && entry - start < size).then(|| offset + (entry - start))
    })
}

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Tracing works, but something is limited (a mode, another user's processes).
    Warn,
    /// Tracing cannot work until this is fixed.
    Fail,
    /// For the record; changes nothing for gotrace.
    Info,
}

impl Status {
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Info => "info",
        }
    }
}

/// One line of `--version` or `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
        }
    }
}

/// The kernel release against what the probes need (a warning when older: see below).
#[must_use]
pub fn check_kernel(needs: &Needs) -> Check {
    let needed = needs.kernel();
    let why = needs
        .newest_helper()
        .filter(|h| h.since == needed)
        .map_or_else(|| "the uprobe PMU".to_owned(), |h| format!("bpf_{}", h.name));
    match running_kernel() {
        Some((release, machine)) if release.at_least(needed) => Check::new(
            "kernel",
            Status::Ok,
            format!(
                "Linux {} ({machine}); the probes need {needed} or later ({why})",
                release.text
            ),
        ),
        // Distribution kernels backport BPF features (Red Hat's do), so an old
        // number only warns; the verifier, which `doctor` asks, decides.
        Some((release, machine)) => Check::new(
            "kernel",
            Status::Warn,
            format!(
                "Linux {} ({machine}) predates {needed} ({why}): tracing works only if the \
                 distribution backported it; gotrace doctor's verifier line decides",
                release.text
            ),
        ),
        None => Check::new("kernel", Status::Fail, "uname(2) failed"),
    }
}

/// Whether the kernel has the `bpf(2)` system call at all (`CONFIG_BPF_SYSCALL`).
///
/// It asks to create a map of type 0 (`BPF_MAP_TYPE_UNSPEC`), which no kernel accepts: a
/// kernel with the call answers `EINVAL` (or `EPERM` to an unprivileged caller), one without it
/// `ENOSYS`. Nothing is created either way.
#[must_use]
pub fn bpf_syscall() -> Check {
    const BPF_MAP_CREATE: libc::c_long = 0;
    // The first fields of `union bpf_attr` for BPF_MAP_CREATE, all zero; the kernel accepts a
    // shorter attr than its own and zero-fills the rest.
    let attr = [0u8; 48];
    // SAFETY: bpf(2) reads `attr.len()` bytes from a valid buffer and writes nothing for a
    // failed BPF_MAP_CREATE.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            libc::c_ulong::try_from(attr.len()).unwrap_or(48),
        )
    };
    let error = std::io::Error::last_os_error();
    if result >= 0 {
        // Cannot happen (type 0 has no map); close what was made, whatever it is.
        if let Ok(fd) = libc::c_int::try_from(result) {
            // SAFETY: the fd was just returned to this process.
            unsafe { libc::close(fd) };
        }
        return Check::new("bpf(2)", Status::Ok, "present");
    }
    match error.raw_os_error() {
        Some(libc::ENOSYS) => Check::new(
            "bpf(2)",
            Status::Fail,
            "ENOSYS: a kernel built without CONFIG_BPF_SYSCALL, or a seccomp filter (a container's) refusing bpf(2)",
        ),
        _ => Check::new("bpf(2)", Status::Ok, "present"),
    }
}

/// Whether the uprobe PMU exists (`CONFIG_UPROBE_EVENTS`).
#[must_use]
pub fn uprobe_pmu() -> Check {
    match std::fs::read_to_string(UPROBE_PMU_TYPE) {
        Ok(t) => Check::new("uprobe PMU", Status::Ok, format!("perf event type {}", t.trim())),
        Err(e) if Path::new("/sys/bus/event_source").exists() => Check::new(
            "uprobe PMU",
            Status::Fail,
            format!("{UPROBE_PMU_TYPE}: {e} (a kernel without CONFIG_UPROBE_EVENTS, or older than 4.17)"),
        ),
        Err(e) => Check::new(
            "uprobe PMU",
            Status::Fail,
            format!("{UPROBE_PMU_TYPE}: {e} (is sysfs mounted? in a container, mount /sys)"),
        ),
    }
}

/// The helper line: every helper the probes call, with the release that added it, against
/// the running kernel.
#[must_use]
pub fn check_helpers(needs: &Needs) -> Check {
    let running = running_kernel().map(|(release, _)| release);
    let mut missing = Vec::new();
    let listed: Vec<String> = needs
        .helpers
        .iter()
        .map(|h| match h {
            Ok(h) => {
                if running.as_ref().is_some_and(|r| !r.at_least(h.since)) {
                    missing.push(format!("bpf_{}", h.name));
                }
                format!("bpf_{} ({})", h.name, h.since)
            }
            Err(id) => format!("helper #{id}"),
        })
        .collect();
    if missing.is_empty() {
        Check::new("helpers", Status::Ok, listed.join(", "))
    } else {
        Check::new(
            "helpers",
            Status::Warn,
            format!(
                "this kernel's release predates {} (unless backported); the probes call {}",
                missing.join(", "),
                listed.join(", ")
            ),
        )
    }
}

/// The kernel checks both `--version` and `doctor` show, for the embedded probes.
#[must_use]
pub fn kernel_checks(needs: &Needs) -> Vec<Check> {
    vec![check_kernel(needs), bpf_syscall(), uprobe_pmu(), check_helpers(needs)]
}

/// Kernel lockdown (`/sys/kernel/security/lockdown`, "none [integrity] confidentiality").
///
/// gotrace is not affected by either level: lockdown takes away `bpf_probe_read_kernel` and
/// `bpf_probe_write_user` (`LOCKDOWN_BPF_READ_KERNEL`, `LOCKDOWN_BPF_WRITE_USER` in
/// `kernel/trace/bpf_trace.c`) and kprobes, while the probes only read user memory from
/// uprobes. Some distribution kernels before 5.4 had their own lockdown patches that refused
/// all of BPF; on those the probe load check fails and this line says why.
#[must_use]
pub fn lockdown() -> Check {
    match std::fs::read_to_string("/sys/kernel/security/lockdown") {
        Ok(text) => {
            let level = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
                .unwrap_or("unknown")
                .to_owned();
            let detail = if level == "none" {
                "none".to_owned()
            } else {
                format!("{level}: gotrace needs nothing it takes away (it reads user memory from uprobes)")
            };
            Check::new("lockdown", Status::Ok, detail)
        }
        Err(_) => Check::new(
            "lockdown",
            Status::Info,
            "unknown (no /sys/kernel/security/lockdown: securityfs not mounted or no lockdown LSM)",
        ),
    }
}

/// `kernel.perf_event_paranoid`, which users are told to lower for profilers.
///
/// It does not decide whether gotrace can attach: the uprobe PMU checks capabilities
/// (`perf_uprobe_event_init` in `kernel/events/core.c`), not this sysctl. Measured on Linux
/// 6.18 here: with `CAP_BPF` and `CAP_PERFMON` but not `CAP_SYS_ADMIN`, attaching failed with
/// `EACCES` at every value from 2 down to -1. `doctor`'s "uprobe attach" line is the real test.
#[must_use]
pub fn perf_event_paranoid() -> Check {
    match std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid") {
        Ok(value) => Check::new(
            "perf_event_paranoid",
            Status::Info,
            format!(
                "{}: does not decide attaching (the uprobe PMU checks capabilities; see uprobe attach)",
                value.trim()
            ),
        ),
        Err(e) => Check::new("perf_event_paranoid", Status::Info, format!("unreadable: {e}")),
    }
}

/// Yama's `ptrace_scope`, which governs `process_vm_readv` on the target: span mode's
/// allocation counts, in-use heap's runtime records and `--set-mem-profile-rate` read or write
/// the target's memory that way (`PTRACE_MODE_ATTACH_REALCREDS`, `mm/process_vm_access.c`).
#[must_use]
pub fn ptrace_scope(has_sys_ptrace: bool) -> Check {
    let Ok(value) = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") else {
        return Check::new("ptrace_scope", Status::Info, "no Yama: ordinary ptrace rules");
    };
    match value.trim() {
        "3" => Check::new(
            "ptrace_scope",
            Status::Warn,
            "3: no process may read another's memory; span, in-use and --set-mem-profile-rate cannot work \
             (only a reboot lowers it)",
        ),
        "2" if !has_sys_ptrace => Check::new(
            "ptrace_scope",
            Status::Warn,
            "2: reading a target's memory needs CAP_SYS_PTRACE, which this process lacks",
        ),
        "1" if !has_sys_ptrace => Check::new(
            "ptrace_scope",
            Status::Warn,
            "1: without CAP_SYS_PTRACE only child processes' memory is readable (gotrace run works, attach is limited)",
        ),
        other => Check::new(
            "ptrace_scope",
            Status::Ok,
            format!("{other}: gotrace may read its targets' memory"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases() {
        let r = KernelRelease::parse("6.1.0-28-amd64").unwrap();
        assert_eq!((r.major, r.minor), (6, 1));
        assert!(r.at_least(KernelVersion(5, 17)));
        assert!(!r.at_least(KernelVersion(6, 2)));
        let r = KernelRelease::parse("5.15.167.4-microsoft-standard-WSL2").unwrap();
        assert_eq!((r.major, r.minor), (5, 15));
        assert!(KernelRelease::parse("garbage").is_none());
        assert!(KernelRelease::parse("6").is_none());
    }

    /// The embedded probes call only helpers this module knows, and the newest of them sets
    /// the kernel floor the docs state (`bpf_loop`, 5.17).
    #[test]
    fn the_probes_helpers_are_known_and_need_5_17() {
        let needs = needs_of(crate::ebpf::object()).unwrap();
        let unknown: Vec<_> = needs.helpers.iter().filter_map(|h| h.err()).collect();
        assert!(
            unknown.is_empty(),
            "add these helper numbers to KNOWN_HELPERS: {unknown:?}"
        );
        let names: Vec<_> = needs.helpers.iter().filter_map(|h| h.ok()).map(|h| h.name).collect();
        for expected in ["probe_read_user", "loop", "map_lookup_elem"] {
            assert!(names.contains(&expected), "no bpf_{expected} in {names:?}");
        }
        assert_eq!(needs.kernel(), KernelVersion(5, 17));
        // As many programs as aya finds in the object.
        let object = aya_obj::Object::parse(crate::ebpf::object()).unwrap();
        assert_eq!(needs.programs, object.programs.len());
    }

    /// The helper numbers agree with the kernel's own UAPI header, where one is installed
    /// (linux-libc-dev): the position in `__BPF_FUNC_MAPPER`, or the number newer headers
    /// spell out as `FN(name, id, ...)`.
    #[test]
    fn helper_numbers_match_the_uapi_header() {
        let Ok(header) = std::fs::read_to_string("/usr/include/linux/bpf.h") else {
            eprintln!("skipped: no /usr/include/linux/bpf.h");
            return;
        };
        // Since 6.2 the list is `___BPF_FUNC_MAPPER(FN, ctx...)` with explicit numbers, and
        // `__BPF_FUNC_MAPPER` a one-line wrapper around it.
        let mapper = header
            .split("#define ___BPF_FUNC_MAPPER(FN")
            .nth(1)
            .or_else(|| header.split("#define __BPF_FUNC_MAPPER(FN").nth(1))
            .expect("the header defines __BPF_FUNC_MAPPER");
        let mut numbers = std::collections::HashMap::new();
        for (position, entry) in mapper
            .lines()
            .skip(1)
            .take_while(|l| l.trim_end().ends_with('\\'))
            .filter_map(|l| l.trim().strip_prefix("FN("))
            .enumerate()
        {
            let mut parts = entry.split([',', ')']).map(str::trim);
            let name = parts.next().unwrap().to_owned();
            let id = parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(u32::try_from(position).unwrap());
            numbers.insert(name, id);
        }
        assert!(
            numbers.len() > 150,
            "read only {} helpers from the header",
            numbers.len()
        );
        for h in KNOWN_HELPERS {
            assert_eq!(numbers.get(h.name), Some(&h.id), "bpf_{}", h.name);
        }
    }

    #[test]
    fn rejects_what_is_not_elf() {
        assert!(matches!(needs_of(b"not elf"), Err(ObjectError::NotElf(_))));
    }
}
