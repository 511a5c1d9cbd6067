//! The join: each traced callsite with the compiler's verdicts at its line (by file, wherever
//! the binary was built), and the reason in plain words; or the runtime's reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::diagnostics::{Diagnostic, What};
use super::toolchain::Module;
use super::{Site, Verdict};

/// One callsite explained.
#[derive(Debug, Serialize)]
pub(super) struct Explained {
    #[serde(flatten)]
    pub site: Site,
    pub verdict: Verdict,
    /// The compiler's verdicts at the line, as it printed them.
    pub compiler: Vec<String>,
    /// Why, in plain words ("returned to the caller", "append growth", …).
    pub reason: String,
    /// The `-m=2` explanation of the escape(s) at the line.
    pub flow: Vec<String>,
    /// Calls inlined at the line (code of other functions that runs there).
    pub inlined: Vec<String>,
    /// When the compiler and the trace disagree: what that usually means here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contradiction: Option<String>,
}

/// Diagnostics by absolute file and line.
pub(super) struct DiagnosticIndex<'d> {
    by_line: HashMap<(PathBuf, u64), Vec<&'d Diagnostic>>,
    /// The files the compiler reported on.
    files: std::collections::HashSet<PathBuf>,
    module_dir: PathBuf,
    module_path: String,
    /// Source files read so far, by absolute path.
    sources: std::cell::RefCell<HashMap<PathBuf, Option<Vec<String>>>>,
}

impl<'d> DiagnosticIndex<'d> {
    pub(super) fn new(module: &Module, diagnostics: &'d [Diagnostic]) -> Self {
        let mut by_line: HashMap<(PathBuf, u64), Vec<&Diagnostic>> = HashMap::new();
        for d in diagnostics {
            let relative = d.file.trim_start_matches("./");
            let file = if Path::new(&d.file).is_absolute() {
                PathBuf::from(&d.file)
            } else {
                module.dir.join(relative)
            };
            by_line.entry((file, d.line)).or_default().push(d);
        }
        let files = by_line.keys().map(|(file, _)| file.clone()).collect();
        Self {
            by_line,
            files,
            module_dir: module.dir.clone(),
            module_path: module.path.clone(),
            sources: std::cell::RefCell::default(),
        }
    }

    /// The traced file as a path in the module:
    /// - as recorded, when that is where the module is (symlinks resolved);
    /// - in `-trimpath` builds, `MODULE/rel/file.go` under the module's directory;
    /// - for a binary built elsewhere (a container's `/app`, a CI checkout), the longest tail
    ///   of the recorded path that names a file of the module.
    pub(super) fn local_path(&self, traced_file: &str) -> PathBuf {
        if let Some(relative) = traced_file.strip_prefix(&format!("{}/", self.module_path))
            && !Path::new(traced_file).is_absolute()
        {
            return self.module_dir.join(relative);
        }
        let recorded = PathBuf::from(traced_file);
        if recorded.starts_with(&self.module_dir) {
            return recorded;
        }
        if let Ok(real) = recorded.canonicalize()
            && real.starts_with(&self.module_dir)
        {
            return real;
        }
        let parts: Vec<&str> = traced_file.split('/').filter(|p| !p.is_empty()).collect();
        (0..parts.len())
            .map(|skip| self.module_dir.join(parts[skip..].join("/")))
            .find(|candidate| self.files.contains(candidate))
            .unwrap_or(recorded)
    }

    /// Whether the compiler reported on the traced file at all (it is one of the module's).
    pub(super) fn knows_file(&self, traced_file: &str) -> bool {
        self.files.contains(&self.local_path(traced_file))
    }

    pub(super) fn at(&self, traced_file: &str, line: u64) -> &[&'d Diagnostic] {
        self.by_line
            .get(&(self.local_path(traced_file), line))
            .map_or(&[], Vec::as_slice)
    }

    /// Line `line` (1-based) of the source file, when it can be read.
    pub(super) fn source_line(&self, traced_file: &str, line: u64) -> Option<String> {
        let path = self.local_path(traced_file);
        let mut sources = self.sources.borrow_mut();
        let lines = sources.entry(path.clone()).or_insert_with(|| {
            std::fs::read_to_string(&path)
                .ok()
                .map(|t| t.lines().map(str::to_owned).collect())
        });
        lines
            .as_ref()?
            .get(usize::try_from(line).ok()?.checked_sub(1)?)
            .cloned()
    }
}

/// The runtime's reason for an allocation of `kind` when the compiler has none at the line.
/// `always` kinds are never the compiler's decision: the runtime grows slices and maps on its
/// own account, whatever escape analysis decided about the values involved.
fn runtime_reason(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "growslice" => ("append growth: the runtime grows the slice's backing array", true),
        "makemap" => ("map: the runtime allocates the map's storage as it grows", true),
        "string" => (
            "string concatenation or conversion: the runtime allocates the result",
            false,
        ),
        "convT" => (
            "interface conversion: the runtime boxes the value to store it in an interface",
            false,
        ),
        _ => return None,
    })
}

pub(super) fn explain(site: Site, index: &DiagnosticIndex<'_>) -> Explained {
    // Code inlined into another function is compiled, and its escapes decided, as part of
    // that function: the compiler prints those decisions at the call's position in it
    // (`base.FmtPos` prints the outermost position of an inlined node).
    let positions: Vec<(String, u64)> = if site.inlined_into.is_empty() {
        vec![(site.file.clone(), site.line)]
    } else {
        site.inlined_into.iter().map(|p| (p.file.clone(), p.line)).collect()
    };
    let here: Vec<&Diagnostic> = positions
        .iter()
        .flat_map(|(file, line)| index.at(file, *line).iter().copied())
        .collect();
    let verdicts: Vec<&Diagnostic> = here.iter().copied().filter(|d| d.what != What::Inlined).collect();
    let inlined: Vec<String> = here
        .iter()
        .filter(|d| d.what == What::Inlined)
        .map(|d| d.text.clone())
        .collect();
    let has = |what: What| verdicts.iter().any(|d| d.what == what);
    let runtime = runtime_reason(&site.kind);
    let verdict = match runtime {
        Some((_, true)) => Verdict::Runtime,
        _ if has(What::MovedToHeap) => Verdict::MovedToHeap,
        _ if has(What::Escapes) => Verdict::Escapes,
        Some(_) => Verdict::Runtime,
        None if has(What::DoesNotEscape) => Verdict::DoesNotEscape,
        None => Verdict::Unknown,
    };
    let escaping: Vec<&Diagnostic> = verdicts
        .iter()
        .copied()
        .filter(|d| matches!(d.what, What::MovedToHeap | What::Escapes))
        .collect();
    let source = index.source_line(&site.file, site.line).unwrap_or_default();
    let (reason, contradiction) = match verdict {
        Verdict::Escapes | Verdict::MovedToHeap => (escape_reason(&escaping, &source, &site), None),
        Verdict::Runtime => (runtime.map(|(r, _)| r).unwrap_or_default().to_owned(), None),
        Verdict::DoesNotEscape => contradiction(&verdicts, &site),
        Verdict::Unknown if index.knows_file(&site.file) => (
            "the compiler says nothing about this line (code it did not see: a dependency, the standard \
             library, or source that differs from the binary)"
                .to_owned(),
            None,
        ),
        Verdict::Unknown => (
            "outside the module: go build -gcflags=-m=2 only reports on the module's own packages".to_owned(),
            None,
        ),
    };
    Explained {
        compiler: verdicts.iter().map(|d| d.text.clone()).collect(),
        flow: escaping.iter().flat_map(|d| d.flow.iter().cloned()).collect(),
        site,
        verdict,
        reason,
        inlined,
        contradiction,
    }
}

/// Why a value escapes, from the compiler's explanation (the parenthesised reasons of its
/// `from … (reason) at …` lines, `src/cmd/compile/internal/escape`), the kind of allocation
/// and the statement.
fn escape_reason(escaping: &[&Diagnostic], source: &str, site: &Site) -> String {
    let flow: String = escaping
        .iter()
        .flat_map(|d| d.flow.iter().map(String::as_str).chain([d.text.as_str()]))
        .collect::<Vec<_>>()
        .join("\n");
    let statement = source.trim_start();
    let closure_made_here = escaping
        .iter()
        .any(|d| d.text.ends_with("func literal escapes to heap"));
    let reason = if flow.contains("(too large for stack)") {
        "too large for the stack"
    } else if flow.contains("(non-constant size)") {
        "make with a size not known at compile time"
    } else if closure_made_here && statement.starts_with("go ") {
        "captured by a goroutine: the closure started with go outlives the call"
    } else if closure_made_here && statement.starts_with("defer ") {
        "captured by a deferred closure"
    } else if flow.contains("(captured by a closure)") {
        "captured by a closure that outlives the call"
    } else if flow.contains("(return)") {
        "returned to the caller"
    } else if flow.contains("(interface-converted)") || site.kind == "convT" {
        "stored in an interface"
    } else if flow.contains("(call parameter)") {
        "passed to a function that keeps it"
    } else if flow.contains("(assign)") && flow.contains("{heap}") {
        "assigned to a heap location (a global, or through a pointer)"
    } else if closure_made_here {
        "a closure that outlives the call"
    } else if flow.contains("(slice-literal-element)") {
        "an element of an escaping slice literal"
    } else {
        "escapes (see the compiler's flow)"
    };
    reason.to_owned()
}

/// A "does not escape" line where heap allocations were traced: the reason, and what the
/// disagreement usually means.
fn contradiction(verdicts: &[&Diagnostic], site: &Site) -> (String, Option<String>) {
    let non_constant_make = verdicts
        .iter()
        .any(|d| d.what == What::DoesNotEscape && d.text.contains("make(") && !d.text.contains("make(map"));
    if non_constant_make && site.kind == "makeslice" {
        return (
            "make with a size not known at compile time: sizes above its 32-byte stack buffer (Go 1.25 and \
             later) are allocated on the heap by the runtime"
                .to_owned(),
            Some(
                "the compiler says this make does not escape, yet the heap was used: since Go 1.25 a make with a \
                 non-constant size gets a small stack buffer, and larger sizes go to the heap"
                    .to_owned(),
            ),
        );
    }
    let why = if site.inlined_into.is_empty() {
        "the compiler says this line's values do not escape, yet heap allocations were traced here: another \
         expression on the line allocates, or the binary was built from other source or with other flags than \
         this module"
    } else {
        "the compiler says the values do not escape where this code was inlined, yet heap allocations were \
         traced: another expression at that call allocates, or the binary was built from other source or with \
         other flags than this module"
    };
    ("the compiler keeps this on the stack".to_owned(), Some(why.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::explain::diagnostics;

    fn site(line: u64, kind: &str) -> Site {
        Site {
            function: "main.f".to_owned(),
            file: "/m/x.go".to_owned(),
            line,
            kind: kind.to_owned(),
            allocations: 10,
            bytes: 160,
            ..Site::default()
        }
    }

    /// `s = append(s, &T{})` on line 3: the `&T{}` is the compiler's decision, the growth the
    /// runtime's; a map literal that stays on the stack still grows on the heap; a line the
    /// compiler keeps on the stack but that allocated anyway is a contradiction.
    #[test]
    fn each_kind_at_a_line_gets_its_own_verdict() {
        let module = Module {
            dir: PathBuf::from("/m"),
            path: "example.com/m".to_owned(),
        };
        let log = "\
./x.go:3:18: &T{} escapes to heap:
./x.go:3:18:   flow: {heap} ← &{storage for &T{}}:
./x.go:3:18:     from append(s, &T{}) (call parameter) at ./x.go:3:12
./x.go:3:18: &T{} escapes to heap
./x.go:5:7: map[int]int{} does not escape
./x.go:7:9: &U{} does not escape
";
        let diagnostics = diagnostics::parse(log);
        let index = DiagnosticIndex::new(&module, &diagnostics);
        let pointer = explain(site(3, "new"), &index);
        assert_eq!(
            (pointer.verdict, pointer.reason.as_str()),
            (Verdict::Escapes, "passed to a function that keeps it")
        );
        assert_eq!(pointer.flow.len(), 2);
        let growth = explain(site(3, "growslice"), &index);
        assert_eq!(growth.verdict, Verdict::Runtime);
        assert!(growth.reason.starts_with("append growth"), "{}", growth.reason);
        let map = explain(site(5, "makemap"), &index);
        assert_eq!((map.verdict, map.contradiction.is_none()), (Verdict::Runtime, true));
        let odd = explain(site(7, "new"), &index);
        assert_eq!(odd.verdict, Verdict::DoesNotEscape);
        assert!(odd.contradiction.is_some());
        let elsewhere = explain(
            Site {
                file: "/usr/lib/go/src/fmt/print.go".to_owned(),
                ..site(1, "new")
            },
            &index,
        );
        assert_eq!(elsewhere.verdict, Verdict::Unknown);
        assert!(elsewhere.reason.contains("outside the module"), "{}", elsewhere.reason);
    }

    #[test]
    fn traced_paths_find_module_files_when_built_elsewhere() {
        let module = Module {
            dir: PathBuf::from("/home/me/src/m"),
            path: "example.com/m".to_owned(),
        };
        let diagnostics = diagnostics::parse("./sub/x.go:3:18: &T{} escapes to heap\n");
        let index = DiagnosticIndex::new(&module, &diagnostics);
        let here = PathBuf::from("/home/me/src/m/sub/x.go");
        assert_eq!(index.local_path("/home/me/src/m/sub/x.go"), here);
        assert_eq!(index.local_path("example.com/m/sub/x.go"), here, "-trimpath");
        assert_eq!(index.local_path("/app/sub/x.go"), here, "built in a container's /app");
        assert_eq!(index.at("/app/sub/x.go", 3).len(), 1);
        assert!(!index.knows_file("/app/other.go"));
    }
}
