//! Flame graphs: Brendan Gregg's folded stacks, and an interactive SVG drawn by `inferno`.
//!
//! One line per distinct stack: frames root first, separated by `;`, the allocated type as the
//! leaf frame in brackets, then a space and the bytes allocated there:
//! `main.main;main.build;[main.Point] 1234`. Stacks start, as in pprof, at the callsite: the
//! runtime frames above it are left out. Inlined frames are frames of their own.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::{Exporter, Trace};

/// `--format folded`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FoldedExporter;

/// `--format svg`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SvgExporter;

/// A frame name safe in the folded format: `;` separates frames (and occurs in Go type names
/// such as `struct { a int; b int }`), and line breaks end records.
fn frame_name(name: &str) -> String {
    name.replace(';', ",").replace(['\n', '\r'], " ")
}

/// The folded lines, merged and sorted, weighted by bytes.
pub fn folded_lines(trace: &Trace<'_>) -> Vec<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &trace.profile.samples {
        let mut frames: Vec<String> = sample.user_frames().map(|(_, f)| frame_name(&f.function)).collect();
        frames.reverse();
        let leaf = sample
            .type_name
            .as_deref()
            .map_or_else(|| "[untyped]".to_owned(), |t| format!("[{}]", frame_name(t)));
        frames.push(leaf);
        let weight = merged.entry(frames.join(";")).or_default();
        *weight = weight.saturating_add(sample.size.saturating_mul(sample.count));
    }
    merged
        .into_iter()
        .filter(|&(_, bytes)| bytes > 0)
        .map(|(stack, bytes)| format!("{stack} {bytes}"))
        .collect()
}

impl Exporter for FoldedExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        for line in folded_lines(trace) {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

impl Exporter for SvgExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        let lines = folded_lines(trace);
        let report = trace.report;
        let mut options = inferno::flamegraph::Options::default();
        options.title = format!(
            "Heap allocations of pid {} ({}), {:.1} s",
            report.target.pid, report.target.exe, report.duration_secs
        );
        options.subtitle = Some(format!(
            "gotrace {} mode: {} allocations, {} bytes; width is bytes; leaves are the allocated types",
            report.mode, report.totals.allocations, report.totals.bytes
        ));
        "bytes".clone_into(&mut options.count_name);
        "Function:".clone_into(&mut options.name_type);
        if lines.is_empty() {
            // inferno refuses an empty graph; say so in a graph of one frame instead.
            return inferno::flamegraph::from_lines(&mut options, ["[no allocations] 1"].iter().copied(), out)
                .map_err(io::Error::other);
        }
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out).map_err(io::Error::other)
    }
}
