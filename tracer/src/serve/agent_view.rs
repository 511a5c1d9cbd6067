//! What `serve --all` shows: `/metrics` over every target, each series labelled with its
//! process, and `/targets`.
//!
//! Each target's metrics are rendered as the sidecar renders its one target
//! ([`MetricsView`]), then every sample gets the target's labels, and the lines are regrouped
//! by metric family: the Prometheus text format wants one `# HELP`/`# TYPE` and all of a
//! family's samples together.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::agent::{AgentState, AgentTarget};
use super::identity::Placement;
use super::metrics::{MetricsView, resident_bytes};
use super::snapshot::lock;
use crate::export::label;

/// Families about the agent as a whole: rendered once, not per target.
const AGENT_WIDE: [&str; 2] = ["gotrace_resident_memory_bytes", "gotrace_attached_targets"];

/// The labels that tell targets apart, on every series of a target.
fn target_labels(target: &AgentTarget) -> Vec<(&'static str, String)> {
    vec![
        ("pid", target.id.pid.to_string()),
        ("exe", target.exe.clone()),
        ("container", target.placement.container.clone().unwrap_or_default()),
        ("pod", target.placement.pod_label().to_owned()),
    ]
}

/// Adds `labels` to one sample line (`name{a="b"} 1` or `name 1`), leaving out those the
/// sample already has.
fn with_labels(sample: &str, labels: &[(&str, String)]) -> String {
    let (name_end, existing) = match (sample.find('{'), sample.find(' ')) {
        (Some(brace), Some(space)) if brace < space => (brace, Some(brace)),
        (_, Some(space)) => (space, None),
        _ => return sample.to_owned(),
    };
    let name = &sample[..name_end];
    let mut added = String::new();
    for (key, value) in labels {
        // A label value has no unescaped quote, so `key="` after `{` or `,` is a label.
        let has =
            existing.is_some_and(|_| sample.contains(&format!("{{{key}=\"")) || sample.contains(&format!(",{key}=\"")));
        if !has {
            let _ = write!(added, "{key}=\"{}\",", label(value));
        }
    }
    match existing {
        Some(brace) => {
            let rest = &sample[brace + 1..];
            if rest.starts_with('}') {
                format!("{name}{{{}{rest}", added.trim_end_matches(','))
            } else {
                format!("{name}{{{added}{rest}")
            }
        }
        None => format!("{name}{{{}}}{}", added.trim_end_matches(','), &sample[name_end..]),
    }
}

/// One metric family: its header lines and samples, in the order first seen.
#[derive(Debug, Default)]
struct Family {
    header: Vec<String>,
    samples: Vec<String>,
}

/// Families in order of first appearance.
#[derive(Debug, Default)]
struct Families {
    order: Vec<String>,
    by_name: BTreeMap<String, Family>,
}

impl Families {
    fn family(&mut self, name: &str) -> &mut Family {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_owned());
        }
        self.by_name.entry(name.to_owned()).or_default()
    }

    /// Adds a target's text, its samples labelled.
    fn add(&mut self, text: &str, labels: &[(&str, String)], skip: &[&str]) {
        for line in text.lines() {
            if let Some(header) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                let name = header.split(' ').next().unwrap_or("");
                if skip.contains(&name) {
                    continue;
                }
                let family = self.family(name);
                if family.header.len() < 2 && !family.header.iter().any(|h| h == line) {
                    family.header.push(line.to_owned());
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap_or("");
                if skip.contains(&name) {
                    continue;
                }
                self.family(name).samples.push(with_labels(line, labels));
            }
        }
    }

    fn render(&self, out: &mut String) {
        for name in &self.order {
            let family = &self.by_name[name];
            for line in family.header.iter().chain(&family.samples) {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

/// `/metrics` of the agent: every target's series, labelled (each target within its share of
/// `--max-series`, kept by its collector's [`super::snapshot::SeriesSelection`]), then the
/// agent's own.
pub(super) fn render_metrics(state: &AgentState) -> String {
    let mut families = Families::default();
    let mut folded = 0;
    for target in state.targets.values() {
        let view = MetricsView::of(&lock(&target.shared));
        folded += view.folded_series;
        let text = view.render();
        let mut labels = target_labels(target);
        families.add(&text, &labels, &AGENT_WIDE);
        // The info series also says where the process runs, beyond what every series says.
        labels.extend([
            ("comm", target.comm.clone()),
            ("pod_uid", target.placement.pod_uid.clone().unwrap_or_default()),
            ("namespace", target.placement.namespace.clone().unwrap_or_default()),
        ]);
        if let Some(info) = families.by_name.get_mut("gotrace_target_info")
            && let Some(last) = info.samples.last_mut()
        {
            *last = with_labels(last, &labels);
        }
    }
    let mut out = String::new();
    families.render(&mut out);
    render_agent_metrics(state, folded, &mut out);
    out
}

fn render_agent_metrics(state: &AgentState, folded: usize, out: &mut String) {
    let attached = state.targets.values().filter(|t| t.exited.is_none()).count();
    let mut gauge = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |value: String| vec![(String::new(), value)];
    gauge(
        "gotrace_attached_targets",
        "gauge",
        "Processes traced now.",
        &plain(attached.to_string()),
    );
    gauge(
        "gotrace_resident_memory_bytes",
        "gauge",
        "gotrace's own resident memory.",
        &plain(resident_bytes().to_string()),
    );
    gauge(
        "gotrace_cpu_seconds_total",
        "counter",
        "CPU time gotrace itself used (user and system, all its threads), from /proc/self/stat.",
        &plain(format!("{:.3}", own_cpu_seconds())),
    );
    let by_reason = |counts: Vec<(&str, u64)>| -> Vec<(String, String)> {
        counts
            .into_iter()
            .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), n.to_string()))
            .collect()
    };
    gauge(
        "gotrace_agent_skipped_processes_total",
        "counter",
        "Processes not traced, by reason: not_go, excluded_name, excluded_exe, max_targets (each process counted once).",
        &by_reason(state.skipped.iter().map(|(r, n)| (r.as_str(), *n)).collect()),
    );
    gauge(
        "gotrace_agent_errors_total",
        "counter",
        "Go processes that could not be traced, by reason: exited (during attach), unreadable, unsupported, attach.",
        &by_reason(state.errors.iter().map(|(r, n)| (r.as_str(), *n)).collect()),
    );
    gauge(
        "gotrace_agent_folded_series",
        "gauge",
        "Callsites left in their target's other series to keep within --max-series (each target gets an equal share, \
         --max-series / --max-targets), at the last collections.",
        &plain(folded.to_string()),
    );
    gauge(
        "gotrace_agent_scans_total",
        "counter",
        "Scans of /proc for new processes.",
        &plain(state.scans.to_string()),
    );
    gauge(
        "gotrace_agent_scan_seconds_total",
        "counter",
        "Time the scans of /proc took.",
        &plain(format!("{:.6}", state.scan_time.as_secs_f64())),
    );
}

/// gotrace's own CPU time, from `/proc/self/stat` (fields 14 and 15, in clock ticks).
pub(super) fn own_cpu_seconds() -> f64 {
    crate::process::cpu_ticks(std::process::id()).map_or(0.0, |ticks| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        #[expect(clippy::cast_precision_loss, reason = "ticks to seconds, for display")]
        let seconds = ticks.total as f64 / hz.max(1) as f64;
        seconds
    })
}

/// One followed process in `/targets`.
#[derive(Debug, Serialize)]
pub(super) struct TargetEntry {
    pid: u32,
    comm: String,
    exe: String,
    go_version: Option<String>,
    mode: Option<&'static str>,
    #[serde(flatten)]
    placement: Placement,
    /// "tracing", "attaching", or "exited" (its last data, served for a minute).
    state: &'static str,
    attached_probes: usize,
    /// Seconds since gotrace attached.
    traced_seconds: Option<f64>,
    allocations: Option<u64>,
    bytes: Option<u64>,
    inuse_bytes: Option<u64>,
    last_error: Option<String>,
}

/// `/targets`: what the agent follows, and what it skipped.
#[derive(Debug, Serialize)]
pub(super) struct TargetsDocument {
    targets: Vec<TargetEntry>,
    skipped: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

pub(super) fn targets_document(state: &AgentState) -> TargetsDocument {
    let targets = state
        .targets
        .values()
        .map(|t| {
            let s = lock(&t.shared);
            let profile = s.profile.as_deref();
            TargetEntry {
                pid: t.id.pid,
                comm: t.comm.clone(),
                exe: t.exe.clone(),
                go_version: s.target.as_ref().map(|i| i.go_version.clone()),
                mode: s.mode.map(crate::mode::Mode::as_str),
                placement: t.placement.clone(),
                state: match (t.exited, &s.target) {
                    (Some(_), _) => "exited",
                    (None, Some(_)) => "tracing",
                    (None, None) => "attaching",
                },
                attached_probes: s.attached_probes,
                traced_seconds: s.started.map(|(at, _)| Instant::now().duration_since(at).as_secs_f64()),
                allocations: profile.map(|p| p.totals.allocations),
                bytes: profile.map(|p| p.totals.bytes),
                inuse_bytes: profile.filter(|p| p.inuse.available).map(|p| p.inuse.bytes),
                last_error: s.last_error.clone(),
            }
        })
        .collect();
    TargetsDocument {
        targets,
        skipped: state.skipped.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
        errors: state.errors.iter().map(|(r, n)| (r.as_str(), *n)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<(&'static str, String)> {
        vec![("pid", "42".to_owned()), ("exe", "/a \"b\"".to_owned())]
    }

    #[test]
    fn labels_are_added_to_every_shape_of_sample() {
        assert_eq!(
            with_labels("m{function=\"f\"} 3", &labels()),
            "m{pid=\"42\",exe=\"/a \\\"b\\\"\",function=\"f\"} 3"
        );
        assert_eq!(with_labels("m 3", &labels()), "m{pid=\"42\",exe=\"/a \\\"b\\\"\"} 3");
        assert_eq!(with_labels("m{} 3", &labels()), "m{pid=\"42\",exe=\"/a \\\"b\\\"\"} 3");
    }

    #[test]
    fn a_label_the_sample_has_is_not_added_twice() {
        assert_eq!(
            with_labels("info{pid=\"42\",exe=\"/x\",mode=\"span\"} 1", &labels()),
            "info{pid=\"42\",exe=\"/x\",mode=\"span\"} 1"
        );
        // A value that mentions a label name is not the label.
        assert_eq!(
            with_labels("m{function=\"pid=\\\"1\"} 1", &labels()[..1]),
            "m{pid=\"42\",function=\"pid=\\\"1\"} 1"
        );
    }

    #[test]
    fn families_are_grouped_with_one_header_each() {
        let one = "# HELP a A.\n# TYPE a counter\na{x=\"1\"} 1\n# HELP b B.\n# TYPE b gauge\nb 2\n";
        let mut families = Families::default();
        families.add(one, &[("pid", "1".to_owned())], &["b"]);
        families.add(one, &[("pid", "2".to_owned())], &[]);
        let mut out = String::new();
        families.render(&mut out);
        assert_eq!(
            out,
            "# HELP a A.\n# TYPE a counter\na{pid=\"1\",x=\"1\"} 1\na{pid=\"2\",x=\"1\"} 1\n\
             # HELP b B.\n# TYPE b gauge\nb{pid=\"2\"} 2\n"
        );
    }
}
