//! A writer of the `newc` cpio format, which the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): per entry, a 110-byte ASCII
//! header of thirteen 8-digit hex fields, the NUL-terminated name and the data, each padded to
//! four bytes; a `TRAILER!!!` entry ends the archive. Written here rather than by Debian's
//! `cpio`, so that building the VM's root file system needs no other tool.

use std::fmt::Write as _;
use std::io::{self, Write};

/// `S_IFDIR` and `S_IFREG` of `<sys/stat.h>`, or'ed with the permission bits.
const DIRECTORY: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;

/// An archive being written to `out`.
pub struct Archive<W: Write> {
    out: W,
    next_inode: u32,
}

impl<W: Write> Archive<W> {
    pub fn new(out: W) -> Self {
        Self { out, next_inode: 1 }
    }

    /// A directory, mode 0755. Parents must come before their entries.
    pub fn directory(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, DIRECTORY | 0o755, 2, &[])
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, REGULAR | (mode & 0o7777), 1, data)
    }

    /// Writes the trailer and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 1, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, data: &[u8]) -> io::Result<()> {
        let too_big = |what| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {what} too large for cpio"),
            )
        };
        let size = u32::try_from(data.len()).map_err(|_| too_big("file"))?;
        let name_size = u32::try_from(name.len() + 1).map_err(|_| too_big("name"))?;
        let inode = self.next_inode;
        self.next_inode += 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        let fields = [inode, mode, 0, 0, links, 0, size, 0, 0, 0, 0, name_size, 0];
        let mut header = String::from("070701");
        for field in fields {
            // Infallible: writing to a String.
            let _ = write!(header, "{field:08X}");
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let zeros = (4 - written % 4) % 4;
        self.out.write_all(&[0; 3][..zeros])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_with_padding() {
        let mut archive = Archive::new(Vec::new());
        archive.directory("bin").unwrap();
        archive.file("bin/x", 0o755, b"hello").unwrap();
        let bytes = archive.finish().unwrap();

        // Directory: header (110) + "bin\0" (4) = 114, padded to 116.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[6..14], b"00000001", "inode");
        assert_eq!(&bytes[14..22], b"000041ED", "mode: directory 0755");
        assert_eq!(&bytes[110..114], b"bin\0");
        assert_eq!(&bytes[114..116], b"\0\0");
        // File: header + "bin/x\0" (6) = 116, already aligned; then the data, padded to 8.
        let file = &bytes[116..];
        assert_eq!(&file[14..22], b"000081ED", "mode: regular 0755");
        assert_eq!(&file[54..62], b"00000005", "size");
        assert_eq!(&file[94..102], b"00000006", "name size");
        assert_eq!(&file[110..116], b"bin/x\0");
        assert_eq!(&file[116..121], b"hello");
        assert_eq!(&file[121..124], b"\0\0\0");
        let trailer = &file[124..];
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(bytes.len() % 4, 0);
    }
}
