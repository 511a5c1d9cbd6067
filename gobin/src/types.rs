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
