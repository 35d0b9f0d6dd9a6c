#!/usr/bin/env bash
# ringkv's storage engine against RocksDB's db_bench on the same disk with the same workload:
# 16-byte keys, 100-byte values, no compression, one thread, alternating the two over several
# rounds and reporting each side's median.
#
#   bench/compare/engine-vs-rocksdb.sh [NUM] [ROUNDS]
#
# NUM     keys per benchmark (default 2,000,000).   ROUNDS  alternating rounds (default 3).
#
# Benchmarks: fillrandom, readrandom, overwrite (writes not synced on either side, as db_bench's
# defaults). Installs db_bench (Debian's rocksdb-tools) if it is missing.
set -euo pipefail

num="${1:-2000000}"
rounds="${2:-3}"
benchmarks=(fillrandom readrandom overwrite)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v db_bench >/dev/null; then
  echo "installing rocksdb-tools (db_bench)" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rocksdb-tools) >/dev/null
fi
cargo build --release -q -p ringkv-bench
bench="$root/target/release/ringkv-bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/engine-vs-rocksdb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
list="$(IFS=,; echo "${benchmarks[*]}")"

echo "$num keys, 16-byte keys, 100-byte values, no compression, $rounds rounds per side"
for ((round = 1; round <= rounds; round++)); do
  rm -rf "$work/rocksdb" "$work/ringkv"
  # db_bench prints "<name> : <micros/op> micros/op <ops/sec> ops/sec; ..."
  db_bench --benchmarks="$list" --num="$num" --key_size=16 --value_size=100 --threads=1 \
    --compression_type=none --db="$work/rocksdb" 2>/dev/null |
    awk '{ for (i = 2; i < NF; i++) if ($(i + 1) ~ /^ops\/sec;?$/) print "rocksdb", $1, $i }' >>"$work/results"
  "$bench" engine --benchmarks "$list" --num "$num" --key-size 16 --value-size 100 \
    --dir "$work/ringkv" --json |
    python3 -c 'import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        run = json.loads(line)
        print("ringkv", run["benchmark"], run["ops_per_sec"])' >>"$work/results"
done

python3 - "$work/results" "${benchmarks[@]}" <<'PY'
import collections, statistics, sys
rates = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, name, rate = line.split()
    rates[(side, name)].append(float(rate))
print(f"\n{'benchmark':12} {'ringkv ops/s':>14} {'RocksDB ops/s':>14} {'ratio':>7}   runs (ringkv | RocksDB)")
for name in sys.argv[2:]:
    ours, theirs = rates.get(("ringkv", name), []), rates.get(("rocksdb", name), [])
    if not ours or not theirs:
        print(f"{name:12} missing: ringkv {len(ours)} runs, RocksDB {len(theirs)} runs")
        continue
    a, b = statistics.median(ours), statistics.median(theirs)
    runs = " ".join(f"{rate:.0f}" for rate in ours) + " | " + " ".join(f"{rate:.0f}" for rate in theirs)
    print(f"{name:12} {a:>14.0f} {b:>14.0f} {a / b:>7.2f}   {runs}")
PY
