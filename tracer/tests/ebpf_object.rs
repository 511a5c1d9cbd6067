//! Loads gotrace's embedded eBPF object into the running kernel.
//!
//! The verifier only runs when a program is loaded, so this is the test that proves the probe
//! the build produced is acceptable to a real kernel. It then attaches the probe to a function
//! of this test binary and calls it the way Go's register ABI would, to check that the probe
//! fires and reads the size from the right register.
//!
//! Loading needs root (`CAP_BPF` and `CAP_PERFMON`). Without it the test prints why and passes;
//! CI runs as root, so there it always runs.

use std::{env, fmt::Write as _};

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{UProbe, uprobe::UProbeScope},
};
use tracer_common::{ALLOC_PROBE, COUNTERS_INDEX, COUNTERS_LEN, COUNTERS_MAP, ProbeCounters};

/// The same bytes the `gotrace` binary embeds (`src/ebpf.rs`); `build.rs` sets the variable for
/// every target of the package, tests included.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOTRACE_EBPF_OBJECT"));

/// The allocation size the fake Go call passes; any recognisable value.
const SIZE: u64 = 0x1234_5678;

/// Where the probe is attached: an empty function, only called through [`call_like_go`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gotrace_test_fake_mallocgc() {}

/// Calls [`gotrace_test_fake_mallocgc`] with `size` in the register where Go's internal ABI
/// passes the first integer argument (RAX on amd64, R0 on arm64), which is where the probe
/// looks. (On arm64 R0 is also the C ABI's first argument register, X0.)
fn call_like_go(size: u64) {
    // SAFETY: the callee takes no arguments and touches no memory, and clobber_abi("C") tells
    // the compiler every register a C call may change. Without `nostack`, Rust aligns the stack
    // for a call and keeps nothing in the red zone below it.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "call {f}",
            f = sym gotrace_test_fake_mallocgc,
            in("rax") size,
            // The C ABI's first argument register gets something else, so a probe that
            // wrongly read it (`ctx.arg(0)`) would count 0 bytes.
            in("rdi") 0_u64,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above; `bl` writes the link register, which clobber_abi("C") covers.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!(
            "bl {f}",
            f = sym gotrace_test_fake_mallocgc,
            in("x0") size,
            clobber_abi("C"),
        );
    }
}

#[test]
fn kernel_accepts_the_probe_and_it_counts_go_allocations() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping {}: loading eBPF programs needs root (CI runs this as root)",
            module_path!()
        );
        return;
    }
    raise_memlock_limit();

    let mut ebpf = Ebpf::load(OBJECT).unwrap_or_else(|err| fail("loading the eBPF object", err));

    let program: &mut UProbe = ebpf
        .program_mut(ALLOC_PROBE)
        .unwrap_or_else(|| panic!("the object has no program {ALLOC_PROBE}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{ALLOC_PROBE} as a uprobe"), err));
    // The verifier runs here; its log is in the error.
    program
        .load()
        .unwrap_or_else(|err| fail(&format!("loading {ALLOC_PROBE}"), err));
    // aya only logs a warning and loads the program without BTF when the kernel refuses the
    // object's BTF (which bpf-linker generated from the debug info), so check it got through.
    let info = program
        .info()
        .unwrap_or_else(|err| fail(&format!("{ALLOC_PROBE}'s program info"), err));
    assert!(info.btf_id().is_some(), "{ALLOC_PROBE} was loaded without BTF");

    let exe = env::current_exe().expect("the test binary's path");
    program
        .attach(
            "gotrace_test_fake_mallocgc",
            &exe,
            // Only this thread: the test harness's other threads never call the function anyway.
            UProbeScope::CallingProcess,
        )
        .unwrap_or_else(|err| fail(&format!("attaching {ALLOC_PROBE}"), err));

    call_like_go(SIZE);

    let counters: PerCpuArray<_, ProbeCounters> = ebpf
        .map(COUNTERS_MAP)
        .unwrap_or_else(|| panic!("the object has no map {COUNTERS_MAP}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{COUNTERS_MAP} as a per-CPU array"), err));
    assert_eq!(counters.len(), COUNTERS_LEN);
    let total = counters
        .get(&COUNTERS_INDEX, 0)
        .unwrap_or_else(|err| fail(&format!("reading {COUNTERS_MAP}"), err))
        .iter()
        .fold(ProbeCounters::default(), |sum, cpu| sum.merged(*cpu));
    assert_eq!(
        total,
        ProbeCounters { hits: 1, bytes: SIZE },
        "one call with size {SIZE:#x} in the Go argument register"
    );
}

/// Lifts `RLIMIT_MEMLOCK`, which kernels before 5.11 charge BPF maps and programs against.
///
/// Newer kernels (this project's are 6.x) charge the memory cgroup instead and ignore the
/// limit, and some sandboxes refuse to raise it (no `CAP_SYS_RESOURCE`), so failing is only a
/// warning: if the limit mattered, loading fails next with a clearer error.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit that outlives the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        let err = std::io::Error::last_os_error();
        eprintln!("warning: cannot raise RLIMIT_MEMLOCK ({err}); continuing, 5.11+ kernels do not need it");
    }
}

/// Panics with an error's whole `source()` chain: aya puts the verifier log and the errno in
/// nested errors, and `expect` would show only a `Debug` dump.
fn fail(what: &str, err: impl std::error::Error) -> ! {
    let mut message = format!("{what}: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(message, "\n  caused by: {cause}");
        source = cause.source();
    }
    panic!("{message}");
}
