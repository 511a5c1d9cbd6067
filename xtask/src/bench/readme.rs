//! `--readme`: the full tables into docs/performance.md and the headline (when and where, and the
//! targets) into README.md, each between its markers.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The part of a file that `--readme` rewrites: what is between `begin` and `end`.
#[derive(Debug, Clone, Copy)]
struct Markers {
    /// What the error messages call them.
    name: &'static str,
    begin: &'static str,
    end: &'static str,
}

/// The file the full tables go into, and its markers around them.
const TABLES_FILE: &str = "docs/performance.md";
const TABLES: Markers = Markers {
    name: "bench",
    begin: "<!-- bench:begin (cargo xtask bench --readme writes this part) -->",
    end: "<!-- bench:end -->",
};

/// The file the headline goes into, and its markers around it.
const HEADLINE_FILE: &str = "README.md";
const HEADLINE: Markers = Markers {
    name: "headline",
    begin: "<!-- headline:begin (cargo xtask bench --readme writes this part) -->",
    end: "<!-- headline:end -->",
};

/// The files `--readme` writes, in `repo`.
fn files(repo: &Path) -> [(PathBuf, Markers); 2] {
    [(repo.join(TABLES_FILE), TABLES), (repo.join(HEADLINE_FILE), HEADLINE)]
}

/// Checks that both files have their markers, without writing either: before a run, so that a
/// missing marker is found before the run's minutes are spent rather than after.
pub(super) fn check(repo: &Path) -> Result<()> {
    for (path, markers) in files(repo) {
        spliced(&path, &read(&path)?, markers, "")?;
    }
    Ok(())
}

/// Writes `tables` between docs/performance.md's bench markers and `headline` between
/// README.md's headline markers. Both files are read and checked before either is written: a
/// missing or misplaced marker in one changes neither.
pub(super) fn write(repo: &Path, tables: &str, headline: &str) -> Result<()> {
    let [(tables_path, tables_markers), (headline_path, headline_markers)] = files(repo);
    let updated = [
        (
            &tables_path,
            spliced(&tables_path, &read(&tables_path)?, tables_markers, tables)?,
        ),
        (
            &headline_path,
            spliced(&headline_path, &read(&headline_path)?, headline_markers, headline)?,
        ),
    ];
    for (path, text) in updated {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `text` (of the file at `path`, which the errors name) with what is between `markers` replaced
/// by `content`.
fn spliced(path: &Path, text: &str, markers: Markers, content: &str) -> Result<String> {
    let Markers { name, begin, end } = markers;
    let (Some(at_begin), Some(at_end)) = (text.find(begin), text.find(end)) else {
        let missing = if text.contains(begin) { end } else { begin };
        bail!(
            "{} has no {name} markers: {missing} is missing (--readme writes between {begin} and {end})",
            path.display()
        );
    };
    if at_end < at_begin {
        bail!(
            "{}: the {name} markers are in the wrong order ({end} before {begin})",
            path.display()
        );
    }
    Ok(format!("{}{begin}\n{content}{}", &text[..at_begin], &text[at_end..]))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{HEADLINE, HEADLINE_FILE, Markers, TABLES, TABLES_FILE, check, spliced, write};

    /// A scratch directory of its own for one test, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("gotrace-bench-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("docs")).expect("scratch");
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn framed(markers: Markers, inside: &str) -> String {
        format!("intro\n{}\n{inside}{}\nrest\n", markers.begin, markers.end)
    }

    fn read(repo: &Path, file: &str) -> String {
        std::fs::read_to_string(repo.join(file)).expect("read")
    }

    #[test]
    fn readme_table_is_replaced_between_the_markers_only() {
        let (begin, end) = (TABLES.begin, TABLES.end);
        let path = Path::new("docs/performance.md");
        let text = spliced(
            path,
            &format!("intro\n{begin}\nold table\n{end}\nrest\n"),
            TABLES,
            "| new | table |\n",
        )
        .expect("update");
        assert_eq!(text, format!("intro\n{begin}\n| new | table |\n{end}\nrest\n"));
        // Idempotent: a second run replaces its own table.
        let text = spliced(path, &text, TABLES, "| newer |\n").expect("update");
        assert_eq!(text, format!("intro\n{begin}\n| newer |\n{end}\nrest\n"));

        let err = spliced(path, "no markers\n", TABLES, "x").expect_err("no markers");
        assert!(format!("{err:#}").contains("no bench markers"), "{err:#}");
        let err = spliced(path, &format!("{end}\n{begin}\n"), TABLES, "x").expect_err("reversed");
        assert!(format!("{err:#}").contains("wrong order"), "{err:#}");
    }

    #[test]
    fn readme_writes_the_tables_into_docs_and_the_headline_into_readme() {
        let scratch = Scratch::new("readme-both");
        let repo = &scratch.0;
        std::fs::write(repo.join(TABLES_FILE), framed(TABLES, "old tables\n")).expect("write");
        std::fs::write(repo.join(HEADLINE_FILE), framed(HEADLINE, "old headline\n")).expect("write");
        check(repo).expect("both files have their markers");
        write(repo, "| all | tables |\n", "Measured today.\n\n| targets |\n").expect("update");
        assert_eq!(read(repo, TABLES_FILE), framed(TABLES, "| all | tables |\n"));
        assert_eq!(
            read(repo, HEADLINE_FILE),
            framed(HEADLINE, "Measured today.\n\n| targets |\n")
        );
    }

    #[test]
    fn readme_without_headline_markers_changes_neither_file() {
        let scratch = Scratch::new("readme-no-headline");
        let repo = &scratch.0;
        let tables = framed(TABLES, "old tables\n");
        // README.md as it was: the bench markers, no headline ones.
        let readme = framed(TABLES, "old tables\n");
        std::fs::write(repo.join(TABLES_FILE), &tables).expect("write");
        std::fs::write(repo.join(HEADLINE_FILE), &readme).expect("write");
        for err in [
            check(repo).expect_err("no headline markers"),
            write(repo, "| all | tables |\n", "headline\n").expect_err("no headline markers"),
        ] {
            let message = format!("{err:#}");
            assert!(
                message.contains("README.md has no headline markers") && message.contains(HEADLINE.begin),
                "{message}"
            );
        }
        assert_eq!(read(repo, TABLES_FILE), tables);
        assert_eq!(read(repo, HEADLINE_FILE), readme);

        // Only the end marker missing: the message names it.
        std::fs::write(repo.join(HEADLINE_FILE), format!("{}\nheadline\n", HEADLINE.begin)).expect("write");
        let message = format!("{:#}", write(repo, "x", "y").expect_err("no end marker"));
        assert!(message.contains(&format!("{} is missing", HEADLINE.end)), "{message}");
        assert_eq!(read(repo, TABLES_FILE), tables);
    }

    #[test]
    fn readme_without_the_docs_file_changes_nothing() {
        let scratch = Scratch::new("readme-no-docs");
        let repo = &scratch.0;
        let readme = framed(HEADLINE, "old headline\n");
        std::fs::write(repo.join(HEADLINE_FILE), &readme).expect("write");
        let message = format!("{:#}", write(repo, "x", "y").expect_err("no docs/performance.md"));
        assert!(
            message.contains("cannot read") && message.contains(TABLES_FILE),
            "{message}"
        );
        assert_eq!(read(repo, HEADLINE_FILE), readme);
    }

    /// The repository's own files have the markers `--readme` writes between, so that a full
    /// bench does not end in a marker error after 40 minutes.
    #[test]
    fn the_repository_has_both_pairs_of_markers() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        check(&repo).unwrap();
    }
}
