//! Golden and oracle tests of the analysis library against real Go binaries: the `allocs`
//! fixture built by every Go version from 1.21 to 1.27 in every variant (`default`, `nodwarf`,
//! `stripped`, `pie`, `cgo`; amd64 and arm64), and the Go distribution's own binaries.
//!
//! The truth comes from outside this crate wherever possible: `go version -m` for build
//! information, `go tool objdump` for instruction boundaries and encodings, the fixture's own
//! `runtime.CallersFrames` and `reflect` for symbolization and type names, and the runtime
//! source of each release for the set of size-specialised mallocs.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use gobin::procmaps::{AddressMap, ProcessMaps};
use gobin::{
    Arch, ArgRole, ArgSource, GoBinary, HeapStatsLayout, LayoutSource, ProbeRole, Register, ReturnAddress,
    RuntimeLayout, StackCheck, SymbolSource, TypeSource, runtime_spelling, table_registers,
};
use testkit::{Fixture, LiveOracle, allocs_fixtures, default_variant_of, hex, objdump};

fn parse<'a>(data: &'a [u8], f: &Fixture) -> GoBinary<'a> {
    GoBinary::parse(data).unwrap_or_else(|e| panic!("{}: {e}", f.name()))
}

#[test]
fn build_facts_match_how_each_fixture_was_built() {
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let name = f.name();
        assert_eq!(bin.build_info().go_version, f.go_version, "{name}");
        assert_eq!(bin.arch().goarch(), f.goarch, "{name}");
        let sections = bin.debug_sections();
        assert_eq!(sections.symtab, f.has_symtab(), "{name}: .symtab");
        assert_eq!(sections.dwarf, f.has_dwarf(), "{name}: DWARF");
        assert!(sections.pclntab, "{name}");
        let linkage = bin.linkage();
        assert_eq!(linkage.pie, f.variant == "pie", "{name}: pie");
        assert_eq!(linkage.cgo, f.variant == "cgo", "{name}: cgo");
        assert_eq!(
            linkage.dynamic,
            matches!(f.variant.as_str(), "pie" | "cgo"),
            "{name}: dynamic"
        );
        assert!(bin.moduledata().is_some(), "{name}: moduledata not found");
        let expected_source = if f.has_symtab() {
            gobin::FunctionSource::Symtab
        } else {
            gobin::FunctionSource::Pclntab
        };
        assert_eq!(bin.functions().source(), expected_source, "{name}");
        for func in ["runtime.mallocgc", "main.main"] {
            assert!(bin.functions().by_name(func).is_some(), "{name}: {func} missing");
        }
    }
}

/// `go version -m` is Go's own reader of `.go.buildinfo`.
#[test]
fn build_info_matches_go_version_m() {
    for f in allocs_fixtures()
        .iter()
        .filter(|f| f.variant == "default" || f.variant == "stripped")
    {
        let data = f.bytes();
        let bin = parse(&data, f);
        let out = f
            .go_command()
            .args(["version", "-m"])
            .arg(&f.path)
            .output()
            .expect("go version -m");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let first = lines.next().expect("first line");
        assert!(first.ends_with(&format!(": {}", f.go_version)), "{}: {first}", f.name());
        let info = bin.build_info();
        for line in lines {
            let fields: Vec<&str> = line.trim().split('\t').collect();
            match fields.as_slice() {
                ["path", path] => assert_eq!(info.path.as_deref(), Some(*path), "{}", f.name()),
                ["mod", path, version, ..] => {
                    let m = info.main_module.as_ref().expect("main module");
                    assert_eq!((m.path.as_str(), m.version.as_str()), (*path, *version), "{}", f.name());
                }
                ["build", setting] => {
                    let (k, v) = setting.split_once('=').expect("key=value");
                    assert_eq!(info.setting(k), Some(v.trim_matches('"')), "{}: {k}", f.name());
                }
                _ => {}
            }
        }
    }
}

/// Runtime source of the fixture's release: the size-specialised mallocs it defines.
fn size_specialized_mallocs_in_source(goroot: &Path) -> BTreeSet<String> {
    let path = goroot.join("src/runtime/malloc_generated.go");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return BTreeSet::new();
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("func "))
        .filter_map(|l| l.split('(').next())
        .filter(|name| {
            name.starts_with("mallocgc") && name.rsplit_once("SC").is_some_and(|(_, n)| n.parse::<u32>().is_ok())
        })
        .map(|name| format!("runtime.{name}"))
        .collect()
}

/// Text symbols of a binary that satisfy `keep`, by Go's own symbol reader.
fn linked_functions(f: &Fixture, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let out = f
        .go_command()
        .args(["tool", "nm"])
        .arg(&f.path)
        .output()
        .expect("go tool nm");
    assert!(out.status.success(), "{}: go tool nm failed", f.name());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "  47c600 T runtime.mallocgc": address, kind (T/t: text), name.
            let mut fields = l.trim_start().splitn(3, ' ');
            let (_, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(kind, "T" | "t").then(|| name.to_owned())
        })
        .filter(|name| keep(name))
        .collect()
}

/// The size-specialised mallocs in a binary, by Go's own symbol reader.
fn linked_size_specialized_mallocs(f: &Fixture) -> BTreeSet<String> {
    linked_functions(f, |name| {
        name.strip_prefix("runtime.mallocgc")
            .and_then(|rest| rest.rsplit_once("SC"))
            .is_some_and(|(_, n)| n.parse::<u32>().is_ok())
    })
}

fn golden_path(f: &Fixture) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/entrypoints/go{}-{}.txt", f.go_minor, f.goarch))
}

/// One line per probe: role, function, kind, argument registers and return address. The same
/// for every variant of a build.
fn entry_point_summary(bin: &GoBinary<'_>) -> String {
    let mut s = String::new();
    for p in bin.probe_points().expect("probe points") {
        let role = p.role.key();
        let args: Vec<String> = p
            .args
            .iter()
            .map(|a| format!("{}={}", a.role.key(), a.register))
            .collect();
        let _ = writeln!(
            s,
            "{role} {} {} {} ret={}",
            p.function,
            p.kind,
            args.join(" "),
            p.return_address
        );
    }
    s
}

#[test]
fn entry_points_match_golden_files_and_runtime_source() {
    let bless = std::env::var_os("GOTRACE_BLESS").is_some();
    let all = allocs_fixtures();
    for f in all.clone() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let summary = entry_point_summary(&bin);
        let golden = golden_path(&f);
        if bless && f.variant == "default" {
            std::fs::create_dir_all(golden.parent().expect("parent")).expect("mkdir");
            std::fs::write(&golden, &summary).expect("write golden");
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (run with GOTRACE_BLESS=1 to create)", golden.display()));
        assert_eq!(
            summary,
            expected,
            "{}: entry points differ from {}",
            f.name(),
            golden.display()
        );

        // Counting probes: mallocgc, plus exactly the size-specialised mallocs that Go's own
        // `go tool nm` finds linked; in 1.27, where the experiment is on by default, that is
        // every one the release's runtime source defines.
        let probes = bin.probe_points().expect("probe points");
        let counting: BTreeSet<String> = probes
            .iter()
            .filter(|p| p.role == ProbeRole::Count)
            .map(|p| p.function.clone())
            .collect();
        let mut expected_counting = linked_size_specialized_mallocs(default_variant_of(&all, &f));
        if f.go_minor.as_str() >= "1.27" {
            assert_eq!(
                expected_counting,
                size_specialized_mallocs_in_source(&f.goroot),
                "{}: nm vs source",
                f.name()
            );
            assert!(
                expected_counting.len() > 10,
                "{}: too few size-specialised mallocs",
                f.name()
            );
        } else {
            assert!(
                expected_counting.is_empty(),
                "{}: unexpected size-specialised mallocs",
                f.name()
            );
        }
        expected_counting.insert("runtime.mallocgc".to_owned());
        assert_eq!(counting, expected_counting, "{}", f.name());
        // Nested calls are recognised by their caller: every function of the runtime's malloc
        // implementation, as Go's own `go tool nm` lists them.
        let malloc_implementation =
            linked_functions(default_variant_of(&all, &f), |n| n.starts_with("runtime.mallocgc"));
        assert!(malloc_implementation.contains("runtime.mallocgc"));
        for p in &probes {
            if p.role == ProbeRole::Count {
                let skipped: BTreeSet<String> = p.skip_if_caller_in.iter().map(|s| s.name.clone()).collect();
                assert_eq!(skipped, malloc_implementation, "{}: {} skip set", f.name(), p.function);
                assert!(p.skip_zero_size);
            } else {
                assert!(p.skip_if_caller_in.is_empty() && !p.skip_zero_size);
            }
        }
    }
}

#[test]
fn argument_registers_from_dwarf_agree_with_the_abi_table() {
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        for p in bin.probe_points().expect("probe points") {
            let expected_source = if f.has_dwarf() {
                ArgSource::Dwarf
            } else {
                ArgSource::AbiTable
            };
            for a in &p.args {
                assert_eq!(a.source, expected_source, "{}: {} {}", f.name(), p.function, a.param);
            }
            let table = table_registers(bin.arch(), bin.go_version(), &p.function).expect("in the table");
            let found: Vec<_> = p.args.iter().map(|a| (a.role, a.register)).collect();
            assert_eq!(found, table, "{}: {}", f.name(), p.function);
            let expected_return = match bin.arch() {
                Arch::X86_64 => ReturnAddress::Stack {
                    register: Register::Rsp,
                    offset: 0,
                },
                Arch::Aarch64 => ReturnAddress::Register {
                    register: Register::X(30),
                },
            };
            assert_eq!(p.return_address, expected_return);
        }
        let malloc = bin
            .probe_points()
            .expect("probe points")
            .into_iter()
            .find(|p| p.function == "runtime.mallocgc")
            .expect("mallocgc");
        let (size, typ) = match bin.arch() {
            Arch::X86_64 => (Register::Rax, Register::Rbx),
            Arch::Aarch64 => (Register::X(0), Register::X(1)),
        };
        assert_eq!(malloc.arg(gobin::ArgRole::Size), Some(size), "{}", f.name());
        assert_eq!(malloc.arg(gobin::ArgRole::Type), Some(typ), "{}", f.name());
    }
}

/// The sampled modes' probe points are in every fixture, stripped ones included (their names
/// come from `.gopclntab` there), with the registers of Go's register ABI.
#[test]
fn sampling_probe_points_are_found_in_every_fixture() {
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let name = f.name();
        let probes = bin.probe_points().expect("probe points");
        let mut sampling: Vec<_> = probes.iter().filter(|p| p.role.is_sampling()).collect();
        let found: Vec<(&str, ProbeRole)> = sampling.iter().map(|p| (p.function.as_str(), p.role)).collect();
        assert_eq!(
            found,
            [
                ("runtime.profilealloc", ProbeRole::GoSample),
                ("runtime.setprofilebucket", ProbeRole::ProfileBucket),
                ("runtime.freeSpecial", ProbeRole::SpecialFree),
                ("runtime.gcMarkTermination", ProbeRole::GcCycle),
                ("runtime.(*mcache).refill", ProbeRole::SpanRefill),
                ("runtime.(*mcache).allocLarge", ProbeRole::LargeAlloc),
                ("runtime.(*mcache).releaseAll", ProbeRole::SpanRelease),
            ],
            "{name}"
        );
        let [r0, r1, r2] = match bin.arch() {
            Arch::X86_64 => [Register::Rax, Register::Rbx, Register::Rcx],
            Arch::Aarch64 => [Register::X(0), Register::X(1), Register::X(2)],
        };
        let regs = |p: &gobin::ProbePoint| -> Vec<(ArgRole, Register)> {
            p.args.iter().map(|a| (a.role, a.register)).collect()
        };
        // The in-use probes: the object's address in the same register at all three, and the
        // kind of a special where the version table says (DWARF, when the binary has it,
        // must agree).
        let (bucket, free, gc) = (sampling.remove(1), sampling.remove(1), sampling.remove(1));
        assert!(gc.args.is_empty(), "{name}: gcMarkTermination");
        assert_eq!(
            regs(bucket),
            [(ArgRole::Object, r0), (ArgRole::Bucket, r1)],
            "{name}: setprofilebucket"
        );
        assert_eq!(
            regs(free),
            [(ArgRole::Special, r0), (ArgRole::Object, r1)],
            "{name}: freeSpecial"
        );
        let layout = bin.special_layout().expect("dwarf").expect("a release in the table");
        let table = gobin::SpecialLayout::from_version_table(bin.go_version()).expect("table");
        assert_eq!(layout.kind_offset, table.kind_offset, "{name}: special.kind");
        if f.has_dwarf() {
            assert_eq!(layout.source, gobin::LayoutSource::Dwarf, "{name}");
        }
        assert_eq!(
            regs(sampling[0]),
            [(ArgRole::Object, r1), (ArgRole::Size, r2)],
            "{name}: profilealloc"
        );
        assert_eq!(
            regs(sampling[1]),
            [(ArgRole::Mcache, r0), (ArgRole::SpanClass, r1)],
            "{name}: refill"
        );
        assert_eq!(
            regs(sampling[2]),
            [(ArgRole::Mcache, r0), (ArgRole::Size, r1)],
            "{name}: allocLarge"
        );
        assert_eq!(regs(sampling[3]), [(ArgRole::Mcache, r0)], "{name}: releaseAll");
        let params: Vec<&str> = sampling[1].args.iter().map(|a| a.param.as_str()).collect();
        assert_eq!(params, ["c", "spc"], "{name}: DWARF names the receiver c");
        for p in &sampling {
            assert!(
                matches!(p.stack_check, StackCheck::Checked { .. }),
                "{name}: {} has no stack check",
                p.function
            );
            assert!(
                p.skip_if_caller_in.is_empty() && !p.skip_zero_size,
                "{name}: {}",
                p.function
            );
        }
    }
}

/// DWARF's member offsets of `runtime.mcache` and `runtime.mspan` are what the version table
/// says, on both architectures and in every link mode; binaries without DWARF get the table.
#[test]
fn runtime_layout_from_dwarf_matches_the_version_table() {
    let mut from_dwarf = 0;
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let layout = bin.runtime_layout().unwrap_or_else(|e| panic!("{}: {e}", f.name()));
        let table = RuntimeLayout::from_version_table(bin.go_version())
            .unwrap_or_else(|| panic!("{}: not in the table", f.name()));
        if f.has_dwarf() {
            assert_eq!(layout.source, LayoutSource::Dwarf, "{}", f.name());
            from_dwarf += 1;
        } else {
            assert_eq!(layout.source, LayoutSource::VersionTable, "{}", f.name());
        }
        assert_eq!(
            RuntimeLayout {
                source: LayoutSource::VersionTable,
                ..layout
            },
            table,
            "{}",
            f.name()
        );
    }
    assert!(from_dwarf > 20, "only {from_dwarf} fixtures with DWARF");
}

/// DWARF's offsets in `runtime.mstats` and `runtime.heapStatsDelta` are what the version
/// table says, on both architectures and in every link mode; without `.symtab` there is no
/// `runtime.memstats` to read them at.
#[test]
fn heap_stats_layout_from_dwarf_matches_the_version_table() {
    let mut from_dwarf = 0;
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let found = bin.heap_stats().unwrap_or_else(|e| panic!("{}: {e}", f.name()));
        let Some((address, layout)) = found else {
            assert!(!f.has_symtab(), "{}: no heap statistics", f.name());
            continue;
        };
        // The generations are the first member of `memstats` in every release.
        assert_eq!(
            Some(address),
            bin.variable("runtime.memstats").map(|v| v.address),
            "{}",
            f.name()
        );
        let table = HeapStatsLayout::from_version_table(bin.go_version())
            .unwrap_or_else(|| panic!("{}: not in the table", f.name()));
        let expected_source = if f.has_dwarf() {
            from_dwarf += 1;
            LayoutSource::Dwarf
        } else {
            LayoutSource::VersionTable
        };
        assert_eq!(
            layout,
            HeapStatsLayout {
                source: expected_source,
                ..table
            },
            "{}",
            f.name()
        );
    }
    assert!(from_dwarf > 20, "only {from_dwarf} fixtures with DWARF");
}

/// `runtime.MemProfileRate` and `runtime.disableMemoryProfiling` are found by name where
/// `.symtab` exists, at the address `go tool nm` gives, and not at all in stripped binaries.
#[test]
fn runtime_variables_come_from_the_symbol_table() {
    let all = allocs_fixtures();
    for f in &all {
        let data = f.bytes();
        let bin = parse(&data, f);
        let name = f.name();
        let rate = bin.variable("runtime.MemProfileRate");
        let disable = bin.variable("runtime.disableMemoryProfiling");
        assert!(
            bin.variable("runtime.mallocgc").is_none(),
            "{name}: a function is no variable"
        );
        assert!(bin.variable("runtime.noSuchVariable").is_none(), "{name}");
        if !f.has_symtab() {
            assert_eq!((rate, disable), (None, None), "{name}");
            continue;
        }
        let rate = rate.unwrap_or_else(|| panic!("{name}: no runtime.MemProfileRate"));
        let disable = disable.unwrap_or_else(|| panic!("{name}: no runtime.disableMemoryProfiling"));
        assert_eq!((rate.size, disable.size), (8, 1), "{name}");
        // The initial value, in .noptrdata: `var MemProfileRate int = 512 * 1024`.
        let offset = usize::try_from(bin.file_offset(rate.address).expect("in the file")).expect("offset");
        let bytes: [u8; 8] = data[offset..offset + 8].try_into().expect("8 bytes");
        assert_eq!(u64::from_le_bytes(bytes), 512 * 1024, "{name}");
        let nm = go_tool_nm(f);
        assert_eq!(nm.get("runtime.MemProfileRate"), Some(&rate.address), "{name}");
        assert_eq!(
            nm.get("runtime.disableMemoryProfiling"),
            Some(&disable.address),
            "{name}"
        );
    }
}

/// Every symbol's address by name, by Go's own symbol reader.
fn go_tool_nm(f: &Fixture) -> HashMap<String, u64> {
    let out = f
        .go_command()
        .args(["tool", "nm"])
        .arg(&f.path)
        .output()
        .expect("go tool nm");
    assert!(out.status.success(), "{}: go tool nm failed", f.name());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut fields = l.trim_start().splitn(3, ' ');
            let (addr, _, name) = (fields.next()?, fields.next()?, fields.next()?);
            Some((name.to_owned(), u64::from_str_radix(addr, 16).ok()?))
        })
        .collect()
}

/// objdump prints arm64 instructions as 32-bit words; the file holds them little-endian.
fn file_bytes_of(insn: &testkit::ObjdumpInsn, goarch: &str) -> Vec<u8> {
    if goarch == "arm64" {
        insn.bytes
            .chunks(4)
            .flat_map(|w| w.iter().rev().copied().collect::<Vec<_>>())
            .collect()
    } else {
        insn.bytes.clone()
    }
}

/// Checks every probe of `bin` (whose bytes are `data`) against `go tool objdump` of
/// `reference`, a binary with the same code and a symbol table.
fn check_probes_against_objdump(
    name: &str,
    go: &Fixture,
    bin: &GoBinary<'_>,
    data: &[u8],
    reference: &Path,
    goarch: &str,
) {
    let probes = bin.probe_points().expect("probe points");
    assert!(!probes.is_empty(), "{name}: no probes");
    let names: Vec<&str> = probes.iter().map(|p| p.function.as_str()).collect();
    let listing = objdump(go, reference, &names);
    // arm64 sets up a frame of more than a few hundred bytes (gcMarkTermination's) by
    // computing the new stack pointer in R20 first (`SUB $size, RSP, R20`, then `STP (R29,
    // R30), -8(R20)`; `cmd/internal/obj/arm64/obj7.go`).
    let (guard, branch, frame_setup): (&str, &str, &[&str]) = match goarch {
        "amd64" => ("0x10(R14)", "JBE ", &["PUSHQ BP"]),
        _ => ("16(R28)", "BLS ", &["MOVD.W R30, ", "SUB $"]),
    };
    for p in &probes {
        let insns = listing
            .get(&p.function)
            .unwrap_or_else(|| panic!("{name}: objdump has no {}", p.function));
        assert_eq!(insns[0].address, p.address, "{name}: {} entry", p.function);
        let j = insns
            .iter()
            .take(6)
            .position(|i| i.text.starts_with(branch))
            .unwrap_or_else(|| panic!("{name}: {} has no stack check in objdump", p.function));
        assert!(
            insns[..j].iter().any(|i| i.text.contains(guard)),
            "{name}: {} branch is not after a stackguard0 load/compare",
            p.function
        );
        let after = &insns[j + 1];
        assert_eq!(p.probe_address, after.address, "{name}: {} probe address", p.function);
        assert!(
            frame_setup.iter().any(|f| after.text.starts_with(f)),
            "{name}: {} probe is on {:?}, not the frame set-up",
            p.function,
            after.text
        );
        assert!(
            matches!(p.stack_check, StackCheck::Checked { branch, .. } if branch == insns[j].address),
            "{name}: {} {:?}",
            p.function,
            p.stack_check
        );
        let off = usize::try_from(p.file_offset).expect("offset");
        let want = file_bytes_of(after, goarch);
        assert_eq!(
            &data[off..off + want.len()],
            want.as_slice(),
            "{name}: {} file offset",
            p.function
        );
    }
}

#[test]
fn probe_addresses_match_go_tool_objdump() {
    let all = allocs_fixtures();
    for f in &all {
        let data = f.bytes();
        let bin = parse(&data, f);
        // objdump needs a symbol table; stripped builds have the same code and layout as the
        // default build, which is checked below.
        let reference = if f.has_symtab() { f } else { default_variant_of(&all, f) };
        check_probes_against_objdump(&f.name(), f, &bin, &data, &reference.path, &f.goarch);
    }
}

#[test]
fn stripped_builds_have_the_same_probes_as_default_builds() {
    let all = allocs_fixtures();
    for f in all
        .iter()
        .filter(|f| matches!(f.variant.as_str(), "stripped" | "nodwarf"))
    {
        let d = default_variant_of(&all, f);
        let (a, b) = (f.bytes(), d.bytes());
        let (stripped, default) = (parse(&a, f), parse(&b, d));
        let key = |p: &gobin::ProbePoint| (p.function.clone(), p.address, p.probe_address, p.file_offset, p.role);
        let left: Vec<_> = stripped.probe_points().expect("probes").iter().map(key).collect();
        let right: Vec<_> = default.probe_points().expect("probes").iter().map(key).collect();
        assert_eq!(left, right, "{}", f.name());
    }
}

/// Go's `funcNameForPrint` shows generic instantiations as `[...]`.
fn print_name(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in name.chars() {
        match c {
            '[' => {
                if depth == 0 {
                    out.push_str("[...]");
                }
                depth += 1;
            }
            ']' => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

type FrameKey = (String, String, u32);

fn frames_of(bin: &GoBinary<'_>, pc: u64, source: SymbolSource) -> Option<Vec<FrameKey>> {
    let frames = bin.symbolize_from(pc, source).expect("symbolize")?;
    Some(
        frames
            .into_iter()
            .map(|f| (print_name(&f.function), f.file, f.line))
            .collect(),
    )
}

/// Checks one stack the fixture captured with `runtime.CallersFrames` against our
/// symbolization. Go reports each logical frame with its own pc: the physical frame's
/// `return address - 1`, and for each caller an inlined call was expanded into, the pc of that
/// caller's inline mark (`runtime/traceback.go` records `parentPc + 1`). Symbolizing the
/// innermost pc of a physical frame must give all of its logical frames at once, so the
/// expected frames are consumed in runs. Returns how many runs had inlined frames.
fn check_stack(
    name: &str,
    bin: &GoBinary<'_>,
    map: &AddressMap,
    stack: &testkit::OracleStack,
    source: Option<SymbolSource>,
) -> usize {
    let expected: Vec<FrameKey> = stack
        .frames
        .iter()
        .map(|f| (f.function.clone(), f.file.clone(), f.line))
        .collect();
    let mut at = 0;
    let mut inlined_runs = 0;
    while at < expected.len() {
        let pc = hex(&stack.frames[at].pc);
        let static_pc = map
            .to_static(pc)
            .unwrap_or_else(|| panic!("{name}: {} pc {pc:#x} not mapped", stack.label));
        let got: Vec<FrameKey> = match source {
            Some(source) => frames_of(bin, static_pc, source).expect("source present"),
            None => bin
                .symbolize(static_pc)
                .into_iter()
                .map(|f| (print_name(&f.function), f.file, f.line))
                .collect(),
        };
        assert!(!got.is_empty(), "{name}: {} pc {pc:#x}: nothing", stack.label);
        let end = (at + got.len()).min(expected.len());
        assert_eq!(
            got.as_slice(),
            &expected[at..end],
            "{name}: {} pc {pc:#x} via {source:?}",
            stack.label
        );
        if got.len() > 1 {
            inlined_runs += 1;
            let frames = bin.symbolize(static_pc);
            assert!(
                frames[..frames.len() - 1].iter().all(|f| f.inlined) && !frames[frames.len() - 1].inlined,
                "{name}: {} inline flags",
                stack.label
            );
        }
        at = end;
    }
    inlined_runs
}

#[test]
fn symbolization_and_type_names_match_the_go_runtime() {
    let mut checked_inlined = 0;
    for f in allocs_fixtures().into_iter().filter(Fixture::runnable) {
        let data = f.bytes();
        let bin = parse(&data, &f);
        // A live process, so that PIE addresses go through /proc/PID/maps like in production.
        let live = LiveOracle::start(&f);
        let exe = gobin::procmaps::process_exe(live.pid()).expect("process exe");
        let maps = ProcessMaps::read(live.pid()).expect("maps");
        let map = AddressMap::new(
            maps.of_inode(exe.inode).into_iter().cloned().collect(),
            bin.load_segments(),
        )
        .expect("address map");
        if f.variant == "pie" {
            assert_ne!(map.base(), Some(0), "{}", f.name());
        }
        let oracle = &live.oracle;
        assert_eq!(oracle.go_version, f.go_version);
        if f.variant != "pie" {
            assert_eq!(
                map.to_static(map.base().unwrap_or(0) + 0x1000),
                Some(map.base().unwrap_or(0) + 0x1000),
                "{}: non-PIE addresses are link-time addresses",
                f.name()
            );
        }
        for stack in &oracle.stacks {
            checked_inlined += check_stack(&f.name(), &bin, &map, stack, Some(SymbolSource::Pclntab));
            if f.has_dwarf() {
                check_stack(&f.name(), &bin, &map, stack, Some(SymbolSource::Dwarf));
            }
            check_stack(&f.name(), &bin, &map, stack, None);
        }
        assert!(
            oracle.stacks.iter().any(|s| s.label == "inlined"),
            "{}: no inlined stack",
            f.name()
        );
        for t in &oracle.types {
            let addr = hex(&t.addr);
            let static_addr = map
                .to_static(addr)
                .unwrap_or_else(|| panic!("{}: type {} not mapped", f.name(), t.name));
            let (name, source) = bin
                .type_name(static_addr)
                .unwrap_or_else(|| panic!("{}: no name for {} at {addr:#x}", f.name(), t.name));
            assert_eq!(name, t.name, "{}: via {source:?}", f.name());
            assert_eq!(
                bin.type_name_from(static_addr, TypeSource::Descriptor).as_deref(),
                Some(t.name.as_str()),
                "{}: descriptor",
                f.name()
            );
            if f.has_dwarf() {
                assert_eq!(
                    source,
                    TypeSource::Dwarf,
                    "{}: {} should come from DWARF",
                    f.name(),
                    t.name
                );
            }
        }
    }
    assert!(checked_inlined > 0, "no inlined frames were checked");
}

/// Every runtime type DWARF knows must have the same name in its type descriptor, on both
/// architectures; that is what lets stripped binaries name types.
#[test]
fn type_descriptor_names_agree_with_dwarf() {
    let all = allocs_fixtures();
    for f in all.iter().filter(|f| f.has_dwarf()) {
        let data = f.bytes();
        let bin = parse(&data, f);
        let dwarf = bin.dwarf_types();
        assert!(dwarf.len() > 100, "{}: only {} DWARF types", f.name(), dwarf.len());
        let mut mismatches = Vec::new();
        let mut struct_literals = 0;
        for (&addr, names) in dwarf {
            let descriptor = bin.type_name_from(addr, TypeSource::Descriptor);
            // DWARF also qualifies the field names of struct literals with their package
            // (`struct { runtime.n int32 }`); the runtime does not. Those are compared only
            // for being readable.
            if names.iter().all(|n| n.contains("struct {")) {
                struct_literals += 1;
                assert!(
                    descriptor.as_deref().is_some_and(|d| d.contains("struct {")),
                    "{}: {names:?}",
                    f.name()
                );
                continue;
            }
            // Several DWARF types (aliases) can share one descriptor; one of them is its name.
            // Shape types (`go.shape.func(*encoding/json.encodeState, …)`) keep import paths.
            let agrees = names.iter().any(|name| {
                descriptor.as_deref() == Some(runtime_spelling(name).as_str()) || descriptor.as_deref() == Some(name)
            });
            if !agrees {
                mismatches.push(format!("{addr:#x}: DWARF {names:?}, descriptor {descriptor:?}"));
            }
            // What type_name reports: a DWARF name that agrees with the descriptor.
            let (name, _) = bin.type_name(addr).expect("named");
            assert_eq!(
                Some(runtime_spelling(&name)),
                descriptor.as_deref().map(runtime_spelling),
                "{}",
                f.name()
            );
        }
        mismatches.sort();
        assert!(
            mismatches.is_empty(),
            "{}: {} of {} differ:\n{}",
            f.name(),
            mismatches.len(),
            dwarf.len(),
            mismatches.join("\n")
        );
        assert!(
            struct_literals * 10 < dwarf.len(),
            "{}: {struct_literals} struct literals",
            f.name()
        );
    }
}

/// DWARF and `.gopclntab` must tell the same story for every instruction of the program's own
/// functions (runtime functions too would take long; a sample of them is checked).
#[test]
fn dwarf_and_pclntab_symbolize_alike() {
    for f in allocs_fixtures()
        .iter()
        .filter(|f| f.has_dwarf() && f.variant == "default")
    {
        let data = f.bytes();
        let bin = parse(&data, f);
        let mut compared = 0;
        let funcs: Vec<_> = bin
            .functions()
            .iter()
            .filter(|func| func.name.starts_with("main.") || func.name.starts_with("runtime.malloc"))
            .cloned()
            .collect();
        assert!(funcs.len() > 5, "{}", f.name());
        for func in funcs {
            let step = if f.goarch == "arm64" { 4 } else { 1 };
            let mut pc = func.start;
            while pc < func.end {
                let dwarf = frames_of(&bin, pc, SymbolSource::Dwarf).expect("dwarf");
                let pcln = frames_of(&bin, pc, SymbolSource::Pclntab).expect("pclntab");
                // Padding between functions is covered by neither. DWARF has no line for
                // compiler-generated code that .gopclntab attributes to "<autogenerated>".
                let autogenerated = pcln.first().is_some_and(|(_, file, _)| file == "<autogenerated>");
                if !dwarf.is_empty() && !pcln.is_empty() && !autogenerated {
                    assert_eq!(dwarf, pcln, "{}: pc {pc:#x} in {}", f.name(), func.name);
                    compared += 1;
                }
                pc += step;
            }
        }
        assert!(compared > 100, "{}: compared only {compared} pcs", f.name());
    }
}

/// The Go distribution's own `gofmt` and `compile` carry `.symtab` and `.gopclntab` but no
/// DWARF: real-world binaries without debug info.
#[test]
fn go_distribution_binaries_inspect_correctly() {
    let all = allocs_fixtures();
    let mut toolchains: HashMap<String, &Fixture> = HashMap::new();
    for f in all
        .iter()
        .filter(|f| f.goarch == testkit::host_goarch() && f.variant == "default")
    {
        toolchains.entry(f.go_version.clone()).or_insert(f);
    }
    assert_eq!(toolchains.len(), 7, "expected seven Go releases");
    for (version, f) in toolchains {
        let tool_dir = f.goroot.join(format!("pkg/tool/linux_{}", testkit::host_goarch()));
        for path in [f.goroot.join("bin/gofmt"), tool_dir.join("compile")] {
            let name = format!("{version} {}", path.display());
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let bin = GoBinary::parse(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(bin.build_info().go_version, version, "{name}");
            let sections = bin.debug_sections();
            assert!(sections.symtab && !sections.dwarf, "{name}: {sections:?}");
            check_probes_against_objdump(&name, f, &bin, &data, &path, testkit::host_goarch());
            // Symbolize every instruction of mallocgc and compare with objdump's file:line
            // column (the innermost position).
            let listing = objdump(f, &path, &["runtime.mallocgc", "main.main"]);
            for insns in listing.values() {
                for insn in insns {
                    let frames = bin.symbolize(insn.address);
                    let inner = frames
                        .first()
                        .unwrap_or_else(|| panic!("{name}: nothing at {:#x}", insn.address));
                    let base = Path::new(&inner.file)
                        .file_name()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default();
                    assert_eq!(
                        format!("{base}:{}", inner.line),
                        insn.file_line,
                        "{name}: {:#x}",
                        insn.address
                    );
                }
            }
            // Without DWARF, type names come from the descriptors. Up to Go 1.26 the linker
            // lists every type in `typelinks`, sorted by exactly the name we read; a wrong base
            // or layout would break the order and the names.
            check_typelinks(&name, &bin, bin.go_version().minor);
        }
    }
}

fn check_typelinks(name: &str, bin: &GoBinary<'_>, minor: u32) {
    let Some(links) = bin.typelinks() else {
        assert!(minor >= 27, "{name}: no typelinks before Go 1.27");
        return;
    };
    assert!(links.len() > 100, "{name}: only {} typelinks", links.len());
    let names: Vec<String> = links
        .iter()
        .map(|&addr| {
            bin.type_name_from(addr, TypeSource::Descriptor)
                .unwrap_or_else(|| panic!("{name}: no name for the type at {addr:#x}"))
        })
        .collect();
    assert!(
        names.windows(2).all(|w| w[0] <= w[1]),
        "{name}: typelinks are not sorted by name"
    );
    for expected in ["*os.File", "[]string", "map[string]int"] {
        assert!(
            names.binary_search_by(|n| n.as_str().cmp(expected)).is_ok(),
            "{name}: no {expected}"
        );
    }
}

/// The build id pprof mappings carry: the GNU one as `readelf -n` prints it, else Go's own as
/// `go tool buildid` prints it.
#[test]
fn build_ids_match_readelf_and_go_tool_buildid() {
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let readelf = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&f.path)
            .output()
            .expect("readelf");
        let gnu = String::from_utf8_lossy(&readelf.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned));
        let expected = gnu.unwrap_or_else(|| {
            let out = f
                .go_command()
                .args(["tool", "buildid"])
                .arg(&f.path)
                .output()
                .expect("go tool buildid");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        });
        assert!(!expected.is_empty(), "{}", f.name());
        assert_eq!(bin.build_id().as_deref(), Some(expected.as_str()), "{}", f.name());
    }
}

/// Runtime code is known by its compilation unit, whatever package name `//go:linkname` gave
/// it: the functions the runtime pushes into `reflect` and `internal/bytealg` are runtime code,
/// their callers are not.
#[test]
fn linknamed_runtime_code_is_runtime_code() {
    let runtime_code = [
        "runtime.mallocgc",
        "reflect.unsafe_New",
        "reflect.unsafe_NewArray",
        "reflect.makemap",
        "reflect.mapassign_faststr0",
        "reflect.mapassign0",
        "internal/bytealg.MakeNoZero",
    ];
    let not_runtime = [
        "main.main",
        "reflect.New",
        "reflect.Value.call",
        "strings.(*Builder).grow",
    ];
    for f in allocs_fixtures() {
        let data = f.bytes();
        let bin = parse(&data, &f);
        let name = f.name();
        let mut found = 0;
        for function in runtime_code {
            if let Some(func) = bin.functions().by_name(function) {
                assert!(bin.is_runtime_code(func.start), "{name}: {function} is runtime code");
                found += 1;
            }
        }
        // The fixture uses reflect.New and strings.Builder, so at least these three are linked.
        assert!(found >= 3, "{name}: only {found} of {runtime_code:?} linked");
        assert!(bin.functions().by_name("reflect.unsafe_New").is_some(), "{name}");
        for function in not_runtime {
            if let Some(func) = bin.functions().by_name(function) {
                assert!(
                    !bin.is_runtime_code(func.start),
                    "{name}: {function} is not runtime code"
                );
            }
        }
        // Where Go's unwinder stops: the system stack's and goroutines' top frames.
        // Assembly functions are named with their ABI in .symtab (`runtime.systemstack.abi0`).
        let by_name = |function: &str| {
            bin.functions()
                .by_name(function)
                .or_else(|| bin.functions().by_name(&format!("{function}.abi0")))
                .unwrap_or_else(|| panic!("{name}: {function}"))
        };
        for function in ["runtime.systemstack", "runtime.mstart", "runtime.goexit"] {
            let func = by_name(function);
            assert_eq!(
                bin.unwind_at(func.start),
                gobin::Unwind::StopAfter,
                "{name}: {function}"
            );
        }
        for function in ["runtime.mallocgc", "main.main", "runtime.newproc1"] {
            let func = by_name(function);
            assert_eq!(bin.unwind_at(func.start), gobin::Unwind::Continue, "{name}: {function}");
        }
        assert_eq!(bin.unwind_at(1), gobin::Unwind::NotGo, "{name}");
    }
}

/// What a node agent asks of every executable on a host: every fixture is Go, the system's
/// own programs and this test are not, and neither is a file that is not ELF at all.
#[test]
fn go_binaries_are_told_from_others_by_their_sections() {
    for f in allocs_fixtures() {
        assert_eq!(gobin::is_go(&f.bytes()).ok(), Some(true), "{}", f.name());
    }
    for path in ["/bin/sh", "/usr/bin/env"] {
        let data = std::fs::read(path).expect(path);
        assert_eq!(gobin::is_go(&data).ok(), Some(false), "{path}");
    }
    let own = std::fs::read(std::env::current_exe().expect("own path")).expect("own binary");
    assert_eq!(gobin::is_go(&own).ok(), Some(false));
    assert_eq!(gobin::is_go(b"#!/bin/sh\necho hi\n").ok(), Some(false));
}

/// Once a long-running tracer has dropped the DWARF, symbolizing gives `.gopclntab`'s frames.
#[test]
fn forgetting_debug_info_leaves_pclntab_symbolization() {
    for f in allocs_fixtures()
        .iter()
        .filter(|f| f.has_dwarf() && f.variant == "default")
    {
        let data = f.bytes();
        let mut bin = parse(&data, f);
        let main = bin.functions().by_name("main.main").expect("main.main").clone();
        bin.forget_debug_info();
        assert!(!bin.debug_sections().dwarf, "{}", f.name());
        let step = if f.goarch == "arm64" { 4 } else { 1 };
        let mut pc = main.start;
        while pc < main.end {
            let pcln = bin.symbolize_from(pc, SymbolSource::Pclntab).expect("pclntab");
            assert_eq!(Some(bin.symbolize(pc)), pcln, "{}: pc {pc:#x}", f.name());
            assert!(bin.symbolize_from(pc, SymbolSource::Dwarf).expect("no DWARF").is_none());
            pc += step;
        }
    }
}
