//! pprof: a gzip-compressed `perftools.profiles.Profile`, as `go tool pprof`, Parca and
//! Pyroscope read it.
//!
//! Shaped like Go's own heap profiles (`runtime/pprof`'s `writeHeapProto`): sample types
//! `alloc_objects/count` and `alloc_space/bytes`, then, where in-use heap is tracked,
//! `inuse_objects/count` and `inuse_space/bytes`, which `go tool pprof` then opens on (the
//! profile's default sample type, as the last type is in Go's own); stacks that
//! start at the first frame outside the runtime, a `bytes` label with the object size. Each
//! location is one pc with its inlined frames as several lines, innermost first. Types and
//! kinds are labels too (`-tagfocus`, `-tags`).

use std::collections::HashMap;
use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use pprof_proto::{Function, Label, Line, Location, Mapping, Message as _, Profile, Sample, ValueType};

use super::{Exporter, Trace};

/// `--format pprof`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PprofExporter;

impl Exporter for PprofExporter {
    fn export(&self, trace: &Trace<'_>, out: &mut dyn Write) -> io::Result<()> {
        let profile = build(trace);
        let mut gz = GzEncoder::new(out, Compression::default());
        gz.write_all(&profile.encode_to_vec())?;
        gz.finish()?;
        Ok(())
    }
}

/// The mapping every location belongs to.
const MAPPING_ID: u64 = 1;

/// Interns strings, functions and locations, as the format wants them.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<Location>,
    /// By pc, by how many of its innermost lines were left out (runtime frames above the
    /// callsite, when the callsite is inlined at that pc), and by how many it has: a stack
    /// from the runtime's own records has one line per pc where gotrace's has the inlined
    /// ones too.
    location_ids: HashMap<(u64, usize, usize), u64>,
}

impl Tables {
    fn new() -> Self {
        let mut t = Self::default();
        // string_table[0] must be "".
        t.string("");
        t
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = i64::try_from(self.strings.len()).unwrap_or(i64::MAX);
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (self.string(name), self.string(file));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name: key.0,
            system_name: key.0,
            filename: key.1,
            ..Function::default()
        });
        self.function_ids.insert(key, id);
        id
    }

    fn location(&mut self, pc: u64, skipped: usize, frames: &[gobin::Frame]) -> u64 {
        let key = (pc, skipped, frames.len());
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let line = frames
            .iter()
            .skip(skipped)
            .map(|f| Line {
                function_id: self.function(&f.function, &f.file),
                line: i64::from(f.line),
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(Location {
            id,
            mapping_id: MAPPING_ID,
            address: pc,
            line,
            ..Location::default()
        });
        self.location_ids.insert(key, id);
        id
    }
}

/// Go's heap-profile sample types: the allocations, then what is in use when it is known.
fn sample_types(t: &mut Tables, inuse: bool) -> Vec<ValueType> {
    let mut sample_type = vec![
        ValueType {
            r#type: t.string("alloc_objects"),
            unit: t.string("count"),
        },
        ValueType {
            r#type: t.string("alloc_space"),
            unit: t.string("bytes"),
        },
    ];
    if inuse {
        sample_type.push(ValueType {
            r#type: t.string("inuse_objects"),
            unit: t.string("count"),
        });
        sample_type.push(ValueType {
            r#type: t.string("inuse_space"),
            unit: t.string("bytes"),
        });
    }
    sample_type
}

fn build(trace: &Trace<'_>) -> Profile {
    let mut t = Tables::new();
    let inuse = trace.profile.inuse.available;
    let sample_type = sample_types(&mut t, inuse);
    let (bytes_key, bytes_unit) = (t.string("bytes"), t.string("bytes"));
    let (type_key, kind_key) = (t.string("type"), t.string("kind"));
    let mut samples = Vec::with_capacity(trace.profile.samples.len());
    for sample in &trace.profile.samples {
        let mut location_id = Vec::with_capacity(sample.locations.len());
        let mut skip = sample.runtime_frames;
        for (pc, frames) in sample.locations.iter() {
            if skip >= frames.len() {
                skip -= frames.len();
                continue;
            }
            location_id.push(t.location(*pc, skip, frames));
            skip = 0;
        }
        let mut label = vec![Label {
            key: bytes_key,
            num: i64::try_from(sample.size).unwrap_or(i64::MAX),
            num_unit: bytes_unit,
            ..Label::default()
        }];
        if let Some(type_name) = &sample.type_name {
            label.push(Label {
                key: type_key,
                str: t.string(type_name),
                ..Label::default()
            });
        }
        label.push(Label {
            key: kind_key,
            str: t.string(sample.kind.as_str()),
            ..Label::default()
        });
        let size = i64::try_from(sample.size).unwrap_or(i64::MAX);
        let count = i64::try_from(sample.count).unwrap_or(i64::MAX);
        let mut value = vec![count, count.saturating_mul(size)];
        if inuse {
            let alive = i64::try_from(sample.inuse).unwrap_or(i64::MAX);
            value.extend([alive, alive.saturating_mul(size)]);
        }
        samples.push(Sample {
            location_id,
            value,
            label,
        });
    }
    let m = trace.mapping;
    let mapping = vec![Mapping {
        id: MAPPING_ID,
        memory_start: m.start,
        memory_limit: m.limit,
        file_offset: m.offset,
        filename: t.string(&m.path),
        build_id: t.string(m.build_id.as_deref().unwrap_or_default()),
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
        has_inline_frames: true,
    }];
    let report = trace.report;
    let comment = vec![
        t.string(&format!(
            "gotrace {} mode ({}); pid {} ({}, {})",
            report.mode, report.method, report.target.pid, report.target.exe, report.target.go_version
        )),
        t.string(&trace.profile.inuse.note),
    ];
    let period_type = Some(ValueType {
        r#type: t.string("space"),
        unit: t.string("bytes"),
    });
    let default_sample_type = t.string(if inuse { "inuse_space" } else { "alloc_space" });
    #[expect(clippy::cast_possible_truncation, reason = "a trace lasts less than 292 years")]
    let duration_nanos = (report.duration_secs * 1e9) as i64;
    Profile {
        sample_type,
        sample: samples,
        mapping,
        location: t.locations,
        function: t.functions,
        string_table: t.strings,
        time_nanos: trace.started_unix_nanos,
        duration_nanos,
        period_type,
        // Exact mode: every allocation is a sample of itself. Sampled modes: the values are
        // already scaled to estimates, as Go's own heap profiles are.
        period: 1,
        comment,
        default_sample_type,
        ..Profile::default()
    }
}
