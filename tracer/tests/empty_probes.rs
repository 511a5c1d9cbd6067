//! Where the bench's empty probes go (`tracer::probes::EmptyProbes::offsets`), checked against
//! the binary's own symbol table. Needs no root: nothing is attached.

use gobin::GoBinary;
use tracer::probes::{EmptyAt, EmptyProbes};

/// File offset of `address` in the binary: the executable segment maps the file at a fixed
/// distance, the one every probe point already carries.
fn file_offset_of(binary: &GoBinary<'_>, address: u64) -> u64 {
    let points = binary.probe_points().expect("probe points");
    let any = points.first().expect("a probe point");
    address - (any.probe_address - any.file_offset)
}

#[test]
fn empty_probes_go_to_span_modes_functions_and_to_the_counting_functions_entries() {
    for minor in ["1.21", "1.27"] {
        let fixture = testkit::fixture(minor, "default");
        let data = fixture.bytes();
        let binary = GoBinary::parse(&data).expect("parse");
        let functions = binary.functions();

        let span = EmptyProbes::offsets(&binary, EmptyAt::Span).expect("span offsets");
        let mut names: Vec<&str> = span.iter().map(|(f, _)| f.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "runtime.(*mcache).allocLarge",
                "runtime.(*mcache).refill",
                "runtime.(*mcache).releaseAll"
            ],
            "go{minor}"
        );

        let placement = EmptyProbes::offsets(&binary, EmptyAt::Placement).expect("placement offsets");
        let entry = EmptyProbes::offsets(&binary, EmptyAt::Entry).expect("entry offsets");
        assert!(
            placement.iter().any(|(f, _)| f == "runtime.mallocgc"),
            "go{minor}: {placement:?}"
        );
        assert_eq!(placement.len(), entry.len(), "go{minor}");
        for ((function, at_placement), (same, at_entry)) in placement.iter().zip(&entry) {
            assert_eq!(function, same, "go{minor}");
            let start = functions.by_name(function).expect(function).start;
            assert_eq!(*at_entry, file_offset_of(&binary, start), "go{minor}: {function}");
            assert!(at_placement >= at_entry, "go{minor}: {function}");
        }
    }
}
