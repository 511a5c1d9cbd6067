//! Go binary analysis for tracing: everything an allocation tracer must know about a Go ELF
//! binary, answered from the file alone, without root and without running it.
//!
//! - build facts: Go version and modules (`.go.buildinfo`), architecture, PIE, dynamic
//!   linking and cgo, which of `.symtab`, DWARF and `.gopclntab` are present;
//! - functions by name with address ranges, from `.symtab` or, in stripped binaries, from
//!   `.gopclntab`;
//! - the allocation entry points of the binary's Go version, with the probe address after the
//!   stack-bound check, the argument registers and where the return address is
//!   ([`GoBinary::probe_points`], with the rule in [`COUNTING_RULE`]);
//! - symbolization of program counters with inlined frames expanded, from DWARF or the
//!   `.gopclntab` inline tree;
//! - type names of runtime type descriptors, from DWARF or the descriptors themselves;
//! - for the sampled modes: the sampling probe points (`runtime.profilealloc`,
//!   `runtime.(*mcache).refill`, `runtime.(*mcache).allocLarge`, in
//!   [`GoBinary::probe_points`] with their own [`ProbeRole`]s), the offsets of the runtime
//!   structure members the span-refill probe reads ([`GoBinary::runtime_layout`]), addresses
//!   of runtime variables such as `runtime.MemProfileRate` ([`GoBinary::variable`]) and the
//!   heap's size classes ([`sizeclasses`]);
//! - for running processes, translation of addresses through `/proc/PID/maps`.
//!
//! ```no_run
//! let data = std::fs::read("/usr/local/bin/app")?;
//! let binary = gobin::GoBinary::parse(&data)?;
//! for probe in binary.probe_points()? {
//!     println!("{} at file offset {:#x}", probe.function, probe.file_offset);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! All parsing is bounds-checked; corrupt input is an [`Error`], never a panic.

mod arch;
mod buildinfo;
mod buildversion;
mod dwarf;
mod elf;
mod entrypoints;
mod error;
mod functions;
mod layout;
mod moduledata;
mod names;
mod pclntab;
pub mod procmaps;
pub mod prologue;
pub mod sizeclasses;
mod types;
mod version;

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Serialize;

pub use crate::arch::{Arch, Register};
pub use crate::buildinfo::{BuildInfo, Module};
pub use crate::buildversion::VersionSource;
pub use crate::elf::LoadSegment;
pub use crate::entrypoints::{
    ArgLocation, ArgRole, ArgSource, COUNTING_RULE, MALLOC_IMPLEMENTATION_PREFIX, ProbePoint, ProbeRole, ReturnAddress,
    table_registers,
};
pub use crate::error::{Error, Result};
pub use crate::functions::{Function, FunctionSource, FunctionTable};
pub use crate::layout::{HeapStatsLayout, LayoutSource, RuntimeLayout, SpecialLayout};
pub use crate::moduledata::ModuleData;
pub use crate::names::{in_main_module, is_runtime_function, is_runtime_package, module_root, package_of};
pub use crate::prologue::StackCheck;
pub use crate::types::runtime_spelling;
pub use crate::version::GoVersion;

use crate::dwarf::DwarfInfo;
use crate::elf::Elf;
use crate::pclntab::Pclntab;

/// The oldest Go release gotrace understands: the first with the register ABI on arm64 (amd64
/// had it from 1.17) and with the pclntab layout parsed here.
pub const MIN_GO_MINOR: u32 = 18;

/// Which debug information a binary carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DebugSections {
    /// `.symtab` (removed by `-ldflags=-s`).
    pub symtab: bool,
    /// DWARF `.debug_*` sections (removed by `-ldflags=-w`).
    pub dwarf: bool,
    /// `.gopclntab`, always present in Go binaries.
    pub pclntab: bool,
}

/// How the binary is linked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Linkage {
    /// Position-independent (`ET_DYN`); its addresses are relative to a random load base.
    pub pie: bool,
    /// Needs the dynamic loader (`PT_INTERP`): true for cgo binaries and Go's PIE binaries.
    pub dynamic: bool,
    /// The dynamic loader, if any.
    pub interpreter: Option<String>,
    /// Shared libraries it links against (`DT_NEEDED`).
    pub needed: Vec<String>,
    /// Built with cgo and linked with the C library.
    pub cgo: bool,
}

/// Where a symbolized frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolSource {
    /// DWARF line tables and `DW_TAG_inlined_subroutine`.
    Dwarf,
    /// The runtime's own `.gopclntab` tables and inline tree.
    Pclntab,
}

/// One logical frame of a program counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Fully qualified function name.
    pub function: String,
    /// Absolute source path, as recorded at build time.
    pub file: String,
    /// Line number (0 when unknown).
    pub line: u32,
    /// Whether this frame was inlined into the next one.
    pub inlined: bool,
    /// Whether the code is the Go runtime's: a function of a runtime package
    /// ([`is_runtime_package`]), or any frame of a function compiled as part of one, whatever
    /// name `//go:linkname` gives it there (`reflect.unsafe_New`, `internal/bytealg.MakeNoZero`
    /// and the inlined `internal/abi` helpers in their bodies). Decided by the function's
    /// compilation unit in `.gopclntab`, never by its source path, so `-trimpath` and vendored
    /// paths change nothing.
    pub runtime: bool,
}

/// What Go's own unwinder does at a frame (`runtime.(*unwinder).next` with the flags
/// `runtime.callers` passes, as the heap profile records stacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unwind {
    /// An ordinary Go frame: the stack goes on.
    Continue,
    /// The function is marked TOPFRAME (`goexit`, `mstart`) or switches stacks (SPWRITE:
    /// `systemstack`, `mcall`, `morestack`, `asmcgocall`): the frame is the stack's last.
    /// Above `systemstack` the frames are on the system stack, and Go charges what is
    /// allocated there to the runtime, not to the goroutine below.
    StopAfter,
    /// Not Go code (C code of a cgo binary, another library): Go's unwinder ends before it.
    NotGo,
}

/// Where a type name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TypeSource {
    /// `DW_AT_go_runtime_type` of a DWARF type.
    Dwarf,
    /// The runtime type descriptor's name.
    Descriptor,
}

/// A variable of the binary: a data symbol of `.symtab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Variable {
    /// Its link-time address (in a PIE binary, relative to the load base like every other
    /// address here).
    pub address: u64,
    /// Its size in bytes, as the symbol gives it.
    pub size: u64,
}

/// A parsed Go binary.
pub struct GoBinary<'data> {
    elf: Elf<'data>,
    build_info: BuildInfo,
    version: GoVersion,
    version_source: VersionSource,
    pclntab: Pclntab<'data>,
    moduledata: Option<ModuleData>,
    functions: FunctionTable,
    dwarf: Option<DwarfInfo>,
    dwarf_types: OnceLock<HashMap<u64, Vec<String>>>,
    /// The compilation units of the runtime's packages, sorted.
    runtime_units: OnceLock<Vec<u32>>,
}

impl std::fmt::Debug for GoBinary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("arch", &self.elf.arch)
            .field("version", &self.build_info.go_version)
            .field("functions", &self.functions.len())
            .finish_non_exhaustive()
    }
}

/// Whether `data` is a Go binary gotrace could trace, from its ELF headers and sections alone
/// (no Go table is parsed): what a node agent asks of every executable on a host. A 32-bit,
/// big-endian or foreign-architecture file, or a file that is not ELF at all (a script run
/// through its interpreter is the interpreter's process), is not.
///
/// # Errors
/// When the ELF headers are corrupt.
pub fn is_go(data: &[u8]) -> Result<bool> {
    let elf = match Elf::parse(data) {
        Ok(elf) => elf,
        Err(Error::NotElf(_) | Error::UnsupportedArch(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(pclntab::locate(&elf).is_some() || buildinfo::read(&elf)?.is_some())
}

impl<'data> GoBinary<'data> {
    /// Parses a Go binary from its bytes.
    ///
    /// # Errors
    /// When the bytes are not a 64-bit little-endian x86-64 or aarch64 ELF file, not a Go
    /// binary, a Go release older than 1.18, or when the Go tables are corrupt.
    pub fn parse(data: &'data [u8]) -> Result<Self> {
        let elf = Elf::parse(data)?;
        let pclntab_location = pclntab::locate(&elf);
        let build_info = buildinfo::read(&elf)?;
        if build_info.is_none() && pclntab_location.is_none() {
            return Err(Error::NotGo);
        }
        let known_version = build_info.as_ref().map(|info| {
            GoVersion::parse(&info.go_version).ok_or_else(|| {
                Error::corrupt(
                    ".go.buildinfo",
                    format!("unrecognised Go version {:?}", info.go_version),
                )
            })
        });
        let known_version = known_version.transpose()?;
        if let (Some(info), Some(v)) = (&build_info, known_version)
            && !v.at_least(MIN_GO_MINOR)
        {
            return Err(Error::GoTooOld {
                version: info.go_version.clone(),
            });
        }
        let (pclntab_address, pclntab_data) =
            pclntab_location.ok_or_else(|| Error::corrupt(".gopclntab", "missing"))?;
        let mut pclntab = Pclntab::parse(&elf, pclntab_address, pclntab_data, known_version)?;
        let (build_info, version, version_source) = if let (Some(info), Some(version)) = (build_info, known_version) {
            (info, version, VersionSource::Buildinfo)
        } else {
            let (text, source) = version_without_buildinfo(&elf, &pclntab)?;
            let version = GoVersion::parse(&text).ok_or(Error::UnknownVersion)?;
            if !version.at_least(MIN_GO_MINOR) {
                return Err(Error::GoTooOld { version: text });
            }
            let info = BuildInfo {
                go_version: text,
                ..BuildInfo::default()
            };
            (info, version, source)
        };
        let moduledata = moduledata::find(&elf, &pclntab, version);
        // Entry offsets are relative to moduledata.text; Go 1.26 stopped storing it in the
        // pclntab header (src/runtime/symtab.go, pcHeader). A runtime.text symbol, and then
        // the .text section, are fallbacks for damaged binaries.
        let text_start = moduledata
            .map(|md| md.text)
            .filter(|&t| t != 0)
            .or_else(|| (pclntab.header_text_start != 0).then_some(pclntab.header_text_start))
            .or_else(|| elf.symbol("runtime.text").map(|s| s.address))
            .or_else(|| elf.section(".text").map(|(addr, _)| addr))
            .ok_or_else(|| Error::corrupt(".gopclntab", "cannot find the start of the text"))?;
        pclntab.text_start = text_start;
        pclntab.gofunc = moduledata
            .map(|md| md.gofunc)
            .or_else(|| elf.symbol("go:func.*").map(|s| s.address))
            .or_else(|| elf.symbol("go.func.*").map(|s| s.address));
        let functions = if elf.has_symtab() {
            FunctionTable::from_symtab(&elf)
        } else {
            FunctionTable::from_pclntab(&pclntab)
        };
        if functions.is_empty() {
            return Err(Error::corrupt(".gopclntab", "no functions"));
        }
        let dwarf = DwarfInfo::load(&elf)?;
        Ok(Self {
            elf,
            build_info,
            version,
            version_source,
            pclntab,
            moduledata,
            functions,
            dwarf,
            dwarf_types: OnceLock::new(),
            runtime_units: OnceLock::new(),
        })
    }

    /// Drops the DWARF sections, decompressed and held since parsing (a few MiB for a small
    /// program, tens for a big one), once what only DWARF gives has been read: the probes'
    /// argument registers and the runtime's struct layouts. A process traced for hours keeps
    /// only `.gopclntab`, which gives the same frames, inlined calls included
    /// ([`Self::symbolize_from`]; the golden tests compare the two); type names then come
    /// from the runtime's type data alone.
    pub fn forget_debug_info(&mut self) {
        self.dwarf = None;
        self.dwarf_types = OnceLock::new();
    }

    /// The architecture.
    #[must_use]
    pub fn arch(&self) -> Arch {
        self.elf.arch
    }

    /// The Go release that built the binary.
    #[must_use]
    pub fn go_version(&self) -> GoVersion {
        self.version
    }

    /// Where the Go version came from: `.go.buildinfo`, or `runtime.buildVersion` in a binary
    /// without it.
    #[must_use]
    pub fn version_source(&self) -> VersionSource {
        self.version_source
    }

    /// Version and module information. Without `.go.buildinfo` only `go_version` is known.
    #[must_use]
    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Which debug information is present.
    #[must_use]
    pub fn debug_sections(&self) -> DebugSections {
        DebugSections {
            symtab: self.elf.has_symtab(),
            dwarf: self.dwarf.is_some(),
            pclntab: true,
        }
    }

    /// The binary's build id, as pprof's `Mapping.build_id` carries it: the GNU build id in
    /// hex when the linker wrote one (external linking, `-B`), else the Go build id
    /// (`.note.go.buildid`, `actionID/contentID`).
    #[must_use]
    pub fn build_id(&self) -> Option<String> {
        if let Some(gnu) = self.elf.note(b"GNU", 3) {
            return Some(gnu.iter().fold(String::new(), |mut hex, b| {
                use std::fmt::Write as _;
                let _ = write!(hex, "{b:02x}");
                hex
            }));
        }
        let go = self.elf.note(b"Go", 4)?;
        Some(String::from_utf8_lossy(go).into_owned())
    }

    /// PIE, dynamic linking and cgo.
    #[must_use]
    pub fn linkage(&self) -> Linkage {
        let interpreter = self.elf.interpreter();
        let needed = self.elf.needed_libraries();
        // runtime/cgo brings the C function x_cgo_init and links the C library dynamically;
        // pure Go binaries, PIE ones included, list no libraries at all. `_cgo_init` is no
        // evidence: it is a runtime variable present in every binary.
        let cgo = self.elf.symbol("x_cgo_init").is_some() || needed.iter().any(|lib| lib.starts_with("libc."));
        Linkage {
            pie: self.elf.is_pie(),
            dynamic: interpreter.is_some() || !needed.is_empty(),
            interpreter,
            needed,
            cgo,
        }
    }

    /// `PT_LOAD` segments, for translating addresses of a running process.
    #[must_use]
    pub fn load_segments(&self) -> &[LoadSegment] {
        &self.elf.loads
    }

    /// `runtime.firstmoduledata`, when it could be located.
    #[must_use]
    pub fn moduledata(&self) -> Option<&ModuleData> {
        self.moduledata.as_ref()
    }

    /// Functions by name and address.
    #[must_use]
    pub fn functions(&self) -> &FunctionTable {
        &self.functions
    }

    /// File offset of a link-time address, as uprobes take it.
    #[must_use]
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.elf.vaddr_to_offset(addr)
    }

    /// The bytes of a function's code.
    #[must_use]
    pub fn code(&self, function: &Function) -> Option<&'data [u8]> {
        let len = usize::try_from(function.end.checked_sub(function.start)?).ok()?;
        self.elf.read(function.start, len)
    }

    /// The allocation entry points of this binary, with probe addresses, argument registers
    /// and the counting rule applied (see [`COUNTING_RULE`]).
    ///
    /// # Errors
    /// When the DWARF describing the entry points' parameters is malformed.
    pub fn probe_points(&self) -> Result<Vec<ProbePoint>> {
        let candidates = entrypoints::candidates(self.arch(), self.version, &self.functions, |f| self.code(f));
        let dwarf_params = match &self.dwarf {
            Some(dwarf) => {
                let wanted = candidates
                    .iter()
                    .map(|c| (c.function.name.as_str(), c.probe_address))
                    .collect();
                Some(dwarf.params(&wanted)?)
            }
            None => None,
        };
        Ok(entrypoints::resolve(
            self.arch(),
            &self.functions,
            &candidates,
            dwarf_params.as_ref(),
            |addr| self.file_offset(addr),
        ))
    }

    /// Byte offsets of the members of `runtime.mcache` and `runtime.mspan` that the
    /// span-refill probe reads: from the binary's DWARF when it describes them, else from
    /// gotrace's table for the binary's Go release (see [`RuntimeLayout::from_version_table`]).
    ///
    /// # Errors
    /// When the DWARF is malformed, or when the binary has no DWARF describing the structures
    /// and its Go release is not in the table.
    pub fn runtime_layout(&self) -> Result<RuntimeLayout> {
        if let Some(dwarf) = &self.dwarf {
            let structs = dwarf.struct_members(&[layout::MCACHE, layout::MSPAN])?;
            if let Some(found) = RuntimeLayout::from_dwarf(&structs) {
                return Ok(found);
            }
        }
        RuntimeLayout::from_version_table(self.version).ok_or_else(|| Error::UnknownRuntimeLayout {
            version: self.build_info.go_version.clone(),
        })
    }

    /// How to tell a profile special from the other kinds at `runtime.freeSpecial` (see
    /// [`SpecialLayout`]): `None` for a Go release outside gotrace's table (1.21–1.27).
    ///
    /// # Errors
    /// When the DWARF is malformed.
    pub fn special_layout(&self) -> Result<Option<SpecialLayout>> {
        let Some(table) = SpecialLayout::from_version_table(self.version) else {
            return Ok(None);
        };
        Ok(Some(match &self.dwarf {
            Some(dwarf) => table.with_dwarf(&dwarf.struct_members(&[layout::SPECIAL])?),
            None => table,
        }))
    }

    /// Where the runtime counts its heap allocations: the link-time address of
    /// `runtime.memstats.heapStats.stats` and the layout of what is there (see
    /// [`HeapStatsLayout`]). `None` without `.symtab` (stripped: `.gopclntab` names only
    /// functions), or for a Go release outside gotrace's table (1.21–1.27).
    ///
    /// # Errors
    /// When the DWARF is malformed.
    pub fn heap_stats(&self) -> Result<Option<(u64, HeapStatsLayout)>> {
        let Some(memstats) = self.variable(layout::MEMSTATS_SYMBOL) else {
            return Ok(None);
        };
        // Only releases the table knows, DWARF or not: the reading assumes their number of
        // size classes, and a later release may count differently.
        let Some(mut stats_layout) = HeapStatsLayout::from_version_table(self.version) else {
            return Ok(None);
        };
        if let Some(dwarf) = &self.dwarf {
            let structs =
                dwarf.struct_members(&[layout::MSTATS, layout::CONSISTENT_HEAP_STATS, layout::HEAP_STATS_DELTA])?;
            if let Some(found) = HeapStatsLayout::from_dwarf(&structs) {
                stats_layout = found;
            }
        }
        // The three generations must lie inside the variable.
        let end = u64::from(stats_layout.generations) + stats_layout.read_size() as u64;
        Ok((end <= memstats.size).then(|| (memstats.address + u64::from(stats_layout.generations), stats_layout)))
    }

    /// A variable by its full name, from `.symtab`: `None` when there is no such data symbol,
    /// or no `.symtab` at all (`-ldflags=-s`; `.gopclntab` names only functions).
    ///
    /// The sampled modes read `runtime.MemProfileRate` (an `int`: the heap profile's sampling
    /// rate in bytes, 0 when profiling is off; `src/runtime/mprof.go`) and
    /// `runtime.disableMemoryProfiling` (a `bool` the linker sets when the code that reads the
    /// memory profile is dead, after which `schedinit` sets the rate to 0;
    /// `linksetup` in `src/cmd/link/internal/ld/lib.go`, `src/runtime/proc.go`). The linker
    /// puts a true `disableMemoryProfiling` in `.noptrdata`, a false one in `.noptrbss`.
    #[must_use]
    pub fn variable(&self, name: &str) -> Option<Variable> {
        self.elf
            .symbols()
            .find(|s| s.is_data && s.name == name)
            .map(|s| Variable {
                address: s.address,
                size: s.size,
            })
    }

    /// Logical frames at a link-time `pc`, innermost first, with inlined calls expanded.
    /// Uses DWARF when present, `.gopclntab` otherwise (or when DWARF does not cover the pc).
    ///
    /// Pass the address of an instruction: for a return address, pass `pc - 1` so the lookup
    /// lands on the call (as `runtime.CallersFrames` does).
    #[must_use]
    pub fn symbolize(&self, pc: u64) -> Vec<Frame> {
        let mut frames = match self.dwarf.as_ref().map(|d| d.frames(pc)) {
            Some(Ok(frames)) if !frames.is_empty() => frames.into_iter().map(into_frame).collect(),
            _ => self.symbolize_pclntab(pc),
        };
        self.mark_runtime(pc, &mut frames);
        frames
    }

    /// Frames at `pc` from one source only (for cross-checks).
    ///
    /// # Errors
    /// When the DWARF is malformed. Returns `Ok(None)` when the source is absent.
    pub fn symbolize_from(&self, pc: u64, source: SymbolSource) -> Result<Option<Vec<Frame>>> {
        let mut frames = match source {
            SymbolSource::Pclntab => self.symbolize_pclntab(pc),
            SymbolSource::Dwarf => match &self.dwarf {
                Some(d) => d.frames(pc)?.into_iter().map(into_frame).collect(),
                None => return Ok(None),
            },
        };
        self.mark_runtime(pc, &mut frames);
        Ok(Some(frames))
    }

    /// The import path of the program's own code, its main module: what "your code" means
    /// when a callsite is in the standard library or a dependency. From the build info's main
    /// module (`go version -m`: `mod`), else its main package (`path`); without build info
    /// (or for `go build file.go`, whose path is `command-line-arguments`), from the file of
    /// `main.main` in a `-trimpath` build, which is the package's import path. A package path
    /// is cut to a guess at its module root ([`module_root`]:
    /// `github.com/evanw/esbuild/cmd/esbuild` → `github.com/evanw/esbuild`). `None` when only
    /// package `main` can be known.
    #[must_use]
    pub fn main_module(&self) -> Option<String> {
        let info = &self.build_info;
        let known = |p: &&String| !p.is_empty() && p.as_str() != "command-line-arguments";
        if let Some(m) = info.main_module.as_ref().map(|m| &m.path).filter(known) {
            return Some(m.clone());
        }
        let package = if let Some(path) = info.path.as_ref().filter(known) {
            path.clone()
        } else {
            let main = self.functions.by_name("main.main")?;
            let f = self.pclntab.find(main.start)?;
            let (file, _) = self.pclntab.file_line(f, main.start)?;
            // An absolute path (no -trimpath) says where the source was, not its import path.
            if file.starts_with('/') || !file.contains('/') {
                return None;
            }
            file.rsplit_once('/')?.0.to_owned()
        };
        Some(names::module_root(&package).to_owned())
    }

    /// Whether the code at `pc` was compiled as part of a runtime package: the pclntab's
    /// compilation unit of the function there is one of the runtime's. The Go linker gives each
    /// package one compilation unit (`cuOffset` of `runtime._func`), and a function that
    /// `//go:linkname` pushes into another package keeps the unit it was compiled in.
    #[must_use]
    pub fn is_runtime_code(&self, pc: u64) -> bool {
        self.pclntab
            .find(pc)
            .and_then(|f| self.pclntab.compilation_unit(f))
            .is_some_and(|unit| self.runtime_units().binary_search(&unit).is_ok())
    }

    /// What Go's own unwinder does at the frame of a program counter (see [`Unwind`]).
    #[must_use]
    pub fn unwind_at(&self, pc: u64) -> Unwind {
        match self.pclntab.find(pc) {
            None => Unwind::NotGo,
            Some(f) if self.pclntab.stops_unwinding(f) => Unwind::StopAfter,
            Some(_) => Unwind::Continue,
        }
    }

    /// Sets [`Frame::runtime`]: every frame of runtime code, and frames inlined elsewhere that
    /// are named as the runtime's (`runtime.KeepAlive` inlined into user code).
    fn mark_runtime(&self, pc: u64, frames: &mut [Frame]) {
        let runtime_code = self.is_runtime_code(pc);
        for frame in frames {
            frame.runtime = runtime_code || is_runtime_function(&frame.function);
        }
    }

    /// The compilation units of every function named as a runtime package's (see
    /// [`is_runtime_package`]), found once by one pass over the function table.
    fn runtime_units(&self) -> &[u32] {
        self.runtime_units.get_or_init(|| {
            let mut units: Vec<u32> = (0..self.pclntab.len())
                .filter_map(|i| self.pclntab.func(i))
                // Not wrappers the compiler makes in the user's package for runtime names
                // (method values `runtime.(*Frames).Next-fm`, generic instantiations):
                // their unit is the user's.
                .filter(|&f| {
                    self.pclntab
                        .name(f)
                        .is_some_and(|n| is_runtime_function(n) && !n.ends_with("-fm") && !n.contains('['))
                })
                .filter_map(|f| self.pclntab.compilation_unit(f))
                .collect();
            units.sort_unstable();
            units.dedup();
            units
        })
    }

    fn symbolize_pclntab(&self, pc: u64) -> Vec<Frame> {
        self.pclntab
            .find(pc)
            .map(|f| self.pclntab.frames(&self.elf, f, pc))
            .unwrap_or_default()
            .into_iter()
            .map(into_frame)
            .collect()
    }

    /// The Go name of the type whose runtime descriptor is at the link-time address `addr`.
    ///
    /// DWARF's name (found through `DW_AT_go_runtime_type`) when it agrees with the descriptor:
    /// it has the full import path (`encoding/json.Decoder` where the descriptor says
    /// `json.Decoder`). Several DWARF types can share a descriptor (aliases, such as a runtime
    /// type defined as `= string`), so the one that agrees is chosen; when none does, or there
    /// is no DWARF, the descriptor's own name.
    #[must_use]
    pub fn type_name(&self, addr: u64) -> Option<(String, TypeSource)> {
        let descriptor = self.type_name_from(addr, TypeSource::Descriptor);
        let dwarf = self.dwarf_types().get(&addr);
        match (descriptor, dwarf) {
            (Some(d), Some(names)) => Some(
                names
                    .iter()
                    .find(|n| **n == d || types::runtime_spelling(n) == d)
                    .map_or((d, TypeSource::Descriptor), |n| (n.clone(), TypeSource::Dwarf)),
            ),
            (Some(d), None) => Some((d, TypeSource::Descriptor)),
            (None, Some(names)) => names.first().map(|n| (n.clone(), TypeSource::Dwarf)),
            (None, None) => None,
        }
    }

    /// The type name from one source only (for cross-checks). From DWARF, the first of the
    /// names that share the descriptor.
    #[must_use]
    pub fn type_name_from(&self, addr: u64, source: TypeSource) -> Option<String> {
        match source {
            TypeSource::Dwarf => self.dwarf_types().get(&addr)?.first().cloned(),
            TypeSource::Descriptor => types::descriptor_name(&self.elf, self.moduledata.as_ref()?, addr),
        }
    }

    /// Addresses of the type descriptors listed in `moduledata.typelinks`, which the linker
    /// sorts by type name (Go 1.18–1.26; `None` from Go 1.27, which dropped the list, or
    /// when the moduledata was not found). Corrupt entries are skipped.
    #[must_use]
    pub fn typelinks(&self) -> Option<Vec<u64>> {
        let md = self.moduledata.as_ref()?;
        let (start, len) = md.typelinks?;
        // Each entry is an int32 offset from `types`; more entries than bytes of type data
        // can only be corruption.
        let len = usize::try_from(len)
            .ok()
            .filter(|&n| (n as u64) <= md.etypes.saturating_sub(md.types))?;
        let bytes = self.elf.read(start, len.checked_mul(4)?)?;
        Some(
            bytes
                .chunks_exact(4)
                .filter_map(|w| {
                    let off = i32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                    md.types.checked_add_signed(i64::from(off))
                })
                .collect(),
        )
    }

    /// All DWARF-described runtime types by descriptor address, with every name that refers to
    /// each (empty without DWARF, or without the moduledata that the DWARF offsets are
    /// relative to).
    pub fn dwarf_types(&self) -> &HashMap<u64, Vec<String>> {
        self.dwarf_types.get_or_init(|| {
            let (Some(dwarf), Some(md)) = (&self.dwarf, &self.moduledata) else {
                return HashMap::new();
            };
            dwarf
                .runtime_types()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(value, name)| {
                    // An offset from `types`, except that linkers before Go 1.22 wrote
                    // uintptr's as an absolute address (DW_CLS_ADDRESS in
                    // cmd/link/internal/ld/dwarf.go); offsets never reach up to `types`.
                    let address = if (md.types..md.etypes).contains(&value) {
                        value
                    } else {
                        md.types.checked_add(value)?
                    };
                    Some((address, name))
                })
                .collect()
        })
    }
}

/// The Go version of a binary without `.go.buildinfo`: `runtime.buildVersion` by its symbol, or
/// the one string header in the data that points at a Go version consistent with the pclntab
/// magic and the runtime functions present (see [`buildversion`]).
fn version_without_buildinfo(elf: &Elf<'_>, pclntab: &Pclntab<'_>) -> Result<(String, VersionSource)> {
    if let Some(text) = buildversion::from_symbol(elf) {
        return Ok((text, VersionSource::BuildVersionSymbol));
    }
    let markers = pclntab.function_names_among(buildversion::marker_names());
    let mut candidates: Vec<String> = buildversion::search(elf)
        .into_iter()
        .filter(|text| {
            GoVersion::parse(text)
                .is_some_and(|v| buildversion::consistent(v, pclntab.is_go120_layout(), |name| markers.contains(name)))
        })
        .collect();
    // The runtime's copy and another package's copy of the same release string may differ
    // only by experiment tags; one release is all that matters.
    candidates.sort();
    candidates.dedup_by(|a, b| GoVersion::parse(a) == GoVersion::parse(b));
    match candidates.as_slice() {
        [one] => Ok((one.clone(), VersionSource::BuildVersionSearch)),
        [] => Err(Error::UnknownVersion),
        several => Err(Error::AmbiguousVersion {
            candidates: several.join(", "),
        }),
    }
}

fn into_frame(raw: pclntab::RawFrame) -> Frame {
    Frame {
        function: raw.function,
        file: raw.file,
        line: raw.line,
        inlined: raw.inlined,
        runtime: false,
    }
}
