#!/usr/bin/env bash
# One ringkv node against one Redis server on this machine, driven by the same load generator
# (ringkv-bench, its Redis client for Redis) with the same workload, connections and pipeline,
# alternating the two over several rounds and reporting each side's median.
#
#   bench/compare/server-vs-redis.sh [WORKLOAD] [SECONDS] [PIPELINE] [REDIS_FSYNC] [ROUNDS]
#
# WORKLOAD     YCSB letter a|b|c|f (default c); 100,000 records of 100 bytes, loaded first.
# SECONDS      each run's length (default 10).   PIPELINE  requests in flight per connection (64).
# REDIS_FSYNC  Redis's appendfsync: always | everysec | no-aof (default: always for workloads
#              that write, since ringkv acknowledges a write after its fdatasync; no-aof for c).
# ROUNDS       alternating rounds (default 3).
#
# ringkv runs with its defaults (one shard on a two-core machine, acknowledged after sync). 8
# connections, one generator thread on the same machine: on two cores the generator's own CPU
# counts against both servers alike. Installs redis-server if it is missing (Debian's package).
set -euo pipefail

workload="${1:-c}"
seconds="${2:-10}"
pipeline="${3:-64}"
if [ "$workload" = c ]; then default_fsync=no-aof; else default_fsync=always; fi
redis_fsync="${4:-$default_fsync}"
rounds="${5:-3}"
records=100000

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v redis-server >/dev/null; then
  echo "installing redis-server" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null
fi
cargo build --release -q -p ringkv -p ringkv-bench
bench="$root/target/release/ringkv-bench"
work="$(mktemp -d "${TMPDIR:-/tmp}/server-vs-redis.XXXXXX")"
# Below the kernel's ephemeral range (32768 up by default), so no outgoing connection holds it.
port=$((20000 + RANDOM % 12000))
redis_port=$((port + 10))
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# wait_port PORT PID LOG: until PORT answers; fails if the server PID exited first (a port
# another program holds, say), so the run never measures someone else's server.
wait_port() {
  for _ in $(seq 1 100); do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the server for port $1 exited; its log ($3):" >&2
      tail -5 "$3" >&2
      exit 1
    fi
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

mkdir -p "$work/redis"
if [ "$redis_fsync" = no-aof ]; then aof=(--appendonly no); else aof=(--appendonly yes --appendfsync "$redis_fsync"); fi
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --dir "$work/redis" "${aof[@]}" \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
"$root/target/release/ringkv" serve --data-dir "$work/ringkv" --listen "127.0.0.1:$port" \
  --peer-listen "127.0.0.1:$((port + 5))" >"$work/ringkv.log" 2>&1 &
ringkv_pid=$!
pids+=("$ringkv_pid")
wait_port "$port" "$ringkv_pid" "$work/ringkv.log"
wait_port "$redis_port" "$redis_pid" "$work/redis.log"

ringkv="ringkv://127.0.0.1:$port"
redis="redis://127.0.0.1:$redis_port"
"$bench" load --target "$ringkv" --records "$records" --value-size 100 >/dev/null
"$bench" load --target "$redis" --records "$records" --value-size 100 >/dev/null

# run NAME TARGET: one run; its JSON summary appended to $work/NAME.jsonl.
run() {
  "$bench" run --target "$2" --workload "$workload" --records "$records" --value-size 100 \
    --duration "$seconds" --connections 8 --pipeline "$pipeline" --json |
    grep '^{' | tail -n 1 >>"$work/$1.jsonl"
}

echo "workload $workload, ${seconds}s x $rounds rounds per side, 8 connections x pipeline $pipeline, Redis appendfsync $redis_fsync"
for ((round = 1; round <= rounds; round++)); do
  run ringkv "$ringkv"
  run redis "$redis"
done

python3 - "$work" <<'PY'
import json, os, statistics, sys
work = sys.argv[1]
runs = {name: [json.loads(line) for line in open(f"{work}/{name}.jsonl")] for name in ("ringkv", "redis")}
# gen wait: the share of the run the generator's threads were ready to run but waited for a CPU
# (the kernel's schedstat): the latencies of that round include it.
print(f"\n{'':8} {'round':>5} {'ops/s':>10} {'p50 us':>8} {'p99 us':>8} {'p99.9 us':>9} {'gen us/op':>9} "
      f"{'gen wait':>8} {'errors':>7}")
for name, side in runs.items():
    for index, run in enumerate(side, 1):
        cpu = run.get("client_cpu", {})
        per_op = (cpu.get("user_seconds", 0) + cpu.get("system_seconds", 0)) * 1e6 / max(run["ops"], 1)
        share = cpu.get("cpu_wait_share")
        wait = "-" if share is None else f"{share * 100:.0f}%"
        print(f"{name:8} {index:>5} {run['ops_per_sec']:>10.0f} {run['p50_us']:>8.0f} {run['p99_us']:>8.0f} "
              f"{run.get('p999_us', 0):>9.0f} {per_op:>9.2f} {wait:>8} {run.get('errors', 0):>7}")
stalled = [(name, index) for name, side in runs.items() for index, run in enumerate(side, 1)
           if run.get("generator_nudges", 0) > 0]
for name, index in stalled:
    print(f"note: in {name}'s round {index} the generator slept through its own timer and was woken "
          "from outside; that round's latencies include the generator's stall")
ours = statistics.median(run["ops_per_sec"] for run in runs["ringkv"])
theirs = statistics.median(run["ops_per_sec"] for run in runs["redis"])
print(f"\nmedian ops/s: ringkv {ours:.0f}, Redis {theirs:.0f}; ratio ringkv / Redis {ours / theirs:.2f}")
# What the machine leaves: the generator is one thread, so against ringkv it cannot issue more
# than a core's worth of operations (at its cheapest run against ringkv); and at a ratio r to
# Redis, the node's CPU per operation must fit in what that generator leaves of the machine.
cheapest = min((run["client_cpu"]["user_seconds"] + run["client_cpu"]["system_seconds"]) * 1e6 / run["ops"]
               for run in runs["ringkv"] if run.get("client_cpu") and run["ops"])
cores = os.cpu_count()
budgets = ", ".join(f"{r}x {cores * 1e6 / (r * theirs) - cheapest:.2f}" for r in (1.5, 2))
print(f"generator against ringkv at its cheapest, {cheapest:.2f} us/op: a core's worth is "
      f"{1e6 / cheapest:.0f} ops/s ({1e6 / cheapest / theirs:.2f}x Redis); node CPU per op that leaves on "
      f"{cores} cores at {budgets} us")
PY
