//! The Go compiler's escape-analysis diagnostics (`go build -gcflags=-m=2`), parsed.
//!
//! Each diagnostic is one line `FILE:LINE:COL: MESSAGE` (`src/cmd/compile/internal/base/print.go`),
//! with FILE relative to the directory `go build` ran in. `-m=2` explains each escape before
//! its verdict (`src/cmd/compile/internal/escape/solve.go`, `explainFlow`):
//!
//! ```text
//! ./x.go:20:9: &point{...} escapes to heap:                 (Go 1.21–1.24)
//! ./x.go:20:9: &point{...} escapes to heap in newPoint:     (Go 1.25 and later)
//! ./x.go:20:9:   flow: ~r0 = &{storage for &point{...}}:    ('←' instead of '=' since 1.25)
//! ./x.go:20:9:     from return &point{...} (return) at ./x.go:20:2
//! ./x.go:20:9: &point{...} escapes to heap                  (the verdict)
//! ```
//!
//! The explanation is attached to the verdict at the same position. What the parser keeps is
//! what joins with traced callsites: "escapes to heap", "moved to heap: x" and "does not
//! escape" verdicts, and "inlining call to f" notes (they explain allocations attributed to a
//! line whose own code does not allocate).

use std::collections::BTreeMap;

/// One verdict or note of the compiler at a source position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as the compiler printed it (relative to where `go build` ran, or absolute).
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub what: What,
    /// The whole line, as the compiler printed it (`./x.go:12:9: &T{} escapes to heap`).
    pub text: String,
    /// The `-m=2` explanation: its `flow:` and `from … (reason) at …` lines, trimmed.
    pub flow: Vec<String>,
}

/// What a diagnostic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// `EXPR escapes to heap`: the value is allocated on the heap where it is created.
    Escapes,
    /// `moved to heap: NAME`: a variable lives on the heap for its whole life.
    MovedToHeap,
    /// `EXPR does not escape`: the compiler keeps it on the stack.
    DoesNotEscape,
    /// `inlining call to F`: code of F runs at this position.
    Inlined,
}

/// A diagnostic's file, line and column.
type Position = (String, u64, u64);
/// An explanation header (the verdict it announces) and its `flow:`/`from` lines.
type Explanation = (String, Vec<String>);

/// Parses the compiler's output; lines that are not diagnostics (`# package` headers, errors
/// of other kinds, inlining costs) are skipped.
pub fn parse(output: &str) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    // Explanations waiting for their verdict, by position: (header, flow lines).
    let mut open: BTreeMap<Position, Vec<Explanation>> = BTreeMap::new();
    for line in output.lines() {
        let Some((file, line_number, column, message)) = split_position(line) else {
            continue;
        };
        let position = (file.to_owned(), line_number, column);
        if message.starts_with(' ') {
            // Part of the explanation opened last at this position.
            if let Some((_, flow)) = open.get_mut(&position).and_then(|e| e.last_mut()) {
                flow.push(message.trim().to_owned());
            }
            continue;
        }
        if let Some(header) = message.strip_suffix(':') {
            open.entry(position)
                .or_default()
                .push((verdict_of_header(header).to_owned(), Vec::new()));
            continue;
        }
        let Some(what) = classify(message) else {
            continue;
        };
        // The explanation whose header is this verdict; for "moved to heap: x", the one of
        // "x escapes to heap:" (the variable's storage), announced under the variable's name.
        let flow = open.get_mut(&position).map_or_else(Vec::new, |explanations| {
            let at = explanations.iter().position(|(header, _)| {
                header == message
                    || message
                        .strip_prefix("moved to heap: ")
                        .is_some_and(|name| *header == format!("{name} escapes to heap"))
            });
            at.map(|i| explanations.remove(i).1).unwrap_or_default()
        });
        out.push(Diagnostic {
            file: file.to_owned(),
            line: line_number,
            column,
            what,
            text: line.to_owned(),
            flow,
        });
    }
    out
}

/// `FILE:LINE:COL: MESSAGE`, or `FILE:LINE: MESSAGE` when the column is unknown (the compiler
/// leaves out a column of 0), where FILE may itself contain colons.
fn split_position(line: &str) -> Option<(&str, u64, u64, &str)> {
    let (head, message) = line.split_once(": ")?;
    let mut parts = head.rsplitn(3, ':');
    let last: u64 = parts.next()?.parse().ok()?;
    let before = parts.next()?;
    let (file, line_number, column) = match before.parse::<u64>() {
        Ok(line_number) => (parts.next()?, line_number, last),
        // No column: `before` is the file (its own colons, if any, were split off into it).
        Err(_) => (head.rsplit_once(':')?.0, last, 0),
    };
    let go_file = std::path::Path::new(file).extension().is_some_and(|e| e == "go");
    go_file.then_some((file, line_number, column, message))
}

/// The verdict an explanation header announces: `X escapes to heap in F` (Go 1.25+) or
/// `X escapes to heap`, without the function.
fn verdict_of_header(header: &str) -> &str {
    match header.rfind(" escapes to heap in ") {
        Some(at) => &header[..at + " escapes to heap".len()],
        None => header,
    }
}

fn classify(message: &str) -> Option<What> {
    if message.starts_with("moved to heap: ") {
        Some(What::MovedToHeap)
    } else if message.ends_with(" escapes to heap") {
        Some(What::Escapes)
    } else if message.ends_with(" does not escape") {
        Some(What::DoesNotEscape)
    } else if message.starts_with("inlining call to ") {
        Some(What::Inlined)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go 1.21's `-m=2` for a function returning a pointer and one with a closure, as printed.
    const GO_1_21: &str = "\
# gotrace.test/escapes
./escapes.go:18:6: can inline newPoint with cost 9 as: func(int64) *point { return &point{...} }
./escapes.go:20:9: &point{...} escapes to heap:
./escapes.go:20:9:   flow: ~r0 = &{storage for &point{...}}:
./escapes.go:20:9:     from &point{...} (spill) at ./escapes.go:20:9
./escapes.go:20:9:     from return &point{...} (return) at ./escapes.go:20:2
./escapes.go:20:9: &point{...} escapes to heap
./escapes.go:25:2: n escapes to heap:
./escapes.go:25:2:   flow: {storage for func literal} = &n:
./escapes.go:25:2:     from n (captured by a closure) at ./escapes.go:26:24
./escapes.go:25:2: moved to heap: n
./escapes.go:48:18: map[int]int{} does not escape
./escapes.go:75:20: inlining call to strconv.Atoi
";

    /// The same from Go 1.27: the function in the header, arrows in the flow.
    const GO_1_27: &str = "\
./escapes.go:20:9: &point{...} escapes to heap in newPoint:
./escapes.go:20:9:   flow: ~r0 ← &{storage for &point{...}}:
./escapes.go:20:9:     from &point{...} (spill) at ./escapes.go:20:9
./escapes.go:20:9:     from return &point{...} (return) at ./escapes.go:20:2
./escapes.go:20:9: &point{...} escapes to heap
./escapes.go:42:13: make([]byte, n) does not escape
";

    #[test]
    fn go_1_21_verdicts_carry_their_flow() {
        let d = parse(GO_1_21);
        assert_eq!(d.len(), 4, "{d:#?}");
        assert_eq!((d[0].line, d[0].column, d[0].what), (20, 9, What::Escapes));
        assert_eq!(d[0].text, "./escapes.go:20:9: &point{...} escapes to heap");
        assert_eq!(
            d[0].flow,
            [
                "flow: ~r0 = &{storage for &point{...}}:",
                "from &point{...} (spill) at ./escapes.go:20:9",
                "from return &point{...} (return) at ./escapes.go:20:2"
            ]
        );
        assert_eq!((d[1].line, d[1].what), (25, What::MovedToHeap));
        assert!(d[1].flow[1].contains("(captured by a closure)"));
        assert_eq!((d[2].line, d[2].what, d[2].flow.len()), (48, What::DoesNotEscape, 0));
        assert_eq!((d[3].file.as_str(), d[3].what), ("./escapes.go", What::Inlined));
    }

    #[test]
    fn go_1_27_headers_name_the_function() {
        let d = parse(GO_1_27);
        assert_eq!(d.len(), 2, "{d:#?}");
        assert_eq!(d[0].what, What::Escapes);
        assert_eq!(d[0].flow.len(), 3);
        assert!(d[0].flow[0].contains('←'));
        assert_eq!((d[1].line, d[1].what), (42, What::DoesNotEscape));
    }

    /// Whole `go build -gcflags=-m=2` logs of `fixtures/go/escapes`, as Go 1.21.13 and 1.27.3
    /// printed them (explanations of a batch come before its verdicts, interleaved with others).
    const LOG_1_21: &str = include_str!("testdata/escapes-go1.21.m2.log");
    const LOG_1_27: &str = include_str!("testdata/escapes-go1.27.m2.log");

    fn at(d: &[Diagnostic], line: u64, column: u64) -> Vec<&Diagnostic> {
        d.iter().filter(|d| d.line == line && d.column == column).collect()
    }

    #[test]
    fn whole_logs_of_both_releases_give_each_site_its_verdict_and_flow() {
        for (log, non_constant_make) in [(LOG_1_21, What::Escapes), (LOG_1_27, What::DoesNotEscape)] {
            let d = parse(log);
            let one = |line, column, what: What, reason: &str| {
                let found = at(&d, line, column);
                let hit = found.iter().find(|d| d.what == what);
                assert!(
                    hit.is_some_and(|d| d.flow.iter().any(|f| f.contains(reason))),
                    "{line}:{column} {what:?} with {reason:?}: {found:#?}"
                );
            };
            one(20, 9, What::Escapes, "(return)");
            one(25, 2, What::MovedToHeap, "(captured by a closure)");
            one(31, 14, What::Escapes, "(assign)");
            one(36, 13, What::Escapes, "(too large for stack)");
            one(65, 5, What::Escapes, "(spill)");
            // newPair inlined into main: decided at the call, as part of main.
            one(87, 17, What::Escapes, "(assign)");
            assert!(at(&d, 87, 17).iter().any(|d| d.what == What::Inlined));
            assert!(
                at(&d, 42, 13).iter().any(|d| d.what == non_constant_make),
                "{:#?}",
                at(&d, 42, 13)
            );
            // Every verdict that has an explanation got its own: none is left over or mixed.
            let escapes = d.iter().filter(|d| d.what == What::Escapes).count();
            assert!(
                d.iter().filter(|d| d.what == What::Escapes).all(|d| !d.flow.is_empty()),
                "{escapes}"
            );
        }
    }

    #[test]
    fn positions_split_at_the_last_two_colons() {
        assert_eq!(
            split_position("/a:b/x.go:3:4: y does not escape"),
            Some(("/a:b/x.go", 3, 4, "y does not escape"))
        );
        assert_eq!(
            split_position("./x.go:7: y does not escape"),
            Some(("./x.go", 7, 0, "y does not escape"))
        );
        assert_eq!(split_position("# gotrace.test/escapes"), None);
        assert_eq!(split_position("go: downloading x"), None);
    }
}
