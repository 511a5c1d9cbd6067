#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: set-up, Go fixtures, formatting,
# lints (host crates and the eBPF crate), then every test.
#
# Root-only tests (they load eBPF programs and attach uprobes) skip themselves without root; CI
# runs this as root. Set GOTRACE_FUZZ_SECONDS to change the corrupt-input fuzzing budget.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "set-up (scripts/setup.sh)"
scripts/setup.sh

step "Go fixtures (cargo xtask fixtures)"
cargo xtask fixtures

step "formatting (cargo fmt --check)"
cargo fmt --all --check

step "lints (cargo clippy, then scripts/clippy-ebpf.sh for the eBPF crate)"
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/clippy-ebpf.sh

step "tests (cargo test)"
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --locked --no-fail-fast

step "all tests passed"
