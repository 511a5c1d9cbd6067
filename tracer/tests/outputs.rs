//! Every output format read by its real consumer, and checked against the JSON report of the
//! same trace (one `gotrace run` writes all of them, `-o` per format):
//! - pprof: `go tool pprof` (`-top`, `-traces`, `-list`, `-raw`, both sample indexes);
//! - SVG: an XML parser;
//! - folded stacks: their grammar;
//! - jsonl: a JSON parser;
//! - the live view: a real terminal, tmux, driven with `send-keys` and read with `capture-pane`.
//!
//! Root only (they trace real processes); without root each test says why and passes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{gotrace, scratch};
use serde_json::Value;
use testkit::{Fixture, fixture, output, root_only};

/// One trace of the fixture, written in every format at once.
struct Outputs {
    fixture: Fixture,
    json: Value,
    pprof: PathBuf,
    folded: String,
    svg: String,
    jsonl: Vec<Value>,
}

/// Traced once, shared by the tests of this file.
fn outputs() -> &'static Outputs {
    static OUTPUTS: OnceLock<Outputs> = OnceLock::new();
    OUTPUTS.get_or_init(|| {
        let f = fixture("1.27", "pie");
        let [json, pprof, folded, svg, jsonl] = ["r.json", "r.pb.gz", "r.folded", "r.svg", "r.jsonl"].map(scratch);
        let run = output(
            gotrace()
                .args(["run", "--interval", "200ms"])
                .args(["-o".as_ref(), json.as_os_str(), "-o".as_ref(), pprof.as_os_str()])
                .args(["-o".as_ref(), folded.as_os_str(), "-o".as_ref(), svg.as_os_str()])
                .args(["-o".as_ref(), jsonl.as_os_str(), "--".as_ref(), f.path.as_os_str()])
                .args(["loop", "8000"]),
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        Outputs {
            json: serde_json::from_str(&read(&json)).expect("JSON report"),
            folded: read(&folded),
            svg: read(&svg),
            jsonl: read(&jsonl)
                .lines()
                .map(|l| serde_json::from_str(l).expect("each jsonl line is a JSON document"))
                .collect(),
            pprof,
            fixture: f,
        }
    })
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// JSON totals per function of the fixture's own package (pprof shortens some library names,
/// such as generic instantiations, for display).
fn json_per_function(json: &Value) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for c in json["callsites"].as_array().expect("callsites") {
        let function = c["function"].as_str().expect("function").to_owned();
        if !function.starts_with("main.") {
            continue;
        }
        let e = out.entry(function).or_default();
        e.0 += n(&c["allocations"]);
        e.1 += n(&c["bytes"]);
    }
    out
}

fn pprof(f: &Fixture, args: &[&str], file: &Path) -> String {
    let out = output(f.go_command().args(["tool", "pprof"]).args(args).arg(file));
    assert!(
        out.status.success(),
        "pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `flat` per function from `go tool pprof -top`, in exact units.
fn pprof_flat(f: &Fixture, file: &Path, sample_index: &str) -> BTreeMap<String, u64> {
    let text = pprof(
        f,
        &[
            "-top",
            "-nodecount=100000",
            "-nodefraction=0",
            "-unit=B",
            &format!("-sample_index={sample_index}"),
        ],
        file,
    );
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("flat") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        // "   1343384B 92.88% 92.88%   1381144B 95.49%  main.runSites"
        let mut fields = line.split_whitespace();
        let (Some(flat), Some(_), Some(_), Some(_), Some(_)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let function: Vec<&str> = fields.collect();
        let function = function.join(" ").trim_end_matches(" (inline)").to_owned();
        let value: u64 = flat.trim_end_matches('B').parse().unwrap_or_else(|_| panic!("{line}"));
        if value > 0 {
            *out.entry(function).or_default() += value;
        }
    }
    out
}

#[test]
fn pprof_is_read_by_go_tool_pprof_and_agrees_with_json() {
    let Some(_lock) = root_only("pprof_is_read_by_go_tool_pprof_and_agrees_with_json") else {
        return;
    };
    let o = outputs();
    let (f, file) = (&o.fixture, &o.pprof);
    let json = json_per_function(&o.json);
    assert!(json.contains_key("main.runSites") && json.contains_key("main.newPoint"));
    let space = pprof_flat(f, file, "alloc_space");
    let objects = pprof_flat(f, file, "alloc_objects");
    for (function, &(allocations, bytes)) in &json {
        assert_eq!(
            space.get(function).copied().unwrap_or(0),
            bytes,
            "alloc_space of {function}"
        );
        assert_eq!(
            objects.get(function).copied().unwrap_or(0),
            allocations,
            "alloc_objects of {function}"
        );
    }
    assert_eq!(
        space.values().sum::<u64>(),
        n(&o.json["totals"]["bytes"]),
        "alloc_space total"
    );
    assert_eq!(
        objects.values().sum::<u64>(),
        n(&o.json["totals"]["allocations"]),
        "alloc_objects total"
    );

    // Whole stacks with inlined frames, and the labels.
    let traces = pprof(f, &["-traces"], file);
    let inlined = traces
        .split("-----------+")
        .find(|t| t.contains("main.newPointInline"))
        .expect("a trace of the inlined allocation");
    // "  187.50kB   main.newPointInline (inline)", then "             main.runSites", …
    let names: Vec<&str> = inlined
        .lines()
        .filter(|l| !l.split_whitespace().next().is_some_and(|w| w.ends_with(':')))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("main.")))
        .collect();
    assert!(inlined.contains("main.newPointInline (inline)"), "{inlined}");
    assert_eq!(
        names[..3],
        ["main.newPointInline", "main.runSites", "main.loop"],
        "{inlined}"
    );
    assert!(
        inlined.contains("type:  main.Point") && inlined.contains("bytes:  24B"),
        "{inlined}"
    );

    let list = pprof(f, &["-list", "^main.newPoint$", "-unit=B"], file);
    let site = list
        .lines()
        .find(|l| l.contains("gotrace:site new_point"))
        .expect("the site line in -list");
    let json_bytes = json["main.newPoint"].1;
    assert!(
        site.trim_start().starts_with(&format!("{json_bytes}B ")),
        "{site} vs {json_bytes} bytes"
    );

    let raw = pprof(f, &["-raw"], file);
    assert!(raw.contains("alloc_objects/count alloc_space/bytes"), "{raw}");
    let build_id = readelf_build_id(&f.path);
    assert!(
        raw.contains(&build_id),
        "mapping build id {build_id} in:\n{}",
        &raw[..raw.len().min(2000)]
    );
}

fn readelf_build_id(path: &Path) -> String {
    let out = output(Command::new("readelf").arg("-n").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_owned))
        .expect("a GNU build id")
}

#[test]
fn folded_stacks_follow_the_grammar_and_agree_with_json() {
    let Some(_lock) = root_only("folded_stacks_follow_the_grammar_and_agree_with_json") else {
        return;
    };
    let o = outputs();
    let mut total = 0u64;
    let mut by_leaf: BTreeMap<(String, String), u64> = BTreeMap::new();
    for line in o.folded.lines() {
        // frame(;frame)* SPACE count, every frame non-empty and without ';', the leaf a type.
        let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count: {line}"));
        let count: u64 = count.parse().unwrap_or_else(|_| panic!("bad count: {line}"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(frames.iter().all(|f| !f.is_empty()), "empty frame: {line}");
        let leaf = frames.last().expect("frames");
        assert!(
            leaf.starts_with('[') && leaf.ends_with(']'),
            "leaf is not a type: {line}"
        );
        assert!(count > 0, "{line}");
        total += count;
        if frames.len() >= 2 {
            *by_leaf
                .entry((frames[frames.len() - 2].to_owned(), (*leaf).to_owned()))
                .or_default() += count;
        }
    }
    assert_eq!(total, n(&o.json["totals"]["bytes"]), "folded total");
    for c in o.json["callsites"].as_array().expect("callsites") {
        if c["function"] == "main.newPoint" {
            let leaf = format!("[{}]", c["type"].as_str().unwrap_or("untyped"));
            let key = ("main.newPoint".to_owned(), leaf);
            let folded_bytes = by_leaf.get(&key).copied().unwrap_or_else(|| {
                panic!(
                    "no folded stack ends in {key:?}, though JSON has the callsite {c}; folded:\n{}",
                    o.folded
                )
            });
            assert_eq!(folded_bytes, n(&c["bytes"]), "{c}");
        }
    }
    assert!(
        o.folded
            .lines()
            .any(|l| l.contains(";main.loop;main.runSites;main.newPointInline;[main.Point] ")),
        "the inlined frame is a frame of its own"
    );
}

#[test]
fn svg_is_well_formed_and_names_the_frames() {
    let Some(_lock) = root_only("svg_is_well_formed_and_names_the_frames") else {
        return;
    };
    let o = outputs();
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&o.svg, options).expect("the SVG is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let titles: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text())
        .collect();
    for frame in ["main.runSites", "main.newPoint", "[main.Point]", "main.newPointInline"] {
        assert!(titles.iter().any(|t| t.starts_with(frame)), "no frame {frame}");
    }
    let total = n(&o.json["totals"]["bytes"]);
    let all = titles.iter().find(|t| t.starts_with("all (")).expect("the root frame");
    let bytes: u64 = all["all (".len()..]
        .split_whitespace()
        .next()
        .expect("a number")
        .replace(',', "")
        .parse()
        .expect("bytes");
    assert_eq!(bytes, total, "{all}");
}

#[test]
fn jsonl_documents_are_deltas_that_add_up() {
    let Some(_lock) = root_only("jsonl_documents_are_deltas_that_add_up") else {
        return;
    };
    let o = outputs();
    assert!(o.jsonl.len() >= 2, "{} documents", o.jsonl.len());
    let mut end = 0.0;
    let (mut allocations, mut bytes) = (0, 0);
    for doc in &o.jsonl {
        assert_eq!(doc["mode"], "exact");
        let interval = &doc["interval"];
        let start = interval["start_secs"].as_f64().expect("start");
        assert!((start - end).abs() < 1e-9, "intervals are contiguous");
        end = interval["end_secs"].as_f64().expect("end");
        allocations += n(&doc["totals"]["allocations"]);
        bytes += n(&doc["totals"]["bytes"]);
        let callsite_bytes: u64 = doc["callsites"]
            .as_array()
            .expect("callsites")
            .iter()
            .map(|c| n(&c["bytes"]))
            .sum();
        assert_eq!(
            callsite_bytes,
            n(&doc["totals"]["bytes"]),
            "a document's callsites add up to its totals"
        );
    }
    assert_eq!(allocations, n(&o.json["totals"]["allocations"]));
    assert_eq!(bytes, n(&o.json["totals"]["bytes"]));
    assert_eq!(o.jsonl.last().expect("last")["ended"], "target exited with status 0");
}

/// A terminal for the live view.
struct Tmux {
    session: String,
}

impl Tmux {
    fn start(command: &str, env: &[(&str, &str)]) -> Self {
        let session = format!("gotrace-{}", std::process::id());
        let mut cmd = Command::new("tmux");
        cmd.args(["new-session", "-d", "-s", &session, "-x", "180", "-y", "45"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        let status = cmd.arg(command).status().expect("tmux");
        assert!(status.success());
        let _ = Command::new("tmux")
            .args(["set-option", "-t", &session, "remain-on-exit", "on"])
            .status();
        Self { session }
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// The screen, with colour escapes when `escapes`.
    fn screen(&self, escapes: bool) -> String {
        let mut cmd = Command::new("tmux");
        cmd.args(["capture-pane", "-p", "-t", &self.session]);
        if escapes {
            cmd.arg("-e");
        }
        String::from_utf8_lossy(&output(&mut cmd).stdout).into_owned()
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str) -> String {
        self.wait_until(text, |screen| screen.contains(text))
    }

    /// Waits until the screen satisfies `ready` (a capture can catch a redraw half done, so
    /// tests wait for the state they expect rather than take one look).
    fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen(false);
            if ready(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// The callsites of the table rows on a screen, in order: the last two words of each row,
/// `function file:line`.
fn rows(screen: &str) -> Vec<String> {
    screen
        .lines()
        .filter(|l| l.contains(".go:"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[words.len().saturating_sub(2)..].join(" ")
        })
        .collect()
}

#[test]
fn live_view_sorts_filters_pauses_and_quits_in_a_real_terminal() {
    let Some(_lock) = root_only("live_view_sorts_filters_pauses_and_quits_in_a_real_terminal") else {
        return;
    };
    let f = fixture("1.26", "default");
    let mut target = Command::new(&f.path)
        .args(["rate", "100"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("target");
    for (env, coloured) in [(&[][..], true), (&[("NO_COLOR", "1")][..], false)] {
        let tmux = Tmux::start(
            &format!(
                "{} attach {} --interval 300ms; echo gotrace-exit=$?",
                env!("CARGO_BIN_EXE_gotrace"),
                target.id()
            ),
            env,
        );
        let screen = tmux.wait_for("main.runSites");
        assert!(screen.contains("sort: bytes"), "{screen}");
        assert!(screen.contains("b bytes · a allocations · s size · i in use · g growth from now · / filter"));
        // The header is cyan unless NO_COLOR (tmux writes the colour as SGR 38;5;6 or 36).
        let escapes = tmux.screen(true);
        assert_eq!(
            escapes.contains("\x1b[38;5;6m") || escapes.contains("\x1b[36m"),
            coloured,
            "{escapes:?}"
        );

        tmux.keys(&["a"]);
        let screen = tmux.wait_for("sort: allocations");
        let by_allocations = rows(&screen);
        tmux.keys(&["b"]);
        let screen = tmux.wait_for("sort: bytes");
        assert_ne!(rows(&screen), by_allocations, "sorting changes the order");

        tmux.keys(&["/", "newPoint", "Enter"]);
        let screen = tmux.wait_until("only newPoint rows", |screen| {
            let rows = rows(screen);
            screen.contains("sort: bytes   filter: newPoint")
                && !rows.is_empty()
                && rows.iter().all(|r| r.contains("newPoint"))
        });
        assert_eq!(rows(&screen).len(), 2, "newPoint and newPointInline:\n{screen}");

        tmux.keys(&["p"]);
        let paused = tmux.wait_for("PAUSED");
        std::thread::sleep(Duration::from_millis(900));
        let summary = |s: &str| s.lines().next().unwrap_or_default().to_owned();
        assert_eq!(
            summary(&tmux.screen(false)),
            summary(&paused),
            "paused: the numbers stand still"
        );

        tmux.keys(&["q"]);
        let screen = tmux.wait_for("gotrace-exit=");
        assert!(screen.contains("gotrace-exit=0"), "{screen}");
        assert!(
            screen.contains("BYTES") && screen.contains("main.runSites"),
            "the final report follows:\n{screen}"
        );
    }
    drop(target.stdin.take());
    let _ = target.wait();
}
