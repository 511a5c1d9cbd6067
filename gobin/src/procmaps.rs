//! Running processes: `/proc/PID/maps`, and translating between a process's addresses and the
//! binary's link-time addresses (they differ for PIE binaries, which load at a random base).

use std::path::{Path, PathBuf};

use crate::elf::LoadSegment;
use crate::error::{Error, Result};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode of the mapped file (0 for anonymous mappings).
    pub inode: u64,
    /// The path, in the process's mount namespace, or a pseudo-name like `[heap]`.
    pub path: Option<String>,
}

impl Mapping {
    /// Whether the mapping is executable.
    #[must_use]
    pub fn is_executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }
}

/// The memory map of a process.
#[derive(Debug, Clone, Default)]
pub struct ProcessMaps {
    /// All mappings, in address order.
    pub mappings: Vec<Mapping>,
}

impl ProcessMaps {
    /// Reads `/proc/PID/maps`.
    ///
    /// # Errors
    /// When the file cannot be read (no such process, no permission) or parsed.
    pub fn read(pid: u32) -> Result<Self> {
        let path = PathBuf::from(format!("/proc/{pid}/maps"));
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })?;
        Self::parse(&text)
    }

    /// Parses the text of a `maps` file.
    ///
    /// # Errors
    /// On a line that does not have the kernel's format.
    pub fn parse(text: &str) -> Result<Self> {
        let mappings = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| parse_line(line).ok_or_else(|| Error::Maps(format!("unexpected line {line:?}"))))
            .collect::<Result<_>>()?;
        Ok(Self { mappings })
    }

    /// The mappings of one file, chosen by inode (robust across mount namespaces, where the
    /// path in `maps` is the one inside the container).
    #[must_use]
    pub fn of_inode(&self, inode: u64) -> Vec<&Mapping> {
        self.mappings
            .iter()
            .filter(|m| m.inode == inode && inode != 0)
            .collect()
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.to_owned();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields
        .next()
        .map(str::trim_start)
        .filter(|p| !p.is_empty())
        .map(str::to_owned);
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        dev_major: u32::from_str_radix(major, 16).ok()?,
        dev_minor: u32::from_str_radix(minor, 16).ok()?,
        inode,
        path,
    })
}

/// Translates between a process's addresses and a binary's link-time addresses.
///
/// A runtime address lies in a mapping of the file at some file offset; the `PT_LOAD`
/// segment that holds that file offset gives the link-time address. This is the kernel's view
/// (mappings are of file ranges), so it is right for PIE and non-PIE alike.
#[derive(Debug, Clone)]
pub struct AddressMap {
    mappings: Vec<Mapping>,
    loads: Vec<LoadSegment>,
}

impl AddressMap {
    /// Builds the map for a binary from the process's mappings of its file.
    ///
    /// # Errors
    /// When the process does not map the file.
    pub fn new(mappings: Vec<Mapping>, loads: &[LoadSegment]) -> Result<Self> {
        if mappings.is_empty() {
            return Err(Error::Maps("the process does not map the binary".to_owned()));
        }
        Ok(Self {
            mappings,
            loads: loads.to_vec(),
        })
    }

    /// The map of a running process's executable, found by its inode (see [`process_exe`]).
    ///
    /// # Errors
    /// When the process's memory map cannot be read, or does not map the file.
    pub fn for_process(pid: u32, exe: &ProcessExe, loads: &[LoadSegment]) -> Result<Self> {
        let maps = ProcessMaps::read(pid)?;
        Self::new(maps.of_inode(exe.inode).into_iter().cloned().collect(), loads).map_err(|_| {
            Error::Maps(format!(
                "process {pid} does not map its executable {}",
                exe.path_in_process.display()
            ))
        })
    }

    /// The process's mappings of the binary.
    #[must_use]
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The mapping of the binary that maps it at file offset 0, i.e. the load base.
    #[must_use]
    pub fn base(&self) -> Option<u64> {
        self.mappings.iter().find(|m| m.offset == 0).map(|m| m.start)
    }

    /// Link-time address of a runtime address in the binary.
    #[must_use]
    pub fn to_static(&self, runtime: u64) -> Option<u64> {
        let m = self.mappings.iter().find(|m| (m.start..m.end).contains(&runtime))?;
        let file_offset = m.offset.checked_add(runtime - m.start)?;
        self.loads.iter().find_map(|s| s.vaddr_of(file_offset))
    }

    /// Runtime address of a link-time address in the binary: anywhere in a loaded segment,
    /// its zero-filled end (`.bss`, `.noptrbss`) included.
    ///
    /// The kernel maps every `PT_LOAD` segment at its link-time address plus one load bias
    /// (`load_elf_binary`; 0 for a non-PIE executable), so the bias comes from the mapping of
    /// file offset 0 and the segment that holds it. Translating through the mapping of an
    /// address's file offset instead would go wrong where two segments share a file page, as
    /// the external linker lays out cgo binaries: the read-only mapping of that page also
    /// covers the start of the data segment, whose own (copy-on-write) mapping is a page
    /// further up.
    #[must_use]
    pub fn to_runtime(&self, link_time: u64) -> Option<u64> {
        let segment = self
            .loads
            .iter()
            .find(|s| link_time.checked_sub(s.vaddr).is_some_and(|delta| delta < s.memsz))?;
        let Some(bias) = self.load_bias() else {
            // No mapping of the file's start (never seen): the mapping of the address's file
            // offset, for the file-backed part only.
            let file_offset = segment.file_offset_of(link_time)?;
            let m = self
                .mappings
                .iter()
                .find(|m| file_offset >= m.offset && file_offset - m.offset < m.end.saturating_sub(m.start))?;
            return m.start.checked_add(file_offset - m.offset);
        };
        link_time.checked_add(bias)
    }

    /// What the kernel added to every link-time address: the start of the mapping of file
    /// offset 0 less the page of the segment loaded from there (wrapping: a non-PIE binary's is
    /// 0, a PIE binary's its load address).
    fn load_bias(&self) -> Option<u64> {
        let first = self.loads.iter().find(|s| s.offset == 0)?;
        Some(self.base()?.wrapping_sub(first.vaddr & !(PAGE - 1)))
    }
}

/// The smallest page the kernel maps segments by (`ELF_MIN_ALIGN`, 4 KiB on `x86_64` and on
/// arm64 kernels with 4 KiB pages); a segment's offset-0 start is page-aligned by any page.
const PAGE: u64 = 4096;

/// The executable of a process, as gotrace opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessExe {
    /// The path to read the binary from in this (the tracer's) mount namespace: the target's
    /// own path under `/proc/PID/root` when that names the same file, else `/proc/PID/exe`.
    pub path: PathBuf,
    /// The path as the process sees it (`readlink /proc/PID/exe`).
    pub path_in_process: PathBuf,
    /// Inode of the executable, to find its mappings.
    pub inode: u64,
}

/// Finds the executable of a running process, resolving it through `/proc/PID/root` so that
/// processes in other mount namespaces (containers) work.
///
/// # Errors
/// When the process does not exist or its executable cannot be accessed.
pub fn process_exe(pid: u32) -> Result<ProcessExe> {
    use std::os::unix::fs::MetadataExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if !proc.exists() {
        return Err(Error::Io {
            path: proc,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such process"),
        });
    }
    let exe_link = proc.join("exe");
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let seen_from_here = std::fs::read_link(&exe_link).map_err(io_err(&exe_link))?;
    // The kernel writes the link's path as seen from the reader's root. A process chrooted
    // (or pivoted) into a directory that is visible here sees the same file without that
    // directory's prefix, which `/proc/PID/root` names.
    let target = std::fs::read_link(proc.join("root"))
        .ok()
        .filter(|root| root != Path::new("/"))
        .and_then(|root| seen_from_here.strip_prefix(&root).ok().map(|p| Path::new("/").join(p)))
        .unwrap_or(seen_from_here);
    let meta = std::fs::metadata(&exe_link).map_err(io_err(&exe_link))?;
    // `/proc/PID/root/<path>` is the same file unless it was deleted or replaced since the
    // process started; then fall back to the magic link, which always opens the mapped file.
    let relative = target.strip_prefix("/").unwrap_or(&target);
    let rooted = proc.join("root").join(relative);
    let path = match std::fs::metadata(&rooted) {
        Ok(m) if m.ino() == meta.ino() && m.dev() == meta.dev() => rooted,
        _ => exe_link,
    };
    Ok(ProcessExe {
        path,
        path_in_process: target,
        inode: meta.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
555555554000-555555555000 r--p 00000000 08:01 1234 /usr/bin/demo app
555555555000-555555600000 r-xp 00001000 08:01 1234 /usr/bin/demo app
555555601000-555555611000 rw-p 000ac000 08:01 1234 /usr/bin/demo app
7ffff7fc3000-7ffff7fc7000 r--p 00000000 00:00 0                          [vvar]
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0                          [stack]
";

    fn loads() -> Vec<LoadSegment> {
        vec![
            LoadSegment {
                vaddr: 0,
                memsz: 0x1000,
                offset: 0,
                filesz: 0x1000,
                flags: 4,
            },
            LoadSegment {
                vaddr: 0x1000,
                memsz: 0xab000,
                offset: 0x1000,
                filesz: 0xab000,
                flags: 5,
            },
            LoadSegment {
                vaddr: 0xad000,
                memsz: 0x20000,
                offset: 0xac000,
                filesz: 0x10000,
                flags: 6,
            },
        ]
    }

    #[test]
    fn parses_maps_with_spaces_in_paths() {
        let maps = ProcessMaps::parse(MAPS).unwrap();
        assert_eq!(maps.mappings.len(), 5);
        assert_eq!(maps.mappings[1].path.as_deref(), Some("/usr/bin/demo app"));
        assert!(maps.mappings[1].is_executable());
        assert_eq!(maps.mappings[3].path.as_deref(), Some("[vvar]"));
        assert_eq!(maps.of_inode(1234).len(), 3);
        assert!(ProcessMaps::parse("garbage").is_err());
    }

    /// An externally linked (cgo) executable: the data segment starts inside the last file
    /// page of the read-only segment, whose mapping covers that page too, a page below the data
    /// segment's own mapping.
    #[test]
    fn translates_data_in_a_file_page_shared_with_rodata() {
        let maps = ProcessMaps::parse(
            "00400000-00531000 r-xp 00000000 08:01 77 /app\n\
             00531000-00686000 r--p 00131000 08:01 77 /app\n\
             00686000-006b9000 rw-p 00285000 08:01 77 /app\n",
        )
        .unwrap();
        let loads = [
            LoadSegment {
                vaddr: 0x40_0000,
                memsz: 0x28_5000,
                offset: 0,
                filesz: 0x28_5000,
                flags: 5,
            },
            LoadSegment {
                vaddr: 0x68_6df0,
                memsz: 0x4_0000,
                offset: 0x28_5df0,
                filesz: 0x3_0000,
                flags: 6,
            },
        ];
        let map = AddressMap::new(maps.of_inode(77).into_iter().cloned().collect(), &loads).unwrap();
        assert_eq!(map.to_runtime(0x68_6e00), Some(0x68_6e00));
        assert_eq!(map.to_runtime(0x6b_a420), Some(0x6b_a420));
        assert_eq!(map.to_runtime(0x40_1000), Some(0x40_1000));
    }

    #[test]
    fn translates_pie_addresses_both_ways() {
        let maps = ProcessMaps::parse(MAPS).unwrap();
        let map = AddressMap::new(maps.of_inode(1234).into_iter().cloned().collect(), &loads()).unwrap();
        assert_eq!(map.base(), Some(0x5555_5555_4000));
        assert_eq!(map.to_static(0x5555_5555_5010), Some(0x1010));
        assert_eq!(map.to_runtime(0x1010), Some(0x5555_5555_5010));
        // The data segment's vaddr and offset differ by a page.
        assert_eq!(map.to_static(0x5555_5560_1008), Some(0xad008));
        assert_eq!(map.to_runtime(0xad008), Some(0x5555_5560_1008));
        assert_eq!(map.to_static(0x7fff_f7fc_3000), None);
        // Past the data segment's file-backed part: its `.bss`, mapped anonymously after it.
        assert_eq!(map.to_runtime(0xc0010), Some(0x5555_5561_4010));
        assert_eq!(map.to_runtime(0xcd000), None);
    }
}
