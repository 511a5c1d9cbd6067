//! Go type names from runtime type descriptors (`internal/abi.Type`).
//!
//! The descriptor layout is the same from Go 1.21 to 1.27 (and `runtime._type` in 1.18–1.20
//! matches it field for field): `Size_` at 0, `PtrBytes` at 8, `Hash` (u32) at 16, `TFlag` at
//! 20, `Align_`, `FieldAlign_`, `Kind_`, `Equal` at 24, `GCData` at 32, `Str` (a `NameOff`, i32)
//! at 40 and `PtrToThis` at 44. `Str` is relative to `moduledata.types`; there an
//! `abi.Name` is one flag byte, a uvarint length and the bytes.

use crate::buildinfo::read_uvarint;
use crate::elf::Elf;
use crate::moduledata::ModuleData;

const TFLAG_OFFSET: u64 = 20;
const STR_OFFSET: u64 = 40;
/// `abi.TFlagExtraStar`: the stored name has a `*` prefix that must be removed (the linker
/// stores `*T` and lets `T` share it).
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
/// Longer names exist only in corrupt binaries; cap what we read.
const MAX_NAME_LEN: u64 = 1 << 16;

/// Reads the name of the type whose descriptor is at the link-time address `addr`.
pub(crate) fn descriptor_name(elf: &Elf<'_>, md: &ModuleData, addr: u64) -> Option<String> {
    if addr < md.types || addr >= md.etypes {
        return None;
    }
    let tflag = *elf.read(addr.checked_add(TFLAG_OFFSET)?, 1)?.first()?;
    let str_bytes = elf.read(addr.checked_add(STR_OFFSET)?, 4)?;
    let str_off = i32::from_le_bytes(str_bytes.try_into().ok()?);
    let name_addr = md.types.checked_add_signed(i64::from(str_off))?;
    // Flag byte, then at most a 10-byte varint.
    let header = elf.read_to_segment_end(name_addr.checked_add(1)?)?;
    let (len, used) = read_uvarint(header.get(..header.len().min(10))?)?;
    if len > MAX_NAME_LEN {
        return None;
    }
    let bytes = header.get(used..used.checked_add(usize::try_from(len).ok()?)?)?;
    let name = std::str::from_utf8(bytes).ok()?;
    let name = if tflag & TFLAG_EXTRA_STAR != 0 {
        name.strip_prefix('*').unwrap_or(name)
    } else {
        name
    };
    Some(name.to_owned())
}

/// How the runtime (and `reflect`) spells a type name that DWARF gives differently: the runtime
/// qualifies names with the package *name*, so `*encoding/json.encoderFunc` is
/// `*json.encoderFunc`, except inside the type arguments of a generic instantiation, which
/// keep their import paths; and DWARF marks function-local types with `·N`.
#[must_use]
pub fn runtime_spelling(dwarf_name: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    // For each open bracket: whether it holds type arguments (`Pointer[T]`) rather than a
    // map key (also of the runtime's `map.bucket[K]V` and `map.group[K]V`), an array length or
    // nothing (`map[K]V`, `[8]T`, `[]T`).
    let mut brackets: Vec<bool> = Vec::new();
    for c in dwarf_name.chars().chain(std::iter::once('\0')) {
        if c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | '·') {
            word.push(c);
            continue;
        }
        let in_type_args = brackets.iter().any(|&generic| generic);
        let w = match word.split_once('·') {
            Some((head, tail)) if tail.chars().all(|c| c.is_ascii_digit()) => head,
            _ => word.as_str(),
        };
        if in_type_args {
            out.push_str(w);
        } else {
            out.push_str(&package_name_qualified(w));
        }
        match c {
            '[' => brackets.push(
                !word.is_empty()
                    && word != "map"
                    && !word.starts_with("map.")
                    && !word.chars().all(|c| c.is_ascii_digit()),
            ),
            ']' => {
                brackets.pop();
            }
            _ => {}
        }
        word.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

/// `encoding/json.Decoder` → `json.Decoder`; a major-version element names no package, so
/// `encoding/json/v2.Options` → `json.Options` (the package clause says `package json`).
fn package_name_qualified(word: &str) -> String {
    let Some((path, last)) = word.rsplit_once('/') else {
        return word.to_owned();
    };
    if let Some((element, rest)) = last.split_once('.')
        && element.len() > 1
        && element.starts_with('v')
        && element[1..].chars().all(|c| c.is_ascii_digit())
    {
        let package = path.rsplit_once('/').map_or(path, |(_, p)| p);
        return format!("{package}.{rest}");
    }
    last.to_owned()
}

#[cfg(test)]
mod tests {
    use super::runtime_spelling;

    #[test]
    fn dwarf_names_in_runtime_spelling() {
        assert_eq!(runtime_spelling("*encoding/json.encoderFunc"), "*json.encoderFunc");
        assert_eq!(runtime_spelling("main.Point"), "main.Point");
        assert_eq!(runtime_spelling("*runtime.untracedG·4"), "*runtime.untracedG");
        assert_eq!(
            runtime_spelling("sync/atomic.Pointer[internal/bisect.dedup]"),
            "atomic.Pointer[internal/bisect.dedup]"
        );
        assert_eq!(
            runtime_spelling("map[internal/abi.TypeOff]*internal/abi.Type"),
            "map[abi.TypeOff]*abi.Type"
        );
        assert_eq!(
            runtime_spelling("map.group[internal/abi.TypeOff]bool"),
            "map.group[abi.TypeOff]bool"
        );
        assert_eq!(runtime_spelling("[]encoding/json/v2.structField"), "[]json.structField");
        assert_eq!(runtime_spelling("[8]uint32"), "[8]uint32");
    }
}
