//! Binaries whose release pipeline removed `.go.buildinfo`: the Go version must come from
//! `runtime.buildVersion` instead, agree with what `go version -m` said before the removal,
//! and everything else (probes, symbols) must be as for the original.
//!
//! The binaries are made the way such pipelines make them: `objcopy --remove-section
//! .go.buildinfo`, with and without `--strip-all`, on every amd64 and arm64 fixture.

use std::path::{Path, PathBuf};
use std::process::Command;

use gobin::{GoBinary, VersionSource};
use testkit::{Fixture, allocs_fixtures};

struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gobin-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// GNU objcopy reads only its own architecture; the arm64 one comes with the cross linker
/// that `scripts/setup.sh` installs.
fn objcopy(goarch: &str, input: &Path, output: &Path, args: &[&str]) {
    let tool = if goarch == "arm64" {
        "aarch64-linux-gnu-objcopy"
    } else {
        "objcopy"
    };
    let status = Command::new(tool)
        .args(args)
        .arg(input)
        .arg(output)
        .status()
        .unwrap_or_else(|e| panic!("{tool} (binutils) runs: {e}"));
    assert!(status.success(), "{tool} {args:?} {}", input.display());
}

fn entry_points(bin: &GoBinary<'_>) -> Vec<String> {
    let mut points: Vec<String> = bin
        .probe_points()
        .expect("probe points")
        .iter()
        .map(|p| {
            let args: Vec<String> = p
                .args
                .iter()
                .map(|a| format!("{}={}", a.role.key(), a.register))
                .collect();
            format!("{} {:#x} {} {}", p.function, p.probe_address, p.kind, args.join(" "))
        })
        .collect();
    points.sort();
    points
}

#[test]
fn the_version_comes_from_runtime_build_version_without_buildinfo() {
    let scratch = ScratchDir::new("no-buildinfo");
    let fixtures: Vec<Fixture> = allocs_fixtures()
        .into_iter()
        .filter(|f| matches!(f.variant.as_str(), "default" | "stripped" | "pie" | "cgo"))
        .collect();
    assert!(fixtures.len() >= 7 * 3, "fixtures missing: run cargo xtask fixtures");
    for f in &fixtures {
        let name = f.name();
        let original = f.bytes();
        let original_bin = GoBinary::parse(&original).expect("original parses");
        assert_eq!(original_bin.version_source(), VersionSource::Buildinfo, "{name}");

        let without = scratch
            .0
            .join(format!("{}-{}-{}-nobuildinfo", f.go_minor, f.goarch, f.variant));
        objcopy(&f.goarch, &f.path, &without, &["--remove-section", ".go.buildinfo"]);
        let bytes = std::fs::read(&without).expect("read");
        let bin = GoBinary::parse(&bytes).unwrap_or_else(|e| panic!("{name} without .go.buildinfo: {e}"));
        assert_eq!(bin.build_info().go_version, f.go_version, "{name}");
        let expected = if f.has_symtab() {
            VersionSource::BuildVersionSymbol
        } else {
            VersionSource::BuildVersionSearch
        };
        assert_eq!(bin.version_source(), expected, "{name}");
        assert_eq!(entry_points(&bin), entry_points(&original_bin), "{name}: probes differ");

        let stripped = scratch.0.join(format!(
            "{}-{}-{}-nobuildinfo-stripped",
            f.go_minor, f.goarch, f.variant
        ));
        objcopy(
            &f.goarch,
            &f.path,
            &stripped,
            &["--remove-section", ".go.buildinfo", "--strip-all"],
        );
        let bytes = std::fs::read(&stripped).expect("read");
        let bin = GoBinary::parse(&bytes).unwrap_or_else(|e| panic!("{name} stripped, no .go.buildinfo: {e}"));
        assert_eq!(bin.build_info().go_version, f.go_version, "{name}");
        assert_eq!(bin.version_source(), VersionSource::BuildVersionSearch, "{name}");
        assert_eq!(entry_points(&bin), entry_points(&original_bin), "{name}: probes differ");
    }
}

#[test]
fn an_unknowable_version_is_a_clear_error() {
    let scratch = ScratchDir::new("unknowable");
    let f = testkit::fixture("1.24", "stripped");
    let without = scratch.0.join("nobuildinfo");
    objcopy(
        &f.goarch,
        &f.path,
        &without,
        &["--remove-section", ".go.buildinfo", "--strip-all"],
    );
    let mut bytes = std::fs::read(&without).expect("read");
    // Damage every copy of the version text, as if the runtime kept no version at all.
    let needle = f.go_version.as_bytes();
    let mut damaged = 0;
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
        bytes[at + pos + 2] = b'X';
        damaged += 1;
        at += pos + needle.len();
    }
    assert!(damaged > 0, "the version text is in the binary");
    let err = GoBinary::parse(&bytes).expect_err("no version").to_string();
    assert!(err.contains("cannot tell which Go release built this binary"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}
