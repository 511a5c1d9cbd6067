//! The Go version of a binary without `.go.buildinfo`: the string `runtime.buildVersion`.
//!
//! Some release pipelines remove `.go.buildinfo` (`objcopy --remove-section`), which
//! `go version` and `debug/buildinfo` need. The runtime keeps its own copy of the version:
//! the linker writes `runtime.buildVersion` (a Go string header: pointer, length) into the data
//! segment and the bytes into rodata (`addstrdata1(ctxt, "runtime.buildVersion="+…)` in
//! `src/cmd/link/internal/ld/main.go`), because `runtime.Version()` returns it and
//! `schedinit` reads it. With `.symtab` the symbol says where the header is. Stripped, every
//! word pair of the file-backed data that points into read-only data at a string that is a
//! whole Go version (`go1.N[.P][rcN|betaN][ X:…]`) is a candidate, the pointer read through
//! the relocations of PIE binaries. [`crate::GoBinary::parse`] then checks the candidates
//! against facts that need no version: the pclntab magic and which runtime functions exist
//! (see [`consistent`]).

use serde::Serialize;

use crate::elf::Elf;
use crate::version::GoVersion;

/// How the Go version was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// The `.go.buildinfo` section, as `go version` reads it.
    Buildinfo,
    /// `runtime.buildVersion`, found by its `.symtab` symbol.
    BuildVersionSymbol,
    /// `runtime.buildVersion`, found by searching the data for a string header that points at
    /// a Go version string (stripped binaries without `.go.buildinfo`).
    BuildVersionSearch,
}

impl VersionSource {
    /// The name in reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buildinfo => "buildinfo",
            Self::BuildVersionSymbol => "build_version_symbol",
            Self::BuildVersionSearch => "build_version_search",
        }
    }
}

/// The longest version string accepted (`go1.25.5 X:nodwarf5,boringcrypto,…` fits).
const MAX_VERSION_LEN: u64 = 96;
/// The shortest: `go1.N`.
const MIN_VERSION_LEN: u64 = 5;

/// `runtime.buildVersion` by its symbol.
pub(crate) fn from_symbol(elf: &Elf<'_>) -> Option<String> {
    let symbol = elf.symbol("runtime.buildVersion")?;
    read_header(elf, symbol.address)
}

/// Every distinct Go version string that a string header in the file-backed data points at,
/// in the order found.
pub(crate) fn search(elf: &Elf<'_>) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut consider = |version: Option<String>| {
        if let Some(v) = version
            && !found.contains(&v)
        {
            found.push(v);
        }
    };
    // PIE: the pointer half of the header is zero in the file and lives in a relocation.
    for (at, target) in elf.relative_relocations() {
        let Some(len) = at.checked_add(8).and_then(|a| elf.read_ptr(a)) else {
            continue;
        };
        consider(version_at(elf, target, len));
    }
    // The variable is written by `schedinit` when empty, so it is in writable data.
    for seg in elf.loads.iter().filter(|s| s.flags & object::elf::PF_W.0 != 0) {
        let Some(bytes) = elf.read(seg.vaddr, usize::try_from(seg.filesz).unwrap_or(0)) else {
            continue;
        };
        let word = |at: usize| crate::pclntab::le_u64(bytes, at).unwrap_or_default();
        // Go aligns string headers to 8 bytes; segments start page-aligned.
        for at in (0..bytes.len().saturating_sub(15)).step_by(8) {
            let (ptr, len) = (word(at), word(at + 8));
            if (MIN_VERSION_LEN..=MAX_VERSION_LEN).contains(&len) && ptr != 0 {
                consider(version_at(elf, ptr, len));
            }
        }
    }
    found
}

/// Reads a Go string header at `address` and returns the string if it is a Go version.
fn read_header(elf: &Elf<'_>, address: u64) -> Option<String> {
    let ptr = elf.read_ptr(address)?;
    let len = elf.read_ptr(address.checked_add(8)?)?;
    version_at(elf, ptr, len)
}

fn version_at(elf: &Elf<'_>, ptr: u64, len: u64) -> Option<String> {
    if !(MIN_VERSION_LEN..=MAX_VERSION_LEN).contains(&len) {
        return None;
    }
    // The bytes live in read-only data, never in writable data. (Read-only data may share
    // the executable segment: external links without `-z separate-code`.)
    let seg = elf
        .loads
        .iter()
        .find(|s| ptr >= s.vaddr && ptr < s.vaddr.saturating_add(s.filesz))?;
    if seg.flags & object::elf::PF_W.0 != 0 {
        return None;
    }
    let bytes = elf.read(ptr, usize::try_from(len).ok()?)?;
    let text = std::str::from_utf8(bytes).ok()?;
    is_version_string(text).then(|| text.to_owned())
}

/// Whether `text` is a whole `runtime.Version()` string: `go1.N`, optionally `.P`, an `rcN`
/// or `betaN` suffix, and printable text after a space (experiment tags, `go1.25.5
/// X:nodwarf5`, or a distributor's note); or a development build's `devel go1.N-hash …`.
pub(crate) fn is_version_string(text: &str) -> bool {
    if let Some(devel) = text.strip_prefix("devel go1.") {
        return devel.starts_with(|c: char| c.is_ascii_digit()) && !devel.contains(['\0', '\n']);
    }
    // After a space: experiment tags (`X:nodwarf5`), or a distributor's note (Red Hat's
    // toolchains add `(Red Hat 1.26.2-2.el10)`); any printable text.
    let (release, tags) = text.split_once(' ').unwrap_or((text, ""));
    if !tags.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return false;
    }
    let Some(rest) = release.strip_prefix("go1.") else {
        return false;
    };
    let numeric_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (numbers, suffix) = rest.split_at(numeric_end);
    let numbers_ok = !numbers.is_empty()
        && numbers.split('.').count() <= 2
        && numbers
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let suffix_ok = suffix.is_empty()
        || ["rc", "beta"].iter().any(|tag| {
            suffix
                .strip_prefix(tag)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    numbers_ok && suffix_ok
}

/// Functions whose presence or absence bounds the release, checked against the fixtures of
/// every release from 1.21 to 1.27 (`gobin/tests/fixtures.rs`): `(name, first minor that has
/// it)`. Each was added in that release and is kept by the linker in every program, because
/// `mallocgc` or the scheduler reaches it.
const RELEASE_MARKERS: &[(&str, u32)] = &[
    // Go 1.21 rewrote tracebacks around the unwinder type (src/runtime/traceback.go).
    ("runtime.(*unwinder).next", 21),
    // Go 1.24 split mallocgc by size class kind (src/runtime/malloc.go). Not `mallocgcTiny`:
    // Go 1.27 replaced it with per-size-class specialisations (malloc_generated.go).
    ("runtime.mallocgcLarge", 24),
];

/// The names [`consistent`] asks about.
pub(crate) fn marker_names() -> impl Iterator<Item = &'static str> {
    RELEASE_MARKERS.iter().map(|&(name, _)| name)
}

/// Whether a version agrees with what the binary shows without it: the pclntab magic
/// (`0xfffffff0` for Go 1.18–1.19, `0xfffffff1` from 1.20) and [`RELEASE_MARKERS`].
pub(crate) fn consistent(version: GoVersion, pclntab_go120: bool, has_function: impl Fn(&str) -> bool) -> bool {
    if version.at_least(20) != pclntab_go120 {
        return false;
    }
    RELEASE_MARKERS
        .iter()
        .all(|&(name, minor)| version.at_least(minor) == has_function(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings() {
        for ok in [
            "go1.19",
            "go1.21.13",
            "go1.24rc1",
            "go1.22beta2",
            "go1.25.5 X:nodwarf5",
            "go1.26.2 (Red Hat 1.26.2-2.el10)",
            "devel go1.26-0a1b2c3d Tue Jan 1 00:00:00 2026 +0000",
        ] {
            assert!(is_version_string(ok), "{ok}");
        }
        for bad in [
            "go1.",
            "go1.x",
            "go1.21.13.4",
            "go1.21rc",
            "go1.21 \u{7f}",
            "go1.21.3extra",
            "go2.0",
            "go1.21\n",
            "golang.org/x",
        ] {
            assert!(!is_version_string(bad), "{bad}");
        }
    }

    #[test]
    fn markers_bound_the_release() {
        let has = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
        let go127 = has(&["runtime.(*unwinder).next", "runtime.mallocgcLarge"]);
        assert!(consistent(GoVersion::new(1, 27, 3), true, go127));
        assert!(!consistent(GoVersion::new(1, 23, 0), true, go127));
        let go119 = has(&[]);
        assert!(consistent(GoVersion::new(1, 19, 8), false, go119));
        assert!(!consistent(GoVersion::new(1, 19, 8), true, go119));
        assert!(!consistent(GoVersion::new(1, 21, 0), true, go119));
    }
}
