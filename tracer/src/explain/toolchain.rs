//! The Go module the target was built from, and the compiler's `-m=2` output for it: run with
//! the Go release that built the target when one can be found.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::progress;

/// The go command that produced the diagnostics, or the saved log.
#[derive(Debug, Serialize)]
pub(super) struct Compiler {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Set when the compiler's release is not the target's: its decisions may differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

/// The Go module whose code the target runs.
#[derive(Debug)]
pub(super) struct Module {
    pub dir: PathBuf,
    /// The `module` line of go.mod: the prefix of file names in `-trimpath` builds.
    pub path: String,
}

impl Module {
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot open the module directory {}", dir.display()))?;
        let go_mod = dir.join("go.mod");
        let text = std::fs::read_to_string(&go_mod)
            .with_context(|| format!("{} is not a Go module: cannot read {}", dir.display(), go_mod.display()))?;
        let path = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("module "))
            .map(|p| p.trim().trim_matches('"').to_owned())
            .with_context(|| format!("{} has no module line", go_mod.display()))?;
        Ok(Self { dir, path })
    }
}

/// Runs `go build -gcflags=-m=2` on the module with the target's Go release when it can find
/// it; returns the diagnostics and which compiler printed them.
pub(super) fn compile(
    module: &Module,
    target_version: Option<&str>,
    go: Option<&Path>,
) -> anyhow::Result<(String, Compiler)> {
    let candidates: Vec<PathBuf> = match go {
        Some(go) => vec![go.to_path_buf()],
        None => go_candidates(target_version),
    };
    let mut found: Option<(PathBuf, String)> = None;
    for candidate in candidates {
        let Some(version) = go_version(&candidate, &module.dir) else {
            continue;
        };
        let matches = target_version == Some(version.as_str());
        if found.is_none() || matches {
            found = Some((candidate, version));
        }
        if matches {
            break;
        }
    }
    let Some((go, version)) = found else {
        bail!(match go {
            Some(go) => format!("{} does not run as a go command", go.display()),
            None => "no Go toolchain found (not on PATH, nor in ~/sdk): pass --go PATH, or --m2-log FILE with the \
                     output of go build -gcflags=-m=2"
                .to_owned(),
        });
    };
    let mismatch = match target_version {
        Some(target) if target != version => Some(format!(
            "the target was built with {target}, but the compiler here is {version} ({}): its escape decisions \
             may differ (install {target}, or pass --go)",
            go.display()
        )),
        None => Some(format!(
            "the target's Go release is unknown; using {version} ({})",
            go.display()
        )),
        Some(_) => None,
    };
    let out_dir = TempDir::new()?;
    progress!(
        "running {} build -gcflags=-m=2 ./... in {}",
        go.display(),
        module.dir.display()
    );
    // `-o DIR/` keeps the built binaries out of the user's module; the compiler's output is
    // replayed from the build cache when nothing changed.
    let output = Command::new(&go)
        .current_dir(&module.dir)
        .args(["build", "-gcflags=-m=2", "-o"])
        .arg(format!("{}/", out_dir.path.display()))
        .arg("./...")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", go.display()))?;
    let log = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        // The -m=2 output buries the error: build again without it for a plain message.
        let plain = Command::new(&go)
            .current_dir(&module.dir)
            .args(["build", "-o"])
            .arg(format!("{}/", out_dir.path.display()))
            .arg("./...")
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        let errors: Vec<&str> = plain.lines().filter(|l| !l.starts_with('#')).take(5).collect();
        bail!(
            "go build failed in {} ({}): {}",
            module.dir.display(),
            output.status,
            errors.join(" / ")
        );
    }
    Ok((
        log,
        Compiler {
            go: Some(go.display().to_string()),
            go_version: Some(version),
            log: None,
            mismatch,
        },
    ))
}

/// Where the target's release may be: `go` on PATH, then `~/sdk/goX.Y.Z/bin/go` (where
/// `golang.org/dl/goX.Y.Z download` puts it).
fn go_candidates(target_version: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(paths) = std::env::var_os("PATH") {
        out.extend(
            std::env::split_paths(&paths)
                .map(|d| d.join("go"))
                .filter(|p| p.is_file()),
        );
    }
    if let (Some(home), Some(version)) = (std::env::var_os("HOME"), target_version) {
        let sdk = PathBuf::from(home).join("sdk").join(version).join("bin/go");
        if sdk.is_file() {
            out.push(sdk);
        }
    }
    out
}

/// `go env GOVERSION` of a go command (`go1.27.3`), asked in the module's directory: there a
/// `go`/`toolchain` line of go.mod may switch to another toolchain, which is the one that will
/// compile.
fn go_version(go: &Path, module_dir: &Path) -> Option<String> {
    let out = Command::new(go)
        .current_dir(module_dir)
        .args(["env", "GOVERSION"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && version.starts_with("go")).then_some(version)
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new directory only this user can enter: its name is unpredictable and it must not
    /// exist yet (gotrace may run as root in a world-writable temporary directory).
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("gotrace-explain-{}-{nanos:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
