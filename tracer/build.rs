//! Builds the eBPF probes (`tracer-ebpf`) from source and hands the object to this crate.
//!
//! The object is built by a second, nested cargo:
//!
//! ```text
//! RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 PATH=<workspace>/.cache/tools/bin:$PATH \
//! AYA_BPF_TARGET_ARCH=<this crate's target arch> \
//!     cargo build -p tracer-ebpf --bins --profile bpf --target bpfel-unknown-none \
//!     -Z build-std=core --target-dir <workspace>/target/ebpf-<arch>
//! ```
//!
//! - Debian's rustc, because `-Z build-std=core` needs the core sources and the rustup toolchains
//!   here have no `rust-src`; `RUSTC_BOOTSTRAP=1` unlocks `-Z` on that stable compiler.
//! - bpf-linker, which links the bpf target, comes from `.cache/tools/bin` (`scripts/setup.sh`).
//! - A target dir of its own, because the outer cargo holds the lock on `target/` while this
//!   script runs (a nested build there would wait forever), and so that the bpf artefacts never
//!   mix with the host's. One per target architecture (`x86_64`, `aarch64`).
//! - The `bpf` profile (root `Cargo.toml`) rather than `release`: the probes need `panic =
//!   "abort"` and full debug info, and the user-space release build should not inherit either.
//!
//! The nested cargo keeps its own fingerprints in `target/ebpf-<arch>`, so when nothing changed it only
//! checks them (well under a second); `rerun-if-changed` keeps this script from running at all
//! unless a probe input changed, `target/ebpf-<arch>` was deleted, or git's HEAD moved (the commit
//! `gotrace --version` prints, see `emit_build_info`). The object is copied into
//! `OUT_DIR` and its path passed to the crate as `GOTRACE_EBPF_OBJECT`.
//!
//! `scripts/clippy-ebpf.sh` lints the probes for the bpf target the same way.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};

/// Debian's rustc-web (1.96, knows bpfel-unknown-none, core sources in rust-web-src).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
/// Where rust-web-src puts the library sources that `-Z build-std` compiles.
const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_PROFILE: &str = "bpf";
const EBPF_PACKAGE: &str = "tracer-ebpf";
/// File name of the object in `OUT_DIR`, and the env var `src/ebpf.rs` reads its path from.
const OBJECT_NAME: &str = "tracer-ebpf.bpf.o";
const OBJECT_ENV: &str = "GOTRACE_EBPF_OBJECT";
/// Marks a complete nested build; see [`write_stamp`].
const STAMP_NAME: &str = "gotrace-build.stamp";

/// Variables the outer cargo sets for this script (or a user set for the host build) that must
/// not reach the nested build:
/// - `RUSTC*`, `RUSTDOC`: the outer (rustup 1.95) tools, and the wrappers `cargo clippy` or
///   sccache install; the clippy wrapper would run rustup's clippy-driver over Debian's rustc.
/// - `RUSTFLAGS` and friends: host flags (`CARGO_ENCODED_RUSTFLAGS` even wins over `RUSTFLAGS`);
///   something like `-C target-cpu=native` breaks the bpf target.
/// - target and target-dir overrides: the nested build picks its own.
/// - per-script facts (`TARGET`, `OUT_DIR`, `PROFILE`, ...): the nested cargo sets its own for
///   its build scripts, but would not clear ours.
const SCRUBBED_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_LINKER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_ENCODED_RUSTDOCFLAGS",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_DIR",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "NUM_JOBS",
    "OPT_LEVEL",
    "DEBUG",
    "PROFILE",
];

/// Prefixes of per-package variables the outer cargo sets for this script. The nested cargo
/// sets these for each of its own build scripts but only the ones that apply, so ours would
/// leak through: `CARGO_CFG_TARGET_FAMILY=unix` or the host's `CARGO_CFG_TARGET_FEATURE`, say,
/// into `compiler_builtins`' build script for a target that has neither.
const SCRUBBED_PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_", "CARGO_PKG_", "CARGO_MANIFEST_", "DEP_"];

fn main() -> ExitCode {
    let Err(err) = build() else {
        return ExitCode::SUCCESS;
    };
    if err.is::<NestedBuildFailed>() {
        // The compiler's diagnostics are in our stderr (the nested cargo writes there), and
        // cargo shows a script's stderr only when the script itself fails. The summary goes
        // last, under them.
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    } else {
        // Anything else (typically: the toolchain is not installed) has nothing useful in
        // stderr. `cargo::error` lines are shown on their own, as `error: tracer@...: ...`, and
        // fail the build after the script exits, without cargo's "process didn't exit
        // successfully" dump around them.
        for line in format!("{err:#}").lines() {
            println!("cargo::error={line}");
        }
        ExitCode::SUCCESS
    }
}

/// The nested `cargo build` of the probes failed; its output explains why.
#[derive(Debug)]
struct NestedBuildFailed(String);

impl std::fmt::Display for NestedBuildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NestedBuildFailed {}

fn build() -> Result<()> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("tracer's manifest directory has no parent (expected the workspace root)")?
        .to_path_buf();
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let tools_bin = workspace.join(".cache/tools/bin");
    let bpf_linker = tools_bin.join("bpf-linker");

    emit_build_info(&workspace)?;

    check_toolchain(&bpf_linker)?;
    let bpf_target_arch = bpf_target_arch()?;

    // One target dir per architecture: the probes differ by `bpf_target_arch`, and a shared dir
    // would rebuild them every time the host and the arm64 cross build alternate.
    let target_dir = workspace.join(format!("target/ebpf-{bpf_target_arch}"));
    let built_dir = target_dir.join(BPF_TARGET).join(BPF_PROFILE);
    let stamp = built_dir.join(STAMP_NAME);
    for input in [
        workspace.join("tracer-ebpf/src"),
        workspace.join("tracer-ebpf/build.rs"),
        workspace.join("tracer-ebpf/Cargo.toml"),
        workspace.join("tracer-common/src"),
        workspace.join("tracer-common/Cargo.toml"),
        // Pins, the `bpf` profile and the resolved versions of the eBPF-side crates live here.
        workspace.join("Cargo.toml"),
        workspace.join("Cargo.lock"),
        PathBuf::from(DEBIAN_RUSTC),
        bpf_linker.clone(),
        // Missing when target/ebpf-<arch> was deleted: then this script runs again and rebuilds it.
        stamp.clone(),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--package", EBPF_PACKAGE, "--bins"])
        .args(["--profile", BPF_PROFILE, "--target", BPF_TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in env::vars_os() {
        if is_scrubbed(&name) {
            cmd.env_remove(&name);
        }
    }
    cmd.env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path_with(&tools_bin)?)
        // Read by aya_build::emit_bpf_target_arch_cfg in aya-ebpf's and tracer-ebpf's build
        // scripts: the probes must read the pt_regs of the machine gotrace runs on, which is this
        // crate's target, not the build host.
        .env("AYA_BPF_TARGET_ARCH", &bpf_target_arch)
        // The nested cargo prints only progress and diagnostics. Our stdout is parsed by cargo
        // as build-script instructions, so all of it goes to stderr, which cargo shows when
        // the build fails (or with -vv).
        .stdout(Stdio::from(io::stderr()));
    // CARGO_MAKEFLAGS stays: it names the outer cargo's jobserver, so the nested build takes
    // its share of the `-j` slots instead of starting another full set of rustc processes.

    let status = cmd
        .status()
        .with_context(|| format!("could not run {}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(NestedBuildFailed(format!(
            "building the eBPF probes failed ({status}); the nested cargo's output is above.\n\
             To run that build by hand, from {workspace}:\n  \
             RUSTC={DEBIAN_RUSTC} RUSTC_BOOTSTRAP=1 PATH={tools}:$PATH \
             AYA_BPF_TARGET_ARCH={bpf_target_arch} cargo build -p {EBPF_PACKAGE} --bins \
             --profile {BPF_PROFILE} --target {BPF_TARGET} -Z build-std=core \
             --target-dir {target_dir}",
            workspace = workspace.display(),
            tools = tools_bin.display(),
            target_dir = target_dir.display(),
        ))
        .into());
    }

    let object = out_dir.join(OBJECT_NAME);
    copy_if_changed(&built_dir.join(EBPF_PACKAGE), &object)?;
    write_stamp(&stamp)?;
    println!("cargo:rustc-env={OBJECT_ENV}={}", object.display());
    Ok(())
}

/// Fails with one message that says what to do when the eBPF toolchain is not installed.
fn check_toolchain(bpf_linker: &Path) -> Result<()> {
    let missing: Vec<String> = [
        (Path::new(DEBIAN_RUSTC), "Debian's rustc (package rustc-web)"),
        (
            Path::new(DEBIAN_RUST_SRC),
            "Debian's Rust library sources (package rust-web-src)",
        ),
        (bpf_linker, "bpf-linker"),
    ]
    .into_iter()
    .filter(|(path, _)| !path.exists())
    .map(|(path, what)| format!("  {what}: {} not found", path.display()))
    .collect();
    if !missing.is_empty() {
        bail!(
            "the eBPF toolchain is not installed, so the eBPF probes cannot be built:\n{}\n\
             Run scripts/setup.sh (from the repository root) once, then build again.",
            missing.join("\n")
        );
    }
    Ok(())
}

/// The `bpf_target_arch` aya should compile the probes for: the architecture of this crate's
/// target, since the probes run in that machine's kernel and read its `pt_regs`.
fn bpf_target_arch() -> Result<String> {
    let arch = env_var("CARGO_CFG_TARGET_ARCH")?;
    match arch.as_str() {
        // The probes read Go's register ABI, which they know for these two (see tracer-ebpf).
        // Both are little-endian, hence bpfel.
        "x86_64" | "aarch64" => Ok(arch),
        _ => bail!("gotrace's eBPF probes support x86_64 and aarch64 targets only, not {arch}"),
    }
}

fn is_scrubbed(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    SCRUBBED_VARS.contains(&name) || SCRUBBED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `PATH` with `dir` in front, so the bpf target's linker invocation finds bpf-linker.
fn path_with(dir: &Path) -> Result<OsString> {
    let rest = env::var_os("PATH").unwrap_or_default();
    env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&rest)))
        .with_context(|| format!("cannot put {} on PATH", dir.display()))
}

/// Copies the built object into `OUT_DIR` unless it is already there unchanged.
///
/// The copy (rather than a path into `target/ebpf-<arch>`) gives each outer build its own object: a
/// nested build for another profile or target cannot swap it behind this crate's back. Leaving
/// an identical copy alone keeps its mtime, so cargo does not recompile this crate for it.
fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let new = fs::read(from).with_context(|| {
        format!(
            "the eBPF build succeeded but its object {} cannot be read",
            from.display()
        )
    })?;
    if fs::read(to).is_ok_and(|old| old == new) {
        return Ok(());
    }
    fs::write(to, &new).with_context(|| format!("cannot write {}", to.display()))
}

/// Creates the stamp file in the nested target dir, dated 1970.
///
/// Cargo reruns a build script when a `rerun-if-changed` file is missing or newer than the
/// script's last start. Watching the object itself would rerun this script on every build, since
/// the nested build writes it while the script runs; the stamp is old by construction, so it
/// only triggers when it is gone, i.e. when `target/ebpf-<arch>` was deleted.
fn write_stamp(path: &Path) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.set_modified(SystemTime::UNIX_EPOCH)
        .with_context(|| format!("cannot set the mtime of {}", path.display()))
}

/// What `gotrace --version` says about this build: `GOTRACE_COMMIT` and `GOTRACE_COMMIT_DATE`
/// from git (or from the environment when building outside a checkout, e.g. from a source
/// tarball), `GOTRACE_BUILD_DATE` (today in UTC, or `SOURCE_DATE_EPOCH`'s day for a reproducible
/// build) and `GOTRACE_TARGET`.
///
/// This script reruns when HEAD moves (the files watched below), so the commit stays current
/// without rerunning on every build.
fn emit_build_info(workspace: &Path) -> Result<()> {
    for var in ["GOTRACE_COMMIT", "GOTRACE_COMMIT_DATE", "SOURCE_DATE_EPOCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").current_dir(workspace).args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let commit = env::var("GOTRACE_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let commit_date = env::var("GOTRACE_COMMIT_DATE")
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%cs", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        // Only paths that exist: a missing one would rerun this script (and relink gotrace) on
        // every build. A checkout rewrites HEAD (the worktree's own, in a linked worktree); a
        // commit writes the branch's loose ref, under the common dir's `refs/heads` (a watched
        // directory counts any file in it), even when the ref was packed before.
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map_or_else(|| git_dir.clone(), PathBuf::from);
        let watched = [
            git_dir.join("HEAD"),
            common.join("packed-refs"),
            common.join("refs/heads"),
        ];
        for path in watched.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    let now = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=GOTRACE_COMMIT={commit}");
    println!("cargo:rustc-env=GOTRACE_COMMIT_DATE={commit_date}");
    println!("cargo:rustc-env=GOTRACE_BUILD_DATE={}", civil_date(now / 86_400));
    println!("cargo:rustc-env=GOTRACE_TARGET={}", env_var("TARGET")?);
    Ok(())
}

/// `YYYY-MM-DD` of a day counted from 1970-01-01 (the proleptic Gregorian calendar, by Howard
/// Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> String {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn env_var(name: &str) -> Result<String> {
    env::var(name).with_context(|| format!("{name} is not set (is this running under cargo?)"))
}
