//! `.go.buildinfo`: the Go version and module information the linker embeds.
//!
//! Layout (Go `src/debug/buildinfo/buildinfo.go`): a 32-byte header that starts with the
//! 14-byte magic `"\xff Go buildinf:"`, then the pointer size and a flags byte. With flag
//! `0x2` (Go 1.18 and later) the version and the module info follow the header as
//! uvarint-length-prefixed strings. Before that, the header held pointers to two Go string
//! headers instead, which are followed here too so an old binary is named correctly before it
//! is rejected.

use serde::Serialize;

use crate::elf::Elf;
use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const FLAG_BIG_ENDIAN: u8 = 0x1;
const FLAG_VERSION_INLINE: u8 = 0x2;
/// The linker aligns the blob to 16 bytes; `debug/buildinfo` searches for it the same way.
const ALIGN: usize = 16;

/// What `go version -m` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// `runtime.Version()` of the program, e.g. `go1.27.3`.
    pub go_version: String,
    /// The main package's import path (`path` line), if recorded.
    pub path: Option<String>,
    /// The main module (`mod` line).
    pub main_module: Option<Module>,
    /// Dependencies (`dep` lines), with replacements applied.
    pub deps: Vec<Module>,
    /// Build settings (`build` lines), e.g. `CGO_ENABLED=1`, `-ldflags=-s -w`, in order.
    #[serde(serialize_with = "settings_as_map")]
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// A build setting by key.
    #[must_use]
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn settings_as_map<S: serde::Serializer>(settings: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(settings.iter().map(|(k, v)| (k, v)))
}

/// One module of the build list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Module {
    /// Module path.
    pub path: String,
    /// Module version, `(devel)` for the main module built from a work tree.
    pub version: String,
    /// `go.sum` hash, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
    /// The module that replaced this one (`=>` line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Box<Module>>,
}

pub(crate) fn read(elf: &Elf<'_>) -> Result<Option<BuildInfo>> {
    let Some(blob) = find_blob(elf) else {
        return Ok(None);
    };
    let corrupt = |detail: &str| Error::corrupt(".go.buildinfo", detail);
    let header = blob.get(..HEADER_LEN).ok_or_else(|| corrupt("truncated header"))?;
    let ptr_size = header[14];
    let flags = header[15];
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(Error::UnsupportedArch("big-endian Go binary".to_owned()));
    }
    let (version, modinfo) = if flags & FLAG_VERSION_INLINE != 0 {
        let (version, rest) = decode_string(&blob[HEADER_LEN..]).ok_or_else(|| corrupt("bad version string"))?;
        let (modinfo, _) = decode_string(rest).ok_or_else(|| corrupt("bad module info string"))?;
        (version.to_vec(), modinfo.to_vec())
    } else {
        if ptr_size != 8 {
            return Err(corrupt("pointer size is not 8"));
        }
        let pointer = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(header.get(at..at + 8)?.try_into().ok()?)) };
        let version = pointer(16)
            .and_then(|p| read_go_string(elf, p))
            .ok_or_else(|| corrupt("bad version pointer"))?;
        let modinfo = pointer(24).and_then(|p| read_go_string(elf, p)).unwrap_or_default();
        (version, modinfo)
    };
    let mut info = parse_modinfo(&strip_sentinels(&modinfo));
    info.go_version = String::from_utf8_lossy(&version).into_owned();
    Ok(Some(info))
}

fn find_blob<'data>(elf: &Elf<'data>) -> Option<&'data [u8]> {
    if let Some((_, data)) = elf.section(".go.buildinfo") {
        return data.starts_with(MAGIC).then_some(data);
    }
    // Without section headers, search the writable, file-backed segments, as
    // `debug/buildinfo` does.
    elf.loads
        .iter()
        .filter(|seg| seg.flags & object::elf::PF_W.0 != 0)
        .find_map(|seg| {
            let start = usize::try_from(seg.offset).ok()?;
            let end = start.checked_add(usize::try_from(seg.filesz).ok()?)?;
            let data = elf.data.get(start..end)?;
            let at = (0..data.len()).step_by(ALIGN).find(|&i| data[i..].starts_with(MAGIC))?;
            Some(&data[at..])
        })
}

/// Reads a Go string header (pointer, length) at `vaddr` and the bytes it points to.
fn read_go_string(elf: &Elf<'_>, vaddr: u64) -> Option<Vec<u8>> {
    let ptr = elf.read_ptr(vaddr)?;
    let len = usize::try_from(elf.read_ptr(vaddr.checked_add(8)?)?).ok()?;
    // A version or module string is far shorter than this; larger is corruption.
    if len > 1 << 20 {
        return None;
    }
    elf.read(ptr, len).map(<[u8]>::to_vec)
}

/// A uvarint length followed by that many bytes.
fn decode_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, used) = read_uvarint(data)?;
    let len = usize::try_from(len).ok()?;
    let rest = data.get(used..)?;
    Some((rest.get(..len)?, rest.get(len..)?))
}

pub(crate) fn read_uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The module info is framed by two 16-byte sentinels (`cmd/go/internal/modload`).
fn strip_sentinels(modinfo: &[u8]) -> Vec<u8> {
    let n = modinfo.len();
    if n >= 33 && modinfo[n - 17] == b'\n' {
        modinfo[16..n - 16].to_vec()
    } else {
        Vec::new()
    }
}

fn parse_modinfo(modinfo: &[u8]) -> BuildInfo {
    let text = String::from_utf8_lossy(modinfo);
    let mut info = BuildInfo::default();
    let module = |fields: &[&str]| -> Option<Module> {
        Some(Module {
            path: (*fields.first()?).to_owned(),
            version: fields.get(1).copied().unwrap_or_default().to_owned(),
            sum: fields.get(2).filter(|s| !s.is_empty()).map(|s| (*s).to_owned()),
            replaced_by: None,
        })
    };
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(key), rest) = (fields.next(), fields.collect::<Vec<_>>()) else {
            continue;
        };
        match key {
            "path" => info.path = rest.first().map(|s| (*s).to_owned()),
            "mod" => info.main_module = module(&rest),
            "dep" => info.deps.extend(module(&rest)),
            "=>" => {
                if let Some(last) = info.deps.last_mut().or(info.main_module.as_mut()) {
                    last.replaced_by = module(&rest).map(Box::new);
                }
            }
            "build" => {
                if let Some((k, v)) = rest.join("\t").split_once('=') {
                    info.settings.push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_module_lines() {
        let text = b"path\texample.com/cmd/x\nmod\texample.com\t(devel)\t\ndep\tgolang.org/x/sys\tv0.1.0\th1:abc=\n=>\t../sys\t(devel)\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=1\n";
        let info = parse_modinfo(text);
        assert_eq!(info.path.as_deref(), Some("example.com/cmd/x"));
        assert_eq!(info.main_module.as_ref().unwrap().path, "example.com");
        assert_eq!(info.deps.len(), 1);
        assert_eq!(info.deps[0].sum.as_deref(), Some("h1:abc="));
        assert_eq!(info.deps[0].replaced_by.as_ref().unwrap().path, "../sys");
        assert_eq!(info.setting("CGO_ENABLED"), Some("1"));
        assert_eq!(info.setting("-ldflags"), Some("-s -w"));
    }

    #[test]
    fn varints_are_bounded() {
        assert_eq!(read_uvarint(&[0x05]), Some((5, 1)));
        assert_eq!(read_uvarint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read_uvarint(&[0xff; 11]), None);
        assert_eq!(read_uvarint(&[]), None);
    }
}
