//! Generates the pprof types from the upstream `profile.proto` (github.com/google/pprof), as
//! Debian's golang-github-google-pprof-dev package installs it, with Debian's `protoc`; both
//! come from `scripts/setup.sh`. `PPROF_PROTO` overrides the schema's path.

use std::path::PathBuf;

/// Where golang-github-google-pprof-dev puts the schema.
const DEBIAN_PROFILE_PROTO: &str = "/usr/share/gocode/src/github.com/google/pprof/proto/profile.proto";

fn main() {
    println!("cargo:rerun-if-env-changed=PPROF_PROTO");
    let proto = std::env::var_os("PPROF_PROTO").map_or_else(|| PathBuf::from(DEBIAN_PROFILE_PROTO), PathBuf::from);
    if !proto.is_file() {
        println!(
            "cargo::error=the pprof schema {} is missing: run scripts/setup.sh (it installs \
             golang-github-google-pprof-dev and protobuf-compiler)",
            proto.display()
        );
        return;
    }
    println!("cargo:rerun-if-changed={}", proto.display());
    let include = proto.parent().map(PathBuf::from).unwrap_or_default();
    if let Err(err) = prost_build::compile_protos(&[&proto], &[&include]) {
        println!("cargo::error=cannot compile {}: {err}", proto.display());
    }
}
