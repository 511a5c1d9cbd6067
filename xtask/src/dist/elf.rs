//! What a dynamically linked ELF executable asks of the system it runs on: its machine, its
//! program interpreter, the libraries it names (`DT_NEEDED`) and the newest symbol version it
//! needs from each (`.gnu.version_r`). These give the package's `Depends`, the image's base
//! layer and the glibc floor.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use object::Endianness;
use object::elf;
use object::read::elf::{Dyn as _, ElfFile64, FileHeader as _, ProgramHeader as _, SectionHeader as _};

/// A `MAJOR.MINOR[.PATCH]` symbol version such as `GLIBC_2.34` or `GCC_3.0`, compared by number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SymbolVersion(pub Vec<u32>);

impl SymbolVersion {
    /// `GLIBC_2.34` → ("GLIBC", 2.34); `None` for names without a numeric version (`GLIBC_PRIVATE`).
    pub fn parse(name: &str) -> Option<(String, Self)> {
        let (prefix, number) = name.rsplit_once('_')?;
        let parts: Option<Vec<u32>> = number.split('.').map(|p| p.parse().ok()).collect();
        Some((prefix.to_owned(), Self(parts?)))
    }
}

impl std::fmt::Display for SymbolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

#[derive(Debug, Clone)]
pub struct Facts {
    /// `EM_X86_64` or `EM_AARCH64`.
    pub machine: elf::Machine,
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// Per library, per version prefix (`GLIBC`, `GCC`), the newest version needed.
    pub versions: BTreeMap<String, BTreeMap<String, SymbolVersion>>,
}

impl Facts {
    pub fn read(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("{} is not a 64-bit ELF executable", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let file = ElfFile64::<Endianness>::parse(data)?;
        let endian = file.endian();
        let header = file.elf_header();
        let machine = header.e_machine(endian);
        let mut interpreter = None;
        for segment in header.program_headers(endian, data)? {
            if segment.p_type(endian) == elf::PT_INTERP {
                let bytes = segment
                    .data(endian, data)
                    .map_err(|()| anyhow::anyhow!("bad PT_INTERP"))?;
                interpreter = Some(String::from_utf8_lossy(bytes).trim_end_matches('\0').to_owned());
            }
        }
        let needed = dynamic_needed(&file)?;
        let mut versions: BTreeMap<String, BTreeMap<String, SymbolVersion>> = BTreeMap::new();
        let sections = header.sections(endian, data)?;
        if let Some((mut needs, link)) = sections.gnu_verneed(endian, data)? {
            let strings = sections.strings(endian, data, link)?;
            while let Some((need, mut auxes)) = needs.next()? {
                let library = String::from_utf8_lossy(need.file(endian, strings)?).into_owned();
                while let Some(aux) = auxes.next()? {
                    let name = String::from_utf8_lossy(aux.name(endian, strings)?).into_owned();
                    if let Some((prefix, version)) = SymbolVersion::parse(&name) {
                        let newest = versions
                            .entry(library.clone())
                            .or_default()
                            .entry(prefix)
                            .or_insert(version.clone());
                        if version > *newest {
                            *newest = version;
                        }
                    }
                }
            }
        }
        Ok(Self {
            machine,
            interpreter,
            needed,
            versions,
        })
    }

    /// The newest `GLIBC_` version any library of glibc is asked for: the oldest glibc this
    /// binary runs on.
    pub fn glibc_floor(&self) -> Option<SymbolVersion> {
        self.versions.values().filter_map(|v| v.get("GLIBC")).max().cloned()
    }

    /// The Debian architecture name of the machine.
    pub fn debian_arch(&self) -> Result<&'static str> {
        match self.machine {
            elf::EM_X86_64 => Ok("amd64"),
            elf::EM_AARCH64 => Ok("arm64"),
            other => bail!("unexpected ELF machine {other}"),
        }
    }
}

/// `DT_NEEDED` entries of the dynamic section.
fn dynamic_needed(file: &ElfFile64<'_, Endianness>) -> Result<Vec<String>> {
    let endian = file.endian();
    let data = file.data();
    let sections = file.elf_header().sections(endian, data)?;
    let Some(dynamic) = sections.iter().find(|s| s.sh_type(endian) == elf::SHT_DYNAMIC) else {
        return Ok(Vec::new());
    };
    let Some((entries, link)) = dynamic.dynamic(endian, data)? else {
        return Ok(Vec::new());
    };
    let strings = sections.strings(endian, data, link)?;
    let mut needed = Vec::new();
    for entry in entries {
        if entry.tag(endian) == elf::DT_NEEDED {
            let name = entry.string(endian, strings)?;
            needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_symbol_versions() {
        assert_eq!(
            SymbolVersion::parse("GLIBC_2.34"),
            Some(("GLIBC".to_owned(), SymbolVersion(vec![2, 34])))
        );
        assert_eq!(
            SymbolVersion::parse("GCC_4.2.0"),
            Some(("GCC".to_owned(), SymbolVersion(vec![4, 2, 0])))
        );
        assert_eq!(SymbolVersion::parse("GLIBC_PRIVATE"), None);
        assert!(SymbolVersion(vec![2, 34]) > SymbolVersion(vec![2, 4]));
        assert!(SymbolVersion(vec![2, 3, 4]) < SymbolVersion(vec![2, 4]));
    }

    /// xtask itself is a glibc executable built here: it names libc and a glibc version.
    #[test]
    fn reads_this_executable() {
        let facts = Facts::read(&std::env::current_exe().unwrap()).unwrap();
        assert!(facts.needed.iter().any(|n| n == "libc.so.6"), "{:?}", facts.needed);
        assert!(facts.interpreter.as_deref().is_some_and(|i| i.contains("ld-linux")));
        assert!(facts.glibc_floor().is_some_and(|v| v >= SymbolVersion(vec![2, 2])));
    }
}
