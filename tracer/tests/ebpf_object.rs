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
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{UProbe, uprobe::UProbeScope},
};
use tracer_common::{
    ALLOC_COUNT_PROGRAM, AddressRange, AllocKey, CONFIG_MAP, COUNTS_ALT_MAP, COUNTS_MAP, EPOCH_MAP,
    FLAG_SKIP_ZERO_SIZE, GO_SAMPLE_PROGRAM, LARGE_ALLOC_PROGRAM, MAX_NESTED_RANGES, ProbeConfig, ProbeStats,
    SIZE_IS_SPAN_CLASS, SPAN_REFILL_PROGRAM, STACKS_MAP, STATS_MAP, UserStack,
};

/// The same bytes the `gotrace` binary embeds (`src/ebpf.rs`); `build.rs` sets the variable for
/// every target of the package, tests included.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOTRACE_EBPF_OBJECT"));

/// The allocation size and type pointer the fake Go call passes; any recognisable values.
const SIZE: u64 = 0x1234_5678;
const TYPE: u64 = 0x00ab_cdef_0123;

/// Where the probe is attached: a function that does nothing, only called through
/// [`call_like_go`]. Each fake has a body of its own: empty ones are identical code, which an
/// optimised build folds into one address, and then every probe fires on every fake's call.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gotrace_test_fake_mallocgc() {
    std::hint::black_box(1_u8);
}

/// Calls [`gotrace_test_fake_mallocgc`] with `size` and `typ` in the registers where Go's
/// internal ABI passes the first two integer arguments (RAX and RBX on amd64, R0 and R1 on
/// arm64), which is where the probe looks. Never inlined, so that every call returns to the
/// same address, which the test uses as a "nested" range.
#[inline(never)]
fn call_like_go(size: u64, typ: u64) {
    // SAFETY: the callee takes no arguments and touches no memory, and clobber_abi("C") tells
    // the compiler every register a C call may change. RBX is callee-saved and reserved by
    // LLVM, so it is saved and restored around the call by hand; the push leaves the stack
    // 8 bytes off the ABI's alignment, which the empty callee does not care about.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "push rbx",
            "mov rbx, {typ}",
            "call {f}",
            "pop rbx",
            typ = in(reg) typ,
            f = sym gotrace_test_fake_mallocgc,
            in("rax") size,
            // The C ABI's first argument register gets something else, so a probe that
            // wrongly read it (`ctx.arg(0)`) would count the wrong size.
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
            in("x1") typ,
            clobber_abi("C"),
        );
    }
}

fn stats(ebpf: &Ebpf) -> ProbeStats {
    let stats: PerCpuArray<_, ProbeStats> = ebpf
        .map(STATS_MAP)
        .unwrap_or_else(|| panic!("the object has no map {STATS_MAP}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{STATS_MAP} as a per-CPU array"), err));
    stats
        .get(&0, 0)
        .unwrap_or_else(|err| fail(&format!("reading {STATS_MAP}"), err))
        .iter()
        .fold(ProbeStats::default(), |sum, cpu| sum.merged(*cpu))
        .with_outcome_hits()
}

fn configure(ebpf: &mut Ebpf, nested: Option<AddressRange>) {
    let mut config: Array<_, ProbeConfig> = ebpf
        .map_mut(CONFIG_MAP)
        .unwrap_or_else(|| panic!("the object has no map {CONFIG_MAP}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{CONFIG_MAP} as an array"), err));
    let mut value = ProbeConfig {
        flags: FLAG_SKIP_ZERO_SIZE,
        nested_len: u32::from(nested.is_some()),
        nested: [AddressRange::default(); MAX_NESTED_RANGES],
        ..ProbeConfig::default()
    };
    value.nested[0] = nested.unwrap_or_default();
    config
        .set(0, value, 0)
        .unwrap_or_else(|err| fail(&format!("writing {CONFIG_MAP}"), err));
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
    configure(&mut ebpf, None);

    let program: &mut UProbe = ebpf
        .program_mut(ALLOC_COUNT_PROGRAM)
        .unwrap_or_else(|| panic!("the object has no program {ALLOC_COUNT_PROGRAM}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{ALLOC_COUNT_PROGRAM} as a uprobe"), err));
    // The verifier runs here; its log is in the error.
    program
        .load()
        .unwrap_or_else(|err| fail(&format!("loading {ALLOC_COUNT_PROGRAM}"), err));
    // aya only logs a warning and loads the program without BTF when the kernel refuses the
    // object's BTF (which bpf-linker generated from the debug info), so check it got through.
    let info = program
        .info()
        .unwrap_or_else(|err| fail(&format!("{ALLOC_COUNT_PROGRAM}'s program info"), err));
    assert!(info.btf_id().is_some(), "{ALLOC_COUNT_PROGRAM} was loaded without BTF");

    let exe = env::current_exe().expect("the test binary's path");
    program
        .attach(
            "gotrace_test_fake_mallocgc",
            &exe,
            // Only this process: the test harness's other threads never call the function anyway.
            UProbeScope::CallingProcess,
        )
        .unwrap_or_else(|err| fail(&format!("attaching {ALLOC_COUNT_PROGRAM}"), err));

    call_like_go(SIZE, TYPE);
    call_like_go(0, TYPE);

    let s = stats(&ebpf);
    assert_eq!((s.hits, s.recorded, s.zero_size, s.dropped()), (2, 1, 1, 0), "{s:?}");
    let counts: PerCpuHashMap<_, AllocKey, u64> = ebpf
        .map(COUNTS_MAP)
        .unwrap_or_else(|| panic!("the object has no map {COUNTS_MAP}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{COUNTS_MAP} as a per-CPU hash"), err));
    let entries: Vec<(AllocKey, u64)> = counts
        .iter()
        .map(|e| e.unwrap_or_else(|err| fail("reading the counts", err)))
        .map(|(k, v)| (k, v.iter().sum()))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (key, count) = entries[0];
    assert_eq!((key.size, key.type_address, count), (SIZE, TYPE, 1), "{key:?}");
    assert_ne!(key.return_address, 0);

    // The stack is stored under its hash, and starts in the probed function.
    let stacks: HashMap<_, u64, UserStack> = ebpf
        .map(STACKS_MAP)
        .unwrap_or_else(|| panic!("the object has no map {STACKS_MAP}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{STACKS_MAP} as a hash"), err));
    let stack = stacks
        .get(&key.stack, 0)
        .unwrap_or_else(|err| fail("reading the stack", err));
    let frames = stack.frames();
    assert!(!frames.is_empty());
    assert_eq!(tracer_common::stack_hash(frames), key.stack);
    let probed = gotrace_test_fake_mallocgc as *const () as u64;
    assert!(
        (probed..probed + 16).contains(&frames[0]),
        "{:#x} vs {probed:#x}",
        frames[0]
    );

    // A call whose return address is in a "nested" range is not counted again.
    configure(
        &mut ebpf,
        Some(AddressRange {
            start: key.return_address,
            end: key.return_address + 1,
        }),
    );
    call_like_go(SIZE, TYPE);
    let s = stats(&ebpf);
    assert_eq!((s.hits, s.recorded, s.nested), (3, 1, 1), "{s:?}");
}

/// Where the sampling probes are attached in [`sampling_probes_read_their_arguments`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gotrace_test_fake_refill() {
    std::hint::black_box(2_u8);
}

/// The same, for the Go-sampler probe.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn gotrace_test_fake_profilealloc() {
    std::hint::black_box(3_u8);
}

/// Calls `f` with three integer arguments where Go's register ABI puts them (RAX, RBX, RCX on
/// amd64; R0, R1, R2 on arm64).
#[inline(never)]
fn call_like_go3(f: extern "C" fn(), a0: u64, a1: u64, a2: u64) {
    // SAFETY: as in call_like_go; RBX is saved by hand.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::asm!(
            "push rbx",
            "mov rbx, {a1}",
            "call {f}",
            "pop rbx",
            a1 = in(reg) a1,
            f = in(reg) f,
            in("rax") a0,
            in("rcx") a2,
            clobber_abi("C"),
        );
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!(
            "blr {f}",
            f = in(reg) f,
            in("x0") a0,
            in("x1") a1,
            in("x2") a2,
            clobber_abi("C"),
        );
    }
}

fn counts_of(ebpf: &Ebpf, map: &str) -> Vec<(AllocKey, u64)> {
    let counts: PerCpuHashMap<_, AllocKey, u64> = ebpf
        .map(map)
        .unwrap_or_else(|| panic!("the object has no map {map}"))
        .try_into()
        .unwrap_or_else(|err| fail(&format!("{map} as a per-CPU hash"), err));
    counts
        .iter()
        .map(|e| e.unwrap_or_else(|err| fail("reading the counts", err)))
        .map(|(k, v)| (k, v.iter().sum()))
        .collect()
}

/// The span-refill probe follows `mcache.alloc[spc]` to the used-up span and counts
/// `allocCount - allocCountBeforeCache` objects; the Go-sampler probe reads the size from the
/// third argument register; flipping the epoch moves the counting to the other map.
#[test]
fn sampling_probes_read_their_arguments() {
    const MCACHE_ALLOC: u32 = 40;
    const ALLOC_COUNT: u32 = 98;
    const BEFORE_CACHE: u32 = 100;
    const SPAN_CLASS: u8 = 7;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: loading eBPF programs needs root (CI runs this as root)");
        return;
    }
    raise_memlock_limit();
    let mut ebpf = Ebpf::load(OBJECT).unwrap_or_else(|err| fail("loading the eBPF object", err));
    // A fake mcache and span, laid out at the offsets the configuration names.
    let mut span = vec![0u8; 128];
    span[ALLOC_COUNT as usize..][..2].copy_from_slice(&512u16.to_ne_bytes());
    span[BEFORE_CACHE as usize..][..2].copy_from_slice(&112u16.to_ne_bytes());
    let mut mcache = vec![0u64; (MCACHE_ALLOC as usize / 8) + 136];
    mcache[MCACHE_ALLOC as usize / 8 + usize::from(SPAN_CLASS)] = span.as_ptr() as u64;
    {
        let mut config: Array<_, ProbeConfig> = ebpf.map_mut(CONFIG_MAP).unwrap().try_into().unwrap();
        let value = ProbeConfig {
            mcache_alloc_offset: MCACHE_ALLOC,
            span_alloc_count_offset: ALLOC_COUNT,
            span_alloc_count_before_cache_offset: BEFORE_CACHE,
            ..ProbeConfig::default()
        };
        config.set(0, value, 0).unwrap();
    }
    let exe = env::current_exe().expect("the test binary's path");
    for (program, function) in [
        (SPAN_REFILL_PROGRAM, "gotrace_test_fake_refill"),
        (GO_SAMPLE_PROGRAM, "gotrace_test_fake_profilealloc"),
    ] {
        let p: &mut UProbe = ebpf.program_mut(program).unwrap().try_into().unwrap();
        p.load().unwrap_or_else(|err| fail(&format!("loading {program}"), err));
        p.attach(function, &exe, UProbeScope::CallingProcess)
            .unwrap_or_else(|err| fail(&format!("attaching {program}"), err));
    }
    // The large-allocation program only has to pass the verifier.
    let large: &mut UProbe = ebpf.program_mut(LARGE_ALLOC_PROGRAM).unwrap().try_into().unwrap();
    large
        .load()
        .unwrap_or_else(|err| fail(&format!("loading {LARGE_ALLOC_PROGRAM}"), err));

    // spanClass is a uint8: garbage above the low byte must be ignored.
    call_like_go3(
        gotrace_test_fake_refill,
        mcache.as_ptr() as u64,
        0xdead_beef_0000_0000 | u64::from(SPAN_CLASS),
        0,
    );
    call_like_go3(gotrace_test_fake_profilealloc, 1, 2, 4096);
    let counts = counts_of(&ebpf, COUNTS_MAP);
    let refill = counts
        .iter()
        .find(|(k, _)| k.size == SIZE_IS_SPAN_CLASS | u64::from(SPAN_CLASS))
        .unwrap_or_else(|| panic!("no span-refill count in {counts:?}"));
    assert_eq!(refill.1, 512 - 112);
    assert!(counts.iter().any(|(k, n)| k.size == 4096 && *n == 1), "{counts:?}");

    // A class beyond the table is refused, not read.
    call_like_go3(gotrace_test_fake_refill, mcache.as_ptr() as u64, 200, 0);
    assert_eq!(stats(&ebpf).dropped_span_read, 1);

    let mut epoch: Array<_, u32> = ebpf.map_mut(EPOCH_MAP).unwrap().try_into().unwrap();
    epoch.set(0, 1, 0).unwrap();
    call_like_go3(gotrace_test_fake_profilealloc, 1, 2, 8192);
    assert!(counts_of(&ebpf, COUNTS_MAP).iter().all(|(k, _)| k.size != 8192));
    assert_eq!(
        counts_of(&ebpf, COUNTS_ALT_MAP)
            .iter()
            .map(|(k, n)| (k.size, *n))
            .collect::<Vec<_>>(),
        [(8192, 1)]
    );
    drop(span);
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
