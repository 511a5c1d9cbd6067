//! Output formats. Each is an [`Exporter`] over the same [`Trace`]: the report (callsites,
//! totals) and the profile it came from (full stacks), so that every format tells the same
//! numbers.

mod flame;
pub mod jsonl;
mod pprof;
pub mod pprof_merge;
mod prometheus;

use std::io::{self, Write};

use crate::probes::ProbeRunTime;
use crate::profile::Profile;
use crate::report::{Position, Report, human_bytes, short_path, signed_bytes, summary_line, thousands};

pub use flame::{FoldedExporter, SvgExporter};
pub use pprof::PprofExporter;
pub use prometheus::{PrometheusExporter, label};

/// How the traced binary is mapped in the process, for pprof's `Mapping`.
#[derive(Debug, Clone, Default)]
pub struct MappingInfo {
    /// First address of the executable mapping.
    pub start: u64,
    /// One past its last address.
    pub limit: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// The executable, as the process sees it.
    pub path: String,
    /// GNU or Go build id.
    pub build_id: Option<String>,
}

/// Everything a format may need.
#[derive(Debug, Clone, Copy)]
pub struct Trace<'a> {
    /// Callsites and totals, cut to `--top`.
    pub report: &'a Report,
    /// The profile behind the report, with every stack.
    pub profile: &'a Profile,
    /// The binary's mapping.
    pub mapping: &'a MappingInfo,
    /// When the trace started, in Unix nanoseconds.
    pub started_unix_nanos: i64,
}

/// An output format.
pub trait Exporter {
    /// Writes the trace.
    ///
    /// # Errors
    /// When writing fails.
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()>;
}

/// One JSON document.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonExporter;

impl Exporter for JsonExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *out, trace.report)?;
        writeln!(out)
    }
}

/// `probes: 1,234 runs took 1.2 ms of the target's CPU (950 ns each, without the traps)`.
fn run_time_line(run_time: ProbeRunTime) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a duration to show")]
    let (ms, each) = (
        run_time.nanoseconds as f64 / 1e6,
        run_time.nanoseconds as f64 / run_time.runs.max(1) as f64,
    );
    format!(
        "probes: {} runs took {ms:.1} ms of the target's CPU ({each:.0} ns each, without the traps \
         into the kernel that start them)",
        thousands(run_time.runs)
    )
}

/// An aligned table, most bytes first.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableExporter;

impl TableExporter {
    /// The lines above the table: the summary, the probes' run time, in-use and growth.
    fn write_preamble(report: &Report, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", summary_line(report))?;
        if let Some(run_time) = report.probes.run_time {
            writeln!(out, "{}", run_time_line(run_time))?;
        }
        let inuse = report.inuse.available;
        if let Some(window) = report.growth {
            writeln!(
                out,
                "ranked by in-use growth from {:.1} s to {:.1} s (what each callsite held more at the end)",
                window.start_secs, window.end_secs
            )?;
        }
        if inuse {
            writeln!(
                out,
                "in use now: {} objects, {} ({})",
                thousands(report.inuse.objects),
                human_bytes(report.inuse.bytes),
                report.inuse.note.trim_start_matches("in-use: ")
            )?;
        }
        Ok(())
    }

    /// Writes the table of a report.
    ///
    /// # Errors
    /// When writing fails.
    pub fn write(report: &Report, out: &mut dyn Write) -> io::Result<()> {
        Self::write_preamble(report, out)?;
        let inuse = report.inuse.available;
        let growth = report.growth.is_some();
        // The other frame of --callsite gets a column when any row has one.
        let other = report
            .callsites
            .iter()
            .find_map(|c| c.user.as_ref().map(|_| "YOUR CODE").or(c.via.as_ref().map(|_| "VIA")));
        let mut header = vec!["BYTES".to_owned(), "ALLOCS".to_owned()];
        if inuse {
            header.extend(["IN USE".to_owned(), "LIVE OBJS".to_owned()]);
        }
        if growth {
            header.push("GROWTH".to_owned());
        }
        header.extend([
            "P50".to_owned(),
            "P99".to_owned(),
            "MAX".to_owned(),
            "KIND".to_owned(),
            "TYPE".to_owned(),
            "CALLSITE".to_owned(),
        ]);
        // Right-aligned numbers: the byte and count columns, then the three sizes.
        let numeric = header.len() - 3;
        let mut rows = vec![header];
        if let Some(title) = other {
            rows[0].push(title.to_owned());
        }
        for c in &report.callsites {
            let mut row = vec![human_bytes(c.bytes), thousands(c.allocations)];
            if inuse {
                row.extend([
                    human_bytes(c.inuse_bytes.unwrap_or(0)),
                    thousands(c.inuse_objects.unwrap_or(0)),
                ]);
            }
            if growth {
                row.push(signed_bytes(i128::from(c.inuse_growth_bytes.unwrap_or(0))));
            }
            row.extend([
                c.size.p50.to_string(),
                c.size.p99.to_string(),
                c.size.max.to_string(),
                c.kind.as_str().to_owned(),
                c.type_name.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{} {}:{}", c.function, short_path(&c.file), c.line),
            ]);
            if other.is_some() {
                row.push(
                    c.user
                        .as_ref()
                        .or(c.via.as_ref())
                        .map_or_else(|| "-".to_owned(), Position::short),
                );
            }
            rows.push(row);
        }
        // Numbers right-aligned, words left-aligned, the last column unpadded.
        let columns = rows[0].len();
        let mut widths = vec![0usize; columns];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                let sep = if i == 0 { "" } else { "  " };
                let w = *w;
                let cell = match i {
                    _ if i < numeric => format!("{sep}{cell:>w$}"),
                    _ if i + 1 == columns => format!("{sep}{cell}"),
                    _ => format!("{sep}{cell:<w$}"),
                };
                line.push_str(&cell);
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        if report.callsites.is_empty() {
            writeln!(out, "(no allocations recorded)")?;
        }
        Ok(())
    }
}

impl Exporter for TableExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        Self::write(trace.report, out)
    }
}
