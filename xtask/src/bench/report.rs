//! The benchmark's Markdown: `results.md`, docs/performance.md's tables and README.md's
//! headline. One function per table; [`markdown`] puts them together.

use std::fmt::Write as _;

use super::account::{realistic_cost_table, trap_floor_ns};
use super::stats::Stat;
use super::targets::{TargetCheck, Verdict};
use super::tracers::Tracer;
use super::{Plan, REALISTIC_GO, Results, SPAN_PERIOD_SECS};

/// The whole report: when, how and on what it was measured, then each part's table, then the
/// targets.
pub(super) fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} Each figure is the median of {} runs, with the lowest and highest in parentheses.\n",
        measured(r),
        r.plan.runs
    );
    cost_tables(&mut md, r);
    realistic_table(&mut md, r);
    account_table(&mut md, r);
    accuracy_table(&mut md, r);
    tracer_costs_table(&mut md, r);
    targets_table(&mut md, r);
    advice(&mut md, r);
    md
}

/// What README.md shows between its headline markers: the first sentence of [`markdown`] (when,
/// how and on what), then its targets table and the advice when some are undecided, exactly as
/// [`markdown`] renders them.
pub(super) fn headline(r: &Results) -> String {
    let mut md = measured(r);
    md.push_str("\n\n");
    targets_table(&mut md, r);
    advice(&mut md, r);
    md
}

/// The report's first sentence: when, how and on what the figures were measured.
fn measured(r: &Results) -> String {
    let m = &r.machine;
    format!(
        "Measured {} by `cargo xtask bench{}` on {} ({} cores), Linux {}, {}; {}.",
        m.date,
        if r.quick { " --quick" } else { "" },
        m.cpu,
        m.cores,
        m.kernel,
        m.go.join(", "),
        m.bpftrace.as_deref().unwrap_or("bpftrace not installed"),
    )
}

/// The cost per allocation: what is measured, then one table per Go release.
fn cost_tables(md: &mut String, r: &Results) {
    if r.cost.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "**Cost per allocation**: `workloads loop --depth D` allocates one 64-byte object per \
         iteration from one callsite, D frames below its goroutine's entry (each frame 64 bytes); \
         the figure is the whole process's CPU time (traps and probe time included) over {} s \
         per run, divided by its allocations. *Added* is over the untraced median at the same \
         depth; *× floor* divides it by the empty probe's at the same depth; *bpftrace ÷* \
         divides the bpftrace one-liner's by it; *spread* is (highest − lowest) / median. *Probe \
         run* is what the kernel timed each run of exact mode's probe at (`--time-probes`, \
         whose two clock reads per run the timed row's cost includes): the rest of exact \
         mode's added cost is the trap, the floor. Every probed row probes the same \
         functions: Go's counting allocation entry points (`runtime.mallocgc`, and on Go 1.27 \
         the size-specialised `mallocgc*SC<n>` the compiler calls directly). The bpftrace row \
         is `uprobe:BIN:<each of them> {{ @[ustack, reg(\"ax\")] = count(); }}`.\n",
        r.plan.window_secs
    );
    for table in &r.cost {
        let _ = writeln!(
            md,
            "| {} | depth | ns per allocation | spread | added ns | × floor | bpftrace ÷ | probe run ns |",
            table.go_version
        );
        md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for row in &table.rows {
            let name = row.tracer.label();
            let depth = row.depth;
            match &row.error {
                Some(e) => {
                    let _ = writeln!(md, "| {name} | {depth} | {} | | | | | |", not_measured(e));
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {name} | {depth} | {} | {} | {} | {} | {} | {} |",
                        stat(row.ns_per_alloc.as_ref(), 0),
                        row.ns_per_alloc
                            .as_ref()
                            .map_or_else(|| "—".to_owned(), |s| format!("{:.0}%", s.spread() * 100.0)),
                        number(row.added_ns, 0),
                        ratio(row.vs_floor),
                        ratio(row.bpftrace_over_this),
                        row.probe_run_ns
                            .as_ref()
                            .map_or_else(|| "—".to_owned(), |s| stat(Some(s), 0))
                    );
                }
            }
        }
        md.push('\n');
    }
}

/// The realistic workloads side by side: how they are measured, the noise, and their table.
fn realistic_table(md: &mut String, r: &Results) {
    if r.realistic.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "**Realistic workloads** ({}), each as two identical instances side by side: \
         `workloads http` (stdlib `net/http` JSON service), each instance under its own \
         `wrk -t1 -c8 --latency` paced so that every connection waits 1 ms after each response \
         (the same load for both, neither saturated), for {} s on loopback; and `workloads cpu` \
         (JSON encoding and decoding, maps, strings), busy, for {} s. In each window one \
         instance runs under the mode and the other untraced, and each *change* is the traced \
         instance's figure over the untraced one's in the same seconds, the median over the \
         runs; which instance is traced alternates. So whatever the host does that minute \
         (other VMs stealing the CPU, by {} of the workload CPU's time over the HTTP windows \
         and {} over the CPU-bound ones here, median and range), it does to both. The *untraced* \
         row's windows trace neither instance (A/A): the two came out {} apart per service \
         CPU-second, {} in p99 and {} per CPU-second (CPU-bound), median and range, the noise \
         every change stands in; a target whose noise exceeds its limit is *undecided*. *Pooled* \
         p99 is taken over every request of a mode's runs together (wrk's latency histograms \
         merged), the traced instance's against the untraced one's; the A/A windows pooled the \
         same way, those before each mode's, came out {} apart. Each mode \
         is measured after 2 s attached (under load), by which span mode's duty cycle has settled; \
         duty-cycled span runs with `--span-period` {}, in windows as long, so that each holds one \
         attach and one detach. In both workloads' runs {}. *Per CPU-s* divides by the instance's \
         own CPU time (user + system, traps included).\n",
        realistic_cost_table(&r.cost).map_or_else(|| format!("go{REALISTIC_GO}"), |t| t.go_version.clone()),
        r.plan.wrk_secs,
        r.plan.window_secs,
        spread(r.noise.http_steal.as_ref()),
        spread(r.noise.cpu_steal.as_ref()),
        spread(r.noise.http_per_cpu.as_ref()),
        spread(r.noise.http_p99.as_ref()),
        spread(r.noise.cpu_per_cpu.as_ref()),
        spread(r.noise.http_p99_pooled.as_ref()),
        span_period(&r.plan),
        r.cpus,
    );
    md.push_str(
        "| mode | HTTP requests/s | per service CPU-s | change | HTTP p99 ms | change | pooled p99 ms, change | CPU-bound ops/s | change | per CPU-s | change | gotrace peak RSS MiB |\n",
    );
    md.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for row in &r.realistic {
        if let Some(e) = &row.error {
            let _ = writeln!(
                md,
                "| {} | {} | | | | | | | | | | |",
                row.tracer.label(),
                not_measured(e)
            );
            continue;
        }
        let change = |ratio: Option<f64>| {
            if row.tracer == Tracer::Untraced {
                String::new()
            } else {
                percent(ratio)
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.tracer.label(),
            stat(row.http_requests_per_sec.as_ref(), 0),
            stat(row.http_requests_per_cpu_sec.as_ref(), 0),
            change(row.http_per_cpu_ratio),
            stat(row.http_p99_ms.as_ref(), 2),
            change(row.http_p99_ratio.as_ref().map(|r| r.median)),
            row.http_p99_pooled.as_ref().map_or_else(String::new, |p| format!(
                "{:.2} against {:.2}, {}",
                p.traced_ms,
                p.untraced_ms,
                percent(Some(p.ratio))
            )),
            stat(row.cpu_ops_per_sec.as_ref(), 0),
            change(row.cpu_ratio),
            stat(row.cpu_ops_per_cpu_sec.as_ref(), 0),
            change(row.cpu_per_cpu_ratio),
            number(row.tracer_peak_rss_mib, 1),
        );
    }
    md.push('\n');
}

/// The realistic windows' bottom-up account ([`Account`](super::account::Account)).
fn account_table(md: &mut String, r: &Results) {
    let rows: Vec<_> = r
        .realistic
        .iter()
        .flat_map(|row| {
            ["HTTP", "CPU-bound"]
                .into_iter()
                .zip(&row.accounts)
                .filter_map(move |(workload, account)| Some((row.tracer, workload, account.as_ref()?)))
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    let floor = trap_floor_ns(&r.cost);
    let _ = writeln!(
        md,
        "**What tracing costs the workloads, accounted bottom-up** (the same windows, counted from 2 s \
         after attaching, when span mode's duty cycle has settled). The kernel counted each mode's probe \
         runs and timed them (`--time-probes`). Each run also costs a trap into the kernel and the cache \
         misses it and the run leave behind, which no counter times: that is priced from a mode that \
         probes so often that its change is many times the noise, per run beyond the run's own time \
         (*trap ns*): exact mode's for exact and go-sampler, span mode's always attached \
         (`--span-budget 0`) for span; at least the cost table's floor ({}). *In probes* is runs × \
         (trap + run time) over the workload's CPU time; *predicted* is the change of work per \
         CPU-second that alone would cause, beside the change measured above (the same, by \
         construction, for the rows that set the price). The counts and run times do not depend on how \
         fast the machine ran that minute, which the changes measured for go-sampler and duty-cycled \
         span do, by more than they are. Not in the account: span mode attaching and detaching its \
         probes once every --span-period ({}).\n",
        floor.map_or_else(|| "not measured".to_owned(), |ns| format!("{ns:.0} ns")),
        span_period(&r.plan)
    );
    md.push_str(
        "| mode | workload | probe runs per workload CPU-s | ns per run | trap ns | in probes | predicted per-CPU change | measured per-CPU change | gotrace's CPU, % of the workload's |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let scaled =
        |s: Option<&Stat>, by: f64| s.and_then(|s| Stat::of(&s.runs.iter().map(|v| v * by).collect::<Vec<_>>()));
    for (tracer, workload, a) in rows {
        let predicted = a.probe_cpu_share.as_ref().map(|s| 1.0 - s.median);
        let _ = writeln!(
            md,
            "| {} | {workload} | {} | {} | {} | {}% | {} | {} | {}% |",
            tracer.label(),
            a.runs_per_cpu_sec.show(0),
            a.ns_per_run.show(0),
            number(a.trap_ns, 0),
            stat(scaled(a.probe_cpu_share.as_ref(), 100.0).as_ref(), 2),
            percent(predicted),
            percent(a.measured_per_cpu_ratio.as_ref().map(|s| s.median)),
            stat(scaled(Some(&a.tracer_cpu_share), 100.0).as_ref(), 2),
        );
    }
    md.push('\n');
}

/// The sampled modes' accuracy against exact mode.
fn accuracy_table(md: &mut String, r: &Results) {
    if r.accuracy.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "**Accuracy**: exact, span and go-sampler attached at once to one run of `workloads classes` \
         ({} rounds); for the 10 callsites with the most bytes in exact mode, |estimate − exact| / exact.\n",
        r.plan.classes_rounds
    );
    md.push_str("| mode | setting | largest error, top 10 | mean error, top 10 |\n| --- | --- | --- | --- |\n");
    for row in &r.accuracy {
        let pct = |s: Option<&Stat>| {
            s.map_or_else(
                || "—".to_owned(),
                |s| {
                    let scaled = Stat::of(&s.runs.iter().map(|v| v * 100.0).collect::<Vec<_>>());
                    scaled.map_or_else(|| "—".to_owned(), |s| format!("{}%", s.show(1)))
                },
            )
        };
        match &row.error {
            Some(e) if row.max_abs_error.is_none() => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | |",
                    row.tracer.label(),
                    row.setting,
                    not_measured(e)
                );
            }
            _ => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    row.tracer.label(),
                    row.setting,
                    pct(row.max_abs_error.as_ref()),
                    pct(row.mean_abs_error.as_ref())
                );
            }
        }
    }
    md.push('\n');
}

/// gotrace's own costs: attach time, symbolization, peak RSS and CPU.
fn tracer_costs_table(md: &mut String, r: &Results) {
    let t = &r.tracer;
    if t.attach_ms.is_none() && t.attach_error.is_none() && t.cpu_at_rate.is_empty() {
        return;
    }
    md.push_str("**Tracer costs**\n\n| what | figure |\n| --- | --- |\n");
    match &t.attach_error {
        Some(e) => {
            let _ = writeln!(md, "| attach time | {} |", not_measured(e));
        }
        None => {
            let _ = writeln!(
                md,
                "| attach, from start to probes live, exact mode, on {} | {} ms (loading and attaching the probes: {} ms) |",
                t.attach_binary,
                stat(t.attach_ms.as_ref(), 0),
                stat(t.attach_probes_ms.as_ref(), 0)
            );
        }
    }
    match &t.symbolize_error {
        Some(e) => {
            let _ = writeln!(md, "| symbolization | {} |", not_measured(e));
        }
        None => {
            let _ = writeln!(
                md,
                "| symbolizing {} distinct stacks ({} frames, `workloads churn`) into a profile | {} ms cold, {} ms warm |",
                t.symbolize_stacks,
                t.symbolize_frames,
                stat(t.symbolize_ms.as_ref(), 0),
                stat(t.symbolize_warm_ms.as_ref(), 1)
            );
        }
    }
    let peak = r
        .realistic
        .iter()
        .filter_map(|row| row.tracer_peak_rss_mib)
        .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
    let _ = writeln!(
        md,
        "| gotrace's peak RSS, any mode, realistic workloads | {} MiB |",
        number(peak, 1)
    );
    for row in &t.cpu_at_rate {
        let _ = writeln!(
            md,
            "| gotrace's own CPU, {}, target paced at 1 M allocations/s (reached {} M/s) | {} |",
            row.tracer.label(),
            row.target_allocs_per_sec
                .as_ref()
                .map_or_else(|| "—".to_owned(), |s| format!("{:.2}", s.median / 1e6)),
            row.error.as_ref().map_or_else(
                || format!("{}% of a core", stat(row.cpu_percent.as_ref(), 2)),
                |e| not_measured(e)
            )
        );
    }
    md.push('\n');
}

/// The targets and their verdicts.
fn targets_table(md: &mut String, r: &Results) {
    if r.targets.is_empty() {
        return;
    }
    md.push_str(
        "**Targets** (the realistic workloads' losses: median of the paired runs, lowest to highest \
     in parentheses; *A/A noise*: how far apart two untraced instances came out, at most)\n\n\
     | target | figure | limit | A/A noise | met |\n| --- | --- | --- | --- | --- |\n",
    );
    for target in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            target.what,
            match target.range {
                Some([low, high]) => format!("{} ({low:.1} to {high:.1})", number(target.value, 1)),
                None => number(target.value, 2),
            },
            target.limit,
            target.noise.map_or_else(String::new, |n| format!("{n:.1}%")),
            match target.verdict {
                Verdict::Met => "yes",
                Verdict::Missed => "**no**",
                Verdict::Undecided => "**undecided**",
                Verdict::NotMeasured => "not measured",
            }
        );
    }
}

/// The advice when some targets are undecided ([`undecided_advice`]), after a blank line.
fn advice(md: &mut String, r: &Results) {
    if let Some(advice) = undecided_advice(&r.targets) {
        let _ = writeln!(md, "\n{advice}");
    }
}

/// What to do when some targets are undecided; `None` when none is.
pub(super) fn undecided_advice(targets: &[TargetCheck]) -> Option<String> {
    let undecided = targets.iter().filter(|t| t.verdict == Verdict::Undecided).count();
    (undecided > 0).then(|| {
        format!(
            "{undecided} target(s) undecided: in some A/A window two untraced instances came out further \
             apart than the limit, so this run cannot tell a loss that size from the machine's noise. \
             Run `sudo cargo xtask bench --only realistic` again when the host is quieter (the steal \
             figures above say how busy it was)."
        )
    })
}

/// A table cell for a measurement that could not run (a `|` would end the cell).
fn not_measured(error: &str) -> String {
    format!("not measured: {}", error.replace('|', "/"))
}

fn stat(s: Option<&Stat>, digits: usize) -> String {
    s.map_or_else(|| "—".to_owned(), |s| s.show(digits))
}

fn number(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}×"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{:+.1}%", (v - 1.0) * 100.0))
}

/// A percentage's median and range, as the prose says it.
fn spread(stat: Option<&Stat>) -> String {
    stat.map_or_else(
        || "(not measured)".to_owned(),
        |s| format!("{:.1}% ({:.1}–{:.1}%)", s.median, s.min, s.max),
    )
}

/// Duty-cycled span mode's period in the realistic windows, as the prose says it.
fn span_period(plan: &Plan) -> String {
    match plan.span_period_secs {
        Some(secs) => format!("{secs} s, gotrace's default"),
        None => format!(
            "as long as the other windows ({} s HTTP, {} s CPU-bound: faster than gotrace's \
             default, {} s, in this quick run)",
            plan.wrk_secs, plan.window_secs, SPAN_PERIOD_SECS
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{headline, markdown, undecided_advice};
    use crate::bench::side_by_side::SideBySideNoise;
    use crate::bench::targets::{TargetCheck, Verdict};
    use crate::bench::tracer_costs::TracerCosts;
    use crate::bench::{Machine, Plan, Results, SPAN_PERIOD_SECS};

    fn results(verdicts: &[Verdict]) -> Results {
        Results {
            machine: Machine {
                cpu: "AMD EPYC".to_owned(),
                cores: 2,
                kernel: "6.1.0".to_owned(),
                go: vec!["go1.25.5".to_owned(), "go1.27.3".to_owned()],
                bpftrace: Some("bpftrace v0.17.0".to_owned()),
                date: "2026-12-03 12:15 UTC".to_owned(),
            },
            quick: false,
            plan: Plan {
                runs: 5,
                window_secs: 5,
                wrk_secs: 10,
                span_period_secs: Some(SPAN_PERIOD_SECS),
                classes_rounds: 600,
                accuracy_runs: 3,
                symbolize_runs: 3,
            },
            cost: Vec::new(),
            realistic: Vec::new(),
            cpus: String::new(),
            noise: SideBySideNoise::default(),
            accuracy: Vec::new(),
            tracer: TracerCosts::default(),
            targets: verdicts
                .iter()
                .enumerate()
                .map(|(i, &verdict)| TargetCheck {
                    what: format!("target {i}"),
                    value: Some(1.5),
                    range: Some([0.5, 2.5]),
                    limit: "≤ 3% in every run".to_owned(),
                    verdict,
                    noise: Some(2.0),
                })
                .collect(),
        }
    }

    /// README.md's headline is the report's first sentence and its targets, as the full report
    /// has them, with the advice when a target is undecided.
    #[test]
    fn the_headline_is_the_first_sentence_and_the_targets_of_the_report() {
        let sentence = "Measured 2026-12-03 12:15 UTC by `cargo xtask bench` on AMD EPYC (2 cores), Linux 6.1.0, \
                        go1.25.5, go1.27.3; bpftrace v0.17.0.";
        for verdicts in [
            &[Verdict::Met, Verdict::Undecided][..],
            &[Verdict::Met, Verdict::Missed],
        ] {
            let r = results(verdicts);
            let md = markdown(&r);
            assert!(
                md.starts_with(&format!("{sentence} Each figure is the median of 5 runs")),
                "{md}"
            );
            // The targets come last in the full report, after the parts' tables.
            let targets = &md[md.find("**Targets**").expect("a targets table")..];
            assert!(targets.contains("| target 1 | 1.5 (0.5 to 2.5) | ≤ 3% in every run | 2.0% |"));
            let headline = headline(&r);
            assert_eq!(headline, format!("{sentence}\n\n{targets}"));
            match undecided_advice(&r.targets) {
                Some(advice) => assert!(headline.ends_with(&format!("|\n\n{advice}\n")), "{headline}"),
                None => assert!(headline.ends_with("|\n"), "{headline}"),
            }
        }
        assert!(undecided_advice(&results(&[Verdict::Undecided]).targets).is_some());
        assert!(undecided_advice(&results(&[Verdict::Missed]).targets).is_none());
    }
}
