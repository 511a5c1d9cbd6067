//! `cargo xtask dist --check`: the artifacts tested as a user would meet them, with outside
//! tools wherever one exists (`sha256sum`, `dpkg-deb`, `skopeo`).
//!
//! The arm64 package is installed with `dpkg -i` and traces fixtures inside the arm64 VM:
//! that is `cargo xtask arm64 --deb target/dist/gotrace_VERSION_arm64.deb`, which
//! `scripts/test.sh` runs after this.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context as _, Result, ensure};

use super::elf::Facts;
use super::{VERSION, archive, oci};

pub fn run(repo: &Path, out: &Path, binaries: &[(&str, std::path::PathBuf)], revision: &str) -> Result<()> {
    let scratch = repo.join("target/dist-check");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut passed = Vec::new();

    let sums = output(
        Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(out),
    )?;
    ensure!(sums.status.success(), "sha256sum --check failed:\n{}", text(&sums));
    passed.push(format!(
        "SHA256SUMS: {} files verified by sha256sum",
        text(&sums).lines().count()
    ));

    for (arch, binary) in binaries {
        let deb = out.join(format!("gotrace_{VERSION}_{arch}.deb"));
        check_deb_metadata(&deb, arch)?;
        let tarball = out.join(format!("gotrace-{VERSION}-{arch}-linux.tar.gz"));
        check_tarball(&tarball, arch, &std::fs::read(binary)?)?;
        passed.push(format!(
            "{arch}: package control data and contents (dpkg-deb), tarball contents"
        ));
    }

    // The amd64 package, unpacked into an empty directory, runs.
    let root = scratch.join("deb-amd64");
    let deb = out.join(format!("gotrace_{VERSION}_amd64.deb"));
    let unpack = output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    ensure!(unpack.status.success(), "dpkg-deb -x failed: {}", text(&unpack));
    let gotrace = root.join("usr/bin/gotrace");
    let version = output(Command::new(&gotrace).arg("--version"))?;
    let first = text(&version).lines().next().unwrap_or_default().to_owned();
    let expected = format!("gotrace {VERSION} (commit {}", &revision[..revision.len().min(12)]);
    ensure!(
        version.status.success() && first.starts_with(&expected),
        "the unpacked package's gotrace --version printed {first:?}, expected {expected:?}:\n{}",
        text(&version)
    );
    ensure!(
        repo.join("target/fixtures/manifest.json").is_file(),
        "no Go fixtures to inspect: run cargo xtask fixtures first"
    );
    let fixture = testkit::allocs_fixtures()
        .into_iter()
        .find(|f| f.go_minor == "1.27" && f.goarch == "amd64" && f.variant == "stripped")
        .context("no Go 1.27 stripped fixture: run cargo xtask fixtures first")?;
    let inspect = output(Command::new(&gotrace).arg("inspect").arg(&fixture.path))?;
    ensure!(
        inspect.status.success() && text(&inspect).contains("runtime.mallocgc"),
        "the unpacked package's gotrace inspect {} failed:\n{}",
        fixture.path.display(),
        text(&inspect)
    );
    passed.push(format!(
        "amd64 package unpacked into an empty directory: --version ({first}), inspect of a stripped Go 1.27 binary"
    ));

    // The image.
    let layout = out.join(format!("gotrace-{VERSION}-oci"));
    let images = oci::check_layout(&layout, VERSION)?;
    let arches: Vec<&str> = images.iter().map(|i| i.arch.as_str()).collect();
    ensure!(arches == ["amd64", "arm64"], "the image index has platforms {arches:?}");
    for image in &images {
        check_image_files(image)?;
    }
    passed.push("image layout: index, manifests, configs, every blob's size and digest, diff_ids; each image has gotrace of its architecture and every library it loads".to_owned());
    let archived = std::fs::read(out.join(format!("gotrace-{VERSION}-oci.tar")))?;
    let names: Vec<String> = archive::read_tar(&archived)?.into_iter().map(|(n, _, _)| n).collect();
    ensure!(
        names.iter().any(|n| n == "index.json") && names.iter().any(|n| n == "oci-layout"),
        "the OCI archive lacks index.json or oci-layout"
    );
    passed.push(skopeo(&layout, &scratch)?);
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let amd64 = images.iter().find(|i| i.arch == "amd64").context("no amd64 image")?;
        let rootfs = scratch.join("rootfs-amd64");
        unpack_files(&amd64.files, &rootfs)?;
        let run = output(
            Command::new("chroot")
                .arg(&rootfs)
                .args(["/usr/bin/gotrace", "--version"]),
        )?;
        let first = text(&run).lines().next().unwrap_or_default().to_owned();
        ensure!(
            run.status.success() && first.starts_with(&expected),
            "gotrace --version in the amd64 image's root failed:\n{}",
            text(&run)
        );
        let files = amd64
            .files
            .iter()
            .filter(|(_, kind, _)| *kind != tar::EntryType::Directory)
            .count();
        passed.push(format!(
            "amd64 image: gotrace runs in a root of its layers alone ({files} files and links): {first}"
        ));
    } else {
        passed.push("amd64 image: not run (chroot needs root)".to_owned());
    }

    eprintln!("dist --check passed:");
    for line in passed {
        eprintln!("  {line}");
    }
    Ok(())
}

fn check_deb_metadata(deb: &Path, arch: &str) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        let out = output(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))?;
        ensure!(
            out.status.success(),
            "dpkg-deb --field {} failed: {}",
            deb.display(),
            text(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    ensure!(field("Package")? == "gotrace", "{}: Package", deb.display());
    ensure!(field("Version")? == VERSION, "{}: Version", deb.display());
    ensure!(field("Architecture")? == arch, "{}: Architecture", deb.display());
    let depends = field("Depends")?;
    let libc = depends
        .strip_prefix("libc6 (>= ")
        .and_then(|rest| rest.split(')').next())
        .and_then(|v| super::elf::SymbolVersion::parse(&format!("GLIBC_{v}")))
        .with_context(|| {
            format!(
                "{}: Depends {depends:?} does not start with libc6 (>= VERSION)",
                deb.display()
            )
        })?
        .1;
    ensure!(
        libc <= super::elf::SymbolVersion(super::GLIBC_FLOOR.to_vec()),
        "{}: Depends asks for glibc {libc}, above the stated floor",
        deb.display()
    );
    let md5sums = output(Command::new("dpkg-deb").arg("--info").arg(deb).arg("md5sums"))?;
    ensure!(
        md5sums.status.success() && text(&md5sums).contains("  usr/bin/gotrace"),
        "{} has no md5sums for usr/bin/gotrace",
        deb.display()
    );
    let contents = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    ensure!(contents.status.success(), "dpkg-deb --contents failed");
    let listing = text(&contents);
    for path in [
        "./usr/bin/gotrace",
        "./usr/share/man/man1/gotrace.1.gz",
        "./usr/share/man/man1/gotrace-attach.1.gz",
        "./usr/share/bash-completion/completions/gotrace",
        "./usr/share/zsh/vendor-completions/_gotrace",
        "./usr/share/fish/vendor_completions.d/gotrace.fish",
        "./usr/share/doc/gotrace/copyright",
        "./usr/share/doc/gotrace/LICENSE-MIT",
        "./usr/share/doc/gotrace/LICENSE-APACHE",
        "./usr/share/doc/gotrace/README.md",
    ] {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .with_context(|| format!("{} lacks {path}", deb.display()))?;
        ensure!(line.contains("root/root"), "{path} is not owned by root: {line}");
        if path == "./usr/bin/gotrace" {
            ensure!(line.starts_with("-rwxr-xr-x"), "{path}: {line}");
        }
    }
    Ok(())
}

fn check_tarball(tarball: &Path, arch: &str, binary: &[u8]) -> Result<()> {
    let entries = archive::read_tar(&std::fs::read(tarball)?)?;
    let top = format!("gotrace-{VERSION}-{arch}-linux");
    for name in [
        "gotrace",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
        "man/gotrace.1",
        "completions/gotrace.bash",
        "completions/_gotrace",
        "completions/gotrace.fish",
    ] {
        let path = format!("{top}/{name}");
        let (_, _, data) = entries
            .iter()
            .find(|(p, _, _)| *p == path)
            .with_context(|| format!("{} lacks {path}", tarball.display()))?;
        if name == "gotrace" {
            ensure!(
                data.as_slice() == binary,
                "{}: its gotrace is not the packaged one",
                tarball.display()
            );
        }
    }
    Ok(())
}

/// gotrace of the image's architecture, with its interpreter and every library it names.
fn check_image_files(image: &oci::CheckedImage) -> Result<()> {
    let file = |path: &str| image.files.iter().find(|(p, _, _)| p.trim_end_matches('/') == path);
    let (_, _, gotrace) = file("usr/bin/gotrace").with_context(|| format!("{}: no usr/bin/gotrace", image.arch))?;
    let facts = Facts::parse(gotrace)?;
    ensure!(
        facts.debian_arch()? == image.arch,
        "{} image holds a {} gotrace",
        image.arch,
        facts.debian_arch()?
    );
    let interpreter = facts.interpreter.clone().context("gotrace has no interpreter")?;
    let (_, kind, data) =
        file(interpreter.trim_start_matches('/')).with_context(|| format!("{}: no {interpreter}", image.arch))?;
    // A link (as Debian has it) must lead to the loader itself.
    let loader = if *kind == tar::EntryType::Symlink {
        String::from_utf8_lossy(data).trim_start_matches('/').to_owned()
    } else {
        interpreter.trim_start_matches('/').to_owned()
    };
    ensure!(
        file(&loader).is_some_and(|(_, kind, data)| *kind == tar::EntryType::Regular && data.starts_with(b"\x7fELF")),
        "{}: {interpreter} leads to {loader}, which is not an ELF file in the image",
        image.arch
    );
    for library in &facts.needed {
        ensure!(
            image
                .files
                .iter()
                .any(|(p, kind, _)| p.ends_with(&format!("/{library}")) && *kind == tar::EntryType::Regular),
            "{}: no {library}",
            image.arch
        );
    }
    for package in ["libc6", "libgcc-s1"] {
        ensure!(
            file(&format!("usr/share/doc/{package}/copyright")).is_some(),
            "{}: no copyright file of {package}",
            image.arch
        );
    }
    ensure!(image.layers == 2, "{}: {} layers", image.arch, image.layers);
    ensure!(
        image.config["config"]["Cmd"] == serde_json::json!(["doctor"])
            && image.config["config"]["Labels"]["org.opencontainers.image.version"] == VERSION,
        "{}: config {}",
        image.arch,
        image.config["config"]
    );
    Ok(())
}

/// Unpacks checked layer files into `root` (directories, files, symbolic links).
fn unpack_files(files: &[(String, tar::EntryType, Vec<u8>)], root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for (path, kind, data) in files {
        let target = root.join(path.trim_end_matches('/'));
        if *kind == tar::EntryType::Directory {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        std::fs::create_dir_all(target.parent().context("no parent")?)?;
        if *kind == tar::EntryType::Symlink {
            let link = String::from_utf8_lossy(data).into_owned();
            std::os::unix::fs::symlink(&link, &target).with_context(|| format!("cannot link {path} to {link}"))?;
            continue;
        }
        std::fs::write(&target, data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// skopeo (Debian's), an image tool nobody here wrote: it reads each platform's image and
/// copies the whole index, checking every blob's digest on the way.
fn skopeo(layout: &Path, scratch: &Path) -> Result<String> {
    ensure!(
        Command::new("skopeo").arg("--version").output().is_ok(),
        "skopeo is not installed (scripts/setup.sh installs it)"
    );
    let reference = format!("oci:{}:{VERSION}", layout.display());
    let mut seen = Vec::new();
    for arch in ["amd64", "arm64"] {
        let out = output(Command::new("skopeo").args([
            "inspect",
            "--override-os",
            "linux",
            "--override-arch",
            arch,
            &reference,
        ]))?;
        ensure!(
            out.status.success(),
            "skopeo inspect --override-arch {arch} failed:\n{}",
            text(&out)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("skopeo inspect printed no JSON")?;
        ensure!(
            json["Architecture"] == arch,
            "skopeo sees {} for {arch}",
            json["Architecture"]
        );
        seen.push(format!(
            "{arch} ({} layers)",
            json["Layers"].as_array().map_or(0, Vec::len)
        ));
    }
    let copy = scratch.join("skopeo-copy");
    let out = output(Command::new("skopeo").args([
        "copy",
        "--all",
        "--quiet",
        &reference,
        &format!("oci:{}:{VERSION}", copy.display()),
    ]))?;
    ensure!(out.status.success(), "skopeo copy --all failed:\n{}", text(&out));
    Ok(format!(
        "skopeo inspect reads {} and skopeo copy --all verifies every blob",
        seen.join(", ")
    ))
}

fn output(command: &mut Command) -> Result<Output> {
    command.output().with_context(|| format!("cannot run {command:?}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
