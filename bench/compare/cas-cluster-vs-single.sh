#!/usr/bin/env bash
# Compare-and-swap on one ringkv node against a local three-node cluster, where each swap runs
# Paxos over the key's three replicas: what linearizability across replicas costs.
#
#   bench/compare/cas-cluster-vs-single.sh [REQUESTS] [CLIENTS] [KEYS]
#
# REQUESTS  per cell (default 20000)   CLIENTS  redis-benchmark connections (default 8)
# KEYS      distinct counters the increments spread over (default 10000; few keys contend)
#
# The swaps come from `redis-benchmark -t incr` against each node 1's Redis-protocol port:
# ringkv's INCR reads the key and swaps it from the version read (retrying when another write
# came between), so each increment is a read and a compare-and-swap. SET, a plain write (a
# quorum write on the cluster), is measured beside it for reference. Both sides run under
# tools/local-cluster.sh (one shard per node), so nothing else may hold ports 7379-7410,
# 8379-8410 and 6390-6392. Installs redis-tools when redis-benchmark is missing.
set -euo pipefail

requests="${1:-20000}"
clients="${2:-8}"
keys="${3:-10000}"
resp_base=6390

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v redis-benchmark >/dev/null 2>&1; then
  sudo apt-get install -y -q redis-tools >/dev/null
fi
cargo build --release -q -p ringkv
work="$(mktemp -d "${TMPDIR:-/tmp}/cas-cluster-vs-single.XXXXXX")"

stop() { RINGKV_CLUSTER_DIR="$work/$1" tools/local-cluster.sh stop >/dev/null; }
cleanup() {
  stop one 2>/dev/null || true
  stop three 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# cell NAME TEST: one redis-benchmark run; "NAME TEST requests/s p50 ms p99 ms" on a line.
cell() {
  local line
  line="$(redis-benchmark -h 127.0.0.1 -p "$resp_base" -t "$2" -n "$requests" -c "$clients" -r "$keys" -P 1 \
    --csv 2>/dev/null | tail -n 1)"
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  python3 - "$1" "$2" "$line" <<'PY'
import csv, sys
name, test, line = sys.argv[1:]
row = next(csv.reader([line]))
print(f"{name:12} {test:5} {float(row[1]):>10.0f} {float(row[4]):>8.3f} {float(row[6]):>8.3f}")
PY
}

echo "$requests requests per cell, $clients connections, $keys keys"
printf '%-12s %-5s %10s %8s %8s\n' "" test "req/s" "p50 ms" "p99 ms"
for nodes in 1 3; do
  name="$([ "$nodes" = 1 ] && echo one || echo three)"
  RINGKV_CLUSTER_DIR="$work/$name" RINGKV_LOG=warn RINGKV_RESP_PORT_BASE="$resp_base" \
    tools/local-cluster.sh "$nodes" --detach >/dev/null
  cell "$name node$([ "$nodes" = 1 ] || echo s)" set
  cell "$name node$([ "$nodes" = 1 ] || echo s)" incr
  stop "$name"
done
