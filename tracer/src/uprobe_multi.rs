//! Attaching programs through `uprobe_multi` BPF links (Linux 6.6+), which aya 0.14 cannot do:
//! it loads uprobe programs without the `expected_attach_type` such a link needs
//! (`BPF_TRACE_UPROBE_MULTI`) and has no call that creates one.
//!
//! Why span mode wants them: a perf-event uprobe being detached makes every thread of the
//! target that hits it meanwhile sleep until the breakpoint is gone (~10 ms on the bench's VMs).
//! Closing the perf event drops the process from the event's filter before `uprobe_apply`
//! removes the breakpoint under the probe's `register_rwsem`; a hit in between is told to remove
//! itself (`uprobe_perf_func`, `kernel/trace/trace_uprobe.c`), and `handler_chain`
//! (`kernel/events/uprobes.c`) then waits for that semaphore. A `uprobe_multi` link filters by
//! process in its own handler, which never asks for removal (`uprobe_multi_link_handler`,
//! `kernel/trace/bpf_trace.c`), so nothing waits; and one link attaches every offset in one
//! call and waits for one grace period to detach them all. Measured in
//! docs/sampled-overhead.md, *What a detach costs the target*.
//!
//! The programs are loaded a second time here, from the same object: parsed with `aya_obj`, their
//! map references pointed at the maps aya created (so both loads share them), with the object's
//! BTF and its function and line information (the verifier wants the function information for
//! `bpf_loop`'s callbacks).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use aya::Ebpf;
use aya::maps::Map;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
const BPF_TRACE_UPROBE_MULTI: u32 = 48;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`
/// (`include/uapi/linux/bpf.h`). The kernel wants the bytes it does not know to be zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoad {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    padding: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE`, with its `uprobe_multi` part.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    padding: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The `bpf()` system call with `attr`, a `union bpf_attr` prefix of its own size.
fn bpf<T>(command: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a `bpf_attr` prefix, valid for its whole size, that the kernel reads
    // and (for `BPF_OBJ_GET_INFO_BY_FD`) writes back within that size; the pointers in it point
    // to memory that outlives the call and is as large as the lengths beside them say.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, std::ptr::from_mut(attr), size_of::<T>()) };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// The `bpf()` call for a command that returns a new file descriptor.
fn bpf_fd<T>(command: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    let fd = RawFd::try_from(bpf(command, attr)?).map_err(std::io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor, new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Programs of gotrace's object loaded for `uprobe_multi` links, by name.
#[derive(Debug)]
pub struct MultiPrograms {
    programs: Vec<(&'static str, OwnedFd)>,
}

impl MultiPrograms {
    /// Loads the programs `names` of `object`, their maps pointed at `ebpf`'s (the same object,
    /// loaded by aya, its maps not yet taken out of it). Fails on a kernel without
    /// `uprobe_multi` (before Linux 6.6), where the caller falls back to perf events.
    pub fn load(object: &[u8], ebpf: &Ebpf, names: &[&'static str]) -> anyhow::Result<Self> {
        let mut parsed = aya_obj::Object::parse(object).context("cannot parse gotrace's eBPF object")?;
        // Every BTF kind the object may use is known to Linux 6.6, the first with `uprobe_multi`.
        let features = aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = parsed
            .fixup_and_sanitize_btf(&features)
            .context("cannot prepare the object's BTF")?
            .map(|btf| load_btf(&btf.to_bytes()))
            .transpose()?;
        let definitions = parsed.maps.clone();
        let mut created = Vec::new();
        for (name, map) in ebpf.maps() {
            let fd = map_fd(map).with_context(|| format!("map {name} is of a type gotrace does not relocate"))?;
            let definition = definitions
                .get(name)
                .with_context(|| format!("map {name} is not in the object"))?;
            created.push((name, fd, definition));
        }
        let text_sections: HashSet<usize> = parsed.functions.keys().map(|&(section, _)| section).collect();
        parsed
            .relocate_maps(created.into_iter(), &text_sections)
            .context("cannot point the programs at their maps")?;
        parsed
            .relocate_calls(&text_sections)
            .context("cannot link the programs' functions")?;
        let mut programs = Vec::with_capacity(names.len());
        for &name in names {
            let program = parsed
                .programs
                .get(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?;
            let function = parsed
                .functions
                .get(&program.function_key())
                .with_context(|| format!("the eBPF object has no code for program {name}"))?;
            let fd = load_program(name, function, &program.license, btf.as_ref())?;
            programs.push((name, fd));
        }
        Ok(Self { programs })
    }

    /// The loaded program `name`.
    #[must_use]
    pub fn program(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.programs.iter().find(|(n, _)| *n == name).map(|(_, fd)| fd.as_fd())
    }

    /// Runs and nanoseconds the kernel timed, summed over the programs (zero while the kernel's
    /// statistics are off).
    pub fn run_time(&self) -> anyhow::Result<(u64, u64)> {
        let mut total = (0, 0);
        for (name, fd) in &self.programs {
            let (runs, nanoseconds) =
                run_time(fd.as_fd()).with_context(|| format!("cannot read program {name}'s statistics"))?;
            total = (total.0 + runs, total.1 + nanoseconds);
        }
        Ok(total)
    }
}

/// The descriptor of a map aya created, for the relocations; `None` for a type gotrace's object
/// does not use.
fn map_fd(map: &Map) -> Option<RawFd> {
    let (Map::Array(data)
    | Map::PerCpuArray(data)
    | Map::HashMap(data)
    | Map::PerCpuHashMap(data)
    | Map::LruHashMap(data)
    | Map::PerCpuLruHashMap(data)
    | Map::RingBuf(data)
    | Map::PerfEventArray(data)
    | Map::StackTraceMap(data)
    | Map::ProgramArray(data)) = map
    else {
        return None;
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Loads one program for `uprobe_multi` links; on a refusal, loads it again with the verifier's
/// log to say why.
fn load_program(
    name: &str,
    function: &aya_obj::Function,
    license: &CString,
    btf: Option<&OwnedFd>,
) -> anyhow::Result<OwnedFd> {
    let instructions = &function.instructions;
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: u32::try_from(instructions.len()).context("too many instructions")?,
        insns: instructions.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        ..ProgLoad::default()
    };
    if let Some(btf) = btf {
        attr.prog_btf_fd = u32::try_from(btf.as_raw_fd()).context("a negative descriptor")?;
        attr.func_info_rec_size = u32::try_from(function.func_info_rec_size).context("func_info record size")?;
        attr.func_info = func_info.as_ptr() as u64;
        attr.func_info_cnt = u32::try_from(function.func_info.len()).context("func_info count")?;
        attr.line_info_rec_size = u32::try_from(function.line_info_rec_size).context("line_info record size")?;
        attr.line_info = line_info.as_ptr() as u64;
        attr.line_info_cnt = u32::try_from(function.line_info.len()).context("line_info count")?;
    }
    // The kernel's names are 15 bytes and a NUL.
    for (to, from) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from;
    }
    match bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) || error.raw_os_error() == Some(libc::EACCES) => {
            let mut log = vec![0_u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf_fd(BPF_PROG_LOAD, &mut attr);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            match again {
                Ok(fd) => Ok(fd),
                Err(_) => bail!(
                    "the kernel refused program {name} for uprobe_multi ({error}): {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                ),
            }
        }
        Err(error) => Err(error).with_context(|| format!("cannot load program {name} for uprobe_multi")),
    }
}

/// Loads an empty program (`r0 = 0; exit`) for `uprobe_multi` links: what the bench attaches
/// to measure the links themselves (`bench-probes cycle-empty --via multi`).
pub fn load_empty_program() -> anyhow::Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K into r0 with imm 0; BPF_JMP | BPF_EXIT.
    let instructions = [0xb7_u64, 0x95];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: 2,
        insns: instructions.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI,
        ..ProgLoad::default()
    };
    bpf_fd(BPF_PROG_LOAD, &mut attr).context("cannot load an empty program for uprobe_multi (Linux 6.6+)")
}

/// Loads the object's BTF into the kernel, for its programs' function and line information.
fn load_btf(bytes: &[u8]) -> anyhow::Result<OwnedFd> {
    let mut attr = BtfLoad {
        btf: bytes.as_ptr() as u64,
        btf_size: u32::try_from(bytes.len()).context("too large a BTF")?,
        ..BtfLoad::default()
    };
    bpf_fd(BPF_BTF_LOAD, &mut attr).context("cannot load the eBPF object's BTF")
}

/// Attaches `program` at each of `offsets` of `path`, in process `pid` only, as one link:
/// closing the descriptor detaches them all.
pub fn attach(program: BorrowedFd<'_>, path: &Path, offsets: &[u64], pid: u32) -> anyhow::Result<OwnedFd> {
    let path_c = CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    let mut attr = LinkCreate {
        prog_fd: u32::try_from(program.as_raw_fd()).context("a negative descriptor")?,
        attach_type: BPF_TRACE_UPROBE_MULTI,
        path: path_c.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cnt: u32::try_from(offsets.len()).context("too many offsets")?,
        pid,
        ..LinkCreate::default()
    };
    bpf_fd(BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("cannot create a uprobe_multi link on {}", path.display()))
}

/// A program's runs and run time, as the kernel timed them.
fn run_time(program: BorrowedFd<'_>) -> std::io::Result<(u64, u64)> {
    // SAFETY: `bpf_prog_info` is plain integers and arrays of them; all zeros is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = GetInfo {
        bpf_fd: u32::try_from(program.as_raw_fd()).map_err(std::io::Error::other)?,
        info_len: u32::try_from(size_of_val(&info)).map_err(std::io::Error::other)?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok((info.run_cnt, info.run_time_ns))
}
