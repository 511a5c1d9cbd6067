//! DWARF: parameter locations, runtime type names and inline-aware line tables.
//!
//! The Go linker compresses DWARF sections (zlib); they are decompressed once into shared
//! buffers so that the `gimli` reader and the `addr2line` context need no borrowed lifetimes.

use std::collections::HashMap;
use std::sync::Arc;

use gimli::{AttributeValue, EndianArcSlice, LittleEndian, Operation, Reader as _};

use crate::arch::{Arch, Register};
use crate::elf::Elf;
use crate::error::{Error, Result};
use crate::pclntab::RawFrame;

type Reader = EndianArcSlice<LittleEndian>;

/// `DW_AT_go_runtime_type`: the address of a DWARF type's runtime type descriptor
/// (`src/cmd/internal/dwarf/dwarf.go`, emitted by the linker's `defgotype`).
const DW_AT_GO_RUNTIME_TYPE: gimli::DwAt = gimli::DwAt(0x2904);

/// A formal parameter of a function, as DWARF describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DwarfParam {
    pub name: String,
    /// The register holding the parameter at the queried pc, when DWARF says so.
    pub register: Option<Register>,
    /// Result parameters (`~r0`, or named results) are marked `DW_AT_variable_parameter`.
    pub is_result: bool,
}

pub(crate) struct DwarfInfo {
    dwarf: Arc<gimli::Dwarf<Reader>>,
    arch: Arch,
    lines: std::sync::OnceLock<std::result::Result<addr2line::Context<Reader>, String>>,
}

impl std::fmt::Debug for DwarfInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfInfo")
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

impl DwarfInfo {
    /// Loads DWARF if the binary has any (`-ldflags=-w` removes it).
    pub fn load(elf: &Elf<'_>) -> Result<Option<Self>> {
        if !elf.has_section(".debug_info") {
            return Ok(None);
        }
        let load = |id: gimli::SectionId| -> Result<Reader> {
            let data = elf.section_uncompressed(id.name())?.unwrap_or_default();
            Ok(EndianArcSlice::new(Arc::from(&*data), LittleEndian))
        };
        let dwarf = gimli::Dwarf::load(load)?;
        Ok(Some(Self {
            dwarf: Arc::new(dwarf),
            arch: elf.arch,
            lines: std::sync::OnceLock::new(),
        }))
    }

    /// Formal parameters of the named functions, with the register each one is in at the
    /// given pc (the probe address). Functions not found are absent from the map.
    pub fn params(&self, wanted: &HashMap<&str, u64>) -> Result<HashMap<String, Vec<DwarfParam>>> {
        let mut found = HashMap::new();
        let mut units = self.dwarf.units();
        while let Some(header) = units.next().map_err(Error::Dwarf)? {
            let unit = self.dwarf.unit(header).map_err(Error::Dwarf)?;
            let mut entries = unit.entries();
            // The subprogram we are inside of, and its depth, while walking its children.
            let mut current: Option<(String, u64, isize)> = None;
            while let Some(entry) = entries.next_dfs().map_err(Error::Dwarf)? {
                let depth = entry.depth();
                if let Some((_, _, d)) = &current
                    && depth <= *d
                {
                    current = None;
                }
                if entry.tag() == gimli::DW_TAG_subprogram {
                    // Only concrete, out-of-line instances have code (and so locations); the
                    // abstract instance of a function that is also inlined has no low_pc.
                    if entry.attr_value(gimli::DW_AT_low_pc).is_none() {
                        continue;
                    }
                    let Some(name) = self.name_of(&unit, entry) else {
                        continue;
                    };
                    if let Some(&pc) = wanted.get(name.as_str()) {
                        found.entry(name.clone()).or_insert_with(Vec::new);
                        current = Some((name, pc, depth));
                    }
                    continue;
                }
                let Some((func, pc, func_depth)) = &current else {
                    continue;
                };
                if entry.tag() != gimli::DW_TAG_formal_parameter || depth != func_depth + 1 {
                    continue;
                }
                let name = self.name_of(&unit, entry).unwrap_or_default();
                let is_result = matches!(
                    entry.attr_value(gimli::DW_AT_variable_parameter),
                    Some(AttributeValue::Flag(true))
                );
                let register = match entry.attr_value(gimli::DW_AT_location) {
                    Some(value) => self.register_at(&unit, value, *pc)?,
                    None => None,
                };
                if let Some(params) = found.get_mut(func.as_str()) {
                    params.push(DwarfParam {
                        name,
                        register,
                        is_result,
                    });
                }
            }
        }
        Ok(found)
    }

    /// `DW_AT_name`, or the name of the `DW_AT_abstract_origin` for concrete instances of
    /// functions (and their parameters) that the compiler also inlined elsewhere. The Go
    /// linker refers to abstract origins with `DW_FORM_ref_addr`, often across units.
    fn name_of(&self, unit: &gimli::Unit<Reader>, entry: &gimli::DebuggingInformationEntry<Reader>) -> Option<String> {
        if let Some(value) = entry.attr_value(gimli::DW_AT_name) {
            let name = self.dwarf.attr_string(unit, value).ok()?;
            return Some(name.to_string_lossy().ok()?.into_owned());
        }
        match entry.attr_value(gimli::DW_AT_abstract_origin)? {
            AttributeValue::UnitRef(offset) => {
                let origin = unit.entry(offset).ok()?;
                let value = origin.attr_value(gimli::DW_AT_name)?;
                let name = self.dwarf.attr_string(unit, value).ok()?;
                Some(name.to_string_lossy().ok()?.into_owned())
            }
            AttributeValue::DebugInfoRef(offset) => {
                let mut units = self.dwarf.units();
                while let Ok(Some(header)) = units.next() {
                    let Some(unit_offset) = offset.to_unit_offset(&header) else {
                        continue;
                    };
                    let other = self.dwarf.unit(header).ok()?;
                    let origin = other.entry(unit_offset).ok()?;
                    let value = origin.attr_value(gimli::DW_AT_name)?;
                    let name = self.dwarf.attr_string(&other, value).ok()?;
                    return Some(name.to_string_lossy().ok()?.into_owned());
                }
                None
            }
            _ => None,
        }
    }

    /// Evaluates a location (list or single expression) at `pc` when it is just a register.
    fn register_at(
        &self,
        unit: &gimli::Unit<Reader>,
        value: AttributeValue<Reader>,
        pc: u64,
    ) -> Result<Option<Register>> {
        if let AttributeValue::Exprloc(expr) = value {
            return Ok(self.single_register(unit, expr));
        }
        let Some(mut locations) = self.dwarf.attr_locations(unit, value).map_err(Error::Dwarf)? else {
            return Ok(None);
        };
        while let Some(entry) = locations.next().map_err(Error::Dwarf)? {
            if entry.range.begin <= pc && pc < entry.range.end {
                return Ok(self.single_register(unit, entry.data));
            }
        }
        Ok(None)
    }

    fn single_register(&self, unit: &gimli::Unit<Reader>, expr: gimli::Expression<Reader>) -> Option<Register> {
        let mut ops = expr.operations(unit.encoding());
        let first = ops.next().ok()??;
        if ops.next().ok()?.is_some() {
            return None;
        }
        match first {
            Operation::Register { register } => self.arch.dwarf_register(register.0),
            _ => None,
        }
    }

    /// Byte offsets of the members of the named structure types (`DW_TAG_structure_type`, its
    /// `DW_TAG_member` children and their `DW_AT_data_member_location`), by type name and
    /// member name. Types not found are absent from the map; when a name is defined more than
    /// once, the first definition wins (the Go linker writes each type once).
    pub fn struct_members(&self, wanted: &[&str]) -> Result<HashMap<String, HashMap<String, u64>>> {
        let mut found: HashMap<String, HashMap<String, u64>> = HashMap::new();
        let mut units = self.dwarf.units();
        while let Some(header) = units.next().map_err(Error::Dwarf)? {
            let unit = self.dwarf.unit(header).map_err(Error::Dwarf)?;
            let mut entries = unit.entries();
            // The structure we are inside of, and its depth, while walking its children.
            let mut current: Option<(String, isize)> = None;
            while let Some(entry) = entries.next_dfs().map_err(Error::Dwarf)? {
                let depth = entry.depth();
                if let Some((_, d)) = &current
                    && depth <= *d
                {
                    current = None;
                }
                if entry.tag() == gimli::DW_TAG_structure_type {
                    let Some(name) = self.name_of(&unit, entry) else {
                        continue;
                    };
                    if wanted.contains(&name.as_str()) && !found.contains_key(&name) {
                        found.insert(name.clone(), HashMap::new());
                        current = Some((name, depth));
                    }
                    continue;
                }
                let Some((structure, struct_depth)) = &current else {
                    continue;
                };
                if entry.tag() != gimli::DW_TAG_member || depth != struct_depth + 1 {
                    continue;
                }
                let (Some(name), Some(offset)) = (
                    self.name_of(&unit, entry),
                    entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value()),
                ) else {
                    continue;
                };
                if let Some(members) = found.get_mut(structure.as_str()) {
                    members.insert(name, offset);
                }
            }
            // A structure's members are all in its unit: once every one was seen, stop.
            if wanted.iter().all(|w| found.contains_key(*w)) {
                break;
            }
        }
        Ok(found)
    }

    /// Every type with a `DW_AT_go_runtime_type`: descriptor offset → Go type names (several
    /// when aliases share a descriptor). The
    /// offset is relative to `moduledata.types` (the linker's `dwarfGenerateDebugInfo` writes
    /// it that way, and Delve reads it that way).
    pub fn runtime_types(&self) -> Result<HashMap<u64, Vec<String>>> {
        let mut types: HashMap<u64, Vec<String>> = HashMap::new();
        let mut units = self.dwarf.units();
        while let Some(header) = units.next().map_err(Error::Dwarf)? {
            let unit = self.dwarf.unit(header).map_err(Error::Dwarf)?;
            let mut entries = unit.entries();
            while let Some(entry) = entries.next_dfs().map_err(Error::Dwarf)? {
                let offset = match entry.attr_value(DW_AT_GO_RUNTIME_TYPE) {
                    // 0 is written for types whose descriptor was not kept.
                    Some(AttributeValue::Addr(a) | AttributeValue::Udata(a)) if a != 0 => a,
                    _ => continue,
                };
                if let Some(name) = self.name_of(&unit, entry) {
                    // "noalg." marks compiler-generated types without equality functions
                    // (map buckets, padding arrays); the runtime's name has no such prefix.
                    let name = name.strip_prefix("noalg.").map(str::to_owned).unwrap_or(name);
                    let names = types.entry(offset).or_default();
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
        }
        Ok(types)
    }

    /// Logical frames at `pc`, innermost first, from `DW_TAG_inlined_subroutine` and the line
    /// table. Empty when DWARF does not cover the pc.
    pub fn frames(&self, pc: u64) -> Result<Vec<RawFrame>> {
        let context = self
            .lines
            .get_or_init(|| addr2line::Context::from_arc_dwarf(self.dwarf.clone()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::corrupt("DWARF", e.clone()))?;
        let mut iter = context.find_frames(pc).skip_all_loads().map_err(Error::Dwarf)?;
        let mut frames = Vec::new();
        while let Some(frame) = iter.next().map_err(Error::Dwarf)? {
            let function = match &frame.function {
                Some(f) => f.raw_name().map_err(Error::Dwarf)?.into_owned(),
                None => "?".to_owned(),
            };
            let (file, line) = frame.location.as_ref().map_or(("?".to_owned(), 0), |l| {
                (l.file.unwrap_or("?").to_owned(), l.line.unwrap_or(0))
            });
            frames.push(RawFrame {
                function,
                file,
                line,
                inlined: false,
            });
        }
        // addr2line yields the inlined frames first; all but the last (physical) one are
        // inlined.
        let n = frames.len();
        for frame in frames.iter_mut().take(n.saturating_sub(1)) {
            frame.inlined = true;
        }
        Ok(frames)
    }
}

impl From<gimli::Error> for Error {
    fn from(e: gimli::Error) -> Self {
        Self::Dwarf(e)
    }
}
