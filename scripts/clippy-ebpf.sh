#!/usr/bin/env bash
# Runs clippy on the eBPF crate (tracer-ebpf) for the bpf target, with warnings as errors.
#
# The plain `cargo clippy` cannot do this: rustup's clippy-driver (1.95) has no rust-src, so it
# cannot build core for bpfel-unknown-none. Debian's rust-web-clippy (installed by
# scripts/setup.sh) ships /usr/bin/cargo-clippy and /usr/bin/clippy-driver built against Debian's
# rustc 1.96, the compiler tracer/build.rs uses for the eBPF object. /usr/bin/cargo-clippy runs
# the rustup `cargo` on PATH with /usr/bin/clippy-driver as the wrapper for workspace members,
# so only tracer-ebpf is linted; core and the aya crates are compiled by /usr/bin/rustc.
#
# The probes read `pt_regs`, whose layout aya selects with the cfg `bpf_target_arch`, so the
# crate is linted once per architecture gotrace supports: otherwise the aarch64 branch would
# never be compiled on an x86_64 machine.
#
# Extra arguments go to clippy-driver, e.g. `scripts/clippy-ebpf.sh -W clippy::nursery`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for tool in /usr/bin/rustc /usr/bin/cargo-clippy /usr/bin/clippy-driver; do
  if [[ ! -x "$tool" ]]; then
    printf 'clippy-ebpf: %s not found; run scripts/setup.sh first\n' "$tool" >&2
    exit 1
  fi
done

# Host flags and wrappers from the caller's environment do not apply to the bpf target.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER \
  CARGO_BUILD_TARGET CARGO_TARGET_DIR

for arch in x86_64 aarch64; do
  printf 'clippy-ebpf: tracer-ebpf for bpf_target_arch=%s\n' "$arch" >&2
  # Its own target dir: sharing target/ebpf with tracer/build.rs would make the two arches and
  # the real build rerun each other's build scripts (AYA_BPF_TARGET_ARCH is part of their
  # fingerprint) and rebuild the object for nothing.
  AYA_BPF_TARGET_ARCH=$arch RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 \
    /usr/bin/cargo-clippy clippy --package tracer-ebpf --bins \
    --profile bpf --target bpfel-unknown-none -Z build-std=core \
    --target-dir target/ebpf-clippy \
    -- -D warnings "$@"
done
