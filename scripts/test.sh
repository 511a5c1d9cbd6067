#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: set-up, Go fixtures, formatting,
# lints (host crates and the eBPF crate), every test, the release artifacts and their checks,
# the arm64 package in the arm64 VM, and a CI-sized bench.
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

step "release artifacts (cargo xtask dist --check)"
# Builds the amd64 release binary (which the bench below reuses) and the arm64 one, packages
# both (.deb, tarball, OCI image) and tests the artifacts: checksums, package metadata and
# contents, the amd64 package unpacked into an empty directory running --version and inspect,
# the image layout read by skopeo, and the amd64 image's gotrace running in its own root.
cargo xtask dist --check

step "arm64: the arm64 package on Debian's arm64 kernel under qemu (cargo xtask arm64 --deb)"
# Boots the kernel with software emulation, installs the arm64 package with dpkg -i, runs its
# --version and doctor, and checks exact and auto mode against Go's own heap profile on Go
# 1.21, 1.24 and 1.27, and attach and serve on a running fixture (~2.5 min of VM time), all
# with the installed gotrace. The VM is given at most 15 minutes.
arm64_debs=(target/dist/gotrace_*_arm64.deb)
cargo xtask arm64 --timeout-secs 900 --deb "${arm64_debs[0]}"

step "benchmark, CI-sized (cargo xtask bench --quick)"
# Not a timed test: it reports ratios and which targets were met, and fails only when a
# measurement cannot run at all. Needs root; skipped without.
if [[ $(id -u) -eq 0 ]]; then
  cargo xtask bench --quick --out target/bench/ci
else
  echo "skipped: cargo xtask bench needs root" >&2
fi

step "all tests passed"
