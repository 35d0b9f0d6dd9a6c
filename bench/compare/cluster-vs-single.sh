#!/usr/bin/env bash
# One ringkv node against a local three-node cluster on this machine, driven by the same load
# generator with the same workload: what replication costs in throughput, and the cluster's
# latency at half its peak.
#
#   bench/compare/cluster-vs-single.sh [WORKLOAD] [SECONDS] [PIPELINE]
#
# WORKLOAD  YCSB letter a|b|c|f (default a); 50,000 records of 100 bytes, loaded first.
# SECONDS   each run's length (default 10).   PIPELINE  requests in flight per connection (16).
#
# Both sides run under tools/local-cluster.sh (one shard per node, node 1 on port 7379), so
# nothing else may hold ports 7379-7410 and 8379-8410. The cluster is N = 3 with the default
# quorum reads and writes: every write is applied three times and every read touches two
# nodes. Steps: one node, closed loop (8 connections); three nodes, closed loop; three nodes,
# open loop at half the closed-loop rate, per operation. Prints a table and the ratio.
set -euo pipefail

workload="${1:-a}"
seconds="${2:-10}"
pipeline="${3:-16}"
records=50000
connections=8

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cargo build --release -q -p ringkv -p ringkv-bench
bench="$root/target/release/ringkv-bench"
target="ringkv://127.0.0.1:7379"
work="$(mktemp -d "${TMPDIR:-/tmp}/cluster-vs-single.XXXXXX")"

stop() { RINGKV_CLUSTER_DIR="$work/$1" tools/local-cluster.sh stop >/dev/null; }
cleanup() {
  stop one 2>/dev/null || true
  stop three 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# run NAME [extra flags]: one run against the cluster up now; its JSON summary in $work/NAME.json.
run() {
  local name="$1"
  shift
  "$bench" run --target "$target" --workload "$workload" --records "$records" --value-size 100 \
    --duration "$seconds" --connections "$connections" --pipeline "$pipeline" --json "$@" |
    grep '^{' | tail -n 1 >"$work/$name.json"
}

start() { # DIR NODES
  RINGKV_CLUSTER_DIR="$work/$1" RINGKV_LOG=warn tools/local-cluster.sh "$2" --detach >/dev/null
  "$bench" load --target "$target" --records "$records" --value-size 100 >/dev/null
}

echo "one node, workload $workload, ${seconds}s, $connections connections x pipeline $pipeline"
start one 1
run one
stop one

echo "three nodes (N = 3, quorum), same load"
start three 3
run three
half="$(python3 -c 'import json,sys; print(max(1, int(json.load(open(sys.argv[1]))["ops_per_sec"] / 2)))' "$work/three.json")"
echo "three nodes, open loop at half their peak: $half ops/s"
run half --rate "$half"
stop three

python3 - "$work" "$workload" <<'PY'
import json, sys
work, workload = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(f"{work}/{name}.json"))
one, three, half = load("one"), load("three"), load("half")
print(f"\nworkload {workload}")
print(f"{'':24} {'ops/s':>10} {'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'errors':>7}")
for name, run in (("one node", one), ("three nodes", three), ("three nodes, half peak", half)):
    print(f"{name:24} {run['ops_per_sec']:>10.0f} {run['p50_us']:>9.0f} {run['p99_us']:>9.0f} "
          f"{run.get('p999_us', 0):>9.0f} {run.get('errors', 0):>7}")
    for op, stats in sorted(run.get("by_op", {}).items()):
        print(f"  {op:22} {stats['ops_per_sec']:>10.0f} {stats['p50_us']:>9.0f} {stats['p99_us']:>9.0f} "
              f"{stats.get('p999_us', 0):>9.0f}")
print(f"\nratio three nodes / one node: {three['ops_per_sec'] / one['ops_per_sec']:.2f}")
PY
