//! `cargo xtask arm64`: gotrace on a real arm64 kernel, from this `x86_64` machine.
//!
//! 1. Cross-compiles gotrace for `aarch64-unknown-linux-gnu` with Debian's rustc and its arm64
//!    standard library (`libstd-rust-web-dev:arm64`), linked by `aarch64-linux-gnu-gcc`; the
//!    eBPF probes inside are built for `bpf_target_arch = "aarch64"` (arm64's `pt_regs`).
//! 2. Packs an initramfs: busybox (Debian's `busybox-static:arm64`), gotrace with the arm64
//!    glibc it links against, the arm64 `allocs` fixtures, and an `/init` script that runs the
//!    ground-truth round of each fixture under `gotrace run` and prints the results between
//!    markers on the serial console.
//! 3. Boots Debian's arm64 kernel (`linux-image-arm64:arm64`) on `qemu-system-aarch64 -M virt`
//!    with software emulation (TCG), which runs real uprobes (arm64 `BRK` breakpoints, single
//!    step out of line) and the kernel's own BPF verifier and JIT for arm64.
//! 4. Reads the console log and checks every report on the host, with the same comparison as
//!    the `x86_64` attach tests (`testkit::ground_truth`): exact mode against the fixture's own
//!    `GODEBUG=memprofilerate=1` heap profile, and auto mode (go-sampler) the same way.
//! 5. Per Go release, also the live path: `gotrace attach` to a running fixture, then
//!    `gotrace serve` on it, scraped with busybox's `wget` (`/metrics`, `/debug/pprof/allocs`,
//!    then `/metrics` again after the target was killed with SIGKILL). The host checks the
//!    report and the metrics, and reads the profile with `go tool pprof`.
//!
//! `scripts/setup.sh` installs the cross toolchain and qemu, and unpacks the kernel and
//! busybox into `.cache/arm64`. Needs no root: the VM's own root runs gotrace.

mod cpio;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use testkit::Fixture;
use testkit::ground_truth::{self, ROUNDS};

const TARGET: &str = "aarch64-unknown-linux-gnu";
/// Debian's rustc, whose arm64 standard library `libstd-rust-web-dev:arm64` provides (rustup's
/// rustc has no arm64 std here and cannot download one).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const ARM64_STD: &str = "/usr/lib/rustlib/aarch64-unknown-linux-gnu/lib";
const LINKER: &str = "aarch64-linux-gnu-gcc";
const STRIP: &str = "aarch64-linux-gnu-strip";
const QEMU: &str = "qemu-system-aarch64";
/// The arm64 glibc of `libc6-arm64-cross`, which the cross-linked gotrace needs at run time.
const ARM64_LIBS: &str = "/usr/aarch64-linux-gnu/lib";
const RUNTIME_LIBS: [&str; 4] = ["ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1"];

/// Marks the lines of the console log the init script writes.
const MARK: &str = "@@gotrace";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Go releases whose arm64 fixtures run in the VM (built by `cargo xtask fixtures`)
    #[arg(long = "go", value_delimiter = ',', default_values_t = ["1.21".to_owned(), "1.24".to_owned(), "1.27".to_owned()])]
    go: Vec<String>,
    /// Fixture variants to run: exact mode on each, auto mode on those with a symbol table
    #[arg(long, value_delimiter = ',', default_values_t = ["default".to_owned(), "pie".to_owned(), "stripped".to_owned()])]
    variants: Vec<String>,
    /// Go releases whose running fixture is also traced with `gotrace attach` and `gotrace serve`
    #[arg(long, value_delimiter = ',', default_values_t = ["1.21".to_owned(), "1.27".to_owned()])]
    live: Vec<String>,
    /// Give up on the VM after this many seconds
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Where the initramfs, the console log and the reports go
    #[arg(long, default_value = "target/arm64")]
    out: PathBuf,
    /// Instead of cross-compiling, install this arm64 package (from `cargo xtask dist`) with
    /// `dpkg -i` in the VM, against a dpkg database that has only the VM's own glibc, and run
    /// every case with the gotrace it installed
    #[arg(long)]
    deb: Option<PathBuf>,
}

/// Where the VM's gotrace is: the cross-compiled one the initramfs carries, or the one
/// `dpkg -i` installs from `--deb`.
const VM_GOTRACE: &str = "/gotrace";
const VM_PACKAGED_GOTRACE: &str = "/usr/bin/gotrace";

/// One `gotrace run` in the VM.
struct Case {
    fixture: Fixture,
    /// `exact` or `auto` (which picks go-sampler, or span for stripped builds).
    mode: &'static str,
}

impl Case {
    /// A name without spaces: the file names in the VM and the markers in the log.
    fn name(&self) -> String {
        format!("go{}-{}-{}", self.fixture.go_minor, self.fixture.variant, self.mode)
    }

    fn fixture_in_vm(&self) -> String {
        fixture_in_vm(&self.fixture)
    }
}

/// `gotrace attach` and `gotrace serve` on one running fixture in the VM.
struct Live {
    fixture: Fixture,
}

impl Live {
    fn name(&self) -> String {
        format!("go{}-live", self.fixture.go_minor)
    }

    fn fixture_in_vm(&self) -> String {
        fixture_in_vm(&self.fixture)
    }
}

/// Where a fixture is in the VM's root file system (one file per release and variant, shared
/// by the runs that use it).
fn fixture_in_vm(fixture: &Fixture) -> String {
    format!("/fx/go{}-{}", fixture.go_minor, fixture.variant)
}

/// The port `gotrace serve` listens on in the VM (its loopback is its own).
const SERVE_PORT: u16 = 9464;

pub fn run(repo: &Path, args: &Args) -> Result<()> {
    let started = Instant::now();
    let out = repo.join(&args.out);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let vm = VmParts::find(repo)?;
    let cases = cases(args)?;
    let lives = lives(args)?;

    let gotrace = if let Some(deb) = &args.deb {
        let deb = repo.join(deb);
        ensure!(
            deb.is_file(),
            "{} does not exist (cargo xtask dist builds it)",
            deb.display()
        );
        eprintln!("arm64: the VM installs {} with dpkg -i", deb.display());
        Gotrace::Package(deb)
    } else {
        eprintln!("arm64: cross-compiling gotrace for {TARGET} (a few minutes the first time)");
        Gotrace::Binary(cross_build(repo, &out)?)
    };

    let initramfs = out.join("initramfs.cpio");
    write_initramfs(&initramfs, &vm, &gotrace, &cases, &lives)?;
    let log = out.join("console.log");
    eprintln!(
        "arm64: booting {} under {QEMU} (TCG) for {} runs and {} live traces; console log in {}",
        vm.kernel.display(),
        cases.len(),
        lives.len(),
        log.display()
    );
    let vm_time = boot(&vm, &initramfs, &log, Duration::from_secs(args.timeout_secs))?;
    let console = fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let console = String::from_utf8_lossy(&console).replace('\r', "");
    let outputs = parse_console(&console);
    ensure!(
        outputs.done,
        "the VM stopped before its last run (console log: {}):\n{}",
        log.display(),
        tail(&console, 40)
    );

    let mut failed = Vec::new();
    let mut summary = String::new();
    if let Gotrace::Package(deb) = &gotrace {
        let problems = check_install(&outputs, &out);
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        let _ = writeln!(
            summary,
            "  {:<28} {verdict} (dpkg -i, then gotrace --version and doctor)",
            "install"
        );
        if !problems.is_empty() {
            failed.push(format!("dpkg -i {}:\n    {}", deb.display(), problems.join("\n    ")));
        }
    }
    for case in &cases {
        let name = case.name();
        let problems = check_case(case, &outputs, &out);
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        let _ = writeln!(summary, "  {name:<28} {verdict}");
        if !problems.is_empty() {
            failed.push(format!("{name}:\n    {}", problems.join("\n    ")));
        }
    }
    for live in &lives {
        let name = live.name();
        let problems = check_live(live, &outputs, &out);
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        let _ = writeln!(summary, "  {name:<28} {verdict} (attach, serve, SIGKILL of the target)");
        if !problems.is_empty() {
            failed.push(format!("{name}:\n    {}", problems.join("\n    ")));
        }
    }
    eprintln!(
        "arm64: kernel {}, {} runs in {:.0} s of VM time ({:.0} s in all):\n{summary}",
        outputs.kernel,
        cases.len() + lives.len(),
        vm_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    ensure!(
        failed.is_empty(),
        "{} of {} arm64 runs failed (reports in {}):\n{}",
        failed.len(),
        cases.len() + lives.len(),
        out.display(),
        failed.join("\n")
    );
    Ok(())
}

/// The kernel and busybox `scripts/setup.sh` unpacked.
struct VmParts {
    kernel: PathBuf,
    busybox: PathBuf,
}

impl VmParts {
    fn find(repo: &Path) -> Result<Self> {
        let root = repo.join(".cache/arm64/root");
        let kernel = fs::read_dir(root.join("boot"))
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            });
        let busybox = root.join("bin/busybox");
        let mut missing = Vec::new();
        if kernel.is_none() {
            missing.push(format!("an arm64 kernel in {}/boot", root.display()));
        }
        if !busybox.is_file() {
            missing.push(busybox.display().to_string());
        }
        for tool in [QEMU, LINKER, STRIP] {
            if !on_path(tool) {
                missing.push(tool.to_owned());
            }
        }
        for path in [Path::new(DEBIAN_RUSTC), Path::new(ARM64_STD), Path::new(ARM64_LIBS)] {
            if !path.exists() {
                missing.push(path.display().to_string());
            }
        }
        ensure!(
            missing.is_empty(),
            "the arm64 VM's parts are missing: {}. Run scripts/setup.sh first",
            missing.join(", ")
        );
        Ok(Self {
            kernel: kernel.context("checked above")?,
            busybox,
        })
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Exact and auto mode on every fixture (auto is go-sampler where it can find the target's
/// `runtime.MemProfileRate`, span in stripped binaries).
fn cases(args: &Args) -> Result<Vec<Case>> {
    let all: Vec<Fixture> = testkit::allocs_fixtures()
        .into_iter()
        .filter(|f| f.goarch == "arm64")
        .collect();
    let mut cases = Vec::new();
    for minor in &args.go {
        for variant in &args.variants {
            let fixture = all
                .iter()
                .find(|f| f.go_minor == *minor && f.variant == *variant)
                .with_context(|| {
                    format!("no arm64 allocs fixture for Go {minor}, variant {variant}: run cargo xtask fixtures")
                })?;
            cases.push(Case {
                fixture: fixture.clone(),
                mode: "exact",
            });
            // Auto mode everywhere: go-sampler where the rate can be found, span in stripped
            // builds (so the span programs pass this kernel's verifier too).
            cases.push(Case {
                fixture: fixture.clone(),
                mode: "auto",
            });
        }
    }
    ensure!(!cases.is_empty(), "nothing to run: no Go releases or variants given");
    Ok(cases)
}

/// The default build of each `--live` release. Its exact run in the same VM is the reference
/// for the sites `gotrace attach` must see, so that run must be in the matrix.
fn lives(args: &Args) -> Result<Vec<Live>> {
    let all = testkit::allocs_fixtures();
    args.live
        .iter()
        .map(|minor| {
            ensure!(
                args.go.contains(minor) && args.variants.iter().any(|v| v == "default"),
                "--live {minor} needs Go {minor}'s default build among --go and --variants (its exact run is the \
                 reference for the live trace)"
            );
            let fixture = all
                .iter()
                .find(|f| f.goarch == "arm64" && f.go_minor == *minor && f.variant == "default")
                .with_context(|| format!("no arm64 allocs fixture for Go {minor}: run cargo xtask fixtures"))?;
            Ok(Live {
                fixture: fixture.clone(),
            })
        })
        .collect()
}

/// Builds gotrace for arm64 and returns the path of a stripped copy (the initramfs is unpacked
/// into the VM's memory; debug info would only take room there).
pub fn cross_build(repo: &Path, out: &Path) -> Result<PathBuf> {
    let target_dir = repo.join("target/cross");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo)
        .args([
            "build",
            "--locked",
            "--profile",
            "cross",
            "-p",
            "tracer",
            "--bin",
            "gotrace",
        ])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", LINKER)
        // The host's wrappers and flags are for rustup's rustc and the host target.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .context("cannot run cargo build for arm64")?;
    ensure!(status.success(), "cargo build --target {TARGET} failed");
    let built = target_dir.join(TARGET).join("cross/gotrace");
    let stripped = out.join("gotrace");
    let status = Command::new(STRIP)
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .status()
        .with_context(|| format!("cannot run {STRIP}"))?;
    ensure!(status.success(), "{STRIP} {} failed", built.display());
    Ok(stripped)
}

/// The VM's `/init`: mounts what gotrace needs (procfs for the target, sysfs for the uprobe
/// PMU's type and the CPU count, a tmpfs for outputs), runs each case and prints its outputs
/// between markers, then powers off. The kernel's own messages stay off the console
/// (`loglevel=1`), so they cannot land inside a report.
fn init_script(cases: &[Case], lives: &[Live], packaged: bool) -> String {
    let gotrace = if packaged { VM_PACKAGED_GOTRACE } else { VM_GOTRACE };
    let mut script = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin LD_LIBRARY_PATH=/lib
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mount -t devtmpfs devtmpfs /dev
echo "{MARK} kernel $(uname -r) $(uname -m), $(nproc) CPUs"
show() {{
  echo "{MARK} begin $1 $2"
  cat "$3"
  echo
  echo "{MARK} end $1 $2"
}}
trace() {{
  GODEBUG=memprofilerate=1 timeout 300 {gotrace} run --mode "$2" --format json -o "/tmp/$1.json" -- "$3" profile {ROUNDS} "/tmp/$1.profile.json" >"/tmp/$1.log" 2>&1
  status=$?
  show "$1" stderr "/tmp/$1.log"
  show "$1" report "/tmp/$1.json"
  show "$1" profile "/tmp/$1.profile.json"
  echo "{MARK} status $1 $status"
}}
# Polls URL into FILE until it contains TEXT, for at most 60 s.
fetch_until() {{
  for i in $(seq 120); do
    timeout 20 wget -q -O "$2" "$1" && grep -q "$3" "$2" && return 0
    sleep 0.5
  done
  return 1
}}
live() {{
  GODEBUG=memprofilerate=1 "$2" loop >/dev/null 2>&1 &
  target=$!
  # Until the fork has exec'd the fixture: attaching earlier would find busybox.
  for i in $(seq 100); do
    [ "$(readlink /proc/$target/exe)" = "$2" ] && break
    sleep 0.1
  done
  timeout 120 {gotrace} attach $target -d 3s --format json -o "/tmp/$1.attach.json" >"/tmp/$1.attach.log" 2>&1
  echo "{MARK} status $1-attach $?"
  show "$1" attach-stderr "/tmp/$1.attach.log"
  show "$1" attach-report "/tmp/$1.attach.json"
  {gotrace} serve --pid $target --listen 127.0.0.1:{SERVE_PORT} --interval 300ms >"/tmp/$1.serve.log" 2>&1 &
  serve=$!
  url=http://127.0.0.1:{SERVE_PORT}
  # Until main.runSites has bytes: its series can be exported at 0 before the first sample
  # lands in a collection (seen once under TCG, 2026-12-04).
  fetch_until $url/metrics "/tmp/$1.metrics" '^gotrace_alloc_bytes_total{{function="main.runSites".*}} [1-9]'
  echo "{MARK} status $1-metrics $?"
  show "$1" metrics "/tmp/$1.metrics"
  timeout 60 wget -q -O "/tmp/$1.allocs" "$url/debug/pprof/allocs"
  echo "{MARK} status $1-pprof $?"
  base64 "/tmp/$1.allocs" >"/tmp/$1.allocs.b64"
  show "$1" pprof-base64 "/tmp/$1.allocs.b64"
  kill -9 $target
  # Reaped, as a supervisor would: a zombie still has its /proc entry.
  wait $target
  # The target's info line, not the HELP text that explains the label.
  fetch_until $url/metrics "/tmp/$1.stale" 'stale="true"}}'
  echo "{MARK} status $1-stale $?"
  show "$1" stale-metrics "/tmp/$1.stale"
  kill -INT $serve
  ( sleep 60; kill -9 $serve ) 2>/dev/null &
  watchdog=$!
  wait $serve
  echo "{MARK} status $1-serve $?"
  kill $watchdog 2>/dev/null
  show "$1" serve-stderr "/tmp/$1.serve.log"
}}
ifconfig lo 127.0.0.1 up
"#
    );
    if packaged {
        // busybox's dpkg checks Depends against the status file the initramfs carries.
        let _ = writeln!(
            script,
            "dpkg -i /gotrace.deb >/tmp/dpkg.log 2>&1\n\
             echo \"{MARK} status install $?\"\n\
             show install dpkg /tmp/dpkg.log\n\
             {gotrace} --version >/tmp/version.txt 2>&1\n\
             echo \"{MARK} status version $?\"\n\
             show install version /tmp/version.txt\n\
             {gotrace} doctor >/tmp/doctor.txt 2>&1\n\
             echo \"{MARK} status doctor $?\"\n\
             show install doctor /tmp/doctor.txt"
        );
    }
    for case in cases {
        let _ = writeln!(script, "trace {} {} {}", case.name(), case.mode, case.fixture_in_vm());
    }
    for live in lives {
        let _ = writeln!(script, "live {} {}", live.name(), live.fixture_in_vm());
    }
    let _ = writeln!(script, "echo \"{MARK} done\"\npoweroff -f");
    script
}

/// The gotrace the VM runs.
enum Gotrace {
    /// Cross-compiled here, packed as `/gotrace`.
    Binary(PathBuf),
    /// A package for `dpkg -i`, packed as `/gotrace.deb`.
    Package(PathBuf),
}

/// `/var/lib/dpkg/status` for the VM: the packages whose files the initramfs provides (the
/// arm64 glibc and libgcc of `libc6-arm64-cross`, which are Debian's libc6 and libgcc-s1 of
/// the same release), so that `dpkg -i` checks the package's `Depends` against them.
fn dpkg_status() -> Result<String> {
    let version = |package: &str| -> Result<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", package])
            .output()
            .context("cannot run dpkg-query")?;
        ensure!(out.status.success(), "dpkg-query cannot find {package}");
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mut status = String::new();
    for (package, cross) in [("libc6", "libc6-arm64-cross"), ("libgcc-s1", "libgcc-s1-arm64-cross")] {
        let _ = write!(
            status,
            "Package: {package}\nStatus: install ok installed\nPriority: optional\nSection: libs\n\
             Architecture: arm64\nVersion: {}\nDescription: from {cross}\n\n",
            version(cross)?
        );
    }
    Ok(status)
}

fn write_initramfs(path: &Path, vm: &VmParts, gotrace: &Gotrace, cases: &[Case], lives: &[Live]) -> Result<()> {
    let read = |p: &Path| fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let file = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut archive = cpio::Archive::new(std::io::BufWriter::new(file));
    for dir in ["bin", "lib", "fx", "proc", "sys", "tmp", "dev"] {
        archive.directory(dir)?;
    }
    let packaged = matches!(gotrace, Gotrace::Package(_));
    archive.file("init", 0o755, init_script(cases, lives, packaged).as_bytes())?;
    archive.file("bin/busybox", 0o755, &read(&vm.busybox)?)?;
    match gotrace {
        Gotrace::Binary(binary) => archive.file("gotrace", 0o755, &read(binary)?)?,
        Gotrace::Package(deb) => {
            for dir in [
                "var",
                "var/lib",
                "var/lib/dpkg",
                "var/lib/dpkg/info",
                "var/lib/dpkg/updates",
                "usr",
                "usr/bin",
            ] {
                archive.directory(dir)?;
            }
            archive.file("var/lib/dpkg/status", 0o644, dpkg_status()?.as_bytes())?;
            archive.file("gotrace.deb", 0o644, &read(deb)?)?;
        }
    }
    for lib in RUNTIME_LIBS {
        // Symlinks in the cross sysroot: read follows them.
        archive.file(&format!("lib/{lib}"), 0o755, &read(&Path::new(ARM64_LIBS).join(lib))?)?;
    }
    let mut packed = std::collections::BTreeSet::new();
    let fixtures = cases.iter().map(|c| (c.fixture_in_vm(), &c.fixture));
    for (in_vm, fixture) in fixtures.chain(lives.iter().map(|l| (l.fixture_in_vm(), &l.fixture))) {
        if packed.insert(in_vm.clone()) {
            archive.file(in_vm.trim_start_matches('/'), 0o755, &read(&fixture.path)?)?;
        }
    }
    let mut writer = archive.finish()?;
    std::io::Write::flush(&mut writer).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Runs the VM until it powers off, its console going to `log`; returns how long it ran.
fn boot(vm: &VmParts, initramfs: &Path, log: &Path, timeout: Duration) -> Result<Duration> {
    let console = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let started = Instant::now();
    let mut child = Command::new(QEMU)
        // cortex-a57: ARMv8.0, what Go's arm64 port requires (GOARM64=v8.0), and cheaper to
        // emulate than `max` (no pointer authentication to compute).
        .args(["-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "2048"])
        .args(["-accel", "tcg,thread=multi", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyAMA0 loglevel=1 panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(console.try_clone().context("cannot share the console log")?)
        .stderr(console)
        .spawn()
        .with_context(|| format!("cannot start {QEMU}"))?;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the VM")? {
            ensure!(
                status.success(),
                "{QEMU} failed ({status}); console log: {}",
                log.display()
            );
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = fs::read(log).unwrap_or_default();
            let console = String::from_utf8_lossy(&console).replace('\r', "");
            bail!(
                "the VM did not power off within {} s; console log: {}; its end:\n{}",
                timeout.as_secs(),
                log.display(),
                tail(&console, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the init script printed: per case and part (`stderr`, `report`, `profile`) the text,
/// per case the exit status.
#[derive(Default)]
struct Outputs {
    kernel: String,
    parts: std::collections::HashMap<(String, String), String>,
    statuses: std::collections::HashMap<String, i32>,
    done: bool,
}

impl Outputs {
    /// The text of one part of a run, empty when the VM never printed it.
    fn part(&self, run: &str, part: &str) -> String {
        self.parts
            .get(&(run.to_owned(), part.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Keeps the parts of a run in `out`, as `RUN.PART`, for whoever reads a failure.
    fn save(&self, run: &str, parts: &[&str], out: &Path) {
        for part in parts {
            let _ = fs::write(out.join(format!("{run}.{part}")), self.part(run, part));
        }
    }
}

fn parse_console(console: &str) -> Outputs {
    let mut outputs = Outputs::default();
    let mut open: Option<((String, String), String)> = None;
    for line in console.lines() {
        let marked = line.strip_prefix(MARK).map(str::trim);
        if let Some((key, text)) = &mut open {
            if marked == Some(&format!("end {} {}", key.0, key.1)) {
                let (key, text) = open.take().unwrap_or_default();
                outputs.parts.insert(key, text);
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        let Some(marked) = marked else { continue };
        let words: Vec<&str> = marked.split_whitespace().collect();
        match words.as_slice() {
            ["kernel", ..] => marked.trim_start_matches("kernel ").clone_into(&mut outputs.kernel),
            ["begin", case, part] => open = Some((((*case).to_owned(), (*part).to_owned()), String::new())),
            ["status", case, status] => {
                outputs
                    .statuses
                    .insert((*case).to_owned(), status.parse().unwrap_or(-1));
            }
            ["done"] => outputs.done = true,
            _ => {}
        }
    }
    outputs
}

/// The problems of the package's installation: dpkg failed, or the installed gotrace does not
/// run or is not an arm64 build.
fn check_install(outputs: &Outputs, out: &Path) -> Vec<String> {
    outputs.save("install", &["dpkg", "version", "doctor"], out);
    let mut problems = Vec::new();
    match outputs.statuses.get("install") {
        Some(0) => {}
        Some(status) => problems.push(format!(
            "dpkg -i exited with {status}:\n{}",
            outputs.part("install", "dpkg")
        )),
        None => problems.push("dpkg -i never ran".to_owned()),
    }
    let version = outputs.part("install", "version");
    let first = version.lines().next().unwrap_or_default();
    if outputs.statuses.get("version") != Some(&0) || !first.contains("aarch64-unknown-linux-gnu") {
        problems.push(format!("{VM_PACKAGED_GOTRACE} --version: {version}"));
    }
    // As root on an arm64 kernel, doctor loads every probe into that kernel's verifier.
    let doctor = outputs.part("install", "doctor");
    if outputs.statuses.get("doctor") != Some(&0) || !doctor.contains("programs passed this kernel's verifier") {
        problems.push(format!("{VM_PACKAGED_GOTRACE} doctor: {doctor}"));
    }
    problems
}

/// The problems of one case: a failed run, unreadable outputs, or disagreement with Go.
fn check_case(case: &Case, outputs: &Outputs, out: &Path) -> Vec<String> {
    let name = case.name();
    let part = |p: &str| outputs.part(&name, p);
    outputs.save(&name, &["stderr", "report", "profile"], out);
    match outputs.statuses.get(&name) {
        Some(0) => {}
        Some(status) => return vec![format!("gotrace exited with {status}:\n{}", part("stderr"))],
        None => return vec!["never ran".to_owned()],
    }
    let parse = |p: &str| serde_json::from_str::<Value>(&part(p)).map_err(|e| format!("the {p} is not JSON: {e}"));
    let (report, profile) = match (parse("report"), parse("profile")) {
        (Ok(report), Ok(profile)) => (report, profile),
        (Err(e), _) | (_, Err(e)) => return vec![e],
    };
    let mut problems = Vec::new();
    if report["target"]["arch"] != "aarch64" {
        problems.push(format!("target arch {} instead of aarch64", report["target"]["arch"]));
    }
    problems.extend(match case.mode {
        "exact" => ground_truth::exact_mismatches(&case.fixture, &report, &profile, ROUNDS),
        _ if case.fixture.has_symtab() => ground_truth::sampler_mismatches(&case.fixture, &report, &profile),
        _ => span_mismatches(&report),
    });
    problems
}

/// Auto mode on a stripped build: span mode, since the rate cannot be found without a symbol
/// table. Span estimates are not exact on a run this short (a few hundred refills), so the
/// check is that it ran and estimated the fixture's sites, not how well.
fn span_mismatches(report: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if report["mode"] != "span" || report["estimated"] != true || report["totals"]["dropped"] != 0 {
        problems.push(format!(
            "auto on a stripped build: mode {}, estimated {}, dropped {}",
            report["mode"], report["estimated"], report["totals"]["dropped"]
        ));
    }
    let site_bytes: u64 = report["callsites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["function"] == "main.runSites")
        .filter_map(|c| c["bytes"].as_u64())
        .sum();
    if site_bytes == 0 {
        problems.push("span mode estimated no bytes in main.runSites".to_owned());
    }
    problems
}

/// The problems of one live trace: `gotrace attach` saw the running fixture's sites with their
/// types, `gotrace serve` exported them (metrics and a profile `go tool pprof` reads), and
/// kept serving them, marked stale, after the target was killed.
fn check_live(live: &Live, outputs: &Outputs, out: &Path) -> Vec<String> {
    let name = live.name();
    let part = |p: &str| outputs.part(&name, p);
    outputs.save(
        &name,
        &[
            "attach-stderr",
            "attach-report",
            "metrics",
            "stale-metrics",
            "serve-stderr",
        ],
        out,
    );
    let mut problems = Vec::new();
    for step in ["attach", "metrics", "pprof", "stale", "serve"] {
        let status = outputs.statuses.get(&format!("{name}-{step}"));
        if status != Some(&0) {
            problems.push(format!(
                "{step}: status {status:?}\nattach: {}\nserve: {}",
                part("attach-stderr"),
                part("serve-stderr")
            ));
        }
    }
    if !problems.is_empty() {
        return problems;
    }

    match serde_json::from_str::<Value>(&part("attach-report")) {
        Ok(report) => {
            // The sites the same binary's ground-truth run saw (`loop` runs the same sites).
            let exact_run = format!("go{}-default-exact", live.fixture.go_minor);
            let expected = outputs
                .parts
                .get(&(exact_run, "report".to_owned()))
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .map(|exact| site_lines(&exact))
                .unwrap_or_default();
            let seen = site_lines(&report);
            let missing: Vec<_> = expected.difference(&seen).collect();
            if expected.is_empty() {
                problems.push("attach: the reference exact run has no site lines".to_owned());
            }
            if seen.len() < 15 || !missing.is_empty() {
                problems.push(format!("attach: {} site lines; missing {missing:?}", seen.len()));
            }
            let typed = report["callsites"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "main.Point" && c["kind"] == "new"));
            if report["mode"] != "exact" || report["target"]["arch"] != "aarch64" || report["totals"]["dropped"] != 0 {
                problems.push(format!(
                    "attach: mode {}, arch {}, dropped {}",
                    report["mode"], report["target"]["arch"], report["totals"]["dropped"]
                ));
            }
            if !typed {
                problems.push("attach: no main.Point allocated with new".to_owned());
            }
        }
        Err(e) => problems.push(format!("attach: the report is not JSON: {e}")),
    }

    let metrics = part("metrics");
    let bytes_of_run_sites = metrics.lines().any(|l| {
        l.starts_with("gotrace_alloc_bytes_total{function=\"main.runSites\"")
            && l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
    });
    if !bytes_of_run_sites || !metrics.contains("mode=\"go-sampler\"") || !metrics.contains("stale=\"false\"") {
        problems.push(format!(
            "serve: no live go-sampler bytes for main.runSites in /metrics:\n{}",
            tail(&metrics, 20)
        ));
    }
    let stale = part("stale-metrics");
    if !stale.contains("gotrace_attached_targets 0") || !stale.contains("function=\"main.runSites\"") {
        problems.push(format!(
            "serve: after SIGKILL of the target, /metrics lost its data:\n{}",
            tail(&stale, 20)
        ));
    }

    problems.extend(check_profile(live, &part("pprof-base64"), out));
    problems
}

/// The `/debug/pprof/allocs` the VM printed in base64: decoded here and read by the fixture's
/// own `go tool pprof`, which must find the fixture's sites in it.
fn check_profile(live: &Live, encoded: &str, out: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let name = live.name();
    let encoded: String = encoded.split_whitespace().collect();
    match decode_base64(&encoded) {
        Some(profile) => {
            let path = out.join(format!("{name}.allocs.pb.gz"));
            let _ = fs::write(&path, profile);
            let top = live
                .fixture
                .go_command()
                .args(["tool", "pprof", "-top", "-sample_index=alloc_space"])
                .arg(&path)
                .output();
            match top {
                Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("main.runSites") => {}
                Ok(o) => problems.push(format!(
                    "go tool pprof -top on /debug/pprof/allocs: {}\n{}{}",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )),
                Err(e) => problems.push(format!("cannot run go tool pprof: {e}")),
            }
        }
        None => problems.push("the profile's base64 does not decode".to_owned()),
    }
    problems
}

/// The (function, line) pairs with allocations in the fixture's site functions.
fn site_lines(report: &Value) -> std::collections::BTreeSet<(String, u64)> {
    report["callsites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["allocations"].as_u64() > Some(0))
        .filter_map(|c| {
            let function = c["function"].as_str()?;
            let site = matches!(function, "main.runSites" | "main.newPoint" | "main.newPointInline");
            site.then(|| (function.to_owned(), c["line"].as_u64().unwrap_or_default()))
        })
        .collect()
}

/// Standard base64 (RFC 4648, with padding), as busybox's `base64` writes it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 {
            return None;
        }
        let mut group = 0u32;
        for &c in &chunk[..4 - padding] {
            group = group << 6 | value(c)?;
        }
        group <<= 6 * padding;
        let [_, a, b, c] = group.to_be_bytes();
        out.extend_from_slice(&[a, b, c][..3 - padding]);
    }
    Some(out)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests;
