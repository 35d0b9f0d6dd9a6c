#!/usr/bin/env bash
# CI's fuzz step: installs cargo-fuzz if absent, builds every target in fuzz/, and runs each for
# a share of a fixed time budget, so the whole step (the build on a cold machine included) stays
# within FUZZ_BUDGET_SECONDS (default 330). Exits non-zero if any target crashed, timed out or
# ran out of memory, after printing how to replay each failing input.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source tools/fuzz/common.sh

# CI's few seconds per target are spent mostly on the build: optimising the fuzz build at level 1
# instead of release's 3 builds it in 92 s instead of 119 on two cores, and client_frames ran
# 26,752 inputs in 8 s against 29,775 (longer runs, tools/fuzz/run.sh, keep level 3).
export CARGO_PROFILE_RELEASE_OPT_LEVEL=1

budget=${FUZZ_BUDGET_SECONDS:-330}
# Each target runs at least this long, whatever the build took.
minimum_seconds=${FUZZ_MIN_SECONDS_PER_TARGET:-10}
started=$(mktemp)
trap 'rm -f "$started"' EXIT
step_start=$SECONDS

ensure_cargo_fuzz
mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "cargo fuzz list found no targets in fuzz/" >&2
  exit 1
fi
echo "fuzz targets: ${targets[*]}"
cargo fuzz build
built=$((SECONDS - step_start))

# What is left of the budget, shared by the targets (a few seconds per target go to start-up).
remaining=$((budget - built - 3 * ${#targets[@]}))
seconds=$((remaining / ${#targets[@]}))
if [ "$seconds" -lt "$minimum_seconds" ]; then
  seconds=$minimum_seconds
fi
echo "built in ${built}s; fuzzing each target for ${seconds}s"

failed=()
for target in "${targets[@]}"; do
  mapfile -t corpora < <(corpus_dirs "$target")
  echo "== fuzz $target (${seconds}s) =="
  # libFuzzer's progress lines (#N NEW ...) are left out of the log; everything else stays.
  if cargo fuzz run "$target" "${corpora[@]}" -- -max_total_time="$seconds" "${LIBFUZZER_OPTIONS[@]}" 2>&1 \
    | { grep -v '^#[0-9]' || true; }; then
    echo "fuzz $target: no crash"
  else
    echo "fuzz $target: FAILED"
    failed+=("$target")
  fi
done

echo "fuzz step took $((SECONDS - step_start))s (budget ${budget}s)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}"
  for target in "${failed[@]}"; do
    echo "$target:"
    print_reproduction "$target" "$started"
  done
  exit 1
fi
