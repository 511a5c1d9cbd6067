//! Functions by name, with address ranges.

use std::collections::HashMap;

use serde::Serialize;

use crate::elf::Elf;
use crate::pclntab::Pclntab;

/// Where a function list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionSource {
    /// The ELF `.symtab`: exact sizes, and C functions of cgo binaries too.
    Symtab,
    /// `.gopclntab`, which survives `-ldflags=-s`: Go functions only, each ending where the
    /// next begins.
    Pclntab,
}

/// A function's name and code range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Function {
    /// Fully qualified Go name, e.g. `runtime.mallocgc` or `main.(*T).m`.
    pub name: String,
    /// First instruction (link-time address).
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Function {
    /// Whether `addr` is inside the function.
    #[must_use]
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// All functions of the binary, sorted by address.
#[derive(Debug, Clone)]
pub struct FunctionTable {
    functions: Vec<Function>,
    by_name: HashMap<String, usize>,
    source: FunctionSource,
}

impl FunctionTable {
    pub(crate) fn from_symtab(elf: &Elf<'_>) -> Self {
        let functions = elf
            .symbols()
            .filter(|s| s.is_text)
            .map(|s| Function {
                name: s.name.to_owned(),
                start: s.address,
                end: s.address.saturating_add(s.size.max(1)),
            })
            .collect();
        Self::new(functions, FunctionSource::Symtab)
    }

    pub(crate) fn from_pclntab(pclntab: &Pclntab<'_>) -> Self {
        let functions = (0..pclntab.len())
            .filter_map(|i| {
                let f = pclntab.func(i)?;
                Some(Function {
                    name: pclntab.name(f)?.to_owned(),
                    start: f.entry,
                    end: f.end,
                })
            })
            .collect();
        Self::new(functions, FunctionSource::Pclntab)
    }

    fn new(mut functions: Vec<Function>, source: FunctionSource) -> Self {
        functions.sort_by(|a, b| a.start.cmp(&b.start).then_with(|| a.name.cmp(&b.name)));
        // The first definition of a name wins (symtab can repeat local C symbols).
        let mut by_name = HashMap::with_capacity(functions.len());
        for (i, f) in functions.iter().enumerate() {
            by_name.entry(f.name.clone()).or_insert(i);
        }
        Self {
            functions,
            by_name,
            source,
        }
    }

    /// Where the names and ranges came from.
    #[must_use]
    pub fn source(&self) -> FunctionSource {
        self.source
    }

    /// Number of functions.
    #[must_use]
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// All functions, by address.
    pub fn iter(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter()
    }

    /// A function by exact name.
    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<&Function> {
        self.by_name.get(name).map(|&i| &self.functions[i])
    }

    /// The address ranges covered by the named functions, with functions that are neighbours
    /// in the table merged into one range, in address order. A probe that asks
    /// "is this return address in one of these functions?" then checks a handful of ranges
    /// instead of one per function. Unknown names are ignored.
    #[must_use]
    pub fn coalesced_ranges<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<std::ops::Range<u64>> {
        let mut indexes: Vec<usize> = names.into_iter().filter_map(|n| self.by_name.get(n).copied()).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let mut ranges: Vec<(usize, std::ops::Range<u64>)> = Vec::new();
        for i in indexes {
            let f = &self.functions[i];
            match ranges.last_mut() {
                Some((last, range)) if *last + 1 == i => {
                    range.end = range.end.max(f.end);
                    *last = i;
                }
                _ => ranges.push((i, f.start..f.end)),
            }
        }
        ranges.into_iter().map(|(_, r)| r).collect()
    }

    /// The function containing `addr`.
    #[must_use]
    pub fn containing(&self, addr: u64) -> Option<&Function> {
        let i = self.functions.partition_point(|f| f.start <= addr);
        let f = self.functions.get(i.checked_sub(1)?)?;
        f.contains(addr).then_some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FunctionTable {
        let f = |name: &str, start: u64, end: u64| Function {
            name: name.to_owned(),
            start,
            end,
        };
        FunctionTable::new(
            vec![
                f("a", 0x100, 0x140),
                f("b", 0x140, 0x180),
                f("c", 0x180, 0x1c0),
                f("d", 0x1c0, 0x200),
                f("e", 0x210, 0x240),
            ],
            FunctionSource::Symtab,
        )
    }

    #[test]
    fn neighbours_merge_into_one_range() {
        let t = table();
        assert_eq!(
            t.coalesced_ranges(["b", "a", "d", "e", "nope"]),
            vec![0x100..0x180, 0x1c0..0x240]
        );
        assert_eq!(t.coalesced_ranges(["c"]), vec![0x180..0x1c0]);
        assert!(t.coalesced_ranges([]).is_empty());
    }

    #[test]
    fn lookup_by_address() {
        let t = table();
        assert_eq!(t.containing(0x17f).map(|f| f.name.as_str()), Some("b"));
        assert_eq!(t.containing(0x200), None);
        assert_eq!(t.containing(0x50), None);
    }
}
