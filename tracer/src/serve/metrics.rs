//! `/metrics`: per-callsite counters ([`PrometheusExporter`], over the series the collector
//! chose), then what was counted in the target without sampling, and gotrace's own health.

use std::fmt::Write as _;
use std::sync::Arc;

use tracer_common::ProbeStats;

use super::snapshot::Snapshot;
use crate::export::{Exporter as _, MappingInfo, PrometheusExporter, Trace, label};
use crate::mode::Mode;
use crate::probes::ProbeRunTime;
use crate::profile::Profile;
use crate::report::{Report, TargetInfo};

/// What `/metrics` shows, copied out of the snapshot so that rendering holds no lock.
#[derive(Debug, Clone)]
pub(super) struct MetricsView {
    target: Option<TargetInfo>,
    mode: Option<Mode>,
    stale: bool,
    profile: Option<Arc<Profile>>,
    series: Option<Arc<Report>>,
    attached_fraction: f64,
    runtime_allocated_bytes: Option<u64>,
    earlier_stats: ProbeStats,
    probe_run_time: Option<ProbeRunTime>,
    earlier_run_time: ProbeRunTime,
    reattaches: u64,
    store_keys: usize,
    overflowed_keys: u64,
    /// Callsites left in `other` by `serve --all`'s `--max-series`.
    pub(super) folded_series: usize,
}

impl MetricsView {
    pub(super) fn of(s: &Snapshot) -> Self {
        Self {
            target: s.target.clone(),
            mode: s.mode,
            stale: s.stale,
            profile: s.profile.clone(),
            series: s.series.clone(),
            attached_fraction: s.attached_fraction,
            runtime_allocated_bytes: s.runtime_allocated_bytes,
            earlier_stats: s.earlier_stats,
            probe_run_time: s.probe_run_time,
            earlier_run_time: s.earlier_run_time,
            reattaches: s.reattaches,
            store_keys: s.store_keys,
            overflowed_keys: s.overflowed_keys,
            folded_series: s.folded_series,
        }
    }

    /// The Prometheus text.
    pub(super) fn render(&self) -> String {
        let mut callsites = Vec::new();
        if let (Some(series), Some(profile)) = (&self.series, &self.profile) {
            let trace = Trace {
                report: series,
                profile,
                mapping: &MappingInfo::default(),
                started_unix_nanos: 0,
            };
            // Writing into a Vec cannot fail.
            let _ = PrometheusExporter.export(&trace, &mut callsites);
        }
        let mut out = String::from_utf8_lossy(&callsites).into_owned();
        self.render_own_metrics(&mut out);
        out
    }

    /// What was counted in the target without sampling: its runtime's own allocation total, and
    /// the time the probes took in it (when the kernel timed them).
    fn render_target_counts(&self, out: &mut String) {
        let s = self;
        if let Some(bytes) = s.runtime_allocated_bytes {
            let _ = writeln!(
                out,
                "# HELP gotrace_target_runtime_allocated_bytes_total Heap bytes the target's own runtime has \
                 counted as allocated since it started (what runtime.MemStats.TotalAlloc reports, read from \
                 its memory): not sampled, whatever the mode; a cached span's objects count when it is given back."
            );
            let _ = writeln!(out, "# TYPE gotrace_target_runtime_allocated_bytes_total counter");
            let _ = writeln!(out, "gotrace_target_runtime_allocated_bytes_total {bytes}");
        }
        let run_time = s.earlier_run_time.plus(s.probe_run_time.unwrap_or_default());
        if run_time.runs > 0 {
            let _ = writeln!(
                out,
                "# HELP gotrace_probe_run_seconds_total CPU time gotrace's probes took in the target, as the \
                 kernel timed them (--time-probes), without the traps that start them."
            );
            let _ = writeln!(out, "# TYPE gotrace_probe_run_seconds_total counter");
            #[expect(clippy::cast_precision_loss, reason = "seconds to show")]
            let seconds = run_time.nanoseconds as f64 / 1e9;
            let _ = writeln!(out, "gotrace_probe_run_seconds_total {seconds}");
            let _ = writeln!(
                out,
                "# HELP gotrace_probe_timed_runs_total Probe runs the kernel timed."
            );
            let _ = writeln!(out, "# TYPE gotrace_probe_timed_runs_total counter");
            let _ = writeln!(out, "gotrace_probe_timed_runs_total {}", run_time.runs);
        }
    }

    /// gotrace's own health, and what it traces.
    fn render_own_metrics(&self, out: &mut String) {
        let s = self;
        let profile = self.profile.as_deref();
        let stats = profile.map_or(s.earlier_stats, |p| s.earlier_stats.merged(p.stats));
        let attached = u8::from(s.target.is_some() && !s.stale);
        let gauges: [(&str, &str, &str, u64); 8] = [
            (
                "gotrace_probe_hits_total",
                "counter",
                "Times gotrace's probes fired.",
                stats.hits,
            ),
            (
                "gotrace_dropped_events_total",
                "counter",
                "Allocations or samples the probes saw but could not record.",
                stats.dropped(),
            ),
            (
                "gotrace_without_stack_total",
                "counter",
                "Allocations or samples recorded without their stack (stack map full).",
                stats.without_stack,
            ),
            (
                "gotrace_attached_targets",
                "gauge",
                "Processes traced now (0 while waiting, or after the target exited).",
                u64::from(attached),
            ),
            (
                "gotrace_reattaches_total",
                "counter",
                "Times gotrace attached to a new process after the first.",
                s.reattaches,
            ),
            (
                "gotrace_resident_memory_bytes",
                "gauge",
                "gotrace's own resident memory.",
                resident_bytes(),
            ),
            (
                "gotrace_store_keys",
                "gauge",
                "Distinct (stack, size) keys held for the current target.",
                u64::try_from(s.store_keys).unwrap_or(u64::MAX),
            ),
            (
                "gotrace_store_overflowed_keys_total",
                "counter",
                "Keys folded into the other callsite because the key limit was reached.",
                s.overflowed_keys,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP gotrace_probe_attached_ratio The fraction of each duty cycle (--span-period) the probes are attached: \
             below 1 while span mode's duty cycle keeps them within --span-budget (estimates are scaled up)."
        );
        let _ = writeln!(out, "# TYPE gotrace_probe_attached_ratio gauge");
        let _ = writeln!(out, "gotrace_probe_attached_ratio {}", s.attached_fraction);
        self.render_target_counts(out);
        if let (Some(t), Some(mode)) = (&s.target, s.mode) {
            let _ = writeln!(
                out,
                "# HELP gotrace_target_info The traced process; stale=\"true\" after it exited."
            );
            let _ = writeln!(out, "# TYPE gotrace_target_info gauge");
            let _ = writeln!(
                out,
                "gotrace_target_info{{pid=\"{}\",exe=\"{}\",go_version=\"{}\",mode=\"{}\",stale=\"{}\"}} 1",
                t.pid,
                label(&t.exe),
                label(&t.go_version),
                mode.as_str(),
                s.stale
            );
        }
    }
}

/// The tracer's resident memory, from `/proc/self/statm` (pages).
pub(super) fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.saturating_mul(u64::try_from(page).unwrap_or(4096))
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::profile::{self, CallsiteKey};
    use crate::serve::snapshot::SeriesSelection;

    /// What a collection publishes and a scrape renders, as the collector and `/metrics` do.
    fn render_metrics(s: &mut Snapshot, selection: &mut SeriesSelection, top_k: usize) -> String {
        let profile = s.profile.clone().unwrap();
        let target = s.target.clone().unwrap_or(TargetInfo {
            pid: 1,
            exe: "/app".to_owned(),
            go_version: "go1.27.3".to_owned(),
            arch: "x86_64".to_owned(),
        });
        s.series = Some(Arc::new(selection.select(&profile, target, 0, top_k)));
        MetricsView::of(s).render()
    }

    fn profile_of(callsites: &[(&str, u64)]) -> Profile {
        let callsites: Vec<profile::Callsite> = callsites
            .iter()
            .map(|&(function, bytes)| profile::Callsite {
                allocations: bytes / 8,
                bytes,
                min_size: 8,
                max_size: 8,
                ..profile::Callsite::empty(
                    CallsiteKey {
                        function: function.into(),
                        file: "/app/main.go".into(),
                        line: 7,
                        type_name: Some("unknown".into()),
                        kind: profile::Kind::New,
                    },
                    1,
                )
            })
            .collect();
        Profile {
            mode: Mode::Span,
            stats: ProbeStats::default(),
            // As a built profile's: every key counts in its callsite and in the totals.
            totals: profile::Totals {
                allocations: callsites.iter().map(|c| c.allocations).sum(),
                bytes: callsites.iter().map(|c| c.bytes).sum(),
                dropped: 0,
            },
            callsites,
            samples: Vec::new(),
            grouping: profile::Grouping::First,
            inuse: profile::Inuse::default(),
        }
    }

    fn series(text: &str, name: &str) -> Vec<(String, u64)> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .map(|l| {
                let function = l.split("function=\"").nth(1).unwrap().split('"').next().unwrap();
                (function.to_owned(), l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// The top K get series, the rest add up in `other`; membership only grows, and a
    /// callsite that outgrows the smallest member joins, up to 2K.
    #[test]
    fn metrics_keep_cardinality_bounded_and_series_stable() {
        let mut selection = SeriesSelection::default();
        let mut s = Snapshot {
            target: Some(TargetInfo {
                pid: 7,
                exe: "/app/with \"quotes\"".to_owned(),
                go_version: "go1.27.3".to_owned(),
                arch: "x86_64".to_owned(),
            }),
            mode: Some(Mode::Span),
            profile: Some(Arc::new(profile_of(&[
                ("main.a", 800),
                ("main.b", 400),
                ("main.c", 200),
                ("main.d", 100),
            ]))),
            ..Snapshot::default()
        };
        let text = render_metrics(&mut s, &mut selection, 2);
        assert_eq!(
            series(&text, "gotrace_alloc_bytes_total"),
            [
                ("main.a".to_owned(), 800),
                ("main.b".to_owned(), 400),
                ("other".to_owned(), 300)
            ]
        );
        assert!(text.contains("# TYPE gotrace_alloc_bytes_total counter"));
        assert!(text.contains("exe=\"/app/with \\\"quotes\\\"\""), "{text}");
        assert!(text.contains("Estimated from samples"));
        // main.d grows past main.b: it joins; main.b keeps its series.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.a", 900),
            ("main.d", 500),
            ("main.b", 450),
            ("main.c", 300),
        ])));
        let text = render_metrics(&mut s, &mut selection, 2);
        let names: Vec<String> = series(&text, "gotrace_alloc_bytes_total")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(names, ["main.a", "main.d", "main.b", "other"]);
        // main.c outgrows them too and is the fourth member: 2K, the limit.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.c", 5000),
            ("main.a", 900),
            ("main.d", 500),
            ("main.b", 450),
        ])));
        let text = render_metrics(&mut s, &mut selection, 2);
        let bytes = series(&text, "gotrace_alloc_bytes_total");
        assert!(bytes.contains(&("main.c".to_owned(), 5000)), "{bytes:?}");
        assert_eq!(selection.len(), 4);
        // Past 2K nobody else joins, however big.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.e", 9000),
            ("main.c", 5000),
            ("main.a", 900),
        ])));
        let text = render_metrics(&mut s, &mut selection, 2);
        let bytes = series(&text, "gotrace_alloc_bytes_total");
        assert!(bytes.contains(&("other".to_owned(), 9000)), "{bytes:?}");
        assert_eq!(selection.len(), 4);
    }

    /// `serve --all`'s share of `--max-series` caps a target's members where they are chosen:
    /// the first ones stay, later ones are counted as folded and add up in `other`.
    #[test]
    fn a_capped_selection_keeps_its_first_members() {
        let mut selection = SeriesSelection::capped(2);
        let mut s = Snapshot {
            mode: Some(Mode::Span),
            profile: Some(Arc::new(profile_of(&[
                ("main.a", 800),
                ("main.b", 400),
                ("main.c", 200),
                ("main.d", 100),
            ]))),
            ..Snapshot::default()
        };
        let text = render_metrics(&mut s, &mut selection, 5);
        let names: Vec<String> = series(&text, "gotrace_alloc_bytes_total")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(names, ["main.a", "main.b", "other"]);
        assert_eq!(selection.folded, 2);
        // main.d outgrows everything: it stays in other, which only grows.
        s.profile = Some(Arc::new(profile_of(&[
            ("main.d", 5000),
            ("main.a", 900),
            ("main.b", 450),
            ("main.c", 300),
        ])));
        let text = render_metrics(&mut s, &mut selection, 5);
        let bytes = series(&text, "gotrace_alloc_bytes_total");
        assert_eq!(
            bytes,
            [
                ("main.a".to_owned(), 900),
                ("main.b".to_owned(), 450),
                ("other".to_owned(), 5300)
            ]
        );
    }

    /// The main module's line of a library callsite is a series of its own: as labels of the
    /// counters it would change their identity when the most frequent one changes.
    #[test]
    fn the_programs_own_line_is_an_info_series() {
        let mut profile = profile_of(&[("strings.(*Builder).grow", 800), ("main.a", 400)]);
        profile.callsites[0].user = Some(("main.render".into(), "/app/main.go".into(), 40));
        let mut selection = SeriesSelection::default();
        let mut s = Snapshot {
            mode: Some(Mode::Span),
            profile: Some(Arc::new(profile)),
            ..Snapshot::default()
        };
        let text = render_metrics(&mut s, &mut selection, 5);
        let counters: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gotrace_alloc_bytes_total{"))
            .collect();
        assert!(counters.iter().all(|l| !l.contains("user_")), "{text}");
        let info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("gotrace_callsite_user_info{"))
            .collect();
        assert_eq!(info.len(), 1, "{text}");
        assert!(
            info[0].contains("function=\"strings.(*Builder).grow\"")
                && info[0].contains("user_function=\"main.render\",user_line=\"40\"")
                && info[0].ends_with(" 1"),
            "{text}"
        );
    }
}
