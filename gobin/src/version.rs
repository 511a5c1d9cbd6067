//! Go release versions as they appear in binaries (`go1.27.3`, `go1.24rc1`,
//! `devel go1.26-abc123 …`, `go1.25.5 X:nodwarf5`).

use std::fmt;

/// A parsed Go version. Only major and minor decide layouts; the patch release is kept for
/// display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    /// Always 1 so far.
    pub major: u32,
    /// The release, e.g. 27 for go1.27.
    pub minor: u32,
    /// The patch release; 0 for `go1.21.0`, release candidates and development builds.
    pub patch: u32,
}

impl GoVersion {
    /// A version from its parts.
    #[must_use]
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self { major, minor, patch }
    }

    /// Parses the version string the Go linker stores in `.go.buildinfo`
    /// (`runtime.buildVersion`). Returns `None` for a string without a `go1.N` prefix.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        // `devel go1.26-abcdef Tue …` is a toolchain built from source.
        let text = text.strip_prefix("devel ").unwrap_or(text);
        let rest = text.strip_prefix("go")?;
        // Stop at the first character that cannot be part of the numeric version: a space
        // before experiment tags, '-' of a devel hash, or the 'rc'/'beta' suffix.
        let numeric_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let mut parts = rest[..numeric_end].split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(Self::new(major, minor, patch))
    }

    /// Whether this is at least `1.minor`.
    #[must_use]
    pub fn at_least(self, minor: u32) -> bool {
        self >= Self::new(1, minor, 0)
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_strings() {
        assert_eq!(GoVersion::parse("go1.27.3"), Some(GoVersion::new(1, 27, 3)));
        assert_eq!(GoVersion::parse("go1.21.13"), Some(GoVersion::new(1, 21, 13)));
        assert_eq!(GoVersion::parse("go1.22"), Some(GoVersion::new(1, 22, 0)));
        assert_eq!(GoVersion::parse("go1.24rc1"), Some(GoVersion::new(1, 24, 0)));
        assert_eq!(GoVersion::parse("go1.25.5 X:nodwarf5"), Some(GoVersion::new(1, 25, 5)));
        assert_eq!(
            GoVersion::parse("devel go1.26-0a1b2c3d Tue Jan 1 00:00:00 2026 +0000"),
            Some(GoVersion::new(1, 26, 0))
        );
    }

    #[test]
    fn rejects_non_versions() {
        assert_eq!(GoVersion::parse(""), None);
        assert_eq!(GoVersion::parse("1.21"), None);
        assert_eq!(GoVersion::parse("gox"), None);
        assert_eq!(GoVersion::parse("go1.x"), None);
    }

    #[test]
    fn orders_by_release() {
        assert!(GoVersion::new(1, 27, 0).at_least(27));
        assert!(!GoVersion::new(1, 26, 9).at_least(27));
        assert!(GoVersion::new(1, 21, 13) < GoVersion::new(1, 22, 0));
    }
}
