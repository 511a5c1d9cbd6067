//! The ground-truth comparison of the `allocs` fixture: what gotrace reported for one run of
//! `allocs profile ROUNDS FILE` under `GODEBUG=memprofilerate=1`, against the heap profile Go
//! itself recorded in that run (every allocation, since the rate is 1), written per callsite
//! to FILE by the fixture.
//!
//! Shared by the host's attach tests and `cargo xtask arm64`, which runs the same fixtures on
//! an arm64 kernel under qemu and compares their outputs here, on the host. The checks return
//! what disagrees, one line each, rather than panic, so that one run reports every mismatch.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::Fixture;

/// Rounds of the fixture's allocation sites in a ground-truth run (`allocs profile ROUNDS`).
pub const ROUNDS: u64 = 200;

/// A callsite: function, file, line.
pub type CallsiteId = (String, String, u64);

/// What gotrace says of a callsite: allocations, bytes, and the (type, kind) pairs there.
type Observed = (u64, u64, Vec<(Option<String>, String)>);

/// The file of the fixture's sites and the line of each `// gotrace:site NAME` marker in it.
pub fn site_lines(f: &Fixture) -> (String, BTreeMap<String, u64>) {
    let file = f.source_dir.join("allocs.go");
    let text = std::fs::read_to_string(&file).expect("fixture source");
    let sites = text
        .lines()
        .zip(1..)
        .filter_map(|(l, n)| {
            let name = l.split("// gotrace:site ").nth(1)?.trim();
            (!name.is_empty() && !l.trim_start().starts_with("//")).then(|| (name.to_owned(), n))
        })
        .collect();
    (file.to_str().expect("utf-8").to_owned(), sites)
}

/// The fixture's allocating functions, whose every allocation is in Go's profile (the profile
/// is taken after them), and the library functions that two of the sites allocate in.
/// `main.growPastFirstGC` starts the process's first GC cycle: the runtime's allocations on
/// the system stack then must not be charged to it.
fn compared(function: &str) -> bool {
    matches!(
        function,
        "main.runSites"
            | "main.newPoint"
            | "main.newPointInline"
            | "main.growPastFirstGC"
            | "reflect.New"
            | "strings.(*Builder).grow"
    )
}

fn callsite_id(c: &Value) -> Option<CallsiteId> {
    let function = c["function"].as_str()?;
    compared(function).then(|| {
        (
            function.to_owned(),
            c["file"].as_str().unwrap_or_default().to_owned(),
            c["line"].as_u64().unwrap_or_default(),
        )
    })
}

/// gotrace's callsites: (allocations, bytes, [(type, kind)]).
fn gotrace_totals(report: &Value) -> BTreeMap<CallsiteId, Observed> {
    let mut out: BTreeMap<CallsiteId, Observed> = BTreeMap::new();
    for c in report["callsites"].as_array().into_iter().flatten() {
        let Some(id) = callsite_id(c) else { continue };
        let e = out.entry(id).or_default();
        e.0 += c["allocations"].as_u64().unwrap_or_default();
        e.1 += c["bytes"].as_u64().unwrap_or_default();
        e.2.push((
            c["type"].as_str().map(str::to_owned),
            c["kind"].as_str().unwrap_or("?").to_owned(),
        ));
    }
    out
}

/// Go's callsites: (objects, bytes).
fn profile_totals(profile: &Value) -> BTreeMap<CallsiteId, (u64, u64)> {
    let mut out: BTreeMap<CallsiteId, (u64, u64)> = BTreeMap::new();
    for c in profile["callsites"].as_array().into_iter().flatten() {
        let Some(id) = callsite_id(c) else { continue };
        let e = out.entry(id).or_default();
        e.0 += c["objects"].as_u64().unwrap_or_default();
        e.1 += c["bytes"].as_u64().unwrap_or_default();
    }
    out
}

/// The type and kind each site must report (a type of `None` is untyped memory).
fn expected_type_and_kind(site: &str) -> Option<(Option<&'static str>, &'static str)> {
    Some(match site {
        "new_point" | "inline_new_point" => (Some("main.Point"), "new"),
        "new_node" => (Some("main.Node"), "new"),
        "new_point_ptr" => (Some("*main.Point"), "new"),
        "new_point_slice" => (Some("[]main.Point"), "new"),
        "make_points" => (Some("main.Point"), "makeslice"),
        "make_bytes" => (Some("uint8"), "makeslice"),
        "new_bytes_slice" => (Some("[]uint8"), "new"),
        "new_string" => (Some("string"), "new"),
        "new_map_header" => (Some("map[string]int"), "new"),
        "new_pair" => (Some("main.Pair[int,string]"), "new"),
        "new_holder" => (Some("main.Holder"), "new"),
        "new_big" => (Some("main.Big"), "new"),
        "append_grow" => (Some("*main.Node"), "growslice"),
        "concat" | "bytes_to_string" => (None, "string"),
        "box_point" => (Some("main.Point"), "convT"),
        // Map internals differ by release (buckets before 1.24, swiss tables after), and
        // convTstring passes a runtime type: the kinds are checked, the types are the
        // runtime's own. The last two allocate in the standard library: checked by function.
        "make_map" | "map_insert" | "box_string" | "strings_repeat" | "reflect_new" => return None,
        _ => panic!("unknown site {site}"),
    })
}

/// `concat` allocates 11 or 12 pointer-free bytes: a tiny allocation, which Go's profile
/// merges into 16-byte blocks. Its counts are known by construction instead.
fn concat_by_construction(rounds: u64) -> (u64, u64) {
    let prefixes = ["order-", "item-", "user-"];
    let bytes = (0..rounds)
        .map(|r| {
            let n = 16 + r % 16;
            (prefixes[usize::try_from(r % 3).expect("small")].len() + format!("key-{n}").len()) as u64
        })
        .sum();
    (rounds, bytes)
}

/// The checks every report must pass, whatever its mode.
fn common_mismatches(f: &Fixture, report: &Value, mode: &str, problems: &mut Vec<String>) {
    if report["mode"] != mode {
        problems.push(format!("mode {} instead of {mode}", report["mode"]));
    }
    if report["target"]["go_version"] != f.go_version.as_str() {
        problems.push(format!(
            "go_version {} instead of {}",
            report["target"]["go_version"], f.go_version
        ));
    }
    if report["totals"]["dropped"] != 0 {
        problems.push(format!("dropped {}: {}", report["totals"]["dropped"], report["probes"]));
    }
    if report["probes"]["without_stack"] != 0 {
        problems.push(format!("allocations without a stack: {}", report["probes"]));
    }
}

/// Exact mode against Go's profile: every callsite either side knows has the same count on
/// the other side (library callsites may have a few more: they also serve the fixture's
/// encoding of the profile, after it was taken), the bytes asked for are within the size
/// classes Go's profile counts, and every site reports its type and kind.
pub fn exact_mismatches(f: &Fixture, report: &Value, profile: &Value, rounds: u64) -> Vec<String> {
    let mut problems = Vec::new();
    common_mismatches(f, report, "exact", &mut problems);
    let (file, sites) = site_lines(f);
    let ours = gotrace_totals(report);
    let theirs = profile_totals(profile);

    let concat: CallsiteId = ("main.runSites".to_owned(), file.clone(), sites["concat"]);
    let ids: BTreeSet<&CallsiteId> = ours.keys().chain(theirs.keys()).collect();
    if ids.len() <= 20 {
        problems.push(format!("only {} callsites", ids.len()));
    }
    for id in ids {
        let (count, bytes, _) = ours.get(id).cloned().unwrap_or_default();
        if *id == concat {
            if (count, bytes) != concat_by_construction(rounds) {
                problems.push(format!(
                    "concat: {count} allocations, {bytes} bytes instead of {:?}",
                    concat_by_construction(rounds)
                ));
            }
            continue;
        }
        let (objects, profile_bytes) = theirs.get(id).copied().unwrap_or_default();
        let in_main = id.0.starts_with("main.");
        if in_main && count != objects || !in_main && !(objects..=objects + 16).contains(&count) {
            problems.push(format!("allocations at {id:?}: {count}, Go's profile {objects}"));
        }
        // Go's profile counts the size class an object got; gotrace the bytes asked for.
        let bytes_fit = if in_main {
            bytes <= profile_bytes && bytes * 2 >= profile_bytes
        } else {
            bytes > 0
        };
        if !bytes_fit {
            problems.push(format!("bytes at {id:?}: {bytes}, Go's profile {profile_bytes}"));
        }
    }

    // Types and kinds, by site line. Not the runtime's own objects that it makes with `new`
    // while a site's allocation starts a GC cycle (a `runtime.sudog` to wait on
    // `work.startSema`): Go's profile charges them to the site's line too, so the counts
    // above include them, but they are not the site's type.
    for (site, line) in &sites {
        let types: Vec<(Option<String>, String)> = ours
            .iter()
            .filter(|((_, f, l), _)| *f == file && l == line)
            .flat_map(|(_, e)| e.2.clone())
            .filter(|(t, k)| !(k == "new" && t.as_deref().is_some_and(|t| t.starts_with("runtime."))))
            .collect();
        match expected_type_and_kind(site) {
            Some((typ, kind)) => {
                let want = vec![(typ.map(str::to_owned), kind.to_owned())];
                if types != want {
                    problems.push(format!(
                        "{site} (line {line}): type and kind {types:?} instead of {want:?}"
                    ));
                }
            }
            None if site == "strings_repeat" || site == "reflect_new" => {}
            None => {
                let kind = if site == "box_string" { "convT" } else { "makemap" };
                if types.is_empty() || types.iter().any(|(_, k)| k != kind) {
                    problems.push(format!("{site} (line {line}): kinds {types:?}, expected all {kind}"));
                }
            }
        }
    }
    // Runtime code linked into other packages (reflect.unsafe_New,
    // internal/bytealg.MakeNoZero) is looked past, to the library's callsite.
    let in_function = |function: &str| -> Vec<(Option<String>, String)> {
        ours.iter()
            .filter(|(id, _)| id.0 == function)
            .flat_map(|(_, e)| e.2.clone())
            .collect()
    };
    let reflect_new = in_function("reflect.New");
    if !reflect_new.contains(&(Some("main.Point".to_owned()), "new".to_owned())) {
        problems.push(format!("reflect.New: {reflect_new:?}"));
    }
    let grow = in_function("strings.(*Builder).grow");
    if !grow.contains(&(None, "makeslice".to_owned())) {
        problems.push(format!("strings.(*Builder).grow: {grow:?}"));
    }
    problems
}

/// go-sampler mode (what `--mode auto` picks for a program that profiles itself) against Go's
/// profile, with `GODEBUG=memprofilerate=1`: both see Go's own samples, one per allocation, so
/// the estimates must be the profile's counts and size-class bytes exactly (library callsites
/// again may have a few more). Types are unknown in sampled modes.
pub fn sampler_mismatches(f: &Fixture, report: &Value, profile: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    common_mismatches(f, report, "go-sampler", &mut problems);
    if report["estimated"] != true {
        problems.push(format!("estimated is {}, not true", report["estimated"]));
    }
    let ours = gotrace_totals(report);
    let theirs = profile_totals(profile);
    let ids: BTreeSet<&CallsiteId> = ours.keys().chain(theirs.keys()).collect();
    if ids.len() <= 20 {
        problems.push(format!("only {} callsites", ids.len()));
    }
    for id in ids {
        let (count, bytes, _) = ours.get(id).cloned().unwrap_or_default();
        let (objects, profile_bytes) = theirs.get(id).copied().unwrap_or_default();
        let agrees = if id.0.starts_with("main.") {
            (count, bytes) == (objects, profile_bytes)
        } else {
            (objects..=objects + 16).contains(&count) && bytes >= profile_bytes
        };
        if !agrees {
            problems.push(format!(
                "{id:?}: {count} allocations, {bytes} bytes; Go's profile {objects}, {profile_bytes}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_counts_follow_the_fixtures_keys() {
        // Rounds 0..3: "order-key-16", "item-key-17", "user-key-18".
        assert_eq!(concat_by_construction(3), (3, 12 + 11 + 11));
    }
}
