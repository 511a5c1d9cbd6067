//! The Prometheus text format (version 0.0.4): one counter series per callsite of the report,
//! and one `other` series for what the report's callsites leave out of its totals; where
//! in-use heap is tracked, gauges of what each callsite holds now.
//!
//! The report decides which callsites get series (`gotrace serve` keeps them to a bounded,
//! sticky set: see `serve::snapshot`), so the exporter only renders.

use std::io::{self, Write};

use super::{Exporter, Trace};
use crate::report::CallsiteReport;

/// Per-callsite allocation counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrometheusExporter;

/// Escapes a Prometheus label value: backslash, double quote and newline.
#[must_use]
pub fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The labels that name a callsite's series.
fn callsite_labels(c: &CallsiteReport) -> String {
    format!(
        "function=\"{}\",file=\"{}\",line=\"{}\",type=\"{}\",kind=\"{}\"",
        label(&c.function),
        label(&c.file),
        c.line,
        label(c.type_name.as_deref().unwrap_or("-")),
        c.kind.as_str(),
    )
}

impl Exporter for PrometheusExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        let report = trace.report;
        let estimated = if report.estimated {
            " Estimated from samples, scaled (see gotrace_target_info's mode)."
        } else {
            ""
        };
        let series = &report.callsites;
        let in_series =
            |value_of: fn(&CallsiteReport) -> u64| series.iter().map(value_of).fold(0u64, u64::saturating_add);
        let other = (
            report.totals.bytes.saturating_sub(in_series(|c| c.bytes)),
            report.totals.allocations.saturating_sub(in_series(|c| c.allocations)),
        );
        for (name, help, value_of, other_value) in [
            (
                "gotrace_alloc_bytes_total",
                "Heap bytes allocated, per callsite.",
                (|c: &CallsiteReport| c.bytes) as fn(&CallsiteReport) -> u64,
                other.0,
            ),
            (
                "gotrace_alloc_objects_total",
                "Heap objects allocated, per callsite.",
                |c: &CallsiteReport| c.allocations,
                other.1,
            ),
        ] {
            writeln!(out, "# HELP {name} {help}{estimated}")?;
            writeln!(out, "# TYPE {name} counter")?;
            for c in series {
                writeln!(out, "{name}{{{}}} {}", callsite_labels(c), value_of(c))?;
            }
            writeln!(
                out,
                "{name}{{function=\"other\",file=\"\",line=\"0\",type=\"\",kind=\"other\"}} {other_value}"
            )?;
        }
        if report.inuse.available {
            let held = |value_of: fn(&CallsiteReport) -> Option<u64>| {
                series.iter().filter_map(value_of).fold(0u64, u64::saturating_add)
            };
            for (name, help, value_of, total) in [
                (
                    "gotrace_inuse_bytes",
                    "Heap bytes in use now, per callsite: objects sampled since gotrace attached and not yet freed.",
                    (|c: &CallsiteReport| c.inuse_bytes) as fn(&CallsiteReport) -> Option<u64>,
                    report.inuse.bytes,
                ),
                (
                    "gotrace_inuse_objects",
                    "Heap objects in use now, per callsite: objects sampled since gotrace attached and not yet freed.",
                    |c: &CallsiteReport| c.inuse_objects,
                    report.inuse.objects,
                ),
            ] {
                writeln!(out, "# HELP {name} {help}{estimated}")?;
                writeln!(out, "# TYPE {name} gauge")?;
                for c in series {
                    writeln!(out, "{name}{{{}}} {}", callsite_labels(c), value_of(c).unwrap_or(0))?;
                }
                writeln!(
                    out,
                    "{name}{{function=\"other\",file=\"\",line=\"0\",type=\"\",kind=\"other\"}} {}",
                    total.saturating_sub(held(value_of))
                )?;
            }
        }
        // The other frame of --callsite, in a metric of its own: as labels of the counters it
        // would change their identity whenever the most frequent one changes.
        let (info, help, function_label, line_label) = if series.iter().any(|c| c.via.is_some()) {
            (
                "gotrace_callsite_via_info",
                "The line that allocated, outside the program's own code, of a callsite named by the program's line (--callsite user).",
                "via_function",
                "via_line",
            )
        } else {
            (
                "gotrace_callsite_user_info",
                "The first line of the program's own code on the way to a callsite outside it.",
                "user_function",
                "user_line",
            )
        };
        writeln!(out, "# HELP {info} {help}")?;
        writeln!(out, "# TYPE {info} gauge")?;
        for c in series {
            let Some(other_frame) = c.user.as_ref().or(c.via.as_ref()) else {
                continue;
            };
            writeln!(
                out,
                "{info}{{{},{function_label}=\"{}\",{line_label}=\"{}\"}} 1",
                callsite_labels(c),
                label(&other_frame.function),
                other_frame.line,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }
}
