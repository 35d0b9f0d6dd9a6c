#!/usr/bin/env bash
# Measures how replicas heal, on three local nodes (one shard each), with the release binaries:
#
#   1. anti-entropy of 1% divergence: RECORDS keys written to all three nodes, node 3 stopped,
#      RECORDS/100 of them overwritten, node 3 back; `ringkv admin repair` on node 1 until a
#      round repairs nothing: time, keys repaired, bytes sent;
#   2. the same replica wiped (engine files deleted, identity kept) and repaired the same way:
#      anti-entropy as a full re-stream;
#   3. hint replay: node 3 stopped while HINT_RECORDS keys are written, then back; the replay
#      rate from the holders' logs;
#   4. a node joining: RECORDS keys written to nodes 1-3, then node 4 started with `--join`
#      (default settings): the time until it serves replica reads, and the keys it pulled.
#
#   tools/repair-bench.sh [RECORDS] [HINT_RECORDS] [PARTS]   defaults 1000000, 100000 and all;
#                                                            PARTS join runs only part 4
#
# Ports 47379.. and data under ${REPAIR_BENCH_DIR:-/tmp/ringkv-repair-bench}; every node started
# is stopped on exit. Needs `cargo build --release -p ringkv -p ringkv-bench` first.
set -euo pipefail

records="${1:-1000000}"
hint_records="${2:-100000}"
parts="${3:-all}"
repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$repository_root/target}/release"
ringkv="$target/ringkv"
bench="$target/ringkv-bench"
root="${REPAIR_BENCH_DIR:-/tmp/ringkv-repair-bench}"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

client_port() { echo $((47379 + 10 * ($1 - 1))); }
peer_port() { echo $(($(client_port "$1") + 1000)); }

# start_node ID EXTRA_FLAGS...: starts a node in the background and records its pid.
start_node() {
  local id="$1"
  shift
  local seeds=()
  [ "$id" -gt 1 ] && seeds=(--seeds "127.0.0.1:$(peer_port 1)")
  RINGKV_LOG=info "$ringkv" serve --data-dir "$root/node-$id" --listen "127.0.0.1:$(client_port "$id")" \
    --peer-listen "127.0.0.1:$(peer_port "$id")" --node-id "$id" --shards 1 --replication-factor 3 \
    "${seeds[@]}" "$@" >>"$root/node-$id.log" 2>&1 &
  pids[$id]=$!
}

stop_node() {
  kill -TERM "${pids[$1]}"
  wait "${pids[$1]}" 2>/dev/null || true
}

# wait_for ID TEXT [SECONDS]: waits until node ID's log holds TEXT (at most SECONDS, 60).
wait_for() {
  for _ in $(seq 1 $((${3:-60} * 10))); do
    grep -q "$2" "$root/node-$1.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node $1 never logged '$2'" >&2
  exit 1
}

wait_up() {
  for id in "$@"; do
    for other in "$@"; do
      [ "$id" = "$other" ] || wait_for "$id" "node up node_id=$other "
    done
  done
}

# repair_until_clean ID: runs admin repair on node ID until a round repairs nothing; prints
# seconds, keys repaired, bytes sent and rounds.
repair_until_clean() {
  local start end keys=0 bytes=0 rounds=0
  start=$(date +%s.%N)
  while :; do
    rounds=$((rounds + 1))
    local line
    line="$("$ringkv" admin repair --json --addr "127.0.0.1:$(client_port "$1")" --peer-addr "127.0.0.1:$(peer_port "$1")")"
    local round_keys round_bytes
    round_keys=$(echo "$line" | python3 -c 'import sys, json; print(sum(json.loads(l)["keys_repaired"] for l in sys.stdin))')
    round_bytes=$(echo "$line" | python3 -c 'import sys, json; print(sum(json.loads(l)["bytes_sent"] for l in sys.stdin))')
    keys=$((keys + round_keys))
    bytes=$((bytes + round_bytes))
    [ "$round_keys" = 0 ] && break
  done
  end=$(date +%s.%N)
  echo "seconds=$(python3 -c "print(round($end - $start, 2))") keys_repaired=$keys bytes_sent=$bytes rounds=$rounds"
}

# join: node 4 joins nodes 1-3 once they hold RECORDS keys; prints how long it took to restore
# its ranges and what anti-entropy pulled.
join() {
  rm -rf "$root"
  mkdir -p "$root"
  echo "== a node joining: $records keys on nodes 1-3, node 4 started with --join ($(date -u +%Y-%m-%dT%H:%MZ), load: $(cut -d' ' -f1-3 /proc/loadavg))"
  for id in 1 2 3; do start_node "$id"; done
  wait_up 1 2 3
  "$bench" load --target "ringkv://127.0.0.1:$(client_port 1)" --records "$records" --value-size 100 >/dev/null
  local start end
  start=$(date +%s.%N)
  start_node 4 --join
  wait_for 4 "serving replica reads again" 900
  end=$(date +%s.%N)
  grep "anti-entropy repaired keys" "$root/node-4.log" | python3 -c '
import re, sys
totals, rounds = {}, 0
for line in sys.stdin:
    rounds += 1
    for name, value in re.findall(r" (ranges|pushed|pulled|bytes_sent)=(\d+)", line):
        totals[name] = totals.get(name, 0) + int(value)
print("node 4 restored its ranges in", round(float(sys.argv[1]) - float(sys.argv[2]), 2), "s:",
      rounds, "rounds,", ", ".join(f"{name} {value}" for name, value in totals.items()))' "$end" "$start"
  du -sb "$root/node-1/shard-0" "$root/node-4/shard-0" | awk '{print "on disk: " $1 " bytes (" $2 ")"}'
  for id in 1 2 3 4; do stop_node "$id"; done
}

if [ "$parts" = join ]; then
  join
  exit 0
fi

heal_flags=(--hints-bytes-max 0 --anti-entropy-bytes-per-s 67108864)
rm -rf "$root"
mkdir -p "$root"
echo "== anti-entropy: $records keys, 1% diverged ($(date -u +%Y-%m-%dT%H:%MZ), load: $(cut -d' ' -f1-3 /proc/loadavg))"
for id in 1 2 3; do start_node "$id" "${heal_flags[@]}"; done
wait_up 1 2 3
"$bench" load --target "ringkv://127.0.0.1:$(client_port 1)" --records "$records" --value-size 100 --json | tail -1 >"$root/load.json"
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("loaded:", {k: v for k, v in r.items() if not isinstance(v, (dict, list))})' "$root/load.json"
echo "baseline (writes a replica missed under load): $(repair_until_clean 1)"
stop_node 3
"$bench" load --target "ringkv://127.0.0.1:$(client_port 1)" --records $((records / 100)) --value-size 100 \
  --seed 2 --json | tail -1 >"$root/overwrite.json"
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("overwritten:", {k: v for k, v in r.items() if not isinstance(v, (dict, list))})' "$root/overwrite.json"
: >"$root/node-3.log"
start_node 3 "${heal_flags[@]}"
wait_for 3 "node up node_id=1 "
wait_for 1 "node up node_id=3 "
echo "1% divergence: $(repair_until_clean 1)"

echo "== anti-entropy as a full re-stream: node 3 wiped"
stop_node 3
find "$root/node-3" -name '*.wal' -o -name '*.sst' -o -name MANIFEST | xargs rm -f
du -sb "$root/node-1/shard-0" | awk '{print "replica on disk: " $1 " bytes (node 1)"}'
: >"$root/node-3.log"
start_node 3 "${heal_flags[@]}"
wait_for 3 "node up node_id=1 "
wait_for 1 "node up node_id=3 "
echo "wiped replica: $(repair_until_clean 1)"
for id in 1 2 3; do stop_node "$id"; done

echo "== hint replay: $hint_records writes while node 3 is down"
rm -rf "$root"
mkdir -p "$root"
for id in 1 2 3; do start_node "$id"; done
wait_up 1 2 3
stop_node 3
wait_for 1 "node down node_id=3 "
"$bench" load --target "ringkv://127.0.0.1:$(client_port 1)" --records "$hint_records" --value-size 100 >/dev/null
sleep 2
: >"$root/node-3.log"
up_since=$(wc -c <"$root/node-1.log")
start_node 3
wait_for 3 "node up node_id=1 "
for _ in $(seq 1 1200); do
  tail -c +"$up_since" "$root/node-1.log" | grep -q "hint replay finished" && break
  sleep 0.1
done
sleep 2
for id in 1 2; do
  tail -c +"$up_since" "$root/node-$id.log" | grep -E "node up node_id=3 |hint replay finished" | sed "s/^/node $id: /"
done
grep -h "hints durable" "$root"/node-1.log "$root"/node-2.log | tail -2 | sed 's/^/last durable figures: /'
for id in 1 2 3; do stop_node "$id"; done

join
