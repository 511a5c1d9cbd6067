//! The pprof profile format: `perftools.profiles.Profile` and the messages it holds, generated
//! from the upstream schema at build time. Encode with [`prost::Message`].
//!
//! Consumers: `go tool pprof`, Parca, Pyroscope, Grafana. A profile is usually written
//! gzip-compressed (`.pb.gz`).

#![allow(
    clippy::pedantic,
    clippy::doc_markdown,
    missing_debug_implementations,
    reason = "generated code"
)]

include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));

pub use prost::Message;
