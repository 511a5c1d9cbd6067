//! Several pprof profiles as one: what `serve --all` serves for all processes of a container
//! (or of the node). Each profile keeps its own mapping (the processes may run different
//! binaries), its samples get labels saying which process they came from (`pid`, for
//! `go tool pprof -tagfocus`), and the sample types are the union of all of them, in order of
//! first appearance, so that a span-mode profile (allocations only) merges with a go-sampler
//! one (in-use too), its in-use values 0.

use std::collections::HashMap;
use std::io::{self, Read as _, Write as _};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use pprof_proto::{Function, Label, Location, Mapping, Message as _, Profile, ValueType};

/// One profile to merge: its gzipped bytes, and labels for all of its samples.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub gzipped: &'a [u8],
    pub labels: &'a [(&'a str, String)],
}

/// Strings of the merged profile.
#[derive(Debug)]
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Self {
            table: Vec::new(),
            ids: HashMap::new(),
        };
        strings.id("");
        strings
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = i64::try_from(self.table.len()).unwrap_or(i64::MAX);
        self.table.push(s.to_owned());
        self.ids.insert(s.to_owned(), id);
        id
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("cannot merge profiles: {what}"))
}

/// Merges the profiles into one, gzipped.
///
/// # Errors
/// When a part is not a gzipped pprof profile, or refers to a string, function or location it
/// does not have.
pub fn merge(parts: &[Part<'_>]) -> io::Result<Vec<u8>> {
    let mut merger = Merger {
        merged: Profile::default(),
        strings: Strings::new(),
        types: Vec::new(),
        default_type: None,
    };
    for part in parts {
        let mut raw = Vec::new();
        GzDecoder::new(part.gzipped).read_to_end(&mut raw)?;
        let profile = Profile::decode(raw.as_slice()).map_err(|e| invalid(&e.to_string()))?;
        merger.add(&profile, part.labels)?;
    }
    let profile = merger.finish();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    gz.finish()
}

/// The merged profile as it grows.
struct Merger {
    merged: Profile,
    strings: Strings,
    /// Sample types (type, unit), in order of first appearance.
    types: Vec<(String, String)>,
    /// The first part's default sample type.
    default_type: Option<String>,
}

/// Ids of one part's entries in the merged profile.
#[derive(Default)]
struct Ids {
    mappings: HashMap<u64, u64>,
    functions: HashMap<u64, u64>,
    locations: HashMap<u64, u64>,
}

impl Merger {
    fn add(&mut self, profile: &Profile, labels: &[(&str, String)]) -> io::Result<()> {
        let text = |id: i64| -> io::Result<&str> {
            usize::try_from(id)
                .ok()
                .and_then(|i| profile.string_table.get(i))
                .map(String::as_str)
                .ok_or_else(|| invalid("a string index out of range"))
        };
        // Where each of this profile's sample types is in the merged one.
        let mut type_index = Vec::new();
        for t in &profile.sample_type {
            let key = (text(t.r#type)?.to_owned(), text(t.unit)?.to_owned());
            let index = self.types.iter().position(|k| *k == key).unwrap_or_else(|| {
                self.types.push(key);
                self.types.len() - 1
            });
            type_index.push(index);
        }
        if self.default_type.is_none() && profile.default_sample_type != 0 {
            self.default_type = Some(text(profile.default_sample_type)?.to_owned());
        }
        let ids = self.add_tables(profile, &text)?;
        let part_labels: Vec<Label> = labels
            .iter()
            .map(|(key, value)| Label {
                key: self.strings.id(key),
                str: self.strings.id(value),
                ..Label::default()
            })
            .collect();
        for sample in &profile.sample {
            let mut values = vec![0; self.types.len()];
            for (value, &index) in sample.value.iter().zip(&type_index) {
                values[index] = *value;
            }
            let location_id = sample
                .location_id
                .iter()
                .map(|id| {
                    ids.locations
                        .get(id)
                        .copied()
                        .ok_or_else(|| invalid("an unknown location"))
                })
                .collect::<io::Result<Vec<u64>>>()?;
            let mut label = Vec::with_capacity(sample.label.len() + part_labels.len());
            for l in &sample.label {
                label.push(Label {
                    key: self.strings.id(text(l.key)?),
                    str: if l.str == 0 { 0 } else { self.strings.id(text(l.str)?) },
                    num: l.num,
                    num_unit: if l.num_unit == 0 {
                        0
                    } else {
                        self.strings.id(text(l.num_unit)?)
                    },
                });
            }
            label.extend(part_labels.iter().copied());
            self.merged.sample.push(pprof_proto::Sample {
                location_id,
                value: values,
                label,
            });
        }
        if self.merged.period_type.is_none()
            && let Some(period_type) = &profile.period_type
        {
            self.merged.period_type = Some(ValueType {
                r#type: self.strings.id(text(period_type.r#type)?),
                unit: self.strings.id(text(period_type.unit)?),
            });
            self.merged.period = profile.period;
        }
        self.merged.time_nanos = match self.merged.time_nanos {
            0 => profile.time_nanos,
            t => t.min(profile.time_nanos),
        };
        self.merged.duration_nanos = self.merged.duration_nanos.max(profile.duration_nanos);
        for comment in &profile.comment {
            let id = self.strings.id(text(*comment)?);
            self.merged.comment.push(id);
        }
        Ok(())
    }

    /// Copies a part's mappings, functions and locations, renumbered.
    fn add_tables<'p>(&mut self, profile: &'p Profile, text: &dyn Fn(i64) -> io::Result<&'p str>) -> io::Result<Ids> {
        let mut ids = Ids::default();
        let merged = &mut self.merged;
        for m in &profile.mapping {
            let id = merged.mapping.len() as u64 + 1;
            ids.mappings.insert(m.id, id);
            merged.mapping.push(Mapping {
                id,
                filename: self.strings.id(text(m.filename)?),
                build_id: self.strings.id(text(m.build_id)?),
                ..*m
            });
        }
        for f in &profile.function {
            let id = merged.function.len() as u64 + 1;
            ids.functions.insert(f.id, id);
            merged.function.push(Function {
                id,
                name: self.strings.id(text(f.name)?),
                system_name: self.strings.id(text(f.system_name)?),
                filename: self.strings.id(text(f.filename)?),
                start_line: f.start_line,
            });
        }
        for l in &profile.location {
            let id = merged.location.len() as u64 + 1;
            ids.locations.insert(l.id, id);
            let mut lines = l.line.clone();
            for line in &mut lines {
                line.function_id = *ids
                    .functions
                    .get(&line.function_id)
                    .ok_or_else(|| invalid("a line of an unknown function"))?;
            }
            merged.location.push(Location {
                id,
                mapping_id: ids.mappings.get(&l.mapping_id).copied().unwrap_or(0),
                address: l.address,
                line: lines,
                is_folded: l.is_folded,
            });
        }
        Ok(ids)
    }

    fn finish(mut self) -> Profile {
        // A type first seen in a later profile: the earlier samples have 0 of it.
        for sample in &mut self.merged.sample {
            sample.value.resize(self.types.len(), 0);
        }
        self.merged.sample_type = self
            .types
            .iter()
            .map(|(t, unit)| ValueType {
                r#type: self.strings.id(t),
                unit: self.strings.id(unit),
            })
            .collect();
        if let Some(default) = &self.default_type {
            self.merged.default_sample_type = self.strings.id(default);
        }
        self.merged.string_table = self.strings.table;
        self.merged
    }
}

#[cfg(test)]
mod tests {
    use pprof_proto::{Line, Sample};

    use super::*;

    /// A profile of one sample at one function, with the given sample types.
    fn profile(function: &str, types: &[&str], values: &[i64]) -> Vec<u8> {
        let mut table: Vec<String> = vec![String::new(), function.to_owned(), "count".to_owned()];
        let sample_type = types
            .iter()
            .map(|t| {
                table.push((*t).to_owned());
                ValueType {
                    r#type: i64::try_from(table.len() - 1).unwrap(),
                    unit: 2,
                }
            })
            .collect();
        let p = Profile {
            sample_type,
            sample: vec![Sample {
                location_id: vec![1],
                value: values.to_vec(),
                label: Vec::new(),
            }],
            mapping: vec![Mapping {
                id: 1,
                ..Mapping::default()
            }],
            location: vec![Location {
                id: 1,
                mapping_id: 1,
                address: 0x1000,
                line: vec![Line {
                    function_id: 1,
                    line: 7,
                }],
                is_folded: false,
            }],
            function: vec![Function {
                id: 1,
                name: 1,
                ..Function::default()
            }],
            string_table: table,
            ..Profile::default()
        };
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&p.encode_to_vec()).unwrap();
        gz.finish().unwrap()
    }

    fn decode(gzipped: &[u8]) -> Profile {
        let mut raw = Vec::new();
        GzDecoder::new(gzipped).read_to_end(&mut raw).unwrap();
        Profile::decode(raw.as_slice()).unwrap()
    }

    #[test]
    fn samples_keep_their_functions_and_get_their_process_label() {
        let a = profile("main.a", &["alloc_objects"], &[3]);
        let b = profile("main.b", &["alloc_objects", "inuse_objects"], &[5, 2]);
        let (la, lb) = ([("pid", "1".to_owned())], [("pid", "2".to_owned())]);
        let merged = decode(
            &merge(&[
                Part {
                    gzipped: &a,
                    labels: &la,
                },
                Part {
                    gzipped: &b,
                    labels: &lb,
                },
            ])
            .unwrap(),
        );
        let s = |i: i64| merged.string_table[usize::try_from(i).unwrap()].as_str();
        let types: Vec<&str> = merged.sample_type.iter().map(|t| s(t.r#type)).collect();
        assert_eq!(types, ["alloc_objects", "inuse_objects"]);
        assert_eq!(merged.sample.len(), 2);
        assert_eq!(merged.mapping.len(), 2);
        for (sample, (function, values, pid)) in merged
            .sample
            .iter()
            .zip([("main.a", vec![3, 0], "1"), ("main.b", vec![5, 2], "2")])
        {
            assert_eq!(sample.value, values);
            let location = &merged.location[usize::try_from(sample.location_id[0] - 1).unwrap()];
            let f = &merged.function[usize::try_from(location.line[0].function_id - 1).unwrap()];
            assert_eq!(s(f.name), function);
            assert_eq!(s(sample.label[0].key), "pid");
            assert_eq!(s(sample.label[0].str), pid);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(
            merge(&[Part {
                gzipped: b"not gzip",
                labels: &[],
            }])
            .is_err()
        );
    }
}
