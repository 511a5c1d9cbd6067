//! `cargo xtask dist`: the release artifacts in `target/dist/`, for amd64 and arm64.
//!
//! - `gotrace_VERSION_ARCH.deb`, built with Debian's own `dpkg-deb` from a tree this module
//!   lays out. Not cargo-deb: it would be one more tool to build on every machine, and its
//!   `Depends` come from `dpkg-shlibdeps`, which needs the target architecture's libraries
//!   installed, which the arm64 package cannot have here. `Depends` is computed instead from
//!   the binary's own symbol versions ([`elf::Facts`]), the same facts `dpkg-shlibdeps` reads.
//! - `gotrace-VERSION-ARCH-linux.tar.gz`: the same files, unpackaged.
//! - `gotrace-VERSION-oci/` and `gotrace-VERSION-oci.tar`: the container image for both
//!   architectures ([`oci`]).
//! - `SHA256SUMS`, in `sha256sum -c` format.
//!
//! Both binaries link glibc dynamically; the newest glibc symbol version they need is checked
//! against [`GLIBC_FLOOR`], which README states. `--check` tests the artifacts ([`check`]).

mod archive;
mod check;
mod elf;
mod oci;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};

use crate::arm64;
use elf::{Facts, SymbolVersion};

/// The oldest glibc gotrace runs on: the newest `GLIBC_` symbol version either binary needs
/// (`__libc_start_main@GLIBC_2.34` and the pthread functions glibc 2.34 moved into libc).
/// That is Debian 12, Ubuntu 22.04, RHEL 9 and their successors. A build needing more fails.
pub const GLIBC_FLOOR: [u32; 2] = [2, 34];

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Then test the artifacts: checksums, each package's control data and contents, the amd64
    /// package unpacked into an empty directory running --version and inspect, the tarballs,
    /// the image layout (digests, sizes, configs, platforms; skopeo reads it) and its amd64
    /// image running gotrace in its own minimal root (needs root for chroot)
    #[arg(long)]
    check: bool,
    /// Where the artifacts go
    #[arg(long, default_value = "target/dist")]
    out: PathBuf,
}

/// What the packages are built from, for one architecture.
struct Built {
    arch: &'static str,
    binary: PathBuf,
    facts: Facts,
}

pub fn run(repo: &Path, args: &Args) -> Result<()> {
    let started = Instant::now();
    ensure!(
        std::env::consts::ARCH == "x86_64",
        "cargo xtask dist runs on x86_64 hosts (it cross-compiles arm64 with the toolchain scripts/setup.sh installs)"
    );
    let out = repo.join(&args.out);
    let work = repo.join("target/dist-work");
    // Emptied first, so that SHA256SUMS covers exactly this build: only a directory that is
    // missing, empty, or an earlier output (it has SHA256SUMS), never whatever --out names.
    let earlier_output = out.join("SHA256SUMS").is_file();
    let empty = std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_none());
    ensure!(
        earlier_output || empty,
        "{} exists and is not an earlier `cargo xtask dist` output: choose another --out",
        out.display()
    );
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&work);
    for dir in [&out, &work] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let revision = git(repo, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    // Every archive entry is dated with the commit, so a rebuild of it gives the same bytes.
    let mtime: u64 = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(repo, &["log", "-1", "--format=%ct"]))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);

    eprintln!("dist: building gotrace {VERSION} for amd64 (release) and arm64 (cross)");
    let built = [build_amd64(repo, &work)?, build_arm64(repo, &work)?];
    let generated = generate(&built[0].binary, &work)?;
    let licenses: Vec<(&str, Vec<u8>)> = ["LICENSE-MIT", "LICENSE-APACHE"]
        .into_iter()
        .map(|name| read(&repo.join(name)).map(|text| (name, text)))
        .collect::<Result<_>>()?;
    let readme = read(&repo.join("README.md"))?;

    let mut artifacts = Vec::new();
    for b in &built {
        check_glibc_floor(b)?;
        let deb = out.join(format!("gotrace_{VERSION}_{}.deb", b.arch));
        build_deb(b, &generated, &licenses, &readme, &work, &deb, mtime)?;
        artifacts.push(deb);
        let tarball = out.join(format!("gotrace-{VERSION}-{}-linux.tar.gz", b.arch));
        let entries = tarball_entries(b, &generated, &licenses, &readme)?;
        write(&tarball, &archive::gzip(&archive::tar(&entries, mtime)?)?)?;
        artifacts.push(tarball);
    }

    eprintln!("dist: writing the OCI image (amd64, arm64)");
    let layout = out.join(format!("gotrace-{VERSION}-oci"));
    let platforms: Vec<oci::Platform> = built
        .iter()
        .map(|b| oci::Platform {
            arch: b.arch,
            gotrace: b.binary.clone(),
        })
        .collect();
    oci::write_layout(repo, &layout, &platforms, VERSION, &revision, mtime, &licenses)?;
    let oci_tar = out.join(format!("gotrace-{VERSION}-oci.tar"));
    write(&oci_tar, &oci::archive_layout(&layout, mtime)?)?;
    artifacts.push(oci_tar);

    let mut sums = String::new();
    for artifact in &artifacts {
        let name = artifact
            .file_name()
            .context("an artifact without a name")?
            .to_string_lossy();
        let _ = writeln!(sums, "{}  {name}", archive::sha256(&read(artifact)?));
    }
    write(&out.join("SHA256SUMS"), sums.as_bytes())?;

    eprintln!(
        "dist: {} artifacts in {} ({:.0} s), glibc floor {}:",
        artifacts.len() + 2,
        out.display(),
        started.elapsed().as_secs_f64(),
        GLIBC_FLOOR.map(|n| n.to_string()).join(".")
    );
    for artifact in artifacts.iter().chain([&layout, &out.join("SHA256SUMS")]) {
        eprintln!("  {:>9.1} MiB  {}", mib(size_of(artifact)), artifact.display());
    }
    if args.check {
        check::run(
            repo,
            &out,
            &built.iter().map(|b| (b.arch, b.binary.clone())).collect::<Vec<_>>(),
            &revision,
        )?;
    }
    Ok(())
}

fn build_amd64(repo: &Path, work: &Path) -> Result<Built> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo)
        .args(["build", "--release", "--locked", "-p", "tracer", "--bin", "gotrace"])
        .status()
        .context("cannot run cargo build")?;
    ensure!(status.success(), "cargo build --release failed");
    let dir = work.join("amd64");
    std::fs::create_dir_all(&dir)?;
    let binary = dir.join("gotrace");
    // Debug info and symbols stay in target/release; the shipped binary has neither (Rust's
    // panic messages keep their file and line, which come from the code, not the symbols).
    let status = Command::new("strip")
        .arg("-o")
        .arg(&binary)
        .arg(repo.join("target/release/gotrace"))
        .status()
        .context("cannot run strip (binutils)")?;
    ensure!(status.success(), "strip failed");
    let facts = Facts::read(&binary)?;
    Ok(Built {
        arch: "amd64",
        binary,
        facts,
    })
}

fn build_arm64(repo: &Path, work: &Path) -> Result<Built> {
    let dir = work.join("arm64");
    std::fs::create_dir_all(&dir)?;
    let binary = arm64::cross_build(repo, &dir)?;
    let facts = Facts::read(&binary)?;
    Ok(Built {
        arch: "arm64",
        binary,
        facts,
    })
}

/// Man pages and completions, from the amd64 binary's own command line (`gotrace generate`);
/// they are the same for both architectures.
struct Generated {
    /// `gotrace.1`, `gotrace-attach.1`, …
    man: Vec<(String, Vec<u8>)>,
    bash: Vec<u8>,
    zsh: Vec<u8>,
    fish: Vec<u8>,
}

fn generate(gotrace: &Path, work: &Path) -> Result<Generated> {
    let dir = work.join("generated");
    for what in ["man", "bash", "zsh", "fish"] {
        let output = Command::new(gotrace)
            .args(["generate", what])
            .arg(&dir)
            .output()
            .with_context(|| format!("cannot run {}", gotrace.display()))?;
        ensure!(
            output.status.success(),
            "gotrace generate {what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut man = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            let name = path.file_name().context("no name")?.to_string_lossy().into_owned();
            man.push((name, read(&path)?));
        }
    }
    man.sort();
    ensure!(
        man.iter().any(|(n, _)| n == "gotrace.1"),
        "gotrace generate man wrote no gotrace.1"
    );
    Ok(Generated {
        man,
        bash: read(&dir.join("gotrace.bash"))?,
        zsh: read(&dir.join("_gotrace"))?,
        fish: read(&dir.join("gotrace.fish"))?,
    })
}

fn check_glibc_floor(built: &Built) -> Result<()> {
    let floor = SymbolVersion(GLIBC_FLOOR.to_vec());
    let needed = built.facts.glibc_floor().with_context(|| {
        format!(
            "the {} binary needs no versioned glibc symbol: is it static?",
            built.arch
        )
    })?;
    ensure!(
        needed <= floor,
        "the {} binary needs glibc {needed}, newer than the stated floor {floor}: raise GLIBC_FLOOR \
         and README's Install section together, or find the symbol that needs it (objdump -T)",
        built.arch
    );
    Ok(())
}

/// `Depends` from the libraries the binary names and the versions it needs of them.
fn depends(facts: &Facts) -> Result<String> {
    let mut libc = None;
    let mut libgcc = None;
    for library in &facts.needed {
        let newest = |prefix: &str| facts.versions.get(library).and_then(|v| v.get(prefix)).cloned();
        match library.as_str() {
            "libc.so.6" | "libm.so.6" | "libpthread.so.0" | "libdl.so.2" | "librt.so.1" => {
                libc = libc.max(newest("GLIBC"));
            }
            l if l.starts_with("ld-linux") => libc = libc.max(newest("GLIBC")),
            "libgcc_s.so.1" => libgcc = libgcc.max(newest("GCC").or(Some(SymbolVersion(vec![3, 0])))),
            other => bail!("no Debian package is known for {other}, which gotrace now links; add it to depends()"),
        }
    }
    let mut depends = vec![format!(
        "libc6 (>= {})",
        libc.context("gotrace names no glibc library")?
    )];
    if let Some(version) = libgcc {
        depends.push(format!("libgcc-s1 (>= {version})"));
    }
    Ok(depends.join(", "))
}

fn control(arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: gotrace
Version: {VERSION}
Architecture: {arch}
Maintainer: gotrace developers <gotrace@example.invalid>
Installed-Size: {installed_kib}
Depends: {depends}
Section: devel
Priority: optional
Homepage: https://example.invalid/gotrace
Description: see where a running Go program allocates heap memory
 gotrace attaches eBPF uprobes to an unmodified, already-running Go program
 and shows each allocating line of code, the type it allocates, how often and
 how big: as a table, JSON, pprof, flame graphs or Prometheus metrics. It
 needs no recompiling and no restart, and can run as a sidecar or node agent.
 Needs Linux 5.17 or later and root (or CAP_BPF, CAP_PERFMON and, on some
 kernels, CAP_SYS_ADMIN); `gotrace doctor` says what this host lacks.
"
    )
}

/// `debian/copyright` in the machine-readable format (DEP-5).
fn copyright() -> String {
    let mit = include_str!("../../../LICENSE-MIT");
    let indented: Vec<String> = mit
        .lines()
        .skip_while(|l| !l.starts_with("Permission"))
        .map(|l| if l.is_empty() { " .".to_owned() } else { format!(" {l}") })
        .collect();
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: gotrace
Source: https://example.invalid/gotrace

Files: *
Copyright: 2026 the gotrace developers
License: MIT or Apache-2.0
Comment: gotrace is a Rust program; the crates it is built from are statically linked
 into it under their own licences (MIT, Apache-2.0 or compatible ones).

License: MIT
{}

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0; it is also in LICENSE-APACHE next to
 this file.
",
        indented.join("\n")
    )
}

/// The package's files, as (path, mode, contents), without `DEBIAN/`.
fn package_files(
    built: &Built,
    generated: &Generated,
    licenses: &[(&str, Vec<u8>)],
    readme: &[u8],
) -> Result<Vec<(String, u32, Vec<u8>)>> {
    let mut files = vec![("usr/bin/gotrace".to_owned(), 0o755, read(&built.binary)?)];
    for (name, roff) in &generated.man {
        // Debian policy 12.1: man pages are gzip-compressed.
        files.push((format!("usr/share/man/man1/{name}.gz"), 0o644, archive::gzip(roff)?));
    }
    files.push((
        "usr/share/bash-completion/completions/gotrace".to_owned(),
        0o644,
        generated.bash.clone(),
    ));
    files.push((
        "usr/share/zsh/vendor-completions/_gotrace".to_owned(),
        0o644,
        generated.zsh.clone(),
    ));
    files.push((
        "usr/share/fish/vendor_completions.d/gotrace.fish".to_owned(),
        0o644,
        generated.fish.clone(),
    ));
    files.push((
        "usr/share/doc/gotrace/copyright".to_owned(),
        0o644,
        copyright().into_bytes(),
    ));
    files.push(("usr/share/doc/gotrace/README.md".to_owned(), 0o644, readme.to_vec()));
    for (name, text) in licenses {
        files.push((format!("usr/share/doc/gotrace/{name}"), 0o644, text.clone()));
    }
    Ok(files)
}

fn build_deb(
    built: &Built,
    generated: &Generated,
    licenses: &[(&str, Vec<u8>)],
    readme: &[u8],
    work: &Path,
    deb: &Path,
    mtime: u64,
) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let stage = work.join(format!("deb-{}", built.arch));
    let files = package_files(built, generated, licenses, readme)?;
    let mut installed = 0;
    for (path, mode, data) in &files {
        let target = stage.join(path);
        std::fs::create_dir_all(target.parent().context("a path without a parent")?)?;
        write(&target, data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode))?;
        installed += (data.len() as u64).div_ceil(1024);
    }
    let depends = depends(&built.facts)?;
    std::fs::create_dir_all(stage.join("DEBIAN"))?;
    write(
        &stage.join("DEBIAN/control"),
        control(built.arch, &depends, installed).as_bytes(),
    )?;
    // `dpkg --verify` and debsums check the installed files against these.
    let md5sums = Command::new("md5sum")
        .args(files.iter().map(|(path, _, _)| path.as_str()))
        .current_dir(&stage)
        .output()
        .context("cannot run md5sum")?;
    ensure!(md5sums.status.success(), "md5sum failed");
    write(&stage.join("DEBIAN/md5sums"), &md5sums.stdout)?;
    // Directories made by create_dir_all follow the umask; packages want 0755.
    set_dir_modes(&stage)?;
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(deb)
        // dpkg-deb dates the ar members with it, and clamps the files' mtimes to it.
        .env("SOURCE_DATE_EPOCH", mtime.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb --build {} failed", stage.display());
    Ok(())
}

fn set_dir_modes(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            set_dir_modes(&path)?;
        }
    }
    Ok(())
}

fn tarball_entries(
    built: &Built,
    generated: &Generated,
    licenses: &[(&str, Vec<u8>)],
    readme: &[u8],
) -> Result<Vec<archive::Entry>> {
    let top = format!("gotrace-{VERSION}-{}-linux", built.arch);
    let mut entries = vec![archive::Entry::file(
        &format!("{top}/gotrace"),
        0o755,
        read(&built.binary)?,
    )];
    entries.push(archive::Entry::file(
        &format!("{top}/README.md"),
        0o644,
        readme.to_vec(),
    ));
    for (name, text) in licenses {
        entries.push(archive::Entry::file(&format!("{top}/{name}"), 0o644, text.clone()));
    }
    for (name, roff) in &generated.man {
        entries.push(archive::Entry::file(&format!("{top}/man/{name}"), 0o644, roff.clone()));
    }
    for (name, text) in [
        ("gotrace.bash", &generated.bash),
        ("_gotrace", &generated.zsh),
        ("gotrace.fish", &generated.fish),
    ] {
        entries.push(archive::Entry::file(
            &format!("{top}/completions/{name}"),
            0o644,
            text.clone(),
        ));
    }
    Ok(entries)
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").current_dir(repo).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

#[expect(clippy::cast_precision_loss, reason = "artifact sizes are far below 2^52 bytes")]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// A file's size, or a directory's total.
fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path).map_or(0, |entries| {
            entries.filter_map(Result::ok).map(|e| size_of(&e.path())).sum()
        })
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn facts(needed: &[&str], versions: &[(&str, &str, &[u32])]) -> Facts {
        let mut map: BTreeMap<String, BTreeMap<String, SymbolVersion>> = BTreeMap::new();
        for (library, prefix, version) in versions {
            map.entry((*library).to_owned())
                .or_default()
                .insert((*prefix).to_owned(), SymbolVersion(version.to_vec()));
        }
        Facts {
            machine: object::elf::EM_X86_64,
            interpreter: Some("/lib64/ld-linux-x86-64.so.2".to_owned()),
            needed: needed.iter().map(|s| (*s).to_owned()).collect(),
            versions: map,
        }
    }

    #[test]
    fn depends_follow_the_newest_symbol_versions() {
        let f = facts(
            &["libgcc_s.so.1", "libm.so.6", "libc.so.6", "ld-linux-x86-64.so.2"],
            &[
                ("libc.so.6", "GLIBC", &[2, 34]),
                ("libm.so.6", "GLIBC", &[2, 29]),
                ("libgcc_s.so.1", "GCC", &[4, 2, 0]),
            ],
        );
        assert_eq!(depends(&f).unwrap(), "libc6 (>= 2.34), libgcc-s1 (>= 4.2.0)");
        let unknown = facts(&["libc.so.6", "libssl.so.3"], &[("libc.so.6", "GLIBC", &[2, 17])]);
        assert!(depends(&unknown).unwrap_err().to_string().contains("libssl.so.3"));
    }

    #[test]
    fn the_control_file_has_what_dpkg_requires() {
        let text = control("arm64", "libc6 (>= 2.34)", 12_345);
        for field in [
            "Package: gotrace\n",
            "Architecture: arm64\n",
            "Installed-Size: 12345\n",
            "Maintainer: ",
            "Description: ",
        ] {
            assert!(text.contains(field), "{field}");
        }
        // Continuation lines of the description start with a space; no line is empty.
        let description = text.split("Description: ").nth(1).unwrap();
        assert!(description.lines().skip(1).all(|l| l.starts_with(' ')), "{description}");
        assert!(!text.lines().any(str::is_empty));
    }

    #[test]
    fn the_copyright_file_carries_the_mit_text() {
        let text = copyright();
        assert!(text.contains("License: MIT\n Permission is hereby granted"));
        assert!(
            !text
                .lines()
                .skip_while(|l| *l != "License: MIT")
                .skip(1)
                .take_while(|l| !l.is_empty())
                .any(|l| !l.starts_with(' '))
        );
    }
}
