#!/usr/bin/env bash
# Fuzzes one target for a while: tools/fuzz/run.sh TARGET SECONDS
# Targets: `RUSTC_BOOTSTRAP=1 cargo fuzz list` (or fuzz/Cargo.toml). The corpus grows in
# fuzz/corpus/TARGET across runs; a crash leaves its input in fuzz/artifacts/TARGET and this
# script prints how to replay it. Extra arguments after SECONDS go to libFuzzer (for example
# -jobs=2 -workers=2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tools/fuzz/common.sh

if [ $# -lt 2 ]; then
  echo "usage: tools/fuzz/run.sh TARGET SECONDS [libFuzzer options...]" >&2
  echo "targets:" >&2
  sed -n 's/^name = "\(.*\)"$/  \1/p' fuzz/Cargo.toml | grep -v ringkv-fuzz >&2
  exit 2
fi
target=$1
seconds=$2
shift 2

ensure_cargo_fuzz >/dev/null
mapfile -t corpora < <(corpus_dirs "$target")
started=$(mktemp)
trap 'rm -f "$started"' EXIT
if cargo fuzz run "$target" "${corpora[@]}" -- -max_total_time="$seconds" "${LIBFUZZER_OPTIONS[@]}" "$@"; then
  echo "fuzz $target: no crash in $seconds s"
else
  status=$?
  echo "fuzz $target: FAILED (exit $status)"
  print_reproduction "$target" "$started"
  exit "$status"
fi
