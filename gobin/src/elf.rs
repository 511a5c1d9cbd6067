//! A read-only view of a 64-bit little-endian ELF file: segments, sections, symbols, and
//! virtual-address reads that honour PIE relocations.

use std::borrow::Cow;

use object::elf;
use object::read::elf::{Dyn as _, ElfFile64, FileHeader, ProgramHeader, Rela as _, SectionHeader};
use object::{Endianness, FileKind, Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SymbolKind};

use crate::arch::Arch;
use crate::error::{Error, Result};

/// A `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Link-time virtual address of the first byte.
    pub vaddr: u64,
    /// Size in memory (may exceed `filesz`; the rest is zero-filled `.bss`).
    pub memsz: u64,
    /// File offset of the first byte.
    pub offset: u64,
    /// Bytes backed by the file.
    pub filesz: u64,
    /// `PF_R`/`PF_W`/`PF_X` bits.
    pub flags: u32,
}

impl LoadSegment {
    /// File offset of a virtual address in the segment's file-backed part.
    #[must_use]
    pub fn file_offset_of(&self, vaddr: u64) -> Option<u64> {
        let delta = vaddr.checked_sub(self.vaddr)?;
        (delta < self.filesz).then_some(())?;
        self.offset.checked_add(delta)
    }

    /// Virtual address of a file offset in the segment's file-backed part.
    #[must_use]
    pub fn vaddr_of(&self, file_offset: u64) -> Option<u64> {
        let delta = file_offset.checked_sub(self.offset)?;
        (delta < self.filesz).then_some(())?;
        self.vaddr.checked_add(delta)
    }

    /// Whether the segment is executable.
    #[must_use]
    pub fn is_executable(&self) -> bool {
        self.flags & elf::PF_X.0 != 0
    }
}

/// A symbol of `.symtab`.
#[derive(Debug, Clone)]
pub(crate) struct ElfSymbol<'data> {
    pub name: &'data str,
    pub address: u64,
    pub size: u64,
    pub is_text: bool,
    /// `STT_OBJECT`: a variable.
    pub is_data: bool,
}

pub(crate) struct Elf<'data> {
    pub file: ElfFile64<'data, Endianness>,
    pub data: &'data [u8],
    pub arch: Arch,
    pub loads: Vec<LoadSegment>,
    /// `R_*_RELATIVE` dynamic relocations, sorted by the address they patch. In a PIE binary
    /// every pointer to the binary's own data (moduledata fields, the pclntab text start, …)
    /// is zero in the file and only the relocation's addend holds the link-time value.
    relative: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Elf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elf")
            .field("arch", &self.arch)
            .field("loads", &self.loads)
            .field("relative_relocations", &self.relative.len())
            .finish_non_exhaustive()
    }
}

impl<'data> Elf<'data> {
    pub fn parse(data: &'data [u8]) -> Result<Self> {
        match FileKind::parse(data) {
            Ok(FileKind::Elf64) => {}
            Ok(FileKind::Elf32) => {
                return Err(Error::UnsupportedArch("32-bit ELF".to_owned()));
            }
            Ok(_) => return Err(Error::NotElf("another object file format")),
            Err(_) => return Err(Error::NotElf("no ELF magic")),
        }
        let file = ElfFile64::<Endianness>::parse(data).map_err(Error::Elf)?;
        let header = file.elf_header();
        let endian = file.endian();
        if !file.is_little_endian() {
            return Err(Error::UnsupportedArch("big-endian ELF".to_owned()));
        }
        let arch = match header.e_machine(endian) {
            elf::EM_X86_64 => Arch::X86_64,
            elf::EM_AARCH64 => Arch::Aarch64,
            other => return Err(Error::UnsupportedArch(machine_name(other))),
        };
        let loads = file
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                vaddr: ph.p_vaddr(endian),
                memsz: ph.p_memsz(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                flags: ph.p_flags(endian).0,
            })
            .collect();
        let relative = relative_relocations(&file, arch);
        Ok(Self {
            file,
            data,
            arch,
            loads,
            relative,
        })
    }

    fn endian(&self) -> Endianness {
        self.file.endian()
    }

    /// `ET_DYN`: a position-independent executable (Go never builds shared-object targets
    /// that gotrace would trace, so `ET_DYN` means PIE).
    pub fn is_pie(&self) -> bool {
        self.file.elf_header().e_type(self.endian()) == elf::ET_DYN
    }

    /// The `PT_INTERP` path, present when the kernel must start a dynamic loader.
    pub fn interpreter(&self) -> Option<String> {
        let endian = self.endian();
        self.file.elf_program_headers().iter().find_map(|ph| {
            let bytes = ph.interpreter(endian, self.data).ok()??;
            Some(String::from_utf8_lossy(bytes).into_owned())
        })
    }

    /// `DT_NEEDED` entries: the shared libraries the binary links against.
    pub fn needed_libraries(&self) -> Vec<String> {
        let endian = self.endian();
        let Ok(sections) = self.file.elf_header().sections(endian, self.data) else {
            return Vec::new();
        };
        let mut needed = Vec::new();
        for section in sections.iter() {
            let Ok(Some((entries, _))) = section.dynamic(endian, self.data) else {
                continue;
            };
            let Ok(strings) = sections.strings(endian, self.data, section.link(endian)) else {
                continue;
            };
            for entry in entries {
                if entry.d_tag(endian) == elf::DT_NEEDED
                    && let Ok(name) = entry.string(endian, strings)
                {
                    needed.push(String::from_utf8_lossy(name).into_owned());
                }
            }
        }
        needed
    }

    /// Raw (possibly compressed) bytes and address of a section, if present and in the file.
    pub fn section(&self, name: &str) -> Option<(u64, &'data [u8])> {
        let section = self.file.section_by_name(name)?;
        let data = section.data().ok()?;
        Some((section.address(), data))
    }

    /// Decompressed bytes of a section (DWARF sections are zlib-compressed by the Go linker).
    ///
    /// zlib data is inflated as a stream, so memory grows with the data that really comes out
    /// rather than with the size the (possibly corrupt) compression header claims.
    pub fn section_uncompressed(&self, name: &str) -> Result<Option<Cow<'data, [u8]>>> {
        use std::io::Read as _;
        let Some(section) = self.file.section_by_name(name) else {
            return Ok(None);
        };
        let compressed = section.compressed_data().map_err(Error::Elf)?;
        let claimed = compressed.uncompressed_size;
        let corrupt = |detail: String| Error::corrupt("ELF section", format!("{name}: {detail}"));
        match compressed.format {
            object::CompressionFormat::None => Ok(Some(Cow::Borrowed(compressed.data))),
            object::CompressionFormat::Zlib => {
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(compressed.data)
                    .take(claimed)
                    .read_to_end(&mut out)
                    .map_err(|e| corrupt(format!("cannot inflate: {e}")))?;
                if out.len() as u64 != claimed {
                    return Err(corrupt(format!("inflates to {} bytes, not {claimed}", out.len())));
                }
                Ok(Some(Cow::Owned(out)))
            }
            other => Err(corrupt(format!("unsupported compression {other:?}"))),
        }
    }

    /// The descriptor of the first ELF note with this name (without its NUL padding) and type,
    /// from the note sections.
    pub fn note(&self, name: &[u8], note_type: u32) -> Option<&'data [u8]> {
        let endian = self.endian();
        let sections = self.file.elf_header().sections(endian, self.data).ok()?;
        for section in sections.iter() {
            let Ok(Some(mut notes)) = section.notes(endian, self.data) else {
                continue;
            };
            while let Ok(Some(note)) = notes.next() {
                if note.n_type(endian).0 == note_type && note.name() == name {
                    return Some(note.desc());
                }
            }
        }
        None
    }

    /// Whether the file has a section header table at all.
    pub fn has_section_headers(&self) -> bool {
        self.file.sections().next().is_some()
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.file.section_by_name(name).is_some()
    }

    /// Whether `.symtab` exists and has symbols (`-ldflags=-s` removes it).
    pub fn has_symtab(&self) -> bool {
        self.file.symbol_table().is_some_and(|t| t.symbols().next().is_some())
    }

    /// Symbols of `.symtab` with a name and an address.
    pub fn symbols(&self) -> impl Iterator<Item = ElfSymbol<'data>> + '_ {
        self.file.symbols().filter_map(|sym| {
            let name = sym.name().ok()?;
            if name.is_empty() || sym.address() == 0 {
                return None;
            }
            Some(ElfSymbol {
                name,
                address: sym.address(),
                size: sym.size(),
                is_text: sym.kind() == SymbolKind::Text,
                is_data: sym.kind() == SymbolKind::Data,
            })
        })
    }

    /// Looks up one `.symtab` symbol by exact name.
    pub fn symbol(&self, name: &str) -> Option<ElfSymbol<'data>> {
        self.symbols().find(|s| s.name == name)
    }

    fn load_containing(&self, vaddr: u64, len: u64) -> Option<&LoadSegment> {
        self.loads.iter().find(|seg| {
            vaddr >= seg.vaddr
                && vaddr
                    .checked_add(len)
                    .is_some_and(|end| end <= seg.vaddr.saturating_add(seg.filesz))
        })
    }

    /// File offset of a link-time virtual address backed by the file.
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.load_containing(vaddr, 1)?.file_offset_of(vaddr)
    }

    /// Bytes at a link-time virtual address, if all of them are backed by the file.
    pub fn read(&self, vaddr: u64, len: usize) -> Option<&'data [u8]> {
        let len64 = u64::try_from(len).ok()?;
        let seg = self.load_containing(vaddr, len64)?;
        let start = usize::try_from(seg.file_offset_of(vaddr)?).ok()?;
        self.data.get(start..start.checked_add(len)?)
    }

    /// Bytes from a virtual address to the end of its segment's file-backed part.
    pub fn read_to_segment_end(&self, vaddr: u64) -> Option<&'data [u8]> {
        let seg = self.load_containing(vaddr, 1)?;
        let start = usize::try_from(seg.file_offset_of(vaddr)?).ok()?;
        let end = usize::try_from(seg.offset.checked_add(seg.filesz)?).ok()?;
        self.data.get(start..end)
    }

    /// Reads a pointer-sized word, applying a `R_*_RELATIVE` relocation if one patches it.
    pub fn read_ptr(&self, vaddr: u64) -> Option<u64> {
        if let Ok(i) = self.relative.binary_search_by_key(&vaddr, |&(at, _)| at) {
            return Some(self.relative[i].1);
        }
        let b = self.read(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Every relative relocation: the address it patches and the link-time value it writes.
    pub fn relative_relocations(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.relative.iter().copied()
    }

    /// Addresses patched by a relative relocation whose value is `target`.
    pub fn relocations_to(&self, target: u64) -> impl Iterator<Item = u64> + '_ {
        self.relative
            .iter()
            .filter(move |&&(_, addend)| addend == target)
            .map(|&(at, _)| at)
    }
}

fn relative_relocations(file: &ElfFile64<'_, Endianness>, arch: Arch) -> Vec<(u64, u64)> {
    let endian = file.endian();
    let relative_type = match arch {
        Arch::X86_64 => elf::R_X86_64_RELATIVE,
        Arch::Aarch64 => elf::R_AARCH64_RELATIVE,
    };
    let data = file.data();
    let Ok(sections) = file.elf_header().sections(endian, data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for section in sections.iter() {
        // Only the dynamic relocations matter: they are what ld.so applies at load time.
        if section.sh_type(endian) != elf::SHT_RELA || section.sh_flags(endian).0 & elf::SHF_ALLOC.0 == 0 {
            continue;
        }
        let Ok(Some((relas, _))) = section.rela(endian, data) else {
            continue;
        };
        for rela in relas {
            if rela.r_type(endian, false) == relative_type {
                // The addend is the link-time address; reinterpreting i64 as u64 keeps the bits.
                out.push((rela.r_offset(endian), rela.r_addend(endian).cast_unsigned()));
            }
        }
    }
    out.sort_unstable();
    out
}

fn machine_name(machine: elf::Machine) -> String {
    match machine {
        elf::EM_386 => "i386".to_owned(),
        elf::EM_ARM => "arm".to_owned(),
        elf::EM_RISCV => "riscv64".to_owned(),
        elf::EM_PPC64 => "ppc64".to_owned(),
        elf::EM_S390 => "s390x".to_owned(),
        elf::EM_MIPS => "mips".to_owned(),
        elf::EM_LOONGARCH => "loong64".to_owned(),
        other => format!("ELF machine {}", other.0),
    }
}
