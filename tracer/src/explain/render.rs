//! `explain`'s outputs: the table, and `--list`'s annotated source listing.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::Site;
use super::diagnostics::What;
use super::input::Traced;
use super::join::{DiagnosticIndex, Explained};
use crate::report::{human_bytes, thousands};

pub(super) fn top_functions(sites: &[Site]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for s in sites {
        if !seen.contains(&s.function.as_str()) {
            seen.push(&s.function);
        }
        if seen.len() == 5 {
            break;
        }
    }
    seen.join(", ")
}

pub(super) fn table(explained: &[Explained], traced: &Traced) -> String {
    let mut out = String::new();
    if traced.estimated {
        let _ = writeln!(
            out,
            "(estimates: traced in {} mode)",
            traced.mode.as_deref().unwrap_or("a sampled")
        );
    }
    let _ = writeln!(
        out,
        "{:>10}  {:>10}  {:>8}  {:<15}  CALLSITE",
        "BYTES", "ALLOCS", "SIZE P50", "VERDICT"
    );
    for e in explained {
        let p50 = e.site.size.map_or_else(|| "-".to_owned(), |s| human_bytes(s.p50));
        let _ = writeln!(
            out,
            "{:>10}  {:>10}  {:>8}  {:<15}  {} {}:{}",
            human_bytes(e.site.bytes),
            thousands(e.site.allocations),
            p50,
            e.verdict.as_str(),
            e.site.function,
            crate::report::short_path(&e.site.file),
            e.site.line
        );
        let _ = writeln!(out, "{:56}why: {}", "", e.reason);
        if let Some(s) = e.site.size {
            let _ = writeln!(
                out,
                "{:56}sizes: min {}, p50 {}, p99 {}, max {}",
                "",
                human_bytes(s.min),
                human_bytes(s.p50),
                human_bytes(s.p99),
                human_bytes(s.max)
            );
        }
        for line in &e.compiler {
            let _ = writeln!(out, "{:56}compiler: {line}", "");
        }
        for line in &e.flow {
            let _ = writeln!(out, "{:58}{line}", "");
        }
        if let Some(why) = &e.contradiction {
            let _ = writeln!(out, "{:56}! {why}", "");
        }
    }
    out
}

/// The name in the `func` declaration of a Go symbol: `main.(*T).m.func1` → `m`,
/// `main.f[...]` → `f`, `a/b.g` → `g` (a closure is listed in its enclosing function).
fn declared_name(function: &str) -> &str {
    let after_path = function.rsplit('/').next().unwrap_or(function);
    let after_package = after_path.split_once('.').map_or(after_path, |(_, rest)| rest);
    let after_receiver = match after_package.strip_prefix('(') {
        Some(rest) => rest.split_once(").").map_or(rest, |(_, name)| name),
        None => after_package,
    };
    let name = after_receiver.split('.').next().unwrap_or(after_receiver);
    name.split('[').next().unwrap_or(name)
}

/// An annotated listing of `function`'s source, like `pprof -list`: per line the traced bytes
/// and allocations, and the compiler's verdicts there.
pub(super) fn list_function(
    function: &str,
    explained: &[Explained],
    index: &DiagnosticIndex<'_>,
) -> anyhow::Result<String> {
    let file = &explained[0].site.file;
    let path = index.local_path(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read the source {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let name = declared_name(function);
    let is_declaration = |l: &str| {
        l.starts_with("func ")
            && (l.contains(&format!(" {name}("))
                || l.contains(&format!(" {name}["))
                || l.contains(&format!("){name}(")))
    };
    let first_traced = explained.iter().map(|e| e.site.line).min().unwrap_or(1);
    // The declaration at or before the first traced line.
    let start = (0..usize::try_from(first_traced).unwrap_or(1).min(lines.len()))
        .rev()
        .find(|&i| is_declaration(lines[i]))
        .with_context(|| format!("cannot find the declaration of {function} in {}", path.display()))?;
    let end = (start..lines.len())
        .find(|&i| lines[i] == "}")
        .unwrap_or(lines.len() - 1);
    let mut out = String::new();
    let _ = writeln!(out, "ROUTINE ======================== {function} in {}", path.display());
    let _ = writeln!(out, "{:>10} {:>10} {:>6}  source", "bytes", "allocs", "line");
    for (i, source) in lines.iter().enumerate().take(end + 1).skip(start) {
        let number = u64::try_from(i + 1).unwrap_or(0);
        let here: Vec<&Explained> = explained.iter().filter(|e| e.site.line == number).collect();
        let (bytes, allocs) = if here.is_empty() {
            (".".to_owned(), ".".to_owned())
        } else {
            (
                human_bytes(here.iter().map(|e| e.site.bytes).sum()),
                thousands(here.iter().map(|e| e.site.allocations).sum()),
            )
        };
        let _ = writeln!(out, "{bytes:>10} {allocs:>10} {number:>6}  {source}");
        for e in &here {
            let _ = writeln!(out, "{:30}^ {}: {}", "", e.verdict.as_str(), e.reason);
            if let Some(why) = &e.contradiction {
                let _ = writeln!(out, "{:30}! {why}", "");
            }
        }
        // The compiler's verdicts on untraced lines too: what stayed on the stack, and why
        // something would not.
        for d in index.at(file, number) {
            if d.what != What::Inlined {
                let message = d.text.splitn(4, ':').nth(3).unwrap_or(&d.text).trim();
                let _ = writeln!(out, "{:30}| {message}", "");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_names_of_methods_closures_and_generics() {
        assert_eq!(declared_name("main.f"), "f");
        assert_eq!(declared_name("main.(*T).m"), "m");
        assert_eq!(declared_name("main.(*T).m.func1"), "m");
        assert_eq!(declared_name("main.f.func2.1"), "f");
        assert_eq!(declared_name("example.com/a/b.g[...]"), "g");
        assert_eq!(declared_name("example.com/a/b.T[...].m"), "T");
    }
}
