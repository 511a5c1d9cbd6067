//! `gotrace inspect` as a user runs it: the binary, its exit status, stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use testkit::{Fixture, LiveOracle, allocs_fixtures, hex};

fn gotrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gotrace"))
        .args(args)
        .output()
        .expect("running gotrace")
}

fn fixture(minor: &str, variant: &str) -> Fixture {
    allocs_fixtures()
        .into_iter()
        .find(|f| f.go_minor == minor && f.goarch == testkit::host_goarch() && f.variant == variant)
        .unwrap_or_else(|| panic!("no go{minor} {variant} fixture"))
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "gotrace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// Bad input: exit status 1, one line on stderr saying what is wrong, nothing on stdout, and
/// never a panic.
fn assert_clean_error(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("gotrace: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in {stderr}");
}

#[test]
fn json_report_has_the_documented_keys() {
    let f = fixture("1.27", "default");
    let report = json(&gotrace(&[
        "inspect",
        f.path.to_str().expect("utf-8"),
        "--format",
        "json",
    ]));
    assert_eq!(report["go_version"], "go1.27.3");
    assert_eq!(report["arch"], "x86_64");
    assert_eq!(report["pie"], false);
    assert_eq!(report["has_dwarf"], true);
    assert_eq!(report["has_symtab"], true);
    let probes = report["probes"].as_array().expect("probes");
    let malloc = probes
        .iter()
        .find(|p| p["function"] == "runtime.mallocgc")
        .expect("mallocgc probe");
    let address = hex(malloc["address"].as_str().expect("hex string"));
    let probe = hex(malloc["probe_address"].as_str().expect("hex string"));
    assert!(probe > address && probe < address + 16, "{malloc}");
    assert!(malloc["file_offset"].is_u64(), "{malloc}");
    assert_eq!(malloc["args"]["size"], "rax");
    assert_eq!(malloc["args"]["type"], "rbx");
    assert!(
        probes.iter().any(|p| p["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("runtime.mallocgcSmallNoScanSC"))),
        "Go 1.27's size-specialised mallocs are probed"
    );
}

#[test]
fn text_report_names_the_probes() {
    let f = fixture("1.21", "stripped");
    let out = gotrace(&["inspect", f.path.to_str().expect("utf-8")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "go version   go1.21.13",
        ".symtab no, DWARF no, .gopclntab yes",
        "(from .gopclntab)",
        "runtime.mallocgc",
        "size=rax type=rbx",
        "counting rule:",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
    }
}

/// A live PIE process: addresses and type pointers are runtime addresses, translated through
/// `/proc/PID/maps`; the answers must be what the process itself says.
#[test]
fn inspects_a_running_pie_process() {
    let f = fixture("1.24", "pie");
    let live = LiveOracle::start(&f);
    let pid = live.pid().to_string();
    let inlined = live
        .oracle
        .stacks
        .iter()
        .find(|s| s.label == "inlined")
        .expect("inlined stack");
    let point = live
        .oracle
        .types
        .iter()
        .find(|t| t.name == "main.Point")
        .expect("main.Point");
    let report = json(&gotrace(&[
        "inspect",
        &pid,
        "--format",
        "json",
        "--pc",
        &inlined.frames[0].pc,
        "--type",
        &point.addr,
    ]));
    let process = &report["process"];
    assert_eq!(process["pid"].as_u64(), Some(u64::from(live.pid())));
    assert_eq!(Path::new(process["exe"].as_str().expect("exe")), f.path);
    let base = hex(process["load_base"].as_str().expect("load base"));
    assert!(base > 0x40_0000, "PIE loads at a random base, got {base:#x}");
    assert_eq!(report["pie"], true);

    let frames = report["symbols"][0]["frames"].as_array().expect("frames");
    let got: Vec<(String, u64)> = frames
        .iter()
        .map(|fr| {
            (
                fr["function"].as_str().unwrap_or_default().to_owned(),
                fr["line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = inlined.frames[..got.len().min(inlined.frames.len())]
        .iter()
        .map(|fr| (fr.function.clone(), u64::from(fr.line)))
        .collect();
    assert!(got.len() >= 2, "the inlined frame and its caller: {got:?}");
    assert_eq!(got, want);
    assert_eq!(frames[0]["inlined"], true);
    assert_eq!(report["types"][0]["name"], "main.Point");
}

/// A copy of a fixture with some bytes changed, in a temporary directory of its own.
struct Damaged {
    dir: PathBuf,
    path: PathBuf,
}

impl Damaged {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let dir = std::env::temp_dir().join(format!("gotrace-inspect-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8")
    }
}

impl Drop for Damaged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bad_input_gives_one_line_and_exit_status_1() {
    assert_clean_error(&gotrace(&["inspect", "/nonexistent/server"]), "no such file");

    // A pid that is not running: above the kernel's pid_max.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    assert_clean_error(&gotrace(&["inspect", &(pid_max + 1).to_string()]), "no such process");

    let text = Damaged::new("script.sh", b"#!/bin/sh\necho hello\n");
    assert_clean_error(&gotrace(&["inspect", text.arg()]), "not an ELF file");

    // An ELF file, but not Go: the test binary itself is Rust.
    let this = std::env::current_exe().expect("test binary");
    assert_clean_error(&gotrace(&["inspect", this.to_str().expect("utf-8")]), "not a Go binary");

    let f = fixture("1.27", "default");
    let data = f.bytes();
    let at = |needle: &[u8]| {
        data.windows(needle.len())
            .position(|w| w == needle)
            .expect("needle in fixture")
    };

    // Go 1.16: same length, so only the version changes.
    let mut old = data.clone();
    let v = at(b"\x08go1.27.3");
    old[v + 1..v + 9].copy_from_slice(b"go1.16.1");
    let old = Damaged::new("old-go", &old);
    assert_clean_error(&gotrace(&["inspect", old.arg()]), "go1.16.1 is too old");

    let mut riscv = data.clone();
    riscv[18..20].copy_from_slice(&243u16.to_le_bytes());
    let riscv = Damaged::new("riscv", &riscv);
    assert_clean_error(&gotrace(&["inspect", riscv.arg()]), "unsupported architecture riscv64");

    let mut elf32 = data.clone();
    elf32[4] = 1;
    let elf32 = Damaged::new("elf32", &elf32);
    assert_clean_error(
        &gotrace(&["inspect", elf32.arg()]),
        "unsupported architecture 32-bit ELF",
    );

    let truncated = Damaged::new("truncated", &data[..data.len() / 2]);
    let out = gotrace(&["inspect", truncated.arg()]);
    assert_clean_error(&out, "cannot inspect");

    // The pclntab header's magic, found through the moduledata-independent section table.
    let mut bad_pclntab = data.clone();
    let magic = at(&[0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8]);
    bad_pclntab[magic..magic + 4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let bad_pclntab = Damaged::new("bad-pclntab", &bad_pclntab);
    assert_clean_error(&gotrace(&["inspect", bad_pclntab.arg()]), "corrupt .gopclntab");

    // Usage errors come from clap: exit status 2.
    let out = gotrace(&["inspect", "./x", "--pc", "0xzz"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Where each probed function takes the arguments gotrace reads, on arm64: its integer
/// arguments in R0, R1, … in order (`src/cmd/compile/abi-internal.md`), from the signatures in
/// the runtime's source (`malloc.go`, `slice.go`, `map.go`, `chan.go`, `mprof.go`, `mcache.go`,
/// `mheap.go`, `mgc.go`).
fn arm64_argument_registers(function: &str, role: &str) -> &'static [(&'static str, &'static str)] {
    match function {
        "runtime.newobject" => &[("type", "x0")],
        "runtime.newarray" | "runtime.makeslicecopy" => &[("type", "x0"), ("len", "x1")],
        "runtime.makeslice" => &[("type", "x0"), ("len", "x1"), ("cap", "x2")],
        // growslice(oldPtr, newLen, oldCap, num, et).
        "runtime.growslice" => &[("len", "x1"), ("old_cap", "x2"), ("num", "x3"), ("type", "x4")],
        "runtime.makemap" | "runtime.makechan" => &[("type", "x0"), ("hint", "x1")],
        // profilealloc(mp, x, size).
        "runtime.profilealloc" => &[("object", "x1"), ("size", "x2")],
        // setprofilebucket(p, b); freeSpecial(s, p, size); gcMarkTermination reads nothing.
        "runtime.setprofilebucket" => &[("object", "x0"), ("bucket", "x1")],
        "runtime.freeSpecial" => &[("special", "x0"), ("object", "x1")],
        "runtime.gcMarkTermination" => &[],
        "runtime.(*mcache).refill" => &[("mcache", "x0"), ("span_class", "x1")],
        "runtime.(*mcache).allocLarge" => &[("mcache", "x0"), ("size", "x1")],
        "runtime.(*mcache).releaseAll" => &[("mcache", "x0")],
        // mallocgc and Go 1.27's size-specialised mallocs: (size, typ, needzero).
        _ if role == "count" => &[("size", "x0"), ("type", "x1")],
        _ => panic!("unexpected probe on {function} ({role})"),
    }
}

/// `gotrace inspect` on arm64 binaries, on this `x86_64` host: every probe sits on the
/// instruction right after the prologue's stack-bound check (`MOVD 16(R28), R16; CMP R16, RSP;
/// BLS morestack`, `src/cmd/internal/obj/arm64/obj7.go`) as `go tool objdump` decodes it, takes
/// its arguments from R0 and R1 (Go's register ABI on arm64) and finds the return address in
/// the link register.
#[test]
fn arm64_binaries_inspect_against_go_tool_objdump() {
    let mut checked = 0;
    for f in allocs_fixtures().into_iter().filter(|f| {
        f.goarch == "arm64" && f.variant == "default" && ["1.21", "1.24", "1.27"].contains(&f.go_minor.as_str())
    }) {
        let report = json(&gotrace(&[
            "inspect",
            f.path.to_str().expect("utf-8"),
            "--format",
            "json",
        ]));
        assert_eq!(report["arch"], "aarch64", "{}", f.name());
        let probes = report["probes"].as_array().expect("probes");
        let functions: Vec<&str> = probes.iter().filter_map(|p| p["function"].as_str()).collect();
        let listing = testkit::objdump(&f, &f.path, &functions);
        for probe in probes {
            let function = probe["function"].as_str().expect("function");
            let at = |key: &str| hex(probe[key].as_str().expect("hex address"));
            let insns = &listing[function];
            assert_eq!(insns[0].address, at("address"), "{}: {function} entry", f.name());
            assert_eq!(probe["return_address"], "x30", "{}: {function}", f.name());
            // Every counting probe has a stack check to skip (mallocgc and its relatives are
            // never NOSPLIT); a decoder that found none would skip the checks below.
            if probe["role"] == "count" {
                assert_eq!(probe["stack_check"]["kind"], "checked", "{}: {function}", f.name());
            }
            if probe["stack_check"]["kind"] == "checked" {
                let branch = probe["stack_check"]["branch"].as_u64().expect("branch");
                let i = insns
                    .iter()
                    .position(|insn| insn.address == branch)
                    .unwrap_or_else(|| panic!("{}: {function}: no instruction at {branch:#x}", f.name()));
                assert!(
                    insns[i].text.starts_with("BLS "),
                    "{}: {function}: {}",
                    f.name(),
                    insns[i].text
                );
                assert!(
                    insns[i - 1].text.starts_with("CMP "),
                    "{}: {function}: {}",
                    f.name(),
                    insns[i - 1].text
                );
                assert_eq!(
                    insns[i + 1].address,
                    at("probe_address"),
                    "{}: {function} probe",
                    f.name()
                );
            }
            let expected = arm64_argument_registers(function, probe["role"].as_str().expect("role"));
            for (arg, register) in expected {
                assert_eq!(probe["args"][arg], *register, "{}: {function} {arg}", f.name());
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} arm64 probes checked");
}
