//! The one error type of this crate.

use std::path::PathBuf;

/// Why a Go binary could not be analysed.
///
/// Every variant is a clear, one-line statement about the input; none is a bug in this crate.
/// Corrupt input of any kind ends up here, never in a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ELF file at all.
    #[error("not an ELF file ({0})")]
    NotElf(&'static str),
    /// The ELF headers could not be parsed.
    #[error("malformed ELF file")]
    Elf(#[source] object::read::Error),
    /// An ELF file for an architecture gotrace does not trace.
    #[error("unsupported architecture {0}: gotrace supports x86_64 and aarch64")]
    UnsupportedArch(String),
    /// A well-formed ELF file that was not produced by the Go linker.
    #[error("not a Go binary: it has neither a .go.buildinfo nor a .gopclntab section")]
    NotGo,
    /// A Go binary without `.go.buildinfo` whose `runtime.buildVersion` cannot be found either.
    #[error(
        "cannot tell which Go release built this binary: it has no .go.buildinfo section and no \
         runtime.buildVersion string"
    )]
    UnknownVersion,
    /// A Go binary without `.go.buildinfo` in which several strings could be
    /// `runtime.buildVersion`, none of them ruled out by the runtime's own tables.
    #[error(
        "cannot tell which Go release built this binary: it has no .go.buildinfo section, and \
         {candidates} all could be runtime.buildVersion"
    )]
    AmbiguousVersion {
        /// The version strings found.
        candidates: String,
    },
    /// A Go binary older than the oldest release gotrace understands.
    #[error(
        "{version} is too old: gotrace needs go1.18 or later, the first release that passes \
         arguments in registers on both amd64 and arm64"
    )]
    GoTooOld {
        /// The version string from the binary, e.g. `go1.16.15`.
        version: String,
    },
    /// A Go structure in the binary is inconsistent (truncated, out of bounds, bad magic, …).
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which structure, e.g. `.gopclntab header`.
        what: &'static str,
        /// What exactly is wrong with it.
        detail: String,
    },
    /// The DWARF sections are present but cannot be read.
    #[error("malformed DWARF")]
    Dwarf(#[source] gimli::Error),
    /// The offsets of the runtime structure members the span-refill probe reads are unknown:
    /// no DWARF describes them and the Go release is not in gotrace's table.
    #[error(
        "the layout of runtime.mcache and runtime.mspan in {version} is unknown: the binary has \
         no DWARF describing them and gotrace's table covers go1.21 to go1.27"
    )]
    UnknownRuntimeLayout {
        /// The version string from the binary.
        version: String,
    },
    /// A process's memory map (`/proc/PID/maps`) could not be understood.
    #[error("cannot parse the memory map of the process: {0}")]
    Maps(String),
}

impl Error {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            what,
            detail: detail.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
