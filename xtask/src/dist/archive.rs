//! Deterministic tar archives: the tarball, the image layers and the OCI archive. Every entry
//! is owned by root, dated `mtime` (the commit's time), and written in the order given, so the
//! same inputs give the same bytes and the same digests.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Context as _, Result};
use flate2::Compression;
use sha2::{Digest as _, Sha256};

/// One entry of an archive.
#[derive(Debug, Clone)]
pub enum Entry {
    Directory { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Self::Directory {
            path: path.to_owned(),
            mode: 0o755,
        }
    }

    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self::File {
            path: path.to_owned(),
            mode,
            data,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Self::Directory { path, .. } | Self::File { path, .. } | Self::Symlink { path, .. } => path,
        }
    }
}

/// An uncompressed tar of `entries`, each parent directory added before its first child.
pub fn tar(entries: &[Entry], mtime: u64) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut seen = std::collections::BTreeSet::new();
    for entry in entries {
        // Parents first: unpackers (and `docker load`) expect them.
        let mut parent = String::new();
        for part in entry
            .path()
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            parent = if parent.is_empty() {
                (*part).to_owned()
            } else {
                format!("{parent}/{part}")
            };
            if seen.insert(parent.clone()) {
                append(&mut builder, &Entry::dir(&parent), mtime)?;
            }
        }
        if seen.insert(entry.path().to_owned()) {
            append(&mut builder, entry, mtime)?;
        }
    }
    builder.into_inner().context("cannot finish a tar archive")
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry, mtime: u64) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    let result = match entry {
        Entry::Directory { path, mode } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(*mode);
            header.set_size(0);
            builder.append_data(&mut header, format!("{path}/"), std::io::empty())
        }
        Entry::File { path, mode, data } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())
        }
        Entry::Symlink { path, target } => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target)
        }
    };
    result.with_context(|| format!("cannot add {} to a tar archive", entry.path()))
}

/// gzip with no name and no time in its header (RFC 1952's MTIME = 0), so it is deterministic.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    encoder.write_all(data).context("cannot gzip")?;
    encoder.finish().context("cannot gzip")
}

/// The file names, kinds and contents of a gzipped or plain tar, in order (for checks); a
/// symbolic link's contents are its target.
pub fn read_tar(data: &[u8]) -> Result<Vec<(String, tar::EntryType, Vec<u8>)>> {
    let gzipped = data.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn std::io::Read + '_> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in archive.entries().context("not a tar archive")? {
        let mut entry = entry.context("a broken tar entry")?;
        let path = entry
            .path()
            .context("a tar entry without a path")?
            .to_string_lossy()
            .into_owned();
        let kind = entry.header().entry_type();
        let mut data = Vec::new();
        if kind == tar::EntryType::Symlink {
            // A link's "contents" here are its target.
            let target = entry.link_name().ok().flatten().context("a link without a target")?;
            data = target.to_string_lossy().into_owned().into_bytes();
        } else {
            std::io::Read::read_to_end(&mut entry, &mut data).with_context(|| format!("cannot read {path}"))?;
        }
        out.push((path, kind, data));
    }
    Ok(out)
}

/// Lower-case hex SHA-256.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tars_are_deterministic_with_parents_first() {
        let entries = [
            Entry::file("a/b/c.txt", 0o644, b"hello".to_vec()),
            Entry::Symlink {
                path: "a/link".to_owned(),
                target: "b/c.txt".to_owned(),
            },
        ];
        let one = gzip(&tar(&entries, 1_700_000_000).unwrap()).unwrap();
        let two = gzip(&tar(&entries, 1_700_000_000).unwrap()).unwrap();
        assert_eq!(sha256(&one), sha256(&two));
        let read = read_tar(&one).unwrap();
        let names: Vec<_> = read.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["a/", "a/b/", "a/b/c.txt", "a/link"]);
        assert_eq!(read[2].2, b"hello");
        assert_eq!(read[3].1, tar::EntryType::Symlink);
        assert_eq!(read[3].2, b"b/c.txt");
    }

    /// Paths and link targets past ustar's 100 bytes (GNU long-name headers).
    #[test]
    fn long_paths_survive() {
        let long = format!("usr/share/doc/{}/copyright", "x".repeat(120));
        let entries = [
            Entry::file(&long, 0o644, b"text".to_vec()),
            Entry::Symlink {
                path: "l".to_owned(),
                target: format!("/{long}"),
            },
        ];
        let read = read_tar(&tar(&entries, 0).unwrap()).unwrap();
        assert!(read.iter().any(|(p, _, d)| *p == long && d == b"text"));
        assert!(
            read.iter()
                .any(|(p, _, d)| p == "l" && *d == format!("/{long}").into_bytes())
        );
    }

    #[test]
    fn sha256_of_the_empty_string() {
        assert_eq!(
            sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
