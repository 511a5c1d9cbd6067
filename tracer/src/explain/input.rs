//! What `explain` joins with the compiler's decisions: the traced callsites, by line and kind,
//! from a saved JSON report, a pprof profile (gotrace's or Go's own), or a live trace.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::{Position, Site, Sizes};
use crate::progress;
use crate::report::Report;
use crate::tracee::Executable;

/// What was traced, from whichever input.
#[derive(Debug, Default)]
pub(super) struct Traced {
    pub go_version: Option<String>,
    pub mode: Option<String>,
    pub estimated: bool,
    pub sites: Vec<Site>,
}

/// A saved result: gotrace's JSON report, or a pprof profile (gzip-compressed or not).
pub(super) fn read_result(path: &Path) -> anyhow::Result<Traced> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first == Some(b'{') {
        let report: Report = serde_json::from_slice(&data).with_context(|| {
            format!(
                "{} is not a gotrace JSON report (gotrace attach/run --format json)",
                path.display()
            )
        })?;
        return Ok(from_report(report));
    }
    read_pprof(&data).with_context(|| {
        format!(
            "{} is neither a gotrace JSON report nor a pprof profile",
            path.display()
        )
    })
}

/// A report's callsites by line (and kind): rows of one line with different types add up.
fn from_report(report: Report) -> Traced {
    let mut by_line: BTreeMap<SiteKey, (Site, u64)> = BTreeMap::new();
    for c in report.callsites {
        let kind = c.kind.as_str().to_owned();
        let key = (c.function.clone(), c.file.clone(), u64::from(c.line), kind.clone());
        let (site, biggest) = by_line.entry(key).or_insert_with(|| {
            (
                Site {
                    function: c.function.clone(),
                    file: c.file.clone(),
                    line: u64::from(c.line),
                    kind,
                    ..Site::default()
                },
                0,
            )
        });
        site.allocations += c.allocations;
        site.bytes += c.bytes;
        push_unique(&mut site.types, c.type_name);
        for at in c.inlined_into {
            let at = Position {
                function: at.function,
                file: at.file,
                line: u64::from(at.line),
            };
            if !site.inlined_into.contains(&at) {
                site.inlined_into.push(at);
            }
        }
        // Sizes of a line with several (type, kind) rows: the extremes over all rows, the
        // percentiles of the row with the most bytes.
        let row = Sizes {
            min: c.size.min,
            p50: c.size.p50,
            p99: c.size.p99,
            max: c.size.max,
        };
        let merged = site.size.get_or_insert(row);
        merged.min = merged.min.min(row.min);
        merged.max = merged.max.max(row.max);
        if c.bytes > *biggest {
            (merged.p50, merged.p99) = (row.p50, row.p99);
            *biggest = c.bytes;
        }
    }
    Traced {
        go_version: Some(report.target.go_version),
        mode: Some(report.mode.as_str().to_owned()),
        estimated: report.estimated,
        sites: by_line.into_values().map(|(site, _)| site).collect(),
    }
}

/// A site: function, file, line, kind.
type SiteKey = (String, String, u64, String);

fn push_unique(list: &mut Vec<String>, item: Option<String>) {
    if let Some(item) = item
        && !list.contains(&item)
    {
        list.push(item);
    }
}

/// A pprof profile as gotrace writes it (and Go's own heap profiles): samples of
/// `alloc_objects` and `alloc_space`, whose first location is the allocating line.
fn read_pprof(data: &[u8]) -> anyhow::Result<Traced> {
    use pprof_proto::Message as _;
    let raw = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .context("cannot decompress it")?;
        out
    } else {
        data.to_vec()
    };
    let profile = pprof_proto::Profile::decode(raw.as_slice()).context("cannot decode it as a pprof profile")?;
    let string = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| profile.string_table.get(i))
            .map_or("", String::as_str)
    };
    let index_of = |name: &str| profile.sample_type.iter().position(|t| string(t.r#type) == name);
    let (Some(objects), Some(space)) = (index_of("alloc_objects"), index_of("alloc_space")) else {
        bail!("it has no alloc_objects and alloc_space samples (not an allocation profile)");
    };
    let locations: HashMap<u64, &pprof_proto::Location> = profile.location.iter().map(|l| (l.id, l)).collect();
    let functions: HashMap<u64, &pprof_proto::Function> = profile.function.iter().map(|f| (f.id, f)).collect();
    let position = |line: &pprof_proto::Line| -> Option<Position> {
        let function = functions.get(&line.function_id)?;
        Some(Position {
            function: string(function.name).to_owned(),
            file: string(function.filename).to_owned(),
            line: u64::try_from(line.line).unwrap_or(0),
        })
    };
    let mut by_line: BTreeMap<SiteKey, Site> = BTreeMap::new();
    for sample in &profile.sample {
        // A location's lines are its inlined calls, innermost first: the first is the
        // allocating line, the last the function it was inlined into.
        let Some(lines) = sample
            .location_id
            .first()
            .and_then(|id| locations.get(id))
            .map(|l| &l.line)
        else {
            continue;
        };
        let (Some(at), Some(outer)) = (lines.first().and_then(position), lines.last().and_then(position)) else {
            continue;
        };
        let label = |key: &str| {
            sample
                .label
                .iter()
                .find(|l| string(l.key) == key)
                .map(|l| string(l.str).to_owned())
        };
        let kind = label("kind").unwrap_or_default();
        let key = (at.function.clone(), at.file.clone(), at.line, kind.clone());
        let site = by_line.entry(key).or_insert_with(|| Site {
            function: at.function.clone(),
            file: at.file.clone(),
            line: at.line,
            kind,
            ..Site::default()
        });
        let value = |i: usize| sample.value.get(i).and_then(|v| u64::try_from(*v).ok()).unwrap_or(0);
        site.allocations += value(objects);
        site.bytes += value(space);
        push_unique(&mut site.types, label("type"));
        if lines.len() > 1 && !site.inlined_into.contains(&outer) {
            site.inlined_into.push(outer);
        }
    }
    // gotrace's comments name the target's release ("…, go1.27.3)").
    let go_version = profile.comment.iter().find_map(|&c| {
        string(c)
            .split([' ', '(', ')', ','])
            .find(|w| w.starts_with("go1."))
            .map(str::to_owned)
    });
    Ok(Traced {
        go_version,
        mode: None,
        estimated: false,
        sites: by_line.into_values().collect(),
    })
}

/// Traces `pid` in exact mode for `duration`, in this process (see
/// [`crate::session::trace_for`]).
pub(super) fn trace_live(pid: u32, duration: Duration) -> anyhow::Result<Traced> {
    progress!("tracing process {pid} for {} s", duration.as_secs_f64());
    Ok(from_report(crate::session::trace_for(pid, duration)?))
}

/// The Go release that built process `pid`'s executable (its build info).
pub(super) fn live_go_version(pid: u32) -> anyhow::Result<String> {
    let executable = Executable::read(pid)?;
    Ok(executable.parse()?.binary.build_info().go_version.clone())
}
