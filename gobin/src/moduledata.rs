//! `runtime.firstmoduledata`: where the text, the type descriptors and the funcdata live.
//!
//! Field offsets follow `runtime.moduledata` in `src/runtime/symtab.go`. In words of 8 bytes:
//! `pcHeader` 0, `funcnametab` 1–3, … `text` 22, `etext` 23, then
//! - Go 1.18–1.19: `end` 32, `gcdata` 33, `gcbss` 34, `types` 35, `etypes` 36, `rodata` 37,
//!   `gofunc` 38;
//! - Go 1.20–1.26: `covctrs`/`ecovctrs` (32, 33) were added, so `types` 37, `etypes` 38,
//!   `rodata` 39, `gofunc` 40 (1.26 appends `epclntab` after `gofunc`);
//! - Go 1.27: `typedesclen` 38 sits between `types` and `etypes` (39), followed by
//!   `itaboffset`, `itabsize`, `rodata` 42 and `gofunc` 43, and no `typelinks`.
//!
//! `typelinks` follows `textsectmap`, which follows `gofunc` (and `epclntab` from 1.26).
//!
//! In a stripped binary there is no symbol to find it by, but its first field points at the
//! pclntab header and its second at the function name table: a unique pattern to search for.
//! In PIE binaries those pointers are only in the dynamic relocations, which
//! [`Elf::read_ptr`] and [`Elf::relocations_to`] take into account.

use crate::elf::Elf;
use crate::pclntab::Pclntab;
use crate::version::GoVersion;

const WORD: u64 = 8;

/// The fields of `runtime.moduledata` gotrace uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleData {
    /// Address of the structure itself.
    pub address: u64,
    /// `text`: base of all function entry offsets.
    pub text: u64,
    /// `etext`.
    pub etext: u64,
    /// `types`: base of type-name offsets; the first type descriptor.
    pub types: u64,
    /// `etypes`: end of the type descriptors.
    pub etypes: u64,
    /// `gofunc`: base of funcdata offsets (`go:func.*`).
    pub gofunc: u64,
    /// `typelinks`: where the sorted list of type offsets is, and how many (Go ≤1.26; Go 1.27
    /// dropped the list and walks the descriptors instead).
    pub typelinks: Option<(u64, u64)>,
}

struct Layout {
    types: u64,
    etypes: u64,
    gofunc: u64,
    /// Word index of the `typelinks` slice header, if the release has one.
    typelinks: Option<u64>,
}

fn layout(version: GoVersion) -> Layout {
    if version.at_least(27) {
        Layout {
            types: 37,
            etypes: 39,
            gofunc: 43,
            typelinks: None,
        }
    } else if version.at_least(26) {
        // `epclntab` (41) follows `gofunc`, then `textsectmap` (42–44) and `typelinks`.
        Layout {
            types: 37,
            etypes: 38,
            gofunc: 40,
            typelinks: Some(45),
        }
    } else if version.at_least(20) {
        Layout {
            types: 37,
            etypes: 38,
            gofunc: 40,
            typelinks: Some(44),
        }
    } else {
        Layout {
            types: 35,
            etypes: 36,
            gofunc: 38,
            typelinks: Some(42),
        }
    }
}

/// Finds and reads the first module's data.
pub(crate) fn find(elf: &Elf<'_>, pclntab: &Pclntab<'_>, version: GoVersion) -> Option<ModuleData> {
    if let Some(sym) = elf.symbol("runtime.firstmoduledata")
        && let Some(md) = read_at(elf, pclntab, version, sym.address)
    {
        return Some(md);
    }
    // Candidates: every 8-aligned word in the file-backed data that holds the pclntab
    // address, plus every relocation that will write it there at load time.
    let mut candidates: Vec<u64> = elf.relocations_to(pclntab.address).collect();
    for seg in elf.loads.iter().filter(|s| !s.is_executable()) {
        let Some(bytes) = elf.read(seg.vaddr, usize::try_from(seg.filesz).unwrap_or(0)) else {
            continue;
        };
        let wanted = pclntab.address.to_le_bytes();
        candidates.extend(
            bytes
                .chunks_exact(8)
                .enumerate()
                .filter(|(_, w)| *w == wanted)
                .map(|(i, _)| seg.vaddr + i as u64 * WORD),
        );
    }
    candidates.into_iter().find_map(|at| read_at(elf, pclntab, version, at))
}

fn read_at(elf: &Elf<'_>, pclntab: &Pclntab<'_>, version: GoVersion, at: u64) -> Option<ModuleData> {
    let word = |i: u64| elf.read_ptr(at.checked_add(i * WORD)?);
    if word(0)? != pclntab.address {
        return None;
    }
    // funcnametab is the slice that starts right after the header.
    if word(1)? != pclntab.address.checked_add(pclntab.funcname_offset)? {
        return None;
    }
    let l = layout(version);
    let md = ModuleData {
        address: at,
        text: word(22)?,
        etext: word(23)?,
        types: word(l.types)?,
        etypes: word(l.etypes)?,
        gofunc: word(l.gofunc)?,
        typelinks: l.typelinks.and_then(|i| Some((word(i)?, word(i + 1)?))),
    };
    let sane = md.text != 0
        && md.text < md.etext
        && md.types != 0
        && md.types < md.etypes
        && elf.read(md.types, 1).is_some()
        && elf.read(md.gofunc, 1).is_some();
    sane.then_some(md)
}
