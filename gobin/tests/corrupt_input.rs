//! Corrupt input must give errors, never panics.
//!
//! A bounded-time mutation fuzzer over real Go binaries: it damages the ELF headers, the
//! `.gopclntab` tables, `.go.buildinfo`, the moduledata and type descriptors, and the DWARF
//! (an uncompressed-DWARF build makes the DWARF parser see the damage rather than zlib), then
//! runs every analysis on the result under `catch_unwind`. Integer overflow checks are on in
//! test builds, so unchecked arithmetic on bad values also shows up as a panic.
//!
//! `GOTRACE_FUZZ_SECONDS` sets the time budget (default 40) and `GOTRACE_FUZZ_SEED` the seed
//! (default: a fixed one, so that runs are reproducible; printed either way, so a failure can be
//! replayed).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use gobin::{GoBinary, SymbolSource, TypeSource};
use object::{Object as _, ObjectSection as _};
use testkit::{Fixture, allocs_fixtures};

/// xorshift64*: small, deterministic, good enough to pick bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).expect("fits")
    }
}

/// Byte ranges worth damaging, by name.
fn regions(data: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
    let mut out = vec![("elf header".to_owned(), 0..64.min(data.len()))];
    let Ok(file) = object::File::parse(data) else {
        return out;
    };
    if let object::File::Elf64(elf) = &file {
        use object::read::elf::FileHeader as _;
        let header = elf.elf_header();
        let endian = elf.endian();
        let phoff = usize::try_from(header.e_phoff(endian)).unwrap_or(0);
        let phnum = usize::from(header.e_phnum(endian));
        out.push(("program headers".to_owned(), phoff..phoff + phnum * 56));
        let shoff = usize::try_from(header.e_shoff(endian)).unwrap_or(0);
        let shnum = usize::from(header.e_shnum(endian));
        out.push(("section headers".to_owned(), shoff..shoff + shnum * 64));
    }
    for section in file.sections() {
        let name = section.name().unwrap_or_default();
        let interesting = [
            ".gopclntab",
            ".go.buildinfo",
            ".noptrdata",
            ".rodata",
            ".typelink",
            ".rela.dyn",
            ".dynamic",
            ".symtab",
            ".strtab",
            ".debug_info",
            ".debug_abbrev",
            ".debug_line",
            ".debug_loclists",
            ".debug_loc",
            ".debug_ranges",
            ".debug_rnglists",
            ".debug_str",
        ];
        if interesting.contains(&name)
            && let Some((start, len)) = section.file_range()
        {
            let (start, len) = (usize::try_from(start).unwrap_or(0), usize::try_from(len).unwrap_or(0));
            // The interesting part of big tables is their head: headers and first entries.
            out.push((name.to_owned(), start..start + len.min(64 * 1024)));
        }
    }
    out.retain(|(_, r)| r.start < r.end && r.end <= data.len());
    out
}

fn mutate(rng: &mut Rng, original: &[u8], regions: &[(String, std::ops::Range<usize>)]) -> (Vec<u8>, String) {
    let mut data = original.to_vec();
    match rng.below(6) {
        0 => {
            let len = rng.below(data.len());
            data.truncate(len);
            (data, format!("truncated to {len} bytes"))
        }
        1 => {
            let n = 1 + rng.below(64);
            for _ in 0..n {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            (data, format!("{n} random bit flips"))
        }
        _ => {
            let (name, range) = &regions[rng.below(regions.len())];
            let n = 1 + rng.below(16);
            let mut what = Vec::new();
            for _ in 0..n {
                let at = range.start + rng.below(range.len());
                let width = [1usize, 4, 8][rng.below(3)].min(data.len() - at);
                let value: u64 = match rng.below(5) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => u64::from(u32::MAX),
                    3 => 1 << rng.below(63),
                    _ => rng.next(),
                };
                data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                what.push(format!("{at:#x}"));
            }
            (data, format!("{n} words overwritten in {name} at {}", what.join(",")))
        }
    }
}

/// Everything a tracer would ask of a binary.
fn analyse(data: &[u8], text_sample: &[u64], type_sample: &[u64]) {
    let Ok(bin) = GoBinary::parse(data) else { return };
    let _ = bin.build_info();
    let _ = bin.linkage();
    let _ = bin.debug_sections();
    let _ = bin.functions().by_name("runtime.mallocgc");
    let _ = bin.probe_points();
    for &pc in text_sample {
        let _ = bin.symbolize(pc);
        let _ = bin.symbolize_from(pc, SymbolSource::Pclntab);
        let _ = bin.symbolize_from(pc, SymbolSource::Dwarf);
        let _ = bin.functions().containing(pc);
    }
    for &addr in type_sample {
        let _ = bin.type_name(addr);
        let _ = bin.type_name_from(addr, TypeSource::Descriptor);
    }
    let _ = bin.dwarf_types().len();
}

fn seeds(f: &Fixture) -> (Vec<u64>, Vec<u64>) {
    let data = f.bytes();
    let bin = GoBinary::parse(&data).expect("the unmodified fixture parses");
    let text: Vec<u64> = bin
        .functions()
        .iter()
        .step_by(97)
        .flat_map(|func| [func.start, func.start + 7])
        .collect();
    let types: Vec<u64> = bin.dwarf_types().keys().copied().take(32).collect();
    (text, types)
}

/// Longer than any honest analysis of these small fixtures takes, even in a debug build.
const MAX_SECONDS_PER_INPUT: Duration = Duration::from_secs(30);

/// The seed without `GOTRACE_FUZZ_SEED` (odd, as xorshift needs a non-zero state).
const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Where the last panic happened, kept by the panic hook for the report.
static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

#[test]
fn corrupt_binaries_give_errors_not_panics() {
    let budget = Duration::from_secs(
        std::env::var("GOTRACE_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40),
    );
    let seed = std::env::var("GOTRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // Fixed unless told otherwise, so that a failure in CI replays byte for byte on any
        // machine (within the same time budget); set the variable to explore other inputs.
        .unwrap_or(DEFAULT_SEED);
    eprintln!("corrupt-input fuzzing for {budget:?} with GOTRACE_FUZZ_SEED={seed}");
    let all = allocs_fixtures();
    let pick = |version: &str, arch: &str, variant: &str| {
        all.iter()
            .find(|f| f.go_minor == version && f.goarch == arch && f.variant == variant)
            .unwrap_or_else(|| panic!("fixture go{version} {arch} {variant} missing"))
            .clone()
    };
    let corpus = [
        pick("1.27", "amd64", "dwarfraw"),
        pick("1.21", "amd64", "default"),
        pick("1.27", "amd64", "stripped"),
        pick("1.24", "amd64", "pie"),
        pick("1.26", "amd64", "cgo"),
        pick("1.27", "arm64", "default"),
    ];
    let inputs: Vec<_> = corpus
        .iter()
        .map(|f| {
            let data = f.bytes();
            let regions = regions(&data);
            let (text, types) = seeds(f);
            (f.name(), data, regions, text, types)
        })
        .collect();
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut runs = 0usize;
    let mut failures = Vec::new();
    // Keep the panic's location for the report instead of printing every panic.
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = info.location().map(ToString::to_string).unwrap_or_default();
        }
    }));
    // A mutant that makes the analysis hang would hang the test suite instead of failing it:
    // a watchdog names the mutation and fails the run when one input takes too long.
    let current: &'static std::sync::Mutex<Option<(Instant, String)>> =
        Box::leak(Box::new(std::sync::Mutex::new(None)));
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let Ok(guard) = current.lock() else { return };
            if let Some((started, what)) = guard.as_ref()
                && started.elapsed() > MAX_SECONDS_PER_INPUT
            {
                eprintln!(
                    "GOTRACE_FUZZ_SEED={seed}: analysing one corrupt binary took over {MAX_SECONDS_PER_INPUT:?}: {what}"
                );
                std::process::exit(101);
            }
        }
    });
    while start.elapsed() < budget {
        let (name, data, regions, text, types) = &inputs[runs % inputs.len()];
        let (mutant, what) = mutate(&mut rng, data, regions);
        if let Ok(mut guard) = current.lock() {
            *guard = Some((Instant::now(), format!("{name}: {what}")));
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| analyse(&mutant, text, types)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let location = LAST_PANIC.lock().map(|l| l.clone()).unwrap_or_default();
            failures.push(format!("{name}: {what}: panicked at {location}: {message}"));
        }
        runs += 1;
    }
    if let Ok(mut guard) = current.lock() {
        *guard = None;
    }
    let _ = std::panic::take_hook();
    eprintln!("{runs} corrupt binaries analysed, {} panics", failures.len());
    assert!(runs >= inputs.len(), "the budget allowed too few runs");
    assert!(failures.is_empty(), "seed {seed}:\n{}", failures.join("\n"));
}

/// Specific damage with a known outcome: each gives a particular error.
#[test]
fn known_corruptions_give_the_right_error() {
    let all = allocs_fixtures();
    let f = all
        .iter()
        .find(|f| f.go_minor == "1.27" && f.goarch == "amd64" && f.variant == "default")
        .expect("go1.27 amd64 default fixture");
    let data = f.bytes();
    let file = object::File::parse(&*data).expect("ELF");
    let section = |name: &str| {
        let s = file.section_by_name(name).expect(name);
        let (start, _) = s.file_range().expect("in file");
        usize::try_from(start).expect("fits")
    };
    let err = |bytes: &[u8]| GoBinary::parse(bytes).expect_err("must fail").to_string();

    let mut bad_magic = data.clone();
    bad_magic[section(".gopclntab")..][..4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    assert!(
        err(&bad_magic).contains("corrupt .gopclntab: unknown magic"),
        "{}",
        err(&bad_magic)
    );

    let mut old_go = data.clone();
    let at = section(".go.buildinfo") + 32;
    // The version string follows a one-byte length; keep the length, change the text.
    assert_eq!(&old_go[at..at + 9], b"\x08go1.27.3", "the fixture is built by go1.27.3");
    old_go[at + 1..at + 9].copy_from_slice(b"go1.16.1");
    assert!(err(&old_go).contains("too old"), "{}", err(&old_go));

    let mut riscv = data.clone();
    riscv[18..20].copy_from_slice(&243u16.to_le_bytes());
    assert!(
        err(&riscv).contains("unsupported architecture riscv64"),
        "{}",
        err(&riscv)
    );

    let truncated = &data[..data.len() / 3];
    let e = err(truncated);
    assert!(e.contains("malformed ELF") || e.contains("corrupt"), "{e}");

    assert!(err(b"#!/bin/sh\necho hi\n").contains("not an ELF file"));
    assert!(err(&[]).contains("not an ELF file"));
}
