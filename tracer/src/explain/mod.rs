//! `gotrace explain`: the traced callsites with the most bytes, each joined by file and line
//! with what the Go compiler's escape analysis decided there (`go build -gcflags=-m=2`) and
//! why, or, where the compiler has nothing to say, the runtime's reason for the allocation.
//!
//! - [`input`]: what was traced (a saved JSON report or pprof profile, or the live process);
//! - [`toolchain`]: the module and the compiler that built the target, and its `-m=2` output;
//! - [`diagnostics`]: that output, parsed;
//! - [`join`]: each callsite with the compiler's verdicts at its line, and the reason;
//! - [`render`]: the table, JSON and `--list` outputs.

mod diagnostics;
mod input;
mod join;
mod render;
mod toolchain;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use self::input::{live_go_version, read_result, trace_live};
use self::join::{DiagnosticIndex, Explained, explain};
use self::render::{list_function, table, top_functions};
use self::toolchain::{Compiler, Module, compile};
use crate::config::{ExplainConfig, ExplainFormat, ExplainInput};
use crate::warning;

/// What the compiler decided at a callsite's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// An expression on the line escapes to the heap.
    Escapes,
    /// A variable declared on the line lives on the heap.
    MovedToHeap,
    /// The compiler keeps the line's values on the stack.
    DoesNotEscape,
    /// The runtime allocates on its own account (append growth, maps, strings, interfaces).
    Runtime,
    /// Neither the compiler nor the kind of allocation says why.
    Unknown,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Escapes => "escapes",
            Self::MovedToHeap => "moved_to_heap",
            Self::DoesNotEscape => "does_not_escape",
            Self::Runtime => "runtime",
            Self::Unknown => "unknown",
        }
    }
}

/// A traced callsite: one source line of one function, and one kind of allocation there
/// (`s = append(s, &T{})` is two: the `&T{}` the compiler decided about, and the append
/// growth the runtime does on its own account).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u64,
    /// `new`, `makeslice`, `growslice`, `makemap`, `string`, `convT` or `other` (empty when the
    /// input does not say).
    pub kind: String,
    pub allocations: u64,
    pub bytes: u64,
    /// The types seen there (absent in sampled modes).
    pub types: Vec<String>,
    /// Where the line's code was inlined, if it was: the compiler reports its decisions for
    /// inlined code at those positions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inlined_into: Vec<Position>,
    /// Object sizes, when the input has them (JSON reports do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Sizes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub function: String,
    pub file: String,
    pub line: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sizes {
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

#[derive(Serialize)]
struct Output<'a> {
    target_go_version: Option<&'a str>,
    mode: Option<&'a str>,
    estimated: bool,
    compiler: &'a Compiler,
    callsites: &'a [Explained],
}

/// Runs `gotrace explain`: prints the explained callsites (or `--list`'s listing) on stdout.
pub fn run(config: &ExplainConfig) -> anyhow::Result<()> {
    // Everything that can fail without the trace comes first: with --pid, the module and the
    // compiler are checked before the process is traced for --duration.
    let module = Module::open(&config.src)?;
    let (mut traced, log, compiler) = match &config.input {
        ExplainInput::File(path) => {
            let traced = read_result(path)?;
            let (log, compiler) = diagnostics_for(config, &module, traced.go_version.as_deref())?;
            (traced, log, compiler)
        }
        ExplainInput::Live { pid, duration } => {
            let version = live_go_version(*pid)?;
            let (log, compiler) = diagnostics_for(config, &module, Some(&version))?;
            (trace_live(*pid, *duration)?, log, compiler)
        }
    };
    if let Some(mismatch) = &compiler.mismatch {
        warning!("{mismatch}");
    }
    let diagnostics = diagnostics::parse(&log);
    if diagnostics.is_empty() {
        warning!(
            "the compiler printed no escape-analysis diagnostics for {}",
            module.dir.display()
        );
    }
    let index = DiagnosticIndex::new(&module, &diagnostics);
    if !diagnostics.is_empty() && !traced.sites.iter().any(|s| index.knows_file(&s.file)) {
        warning!(
            "no traced callsite is in a file the compiler reported on in {}: was the binary built from \
             this module?",
            module.dir.display()
        );
    }

    let mut sites = std::mem::take(&mut traced.sites);
    sites.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.function.cmp(&b.function)));
    if let Some(function) = &config.list {
        // The function's own lines and its closures' (`main.f.func1`), which are in its body.
        let closure_prefix = format!("{function}.func");
        let in_function: Vec<Site> = sites
            .iter()
            .filter(|s| s.function == *function || s.function.starts_with(&closure_prefix))
            .cloned()
            .collect();
        if in_function.is_empty() {
            bail!(
                "no traced allocations in {function}; the functions with the most bytes are: {}",
                top_functions(&sites)
            );
        }
        let explained: Vec<Explained> = in_function.into_iter().map(|s| explain(s, &index)).collect();
        let listing = list_function(function, &explained, &index)?;
        print!("{listing}");
        return Ok(());
    }
    let explained: Vec<Explained> = sites.into_iter().take(config.top).map(|s| explain(s, &index)).collect();
    match config.format {
        ExplainFormat::Json => {
            let output = Output {
                target_go_version: traced.go_version.as_deref(),
                mode: traced.mode.as_deref(),
                estimated: traced.estimated,
                compiler: &compiler,
                callsites: &explained,
            };
            let text = serde_json::to_string_pretty(&output).context("cannot encode the JSON output")?;
            println!("{text}");
        }
        ExplainFormat::Table => print!("{}", table(&explained, &traced)),
    }
    Ok(())
}

/// The `-m=2` diagnostics: the saved log, or the compiler's output now.
fn diagnostics_for(
    config: &ExplainConfig,
    module: &Module,
    target_version: Option<&str>,
) -> anyhow::Result<(String, Compiler)> {
    match &config.m2_log {
        Some(path) => Ok((
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
            Compiler {
                go: None,
                go_version: None,
                log: Some(path.display().to_string()),
                mismatch: None,
            },
        )),
        None => compile(module, target_version, config.go.as_deref()),
    }
}
