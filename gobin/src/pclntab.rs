//! `.gopclntab`: the runtime's own function table, pc→file:line tables and inline trees.
//!
//! This is what Go's tracebacks use, so it survives `-ldflags="-s -w"`. Layout references
//! (identical for Go 1.18 through 1.27 except where noted): `runtime.pcHeader`, `runtime._func`
//! and `runtime.inlinedCall` in `src/runtime/symtab.go`, `runtime2.go` and `symtabinl.go`; the
//! pc-value encoding in `runtime.step`; the writer in `src/cmd/link/internal/ld/pcln.go`.
//!
//! Every read is bounds-checked: a corrupt table yields `None` or an error, never a panic.

use crate::elf::Elf;
use crate::error::{Error, Result};
use crate::version::GoVersion;

/// Magic for Go 1.18 and 1.19.
const MAGIC_GO118: u32 = 0xffff_fff0;
/// Magic for Go 1.20 and later (still current in 1.27).
const MAGIC_GO120: u32 = 0xffff_fff1;
/// Magics of releases gotrace rejects: 1.16–1.17 and 1.2–1.15.
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO12: u32 = 0xffff_fffb;

const HEADER_LEN: usize = 72;
/// Size of the fixed part of `runtime._func`, before the `pcdata`/`funcdata` arrays, from Go
/// 1.20 on. Go 1.20 added `startLine int32` after `cuOffset`; before it the fixed part was 40
/// bytes and `funcID`, `flag` and `nfuncdata` sat 4 bytes earlier (`src/runtime/runtime2.go`).
const FUNC_FIXED_LEN: usize = 44;
const FUNC_FIXED_LEN_GO118: usize = 40;
/// Offset of `_func.cuOffset`: the function's compilation unit (one per package), the same in
/// every release gotrace reads.
const FUNC_CU_OFFSET: usize = 32;
/// `abi.FuncFlagTopFrame`: the function is the outermost frame of its stack (`goexit`,
/// `mstart`, `rt0_go`); Go's unwinder stops there (`src/internal/abi/symtab.go`).
pub(crate) const FUNC_FLAG_TOP_FRAME: u8 = 1 << 0;
/// `abi.FuncFlagSPWrite`: the function writes SP (stack switches: `systemstack`, `mcall`,
/// `morestack`, `asmcgocall`, `gogo`); Go's unwinder cannot step past it and stops.
pub(crate) const FUNC_FLAG_SP_WRITE: u8 = 1 << 1;
/// `abi.FuncID_cgocallback`, the one SPWRITE function Go's unwinder steps past
/// (`runtime.(*unwinder).resolveInternal`): 4 in every release from 1.18 (`funcID_cgocallback`
/// in `runtime/symtab.go`) to 1.27 (`internal/abi/symtab.go`).
const FUNC_ID_CGOCALLBACK: u8 = 4;
/// `abi.PCDATA_InlTreeIndex`.
const PCDATA_INL_TREE_INDEX: u32 = 2;
/// `abi.FUNCDATA_InlTree`.
const FUNCDATA_INL_TREE: u32 = 3;
/// Inlining depth beyond which the tree must be corrupt (the compiler's limits are far lower).
const MAX_INLINE_DEPTH: usize = 64;

/// A function as `.gopclntab` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FuncEntry {
    /// Index in the function table.
    pub index: usize,
    /// First instruction.
    pub entry: u64,
    /// Start of the next function (the table has no sizes; the gap is padding).
    pub end: u64,
    /// Offset of the `_func` record in the function table.
    func_off: usize,
}

/// One logical frame of a pc: the function it belongs to, possibly inlined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFrame {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub inlined: bool,
}

#[derive(Debug)]
pub(crate) struct Pclntab<'data> {
    /// Link-time address of the header.
    pub address: u64,
    nfunc: usize,
    quantum: u64,
    /// `textStart` from the header (Go ≤1.25), relocation-aware; 0 from Go 1.26 on.
    pub header_text_start: u64,
    /// The base of every entry offset. Set from `moduledata.text` when known.
    pub text_start: u64,
    /// `moduledata.gofunc`: the base of funcdata offsets, needed for inline trees.
    pub gofunc: Option<u64>,
    /// `funcnameOffset` from the header: `moduledata.funcnametab` points there.
    pub funcname_offset: u64,
    funcnametab: &'data [u8],
    cutab: &'data [u8],
    filetab: &'data [u8],
    pctab: &'data [u8],
    functab: &'data [u8],
    /// Go ≥1.20 `inlinedCall` layout (16 bytes) rather than 1.18/1.19's (20 bytes), and
    /// Go ≥1.20 `_func` layout (with `startLine`).
    inline_layout_120: bool,
}

/// Where the table is: its address and bytes up to the end of its segment or section.
pub(crate) fn locate<'data>(elf: &Elf<'data>) -> Option<(u64, &'data [u8])> {
    // `.data.rel.ro.gopclntab` is the name in PIE binaries linked externally
    // (cmd/internal/objfile/elf.go looks for both).
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(found) = elf.section(name) {
            return Some(found);
        }
    }
    if let Some(sym) = elf.symbol("runtime.pclntab") {
        return elf.read_to_segment_end(sym.address).map(|d| (sym.address, d));
    }
    // Otherwise the table is searched for by its header, in two cases only, so that an ELF file
    // that is simply not Go is not scanned: a binary stripped of its section headers (not
    // something the Go linker does, but tools can), and a Go binary whose external link merged
    // the table into `.data.rel.ro` (Debian's go1.19 PIE builds, e.g. `age` 1.1.1-1+b3).
    let marked_as_go = elf.section(".go.buildinfo").is_some() || elf.section(".note.go.buildid").is_some();
    if elf.has_section_headers() && !marked_as_go {
        return None;
    }
    elf.loads.iter().filter(|seg| !seg.is_executable()).find_map(|seg| {
        let start = usize::try_from(seg.offset).ok()?;
        let end = start.checked_add(usize::try_from(seg.filesz).ok()?)?;
        let data = elf.data.get(start..end)?;
        (0..data.len().saturating_sub(HEADER_LEN))
            .step_by(8)
            .find(|&i| plausible_header(&data[i..]))
            .and_then(|i| Some((seg.vaddr.checked_add(i as u64)?, &data[i..])))
    })
}

/// A header with a known magic whose five table offsets are in order and inside `data`.
fn plausible_header(data: &[u8]) -> bool {
    let Some(h) = data.get(..HEADER_LEN) else { return false };
    let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let offsets: Option<Vec<u64>> = (32..HEADER_LEN).step_by(8).map(|at| le_u64(h, at)).collect();
    matches!(magic, MAGIC_GO118 | MAGIC_GO120)
        && h[4] == 0
        && h[5] == 0
        && matches!(h[6], 1 | 4)
        && h[7] == 8
        && offsets.is_some_and(|o| {
            o[0] >= HEADER_LEN as u64 && o.windows(2).all(|w| w[0] <= w[1]) && o[4] < data.len() as u64
        })
}

impl<'data> Pclntab<'data> {
    /// Parses the header. `version` (when `.go.buildinfo` gave it) only names the release in
    /// the error for a table too old to read.
    pub fn parse(elf: &Elf<'data>, address: u64, data: &'data [u8], version: Option<GoVersion>) -> Result<Self> {
        let corrupt = |detail: String| Error::corrupt(".gopclntab", detail);
        let header = data
            .get(..HEADER_LEN)
            .ok_or_else(|| corrupt(format!("{} bytes is shorter than its header", data.len())))?;
        let magic = le_u32(header, 0).unwrap_or_default();
        match magic {
            MAGIC_GO118 | MAGIC_GO120 => {}
            MAGIC_GO116 | MAGIC_GO12 => {
                let release = version.map_or_else(|| "a Go release before go1.18".to_owned(), |v| v.to_string());
                return Err(Error::GoTooOld {
                    version: format!("{release} (pclntab magic {magic:#x})"),
                });
            }
            other => return Err(corrupt(format!("unknown magic {other:#x}"))),
        }
        let (min_lc, ptr_size) = (header[6], header[7]);
        if ptr_size != 8 {
            return Err(corrupt(format!("pointer size {ptr_size}, expected 8")));
        }
        if u64::from(min_lc) != elf.arch.pc_quantum() {
            return Err(corrupt(format!(
                "instruction size quantum {min_lc} does not match {}",
                elf.arch
            )));
        }
        let word = |at: usize| le_u64(header, at).unwrap_or_default();
        let nfunc = usize::try_from(word(8)).map_err(|_| corrupt("function count overflows".into()))?;
        let offsets = [word(32), word(40), word(48), word(56), word(64)];
        // The linker writes the tables in this order (cmd/link/internal/ld/pcln.go); anything
        // else is corruption and would make the slices below overlap.
        if offsets.windows(2).any(|w| w[0] > w[1]) || offsets[0] < HEADER_LEN as u64 || offsets[4] > data.len() as u64 {
            return Err(corrupt(format!(
                "table offsets {offsets:?} are out of order or out of bounds"
            )));
        }
        let [funcname, cu, file, pc, pcln] = offsets.map(|o| usize::try_from(o).unwrap_or(usize::MAX));
        let functab = &data[pcln..];
        let needed = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| corrupt("function count overflows".into()))?;
        if functab.len() < needed {
            return Err(corrupt(format!(
                "{nfunc} functions do not fit in a {}-byte function table",
                functab.len()
            )));
        }
        // textStart needs a relocation in PIE binaries, hence read_ptr on its address.
        let header_text_start = address
            .checked_add(24)
            .and_then(|a| elf.read_ptr(a))
            .unwrap_or_default();
        Ok(Self {
            address,
            nfunc,
            quantum: elf.arch.pc_quantum(),
            header_text_start,
            text_start: header_text_start,
            gofunc: None,
            funcname_offset: offsets[0],
            funcnametab: &data[funcname..cu],
            cutab: &data[cu..file],
            filetab: &data[file..pc],
            pctab: &data[pc..pcln],
            functab,
            inline_layout_120: magic == MAGIC_GO120,
        })
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// Whether the table has Go 1.20's layout (magic `0xfffffff1`) rather than 1.18's.
    pub fn is_go120_layout(&self) -> bool {
        self.inline_layout_120
    }

    /// Which of `names` name a function of the table (one pass over the name table).
    pub fn function_names_among<'n>(&self, names: impl Iterator<Item = &'n str>) -> std::collections::HashSet<&'n str> {
        let wanted: Vec<&str> = names.collect();
        (0..self.nfunc)
            .filter_map(|i| self.name(self.func(i)?))
            .filter_map(|name| wanted.iter().find(|w| **w == name).copied())
            .collect()
    }

    fn entry_off(&self, i: usize) -> Option<u32> {
        le_u32(self.functab, i.checked_mul(8)?)
    }

    /// The `i`th function of the table.
    pub fn func(&self, i: usize) -> Option<FuncEntry> {
        if i >= self.nfunc {
            return None;
        }
        let entry = self.text_start.checked_add(u64::from(self.entry_off(i)?))?;
        let end = self.text_start.checked_add(u64::from(self.entry_off(i + 1)?))?;
        let func_off = usize::try_from(le_u32(self.functab, i * 8 + 4)?).ok()?;
        // The entry offset is also the first field of `_func`: a cheap consistency check.
        if le_u32(self.functab, func_off)? != self.entry_off(i)? {
            return None;
        }
        Some(FuncEntry {
            index: i,
            entry,
            end: end.max(entry),
            func_off,
        })
    }

    /// The function whose code contains `pc`.
    pub fn find(&self, pc: u64) -> Option<FuncEntry> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        // The last entry (index nfunc) holds the end of the text, so search [0, nfunc].
        let (mut lo, mut hi) = (0usize, self.nfunc);
        if off >= self.entry_off(self.nfunc)? {
            return None;
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry_off(mid + 1)? <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let f = self.func(lo)?;
        (pc >= f.entry && pc < f.end).then_some(f)
    }

    fn func_field_u32(&self, f: FuncEntry, at: usize) -> Option<u32> {
        le_u32(self.functab, f.func_off.checked_add(at)?)
    }

    /// The function's name as the runtime prints it.
    pub fn name(&self, f: FuncEntry) -> Option<&'data str> {
        let name_off = self.func_field_u32(f, 4)?;
        cstr(self.funcnametab, usize::try_from(name_off).ok()?)
    }

    fn npcdata(&self, f: FuncEntry) -> Option<u32> {
        self.func_field_u32(f, 28)
    }

    /// Size of the fixed part of `_func` in this release.
    fn func_fixed_len(&self) -> usize {
        if self.inline_layout_120 {
            FUNC_FIXED_LEN
        } else {
            FUNC_FIXED_LEN_GO118
        }
    }

    /// The byte of `_func` at `at` bytes before the end of its fixed part: `funcID` is 4
    /// before the end, `flag` 3, `nfuncdata` 1.
    fn func_tail_byte(&self, f: FuncEntry, from_end: usize) -> Option<u8> {
        let at = f.func_off.checked_add(self.func_fixed_len())?.checked_sub(from_end)?;
        self.functab.get(at).copied()
    }

    /// The function's compilation unit: its `cuOffset`, the start of its package's file list
    /// in the CU table. Every function compiled as part of one package shares it, whatever
    /// name `//go:linkname` gives it.
    pub fn compilation_unit(&self, f: FuncEntry) -> Option<u32> {
        self.func_field_u32(f, FUNC_CU_OFFSET)
    }

    /// Whether Go's own unwinder stops after this function's frame: it is marked TOPFRAME, or
    /// it writes SP (a stack switch) and is not `cgocallback`, the one such function the
    /// unwinder knows how to step past (`runtime.(*unwinder).resolveInternal` in
    /// `src/runtime/traceback.go`, with `unwindSilentErrors` as `runtime.callers` passes it).
    pub fn stops_unwinding(&self, f: FuncEntry) -> bool {
        let (Some(func_id), Some(flag)) = (self.func_tail_byte(f, 4), self.func_tail_byte(f, 3)) else {
            return false;
        };
        flag & FUNC_FLAG_TOP_FRAME != 0 || (flag & FUNC_FLAG_SP_WRITE != 0 && func_id != FUNC_ID_CGOCALLBACK)
    }

    fn pcdata_offset(&self, f: FuncEntry, table: u32) -> Option<u32> {
        if table >= self.npcdata(f)? {
            return None;
        }
        self.func_field_u32(f, self.func_fixed_len() + 4 * usize::try_from(table).ok()?)
    }

    fn funcdata_offset(&self, f: FuncEntry, index: u32) -> Option<u32> {
        let nfuncdata = u32::from(self.func_tail_byte(f, 1)?);
        if index >= nfuncdata {
            return None;
        }
        let npcdata = usize::try_from(self.npcdata(f)?).ok()?;
        let at = self
            .func_fixed_len()
            .checked_add(npcdata.checked_mul(4)?)?
            .checked_add(4 * usize::try_from(index).ok()?)?;
        let off = self.func_field_u32(f, at)?;
        // ^0 marks an absent funcdata (runtime.funcdata).
        (off != u32::MAX).then_some(off)
    }

    /// Decodes a pc-value table (`runtime.pcvalue`/`runtime.step`) at `pc`.
    fn pcvalue(&self, f: FuncEntry, table_off: u32, pc: u64) -> Option<i32> {
        if table_off == 0 {
            return None;
        }
        let mut p = self.pctab.get(usize::try_from(table_off).ok()?..)?;
        let mut cur_pc = f.entry;
        let mut value: i32 = -1;
        loop {
            // As runtime.pcvalue: only the step that starts at the entry may have a zero
            // value delta; elsewhere a zero byte ends the table.
            let first = cur_pc == f.entry;
            let (uvdelta, n) = read_varint(p)?;
            if uvdelta == 0 && !first {
                return None;
            }
            p = p.get(n..)?;
            // Zig-zag decoding: the low bit is the sign.
            let delta = if uvdelta & 1 != 0 {
                !(uvdelta >> 1)
            } else {
                uvdelta >> 1
            };
            value = value.wrapping_add(delta.cast_signed());
            let (pcdelta, n) = read_varint(p)?;
            p = p.get(n..)?;
            cur_pc = cur_pc.checked_add(u64::from(pcdelta) * self.quantum)?;
            if pc < cur_pc {
                return Some(value);
            }
        }
    }

    fn file_name(&self, f: FuncEntry, fileno: i32) -> Option<&'data str> {
        let cu_offset = self.func_field_u32(f, 32)?;
        let index = usize::try_from(cu_offset.checked_add(u32::try_from(fileno).ok()?)?).ok()?;
        let file_off = le_u32(self.cutab, index.checked_mul(4)?)?;
        if file_off == u32::MAX {
            return None;
        }
        cstr(self.filetab, usize::try_from(file_off).ok()?)
    }

    /// File and line of `pc` in the function's own code or the inlined body it is in.
    pub fn file_line(&self, f: FuncEntry, pc: u64) -> Option<(&'data str, u32)> {
        let fileno = self.pcvalue(f, self.func_field_u32(f, 20)?, pc)?;
        let line = self.pcvalue(f, self.func_field_u32(f, 24)?, pc)?;
        Some((self.file_name(f, fileno)?, u32::try_from(line).ok()?))
    }

    /// All logical frames at `pc`, innermost (most deeply inlined) first, as
    /// `runtime.CallersFrames` expands them with its `inlineUnwinder`.
    pub fn frames(&self, elf: &Elf<'_>, f: FuncEntry, pc: u64) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        let tree = self.inline_tree(f);
        let index_table = self.pcdata_offset(f, PCDATA_INL_TREE_INDEX);
        let mut cur_pc = pc;
        for _ in 0..MAX_INLINE_DEPTH {
            let (file, line) = self.file_line(f, cur_pc).unwrap_or(("?", 0));
            // A non-negative index into the inline tree means `cur_pc` is in inlined code.
            let call = tree
                .zip(index_table)
                .and_then(|(base, table)| Some((base, usize::try_from(self.pcvalue(f, table, cur_pc)?).ok()?)))
                .and_then(|(base, index)| self.inlined_call(elf, base, index));
            let Some((name_off, parent_pc)) = call else {
                frames.push(RawFrame {
                    function: self.name(f).unwrap_or("?").to_owned(),
                    file: file.to_owned(),
                    line,
                    inlined: false,
                });
                break;
            };
            let name = usize::try_from(name_off)
                .ok()
                .and_then(|o| cstr(self.funcnametab, o))
                .unwrap_or("?");
            frames.push(RawFrame {
                function: name.to_owned(),
                file: file.to_owned(),
                line,
                inlined: true,
            });
            // The caller continues at the pc of the call site (`inlinedCall.parentPc`).
            let Some(next) = f.entry.checked_add_signed(i64::from(parent_pc)) else {
                break;
            };
            cur_pc = next;
        }
        frames
    }

    /// Address of the function's inline tree, if it has one and `gofunc` is known.
    fn inline_tree(&self, f: FuncEntry) -> Option<u64> {
        let off = self.funcdata_offset(f, FUNCDATA_INL_TREE)?;
        self.gofunc?.checked_add(u64::from(off))
    }

    /// `(nameOff, parentPc)` of entry `index` of an inline tree.
    fn inlined_call(&self, elf: &Elf<'_>, tree: u64, index: usize) -> Option<(i32, i32)> {
        let (size, name_at, parent_at) = if self.inline_layout_120 {
            // funcID u8, _ [3]byte, nameOff int32, parentPc int32, startLine int32.
            (16, 4, 8)
        } else {
            // Go 1.18/1.19: parent int16, funcID u8, _ byte, file int32, line int32,
            // func_ int32 (name offset), parentPc int32.
            (20, 12, 16)
        };
        let at = tree.checked_add(u64::try_from(index.checked_mul(size)?).ok()?)?;
        let rec = elf.read(at, size)?;
        Some((
            le_u32(rec, name_at)?.cast_signed(),
            le_u32(rec, parent_at)?.cast_signed(),
        ))
    }
}

/// Reads a little-endian `u32` at `at`.
pub(crate) fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// Reads a little-endian `u64` at `at`.
pub(crate) fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// A NUL-terminated UTF-8 string starting at `at`.
fn cstr(data: &[u8], at: usize) -> Option<&str> {
    let rest = data.get(at..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&rest[..len]).ok()
}

/// `runtime.readvarint`: a little-endian base-128 `u32`.
fn read_varint(p: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    let mut shift = 0u32;
    for (i, &b) in p.iter().enumerate() {
        value |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_decoding() {
        assert_eq!(read_varint(&[0x02]), Some((2, 1)));
        assert_eq!(read_varint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
        assert_eq!(read_varint(&[0x80]), None);
    }

    #[test]
    fn strings_are_bounded() {
        assert_eq!(cstr(b"abc\0def\0", 4), Some("def"));
        assert_eq!(cstr(b"abc", 0), None);
        assert_eq!(cstr(b"abc\0", 10), None);
    }
}
