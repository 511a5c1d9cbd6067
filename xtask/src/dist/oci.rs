//! The container image: an OCI image layout (image-spec v1.1, `image-layout.md`) written
//! directly, with no Docker daemon and no image tool. One multi-platform image index
//! (amd64, arm64), tagged with the release (`org.opencontainers.image.ref.name`), so that
//! `skopeo copy --all oci:gotrace-VERSION-oci:VERSION docker://REGISTRY/gotrace:VERSION`
//! pushes both.
//!
//! Each platform's image has two layers:
//! 1. the base: the dynamic loader and the shared libraries gotrace's `DT_NEEDED` names (and
//!    theirs), taken from Debian 12's `libc6` and `libgcc-s1` packages of that architecture,
//!    with their copyright files; nothing else, not even a shell (as distroless's `cc` image);
//! 2. gotrace itself, with its licenses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use super::archive::{self, Entry};
use super::elf::Facts;

pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One platform's inputs.
#[derive(Debug)]
pub struct Platform {
    /// `amd64` or `arm64` (Debian and OCI agree on both names).
    pub arch: &'static str,
    /// The stripped gotrace for it.
    pub gotrace: PathBuf,
}

/// A blob written to `blobs/sha256/`, and its descriptor.
fn blob(layout: &Path, media_type: &str, data: &[u8]) -> Result<Value> {
    let digest = archive::sha256(data);
    let path = layout.join("blobs/sha256").join(&digest);
    std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(json!({"mediaType": media_type, "digest": format!("sha256:{digest}"), "size": data.len()}))
}

/// The Debian packages whose files make up the base layer of `arch`, unpacked under
/// `.cache/dist/base-ARCH` (downloaded with `apt-get download`), and their versions. The cache
/// is keyed on the versions apt would download now, so a Debian security update of glibc
/// reaches the next image.
fn unpacked_base(repo: &Path, arch: &str) -> Result<(PathBuf, Vec<String>)> {
    let cache = repo.join(".cache/dist");
    let root = cache.join(format!("base-{arch}"));
    let stamp = root.join(".unpacked");
    let mut packages = vec![format!("libc6:{arch}"), format!("libgcc-s1:{arch}")];
    let wanted: Vec<String> = packages
        .iter()
        .map(|p| candidate(p).map(|v| format!("{p}={v}")))
        .collect::<Result<_>>()?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.lines().take(wanted.len()).eq(wanted.iter().map(String::as_str)))
    {
        let versions = std::fs::read_to_string(&stamp)?.lines().map(str::to_owned).collect();
        return Ok((root, versions));
    }
    let debs = cache.join(format!("debs-{arch}"));
    let _ = std::fs::remove_dir_all(&debs);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    download(&packages, &debs, &root)?;
    // A package whose doc directory is a link to another package's (libgcc-s1's is
    // gcc-12-base's) has its copyright file there: fetch that package too.
    let doc = root.join("usr/share/doc");
    let mut more = Vec::new();
    for entry in std::fs::read_dir(&doc).with_context(|| format!("cannot read {}", doc.display()))? {
        let path = entry?.path();
        if let Ok(target) = std::fs::read_link(&path) {
            let target = target.to_string_lossy().into_owned();
            if !doc.join(&target).exists() && !target.contains('/') {
                more.push(format!("{target}:{arch}"));
            }
        }
    }
    download(&more, &debs, &root)?;
    packages.extend(more);
    let mut versions = wanted;
    for p in &packages[versions.len()..] {
        versions.push(format!("{p}={}", candidate(p)?));
    }
    std::fs::write(&stamp, versions.join("\n")).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok((root, versions))
}

/// The version `apt-get download` would fetch (`apt-cache policy`'s candidate).
fn candidate(package: &str) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .context("cannot run apt-cache")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_owned))
        .filter(|v| v != "(none)")
        .with_context(|| format!("apt knows no {package} (is arm64 a dpkg architecture? scripts/setup.sh adds it)"))
}

fn download(packages: &[String], debs: &Path, root: &Path) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("dist: downloading {} for the image's base", packages.join(" "));
    let status = Command::new("apt-get")
        .arg("download")
        .args(packages)
        .current_dir(debs)
        .status()
        .context("cannot run apt-get download")?;
    ensure!(status.success(), "apt-get download {} failed", packages.join(" "));
    for package in packages {
        let name = package.split(':').next().unwrap_or(package);
        let deb = std::fs::read_dir(debs)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("apt-get download left no {name}_*.deb"))?;
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root)
            .status()
            .context("cannot run dpkg-deb")?;
        ensure!(status.success(), "dpkg-deb -x {} failed", deb.display());
    }
    Ok(())
}

/// `path` inside `root`, following symbolic links as the target system would (absolute
/// targets are relative to `root`, not to this machine).
fn resolve_in(root: &Path, path: &str) -> Result<PathBuf> {
    let mut current = path.trim_start_matches('/').to_owned();
    for _ in 0..16 {
        let on_disk = root.join(&current);
        match std::fs::read_link(&on_disk) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                current = if let Some(absolute) = target.strip_prefix('/') {
                    absolute.to_owned()
                } else {
                    let parent = Path::new(&current).parent().unwrap_or(Path::new(""));
                    parent.join(&target).to_string_lossy().into_owned()
                };
            }
            Err(_) => return Ok(on_disk),
        }
    }
    bail!("too many symbolic links resolving {path} in {}", root.display())
}

/// The loader and the closure of `DT_NEEDED` under `/lib/<triplet>/`, as Debian lays them out.
fn base_entries(root: &Path, gotrace: &Facts) -> Result<(Vec<Entry>, Vec<String>)> {
    let interpreter = gotrace
        .interpreter
        .clone()
        .context("gotrace has no program interpreter")?;
    let triplet = match gotrace.machine {
        object::elf::EM_X86_64 => "x86_64-linux-gnu",
        object::elf::EM_AARCH64 => "aarch64-linux-gnu",
        other => bail!("no Debian triplet for ELF machine {other}"),
    };
    let lib_dir = format!("lib/{triplet}");
    let mut entries = Vec::new();
    let mut done = BTreeSet::new();
    let mut todo: Vec<String> = gotrace.needed.clone();
    let loader_name = Path::new(&interpreter)
        .file_name()
        .context("the interpreter path has no file name")?
        .to_string_lossy()
        .into_owned();
    todo.push(loader_name.clone());
    while let Some(soname) = todo.pop() {
        if !done.insert(soname.clone()) {
            continue;
        }
        let file = resolve_in(root, &format!("{lib_dir}/{soname}"))?;
        let data = std::fs::read(&file).with_context(|| {
            format!(
                "{soname} is not in Debian's libc6/libgcc-s1 for {triplet} ({} missing)",
                file.display()
            )
        })?;
        let facts = Facts::parse(&data).with_context(|| format!("{soname} is not an ELF library"))?;
        todo.extend(facts.needed.iter().cloned());
        entries.push(Entry::file(&format!("{lib_dir}/{soname}"), 0o755, data));
    }
    // The interpreter's own path (`/lib64/ld-linux-x86-64.so.2`), a link to the triplet's
    // copy, as Debian's libc6 has it.
    let interpreter_path = interpreter.trim_start_matches('/');
    if interpreter_path != format!("{lib_dir}/{loader_name}") {
        entries.push(Entry::Symlink {
            path: interpreter_path.to_owned(),
            target: format!("/{lib_dir}/{loader_name}"),
        });
    }
    // Their licences: every package's copyright file (libgcc-s1's is gcc-12-base's).
    let doc = root.join("usr/share/doc");
    let mut packages: Vec<String> = std::fs::read_dir(&doc)
        .with_context(|| format!("cannot read {}", doc.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    packages.sort();
    for package in &packages {
        let copyright = resolve_in(root, &format!("usr/share/doc/{package}/copyright"))?;
        // Shipping a library without its licence is not an option: fail instead.
        let text = std::fs::read(&copyright)
            .with_context(|| format!("no copyright file for {package} in the image's base"))?;
        entries.push(Entry::file(&format!("usr/share/doc/{package}/copyright"), 0o644, text));
    }
    entries.push(Entry::Directory {
        path: "tmp".to_owned(),
        mode: 0o1777,
    });
    let libraries = done.into_iter().collect();
    Ok((entries, libraries))
}

/// Writes the layout into `layout` (emptied first).
pub fn write_layout(
    repo: &Path,
    layout: &Path,
    platforms: &[Platform],
    version: &str,
    revision: &str,
    mtime: u64,
    licenses: &[(&str, Vec<u8>)],
) -> Result<()> {
    let _ = std::fs::remove_dir_all(layout);
    std::fs::create_dir_all(layout.join("blobs/sha256"))
        .with_context(|| format!("cannot create {}", layout.display()))?;
    let created = rfc3339(mtime);
    let mut manifests = Vec::new();
    for platform in platforms {
        let gotrace =
            std::fs::read(&platform.gotrace).with_context(|| format!("cannot read {}", platform.gotrace.display()))?;
        let facts = Facts::parse(&gotrace)?;
        ensure!(
            facts.debian_arch()? == platform.arch,
            "{} is a {} binary, not {}",
            platform.gotrace.display(),
            facts.debian_arch()?,
            platform.arch
        );
        let (root, base_versions) = unpacked_base(repo, platform.arch)?;
        let (base, libraries) = base_entries(&root, &facts)?;
        let mut top = vec![Entry::file("usr/bin/gotrace", 0o755, gotrace)];
        for (name, text) in licenses {
            top.push(Entry::file(
                &format!("usr/share/doc/gotrace/{name}"),
                0o644,
                text.clone(),
            ));
        }
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for entries in [&base, &top] {
            let tar = archive::tar(entries, mtime)?;
            diff_ids.push(format!("sha256:{}", archive::sha256(&tar)));
            layers.push(blob(layout, LAYER, &archive::gzip(&tar)?)?);
        }
        let labels = json!({
            "org.opencontainers.image.title": "gotrace",
            "org.opencontainers.image.description": "see where a running Go program allocates heap memory (eBPF)",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.revision": revision,
            // gotrace's, then glibc's and libgcc's, whose files the base layer carries.
            "org.opencontainers.image.licenses": "(MIT OR Apache-2.0) AND LGPL-2.1-or-later AND GPL-3.0-or-later WITH GCC-exception-3.1",
            "org.opencontainers.image.created": created,
        });
        let config = json!({
            "created": created,
            "architecture": platform.arch,
            "os": "linux",
            "config": {
                "Entrypoint": ["/usr/bin/gotrace"],
                // With no arguments the image says whether the host can trace.
                "Cmd": ["doctor"],
                "Env": ["PATH=/usr/bin:/bin"],
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": created, "created_by": format!("cargo xtask dist: {} from Debian's {}", libraries.join(", "), base_versions.join(", "))},
                {"created": created, "created_by": format!("cargo xtask dist: gotrace {version}")},
            ],
        });
        let config = blob(layout, CONFIG, &serde_json::to_vec(&config)?)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config,
            "layers": layers,
            "annotations": labels,
        });
        let mut descriptor = blob(layout, MANIFEST, &serde_json::to_vec(&manifest)?)?;
        descriptor["platform"] = json!({"architecture": platform.arch, "os": "linux"});
        manifests.push(descriptor);
    }
    let index = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
    let mut tagged = blob(layout, INDEX, &serde_json::to_vec(&index)?)?;
    tagged["annotations"] = json!({"org.opencontainers.image.ref.name": version});
    let top = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": [tagged]});
    write(&layout.join("index.json"), &serde_json::to_vec(&top)?)?;
    write(&layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// The layout as one tar (an "OCI archive", which `skopeo copy oci-archive:` and
/// `podman load` read).
pub fn archive_layout(layout: &Path, mtime: u64) -> Result<Vec<u8>> {
    let mut entries = vec![
        Entry::file("oci-layout", 0o644, read(&layout.join("oci-layout"))?),
        Entry::file("index.json", 0o644, read(&layout.join("index.json"))?),
    ];
    let mut blobs: Vec<PathBuf> = std::fs::read_dir(layout.join("blobs/sha256"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    blobs.sort();
    for path in blobs {
        let name = path
            .file_name()
            .context("a blob without a name")?
            .to_string_lossy()
            .into_owned();
        entries.push(Entry::file(&format!("blobs/sha256/{name}"), 0o644, read(&path)?));
    }
    archive::tar(&entries, mtime)
}

/// A checked image of one platform.
#[derive(Debug)]
pub struct CheckedImage {
    pub arch: String,
    /// The layers' files, unpacked in order (later layers win).
    pub files: Vec<(String, tar::EntryType, Vec<u8>)>,
    pub layers: usize,
    pub config: Value,
}

/// Reads a layout from `index.json` down and checks what the image spec requires: media
/// types, every blob's size and digest, each config's `diff_ids` against its uncompressed
/// layers, platforms against configs. Returns each platform's image.
pub fn check_layout(layout: &Path, version: &str) -> Result<Vec<CheckedImage>> {
    let oci_layout: Value =
        serde_json::from_slice(&read(&layout.join("oci-layout"))?).context("oci-layout is not JSON")?;
    ensure!(oci_layout["imageLayoutVersion"] == "1.0.0", "oci-layout: {oci_layout}");
    let top: Value = serde_json::from_slice(&read(&layout.join("index.json"))?).context("index.json is not JSON")?;
    ensure!(
        top["schemaVersion"] == 2,
        "index.json: schemaVersion {}",
        top["schemaVersion"]
    );
    let tagged: Vec<&Value> = top["manifests"]
        .as_array()
        .context("index.json has no manifests")?
        .iter()
        .filter(|d| d["annotations"]["org.opencontainers.image.ref.name"] == version)
        .collect();
    ensure!(
        tagged.len() == 1,
        "index.json tags {} descriptors {version}",
        tagged.len()
    );
    let index: Value = serde_json::from_slice(&fetch(layout, tagged[0], INDEX)?)?;
    let mut images = Vec::new();
    for descriptor in index["manifests"]
        .as_array()
        .context("the image index has no manifests")?
    {
        let arch = descriptor["platform"]["architecture"]
            .as_str()
            .context("a manifest without a platform")?;
        ensure!(
            descriptor["platform"]["os"] == "linux",
            "{arch}: os {}",
            descriptor["platform"]["os"]
        );
        let manifest: Value = serde_json::from_slice(&fetch(layout, descriptor, MANIFEST)?)?;
        ensure!(manifest["schemaVersion"] == 2, "{arch}: manifest schemaVersion");
        let config: Value = serde_json::from_slice(&fetch(layout, &manifest["config"], CONFIG)?)?;
        ensure!(
            config["architecture"] == arch && config["os"] == "linux",
            "{arch}: the config says {}/{}",
            config["os"],
            config["architecture"]
        );
        ensure!(
            config["config"]["Entrypoint"] == json!(["/usr/bin/gotrace"]),
            "{arch}: entrypoint {}",
            config["config"]["Entrypoint"]
        );
        let layers = manifest["layers"].as_array().context("a manifest without layers")?;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .context("a config without diff_ids")?;
        ensure!(
            layers.len() == diff_ids.len() && !layers.is_empty(),
            "{arch}: {} layers, {} diff_ids",
            layers.len(),
            diff_ids.len()
        );
        let mut files = Vec::new();
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            let gzipped = fetch(layout, layer, LAYER)?;
            let mut tar = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gzipped.as_slice()), &mut tar)
                .with_context(|| format!("{arch}: a layer is not gzip"))?;
            ensure!(
                diff_id.as_str() == Some(&format!("sha256:{}", archive::sha256(&tar))),
                "{arch}: diff_id {diff_id} is not the uncompressed layer's digest"
            );
            for (path, kind, data) in archive::read_tar(&tar)? {
                files.retain(|(p, _, _): &(String, tar::EntryType, Vec<u8>)| *p != path);
                files.push((path, kind, data));
            }
        }
        images.push(CheckedImage {
            arch: arch.to_owned(),
            layers: layers.len(),
            files,
            config,
        });
    }
    Ok(images)
}

/// A blob by its descriptor, checked against the descriptor's media type, size and digest.
fn fetch(layout: &Path, descriptor: &Value, media_type: &str) -> Result<Vec<u8>> {
    ensure!(
        descriptor["mediaType"] == media_type,
        "a descriptor has media type {}, expected {media_type}",
        descriptor["mediaType"]
    );
    let digest = descriptor["digest"].as_str().context("a descriptor without a digest")?;
    let hex = digest.strip_prefix("sha256:").context("a digest that is not sha256")?;
    let data = read(&layout.join("blobs/sha256").join(hex))?;
    ensure!(
        descriptor["size"] == data.len(),
        "blob {digest}: size {} in its descriptor, {} on disk",
        descriptor["size"],
        data.len()
    );
    ensure!(archive::sha256(&data) == hex, "blob {digest} does not hash to its name");
    Ok(data)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).with_context(|| format!("cannot write {}", path.display()))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time.
pub fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_806_400 + 3661), "2025-12-04T01:01:01Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn resolves_links_inside_the_root() {
        let root = std::env::temp_dir().join(format!("xtask-resolve-{}", std::process::id()));
        std::fs::create_dir_all(root.join("lib/x")).unwrap();
        std::fs::create_dir_all(root.join("lib64")).unwrap();
        std::fs::write(root.join("lib/x/ld.so"), "loader").unwrap();
        let _ = std::os::unix::fs::symlink("/lib/x/ld.so", root.join("lib64/ld.so"));
        let _ = std::os::unix::fs::symlink("ld.so", root.join("lib/x/ld.so.2"));
        assert_eq!(resolve_in(&root, "/lib64/ld.so").unwrap(), root.join("lib/x/ld.so"));
        assert_eq!(resolve_in(&root, "lib/x/ld.so.2").unwrap(), root.join("lib/x/ld.so"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A layout whose blob was changed after it was written fails the check.
    #[test]
    fn a_changed_blob_fails_the_check() {
        let layout = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let descriptor = blob(&layout, CONFIG, b"{}").unwrap();
        assert_eq!(fetch(&layout, &descriptor, CONFIG).unwrap(), b"{}");
        assert!(
            fetch(&layout, &descriptor, MANIFEST).is_err(),
            "wrong media type accepted"
        );
        let hex = descriptor["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let path = layout.join("blobs/sha256").join(hex);
        std::fs::write(&path, b"{ }").unwrap();
        let error = fetch(&layout, &descriptor, CONFIG).unwrap_err().to_string();
        assert!(error.contains("size"), "{error}");
        // The same size, other bytes.
        std::fs::write(&path, b"[]").unwrap();
        let error = fetch(&layout, &descriptor, CONFIG).unwrap_err().to_string();
        assert!(error.contains("does not hash"), "{error}");
        std::fs::remove_dir_all(&layout).unwrap();
    }
}
