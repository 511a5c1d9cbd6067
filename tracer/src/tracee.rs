//! A process to trace: its executable read and parsed, its address map, what reports say of
//! it, and its symbols. Every command that traces opens a process this one way.
//!
//! Two steps, because [`GoBinary`] borrows the bytes it parses (as `gobin` does throughout):
//! [`Executable::read`] owns the bytes, and [`Executable::parse`] borrows them for the
//! [`Tracee`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gobin::procmaps::{AddressMap, ProcessExe};
use gobin::{Frame, GoBinary, Unwind};

use crate::export::MappingInfo;
use crate::mapped::FileBytes;
use crate::memprofile::{self, PreparedProbes};
use crate::mode::Mode;
use crate::probes::{AttachTarget, ProbeOptions};
use crate::profile::{self, Locations, Symbols};
use crate::report::TargetInfo;
use crate::store::{OTHER_CALLSITES, OTHER_CALLSITES_NAME};

/// The executable of a running process, read.
#[derive(Debug)]
pub struct Executable {
    pid: u32,
    exe: ProcessExe,
    data: FileBytes,
}

impl Executable {
    /// Reads the file process `pid` executes (through `/proc/PID/root`, so a process in a
    /// container works: see [`gobin::procmaps::process_exe`]).
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let exe = gobin::procmaps::process_exe(pid)
            .with_context(|| format!("cannot find the executable of process {pid}"))?;
        let data = FileBytes::open(&exe.path).with_context(|| format!("cannot read {}", exe.path.display()))?;
        Ok(Self { pid, exe, data })
    }

    /// Where the executable is, for gotrace and as the process sees it.
    #[must_use]
    pub fn exe(&self) -> &ProcessExe {
        &self.exe
    }

    /// The executable's bytes.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Whether the file still has the size and modification time it had when read (a mapped
    /// file that shrank must not be read: see [`crate::mapped`]).
    #[must_use]
    pub fn unchanged(&self) -> bool {
        self.data.unchanged()
    }

    /// Gives back the memory the binary's pages take, after parsing touched them; pages are
    /// read again from the page cache as symbolizing needs them.
    pub fn release_pages(&self) {
        self.data.release();
    }

    /// Parses the binary and maps its addresses into the process: fails for a binary gotrace
    /// cannot trace (not Go, too old, corrupt), with the reason.
    pub fn parse(&self) -> anyhow::Result<Tracee<'_>> {
        let pid = self.pid;
        let binary = GoBinary::parse(self.data.bytes()).with_context(|| {
            format!(
                "process {pid} ({}) cannot be traced",
                self.exe.path_in_process.display()
            )
        })?;
        let addresses = AddressMap::for_process(pid, &self.exe, binary.load_segments())
            .with_context(|| format!("cannot read the memory map of process {pid}"))?;
        Ok(Tracee {
            pid,
            exe: &self.exe,
            binary,
            addresses,
        })
    }
}

/// A Go process, parsed and mapped: what attaching probes and symbolizing stacks need.
#[derive(Debug)]
pub struct Tracee<'d> {
    pub pid: u32,
    pub exe: &'d ProcessExe,
    pub binary: GoBinary<'d>,
    pub addresses: AddressMap,
}

impl Tracee<'_> {
    /// What reports say of the process.
    #[must_use]
    pub fn info(&self) -> TargetInfo {
        TargetInfo {
            pid: self.pid,
            exe: self.exe.path_in_process.display().to_string(),
            go_version: self.binary.build_info().go_version.clone(),
            arch: self.binary.arch().name().to_owned(),
        }
    }

    /// The executable mapping of the binary, for pprof.
    #[must_use]
    pub fn mapping(&self) -> MappingInfo {
        mapping_info(&self.addresses, &self.exe.path_in_process, &self.binary)
    }

    /// Where probes go.
    #[must_use]
    pub fn attach_target(&self) -> AttachTarget<'_, '_> {
        AttachTarget {
            binary: &self.binary,
            binary_path: &self.exe.path,
            pid: self.pid,
            addresses: &self.addresses,
        }
    }

    /// Resolves `mode` for this process (`auto`; go-sampler's rate, set on request) and
    /// attaches its probes.
    pub fn attach(
        &self,
        mode: Mode,
        set_mem_profile_rate: Option<u64>,
        options: ProbeOptions,
    ) -> anyhow::Result<PreparedProbes> {
        memprofile::prepare_and_attach(mode, set_mem_profile_rate, &self.attach_target(), options)
    }

    /// The process's symbols, with empty caches.
    #[must_use]
    pub fn symbols(&self) -> ProcessSymbols<'_> {
        ProcessSymbols::new(&self.binary, &self.addresses)
    }
}

/// The executable mapping of `binary` in a process, for pprof.
fn mapping_info(addresses: &AddressMap, exe: &Path, binary: &GoBinary<'_>) -> MappingInfo {
    let text = addresses.mappings().iter().find(|m| m.is_executable());
    MappingInfo {
        start: text.map_or(0, |m| m.start),
        limit: text.map_or(0, |m| m.end),
        offset: text.map_or(0, |m| m.offset),
        path: exe.display().to_string(),
        build_id: binary.build_id(),
    }
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
#[must_use]
pub fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// Symbols of the traced process: the binary's, through the process's address map, cached.
#[derive(Debug)]
pub struct ProcessSymbols<'a> {
    binary: &'a GoBinary<'a>,
    addresses: &'a AddressMap,
    frames: HashMap<(u64, bool), Arc<[Frame]>>,
    types: HashMap<u64, Option<Arc<str>>>,
    /// Expanded stacks by (stack key, return address), and whether the current build used
    /// them: profiles built one after another share them instead of holding copies.
    locations: HashMap<(u64, u64), (Locations, bool)>,
    /// The program's own code (see [`GoBinary::main_module`]).
    main_module: Option<String>,
}

impl<'a> ProcessSymbols<'a> {
    #[must_use]
    pub fn new(binary: &'a GoBinary<'a>, addresses: &'a AddressMap) -> Self {
        Self {
            binary,
            addresses,
            frames: HashMap::new(),
            types: HashMap::new(),
            locations: HashMap::new(),
            main_module: binary.main_module(),
        }
    }
}

/// A frame that is only an address: outside the binary (a cgo library, the vDSO), or the
/// store's "other callsites".
fn address_frame(function: String) -> Arc<[Frame]> {
    vec![Frame {
        function,
        file: "?".to_owned(),
        line: 0,
        inlined: false,
        runtime: false,
    }]
    .into()
}

impl Symbols for ProcessSymbols<'_> {
    fn in_main_module(&self, function: &str) -> bool {
        gobin::in_main_module(function, self.main_module.as_deref())
    }

    fn locations(&mut self, stack_id: u64, stack: &[u64], return_address: u64) -> Locations {
        if let Some((locations, used)) = self.locations.get_mut(&(stack_id, return_address)) {
            *used = true;
            return locations.clone();
        }
        let locations: Locations = profile::expand(stack, return_address, self).into();
        self.locations
            .insert((stack_id, return_address), (locations.clone(), true));
        locations
    }

    fn build_done(&mut self) {
        self.locations.retain(|_, (_, used)| std::mem::take(used));
    }

    fn frames(&mut self, pc: u64, return_address: bool) -> Arc<[Frame]> {
        let (binary, addresses) = (self.binary, self.addresses);
        if pc == OTHER_CALLSITES {
            return address_frame(OTHER_CALLSITES_NAME.to_owned());
        }
        self.frames
            .entry((pc, return_address))
            .or_insert_with(|| {
                let lookup = if return_address { pc.saturating_sub(1) } else { pc };
                match addresses.to_static(lookup) {
                    Some(static_pc) => binary.symbolize(static_pc).into(),
                    // Outside the binary (a cgo library, the vDSO): keep the address visible.
                    None => address_frame(format!("{pc:#x}")),
                }
            })
            .clone()
    }

    fn unwind(&mut self, pc: u64) -> Unwind {
        if pc == OTHER_CALLSITES.saturating_sub(1) || pc == OTHER_CALLSITES {
            return Unwind::Continue;
        }
        match self.addresses.to_static(pc) {
            Some(static_pc) => self.binary.unwind_at(static_pc),
            None => Unwind::NotGo,
        }
    }

    fn type_name(&mut self, address: u64) -> Option<Arc<str>> {
        let (binary, addresses) = (self.binary, self.addresses);
        self.types
            .entry(address)
            .or_insert_with(|| {
                let static_address = addresses.to_static(address)?;
                binary.type_name(static_address).map(|(name, _)| name.into())
            })
            .clone()
    }
}
