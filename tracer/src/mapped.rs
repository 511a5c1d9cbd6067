//! An executable's bytes, mapped rather than read: a node agent follows dozens of processes
//! whose binaries are 10–100 MB each, and reading each into the heap would cost that much
//! resident memory per target. Mapped, only the pages gotrace touches (ELF headers, the
//! function table it symbolizes with) are resident, they come from the page cache the target
//! already uses, and [`MappedFile::release`] gives them back after parsing.
//!
//! A mapped file must not shrink while mapped (reading past its new end raises SIGBUS).
//! Linux refuses to open a running executable for writing (`ETXTBSY`, from
//! `deny_write_access` in `fs/exec.c`; seen on this project's 6.18 kernel), and gotrace maps
//! only the executables of processes it traces, unmapping them when they exit. Between the
//! exit and the unmapping, one last collection reads the file: it checks first that the file
//! is as mapped ([`FileBytes::unchanged`]), which leaves a window of one collection (a few
//! milliseconds) in which a deploy truncating the file in place would crash gotrace. (Linux
//! 6.11 briefly stopped denying writes to running executables; there, the window is the whole
//! trace.)

use std::fs::File;
use std::path::Path;

/// The bytes of a file: mapped read-only, or read when mapping is not possible (an empty
/// file, or a filesystem that cannot map).
#[derive(Debug)]
pub enum FileBytes {
    Mapped(MappedFile),
    Read(Vec<u8>),
}

/// A file's size and modification time.
type Stamp = (u64, Option<std::time::SystemTime>);

fn stamp(file: &File) -> Option<Stamp> {
    let meta = file.metadata().ok()?;
    Some((meta.len(), meta.modified().ok()))
}

impl FileBytes {
    /// Maps `path`, or reads it if it cannot be mapped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        match MappedFile::map(file) {
            Ok(mapped) => Ok(Self::Mapped(mapped)),
            Err(_) => std::fs::read(path).map(Self::Read),
        }
    }

    /// Whether a mapped file still has the size and modification time it had when mapped
    /// (bytes that were read are always safe to read).
    #[must_use]
    pub fn unchanged(&self) -> bool {
        match self {
            // Through the descriptor kept open: the path may be gone with the process.
            Self::Mapped(mapped) => mapped.stamp.is_some() && stamp(&mapped.file) == mapped.stamp,
            Self::Read(_) => true,
        }
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(mapped) => mapped.bytes(),
            Self::Read(data) => data,
        }
    }

    /// Drops the resident pages of a mapped file (they are read again from the page cache
    /// when next touched); nothing for bytes that were read.
    pub fn release(&self) {
        if let Self::Mapped(mapped) = self {
            mapped.release();
        }
    }
}

/// A read-only private mapping of a whole file.
#[derive(Debug)]
pub struct MappedFile {
    address: std::ptr::NonNull<u8>,
    len: usize,
    /// The file, kept open to tell whether it changed.
    file: File,
    /// Its size and modification time when mapped.
    stamp: Option<Stamp>,
}

// SAFETY: the mapping is read-only and owned; nothing writes through it.
unsafe impl Send for MappedFile {}
// SAFETY: as above: shared reads of immutable memory.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `file`, or gives it back when it cannot be mapped.
    fn map(file: File) -> Result<Self, File> {
        use std::os::fd::AsRawFd as _;
        let Some(len) = file
            .metadata()
            .ok()
            .and_then(|m| usize::try_from(m.len()).ok())
            .filter(|&l| l > 0)
        else {
            return Err(file);
        };
        // SAFETY: a fresh read-only private mapping of a file we hold open; the kernel picks
        // the address. Checked for MAP_FAILED below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        let Some(address) = std::ptr::NonNull::new(address.cast()).filter(|_| address != libc::MAP_FAILED) else {
            return Err(file);
        };
        Ok(Self {
            address,
            len,
            stamp: stamp(&file),
            file,
        })
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `address` for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.address.as_ptr(), self.len) }
    }

    fn release(&self) {
        // SAFETY: MADV_DONTNEED on a private file mapping never written only drops page-table
        // entries; the contents read again from the file are the same.
        unsafe { libc::madvise(self.address.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no borrow of the bytes outlives `self`.
        unsafe { libc::munmap(self.address.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_bytes_are_the_files() {
        let own = std::env::current_exe().unwrap();
        let bytes = FileBytes::open(&own).unwrap();
        assert!(matches!(bytes, FileBytes::Mapped(_)));
        let read = std::fs::read(&own).unwrap();
        assert_eq!(bytes.bytes().len(), read.len());
        assert_eq!(&bytes.bytes()[..4096], &read[..4096]);
        bytes.release();
        assert_eq!(bytes.bytes()[..4], read[..4], "readable again after release");
        assert!(bytes.unchanged());
    }

    #[test]
    fn a_file_that_shrank_is_not_unchanged() {
        let path = std::env::temp_dir().join(format!("gotrace-shrinks-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let bytes = FileBytes::open(&path).unwrap();
        assert!(bytes.unchanged());
        std::fs::write(&path, b"short").unwrap();
        assert!(!bytes.unchanged());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_empty_file_is_read() {
        let path = std::env::temp_dir().join(format!("gotrace-empty-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        let bytes = FileBytes::open(&path).unwrap();
        assert!(matches!(bytes, FileBytes::Read(ref d) if d.is_empty()));
        std::fs::remove_file(&path).unwrap();
    }
}
