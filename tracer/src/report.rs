//! What a trace produced: the document of the table and JSON outputs.

use serde::{Deserialize, Serialize};

use tracer_common::ProbeStats;

use crate::mode::Mode;
use crate::probes::ProbeRunTime;
use crate::profile::{Callsite, Inuse, Kind, Profile, Totals};

/// The traced process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Process id.
    pub pid: u32,
    /// The executable, as the process sees it.
    pub exe: String,
    /// Go release that built it.
    pub go_version: String,
    /// Architecture (`x86_64`, `aarch64`).
    pub arch: String,
}

/// The size distribution of one callsite.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SizeStats {
    /// Smallest request.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest request.
    pub max: u64,
}

/// One line of the report: an allocating line of code, a type and a kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallsiteReport {
    /// Function containing the allocating line.
    pub function: String,
    /// Its source file.
    pub file: String,
    /// The line.
    pub line: u32,
    /// The allocated type; null for untyped memory.
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// `new`, `makeslice`, `makemap`, `growslice`, `string`, `convT` or `other`.
    pub kind: Kind,
    /// Heap allocations.
    pub allocations: u64,
    /// Bytes requested.
    pub bytes: u64,
    /// Requested sizes.
    pub size: SizeStats,
    /// Objects of this row alive now (estimated; absent where in-use is not tracked, see the
    /// report's `inuse`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_objects: Option<u64>,
    /// Their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_bytes: Option<u64>,
    /// Of `inuse_bytes`, those of objects known to have outlived a complete GC cycle: what
    /// `--growth` compares (absent where in-use is not tracked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_settled_bytes: Option<u64>,
    /// With `--growth`: how much `inuse_settled_bytes` grew since the baseline (negative:
    /// shrank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inuse_growth_bytes: Option<i64>,
    /// Where the line's code was inlined (absent when it was not): the compiler reports its
    /// escape decisions for inlined code at these positions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inlined_into: Vec<Position>,
    /// With `--callsite first` (the default), when the line is outside the program's main
    /// module: the first line of the main module on the way to it (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Position>,
    /// With `--callsite user`: the line that allocated, when it is outside the main module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Position>,
}

/// A source position: function, file, line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Position {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl From<&Callsite> for CallsiteReport {
    fn from(c: &Callsite) -> Self {
        Self {
            function: c.key.function.to_string(),
            file: c.key.file.to_string(),
            line: c.key.line,
            type_name: c.key.type_name.as_deref().map(str::to_owned),
            kind: c.key.kind,
            allocations: c.allocations,
            bytes: c.bytes,
            size: SizeStats {
                min: c.min_size,
                p50: c.size_at_quantile(0.5),
                p99: c.size_at_quantile(0.99),
                max: c.max_size,
            },
            inuse_objects: Some(c.inuse_objects),
            inuse_bytes: Some(c.inuse_bytes),
            inuse_settled_bytes: Some(c.inuse_settled_bytes),
            inuse_growth_bytes: None,
            inlined_into: c
                .inlined_into
                .iter()
                .map(|(function, file, line)| Position {
                    function: function.to_string(),
                    file: file.to_string(),
                    line: *line,
                })
                .collect(),
            user: c.user.as_ref().map(Position::from),
            via: c.via.as_ref().map(Position::from),
        }
    }
}

impl From<&crate::profile::Position> for Position {
    fn from((function, file, line): &crate::profile::Position) -> Self {
        Self {
            function: function.to_string(),
            file: file.to_string(),
            line: *line,
        }
    }
}

impl Position {
    /// `function file:line`, the file shortened, as tables show a position.
    #[must_use]
    pub fn short(&self) -> String {
        format!("{} {}:{}", self.function, short_path(&self.file), self.line)
    }
}

/// What the probes did, for diagnosing a trace.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// Uprobes attached.
    pub attached: usize,
    /// Times they fired.
    pub hits: u64,
    /// Hits ignored as nested calls inside the malloc implementation.
    pub nested: u64,
    /// Hits ignored because the size was 0.
    pub zero_size: u64,
    /// Allocations recorded without their stack (the stack map was full): their callsite is
    /// their caller.
    pub without_stack: u64,
    /// Allocations lost because the return address could not be read.
    pub dropped_return_address: u64,
    /// Allocations lost because the count map was full.
    pub dropped_counts_map: u64,
    /// How long the probes' programs ran, when the kernel timed them (`--time-probes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_time: Option<ProbeRunTime>,
}

/// The document `gotrace attach` and `gotrace run` produce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The traced process.
    pub target: TargetInfo,
    /// How allocations were observed: `exact` counts every one; `go-sampler` and `span`
    /// estimate from samples.
    pub mode: Mode,
    /// How the numbers were obtained, in one sentence.
    pub method: String,
    /// Whether allocations and bytes are estimates scaled from samples.
    pub estimated: bool,
    /// How long the trace ran.
    pub duration_secs: f64,
    /// Sums over all callsites, and what was dropped.
    pub totals: Totals,
    /// In-use heap: whether it is known, what it covers, its totals.
    #[serde(default)]
    pub inuse: Inuse,
    /// Callsites, most bytes first.
    pub callsites: Vec<CallsiteReport>,
    /// What the probes did.
    pub probes: ProbeSummary,
    /// With `--growth`: the baseline's time and the end, in seconds since the trace started;
    /// the callsites are ranked by `inuse_growth_bytes` between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth: Option<Interval>,
    /// Why the trace ended early, if it did (`target exited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// For one document of a `jsonl` stream: the interval it covers, in seconds since the
    /// trace started; its totals and callsites count that interval only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Interval>,
}

/// The span of one `jsonl` document.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Interval {
    /// Start, seconds since the trace started.
    pub start_secs: f64,
    /// End, seconds since the trace started.
    pub end_secs: f64,
}

impl Report {
    /// The report of `profile`, keeping the `top` callsites by bytes (all with `None`).
    #[must_use]
    pub fn new(target: TargetInfo, profile: &Profile, attached: usize, duration_secs: f64, top: Option<usize>) -> Self {
        let mut report = Self::of_callsites(
            target,
            profile.mode,
            profile.totals,
            profile.stats,
            &profile.callsites,
            attached,
            duration_secs,
            top,
        );
        report.set_inuse(profile.inuse.clone());
        report
    }

    /// Ranks the callsites by the growth of their settled in-use bytes (objects known to have
    /// outlived a complete GC cycle, so that unswept garbage cannot pass for growth) since
    /// `baseline` (taken at `baseline_secs`), keeping the `top` ones.
    pub fn rank_by_growth(&mut self, baseline: &Profile, baseline_secs: f64, top: Option<usize>) {
        let then: std::collections::HashMap<_, u64> = baseline
            .callsites
            .iter()
            .map(|c| {
                (
                    (
                        c.key.function.as_ref(),
                        c.key.file.as_ref(),
                        c.key.line,
                        c.key.type_name.as_deref(),
                        c.key.kind,
                    ),
                    c.inuse_bytes,
                )
            })
            .collect();
        for c in &mut self.callsites {
            let before = then
                .get(&(
                    c.function.as_str(),
                    c.file.as_str(),
                    c.line,
                    c.type_name.as_deref(),
                    c.kind,
                ))
                .copied()
                .unwrap_or(0);
            let now = c.inuse_settled_bytes.unwrap_or(0);
            c.inuse_growth_bytes = Some(i64::try_from(i128::from(now) - i128::from(before)).unwrap_or(i64::MAX));
        }
        self.callsites
            .sort_by_key(|c| std::cmp::Reverse((c.inuse_growth_bytes, c.inuse_bytes)));
        self.callsites.truncate(top.unwrap_or(usize::MAX));
        self.growth = Some(Interval {
            start_secs: baseline_secs,
            end_secs: self.duration_secs,
        });
    }

    /// Sets what is known of the in-use heap; the rows lose their in-use figures when
    /// nothing is known.
    pub fn set_inuse(&mut self, inuse: Inuse) {
        if !inuse.available {
            for c in &mut self.callsites {
                c.inuse_objects = None;
                c.inuse_bytes = None;
                c.inuse_settled_bytes = None;
            }
        }
        self.inuse = inuse;
    }

    /// A report of given totals and callsites (most bytes first), keeping the `top` ones.
    #[must_use]
    #[expect(clippy::too_many_arguments, reason = "the parts of a report, each different")]
    pub fn of_callsites(
        target: TargetInfo,
        mode: Mode,
        totals: Totals,
        stats: ProbeStats,
        callsites: &[Callsite],
        attached: usize,
        duration_secs: f64,
        top: Option<usize>,
    ) -> Self {
        let s = stats;
        Self {
            target,
            mode,
            method: mode.method().to_owned(),
            estimated: mode.is_sampled(),
            duration_secs,
            totals,
            callsites: callsites
                .iter()
                .take(top.unwrap_or(usize::MAX))
                .map(CallsiteReport::from)
                .collect(),
            inuse: Inuse::default(),
            growth: None,
            probes: ProbeSummary {
                attached,
                hits: s.hits,
                nested: s.nested,
                zero_size: s.zero_size,
                without_stack: s.without_stack,
                dropped_return_address: s.dropped_return_address,
                dropped_counts_map: s.dropped_counts_map,
                run_time: None,
            },
            ended: None,
            interval: None,
        }
    }
}

/// `pid 1234 (/srv/app, go1.27.3, exact) 5.0 s: 1,234 allocations, 1.2 MiB, 0 dropped`.
#[must_use]
pub fn summary_line(report: &Report) -> String {
    let ended = report.ended.as_deref().map_or_else(String::new, |e| format!(" ({e})"));
    format!(
        "pid {} ({}, {}, {}) {:.1} s: {} allocations, {}, {} dropped{ended}",
        report.target.pid,
        report.target.exe,
        report.target.go_version,
        if report.estimated {
            format!("{} mode: estimates from samples", report.mode)
        } else {
            report.mode.as_str().to_owned()
        },
        report.duration_secs,
        thousands(report.totals.allocations),
        human_bytes(report.totals.bytes),
        thousands(report.totals.dropped),
    )
}

/// The last two elements of a path: enough to recognise a file in a table.
pub(crate) fn short_path(path: &str) -> &str {
    let mut slashes = path.rmatch_indices('/');
    match (slashes.next(), slashes.next()) {
        (Some(_), Some((i, _))) => &path[i + 1..],
        _ => path,
    }
}

/// `1234567` → `1,234,567`.
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in B, KiB, MiB or GiB, with one decimal above bytes.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "one decimal is all that is shown")]
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A change in bytes with its sign: `+1.5 MiB`, `-512 B`.
#[must_use]
pub fn signed_bytes(n: i128) -> String {
    let sign = if n < 0 { "-" } else { "+" };
    format!(
        "{sign}{}",
        human_bytes(u64::try_from(n.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(short_path("/work/app/cmd/main.go"), "cmd/main.go");
        assert_eq!(short_path("main.go"), "main.go");
    }

    /// What gotrace writes it reads back the same (`explain` reads saved reports), the
    /// optional parts left out included.
    #[test]
    fn reports_read_back_as_written() {
        let position = Position {
            function: "main.f".to_owned(),
            file: "/app/main.go".to_owned(),
            line: 3,
        };
        let callsite = |kind, user: Option<Position>| CallsiteReport {
            function: "main.g".to_owned(),
            file: "/app/main.go".to_owned(),
            line: 7,
            type_name: None,
            kind,
            allocations: 2,
            bytes: 64,
            size: SizeStats {
                min: 32,
                p50: 32,
                p99: 32,
                max: 32,
            },
            inuse_objects: Some(1),
            inuse_bytes: Some(32),
            inuse_settled_bytes: Some(32),
            inuse_growth_bytes: Some(-32),
            inlined_into: user.iter().cloned().collect(),
            user,
            via: None,
        };
        let report = Report {
            target: TargetInfo {
                pid: 42,
                exe: "/app/server".to_owned(),
                go_version: "go1.27.3".to_owned(),
                arch: "x86_64".to_owned(),
            },
            mode: Mode::GoSampler,
            method: Mode::GoSampler.method().to_owned(),
            estimated: true,
            duration_secs: 1.5,
            totals: Totals {
                allocations: 4,
                bytes: 128,
                dropped: 1,
            },
            inuse: Inuse {
                available: true,
                note: "in-use".to_owned(),
                objects: 2,
                bytes: 64,
                tracked_samples: 2,
                gc_cycles: 3,
                probes: None,
            },
            callsites: vec![callsite(Kind::ConvT, Some(position)), callsite(Kind::New, None)],
            probes: ProbeSummary {
                attached: 2,
                hits: 9,
                nested: 0,
                zero_size: 0,
                without_stack: 0,
                dropped_return_address: 0,
                dropped_counts_map: 1,
                run_time: None,
            },
            ended: None,
            interval: None,
            growth: None,
        };
        let text = serde_json::to_string(&report).unwrap();
        assert!(
            text.contains(r#""mode":"go-sampler""#) && text.contains(r#""kind":"convT""#),
            "{text}"
        );
        assert!(
            !text.contains("inlined_into\":[]") && !text.contains("\"ended\""),
            "{text}"
        );
        let read: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), text);
        assert_eq!(read.callsites[0].kind, Kind::ConvT);
        assert_eq!(read.mode, Mode::GoSampler);
    }
}
