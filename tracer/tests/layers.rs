//! The library's modules depend on each other one way: commands on the tracing layer, never
//! the reverse, and no two modules on each other (directly or around a circle). Read from the
//! sources: every `crate::module` a module's files name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The command modules: nothing below them may use them.
const COMMANDS: &[&str] = &["config", "doctor", "explain", "inspect", "live", "serve", "session"];

/// Each top-level module of `src/` (a file or a directory) with the modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| top_module(&src, f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = top_module(&src, file);
        if module == "main" || module == "cli" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        let uses = graph.entry(module.clone()).or_default();
        for name in named_modules(&text) {
            if name != module && modules.contains(&name) {
                uses.insert(name);
            }
        }
    }
    graph
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/serve/http.rs` → `serve`; `src/store.rs` → `store`.
fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned()
}

/// The names after `crate::`, including each of `crate::{a, b::c}`.
fn named_modules(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(inner.split(',').map(|part| ident(part.trim())));
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

#[test]
fn nothing_below_the_commands_uses_them() {
    let graph = module_graph();
    assert!(graph.contains_key("tracee") && graph.contains_key("serve"), "{graph:?}");
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        if COMMANDS.contains(&module.as_str()) {
            continue;
        }
        for used in uses {
            if COMMANDS.contains(&used.as_str()) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(wrong.is_empty(), "the tracing layer uses commands: {wrong:?}");
}

/// Depth-first search from `module` for a back edge: the circle, if there is one.
fn visit<'g>(
    module: &'g str,
    graph: &'g BTreeMap<String, BTreeSet<String>>,
    path: &mut Vec<&'g str>,
    done: &mut BTreeSet<&'g str>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|m| *m == module) {
        let mut circle: Vec<String> = path[at..].iter().map(|m| (*m).to_owned()).collect();
        circle.push(module.to_owned());
        return Some(circle);
    }
    if !done.insert(module) {
        return None;
    }
    path.push(module);
    for used in graph.get(module).into_iter().flatten() {
        if let Some(circle) = visit(used, graph, path, done) {
            return Some(circle);
        }
    }
    path.pop();
    None
}

#[test]
fn no_module_depends_on_itself_through_others() {
    let graph = module_graph();
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(circle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("modules that depend on each other: {}", circle.join(" → "));
        }
    }
}

#[test]
fn the_reader_sees_every_crate_path() {
    assert_eq!(
        named_modules("use crate::{a, b::c};\nuse crate::d::E;\nlet x = crate::e(1);"),
        ["a", "b", "d", "e"]
    );
}
