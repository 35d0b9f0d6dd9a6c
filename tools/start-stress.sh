#!/usr/bin/env bash
# Starts batches of 2-shard nodes that join one cluster at once, with busy loops sharing the
# cores, and counts the starts that do not listen on every port in time: the check behind the
# nudge thread (docs/ARCHITECTURE.md, "glommio 0.9 can miss a wake-up").
#
#   tools/start-stress.sh [BATCHES] [NODES_PER_BATCH] [BUSY_LOOPS]     (defaults: 100 6 3)
#
# Builds the debug binary first (RINGKV_BIN names another). Each batch gets fresh data
# directories under a temporary folder and is killed once every node listens. A node that does
# not listen within 30 s is a hang: its log, each thread's context-switch counts 3 s apart (a
# shard that never switches sleeps without waking) and, when gdb is installed, every thread's
# backtrace are kept in the output folder. Logs in which the nudge thread woke a shard are kept
# too. Prints "hung H of S starts; N starts nudged" and exits 1 when any start hung.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

batches=${1:-100}
per_batch=${2:-6}
busy_loops=${3:-3}
base_port=${START_STRESS_PORT:-20000}

if [ -z "${RINGKV_BIN:-}" ]; then
  cargo build -q --bin ringkv
  RINGKV_BIN=target/debug/ringkv
fi
work=$(mktemp -d -t ringkv-start-stress.XXXXXX)
out="$work/kept"
mkdir -p "$out"
echo "start-stress: $batches batches of $per_batch nodes, $busy_loops busy loops; kept logs in $out"

hogs=()
cleanup() {
  for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
for _ in $(seq 1 "$busy_loops"); do
  (while :; do :; done) &
  hogs+=($!)
done

listening() {
  ss -ltnH | awk '{print $4}' | grep -q ":$1\$"
}

hung=0
starts=0
nudged=0
for batch in $(seq 1 "$batches"); do
  data="$work/batch"
  rm -rf "$data"
  mkdir -p "$data"
  pids=()
  for node in $(seq 1 "$per_batch"); do
    port=$((base_port + node * 10))
    seeds=()
    if [ "$node" -gt 1 ]; then
      seeds=(--seeds "127.0.0.1:$((base_port + 13))")
    fi
    RINGKV_LOG=info,ringkv_shard::nudge=debug "$RINGKV_BIN" serve --data-dir "$data/node-$node" \
      --listen "127.0.0.1:$port" --shards 2 --peer-listen "127.0.0.1:$((port + 3))" \
      --io-memory-bytes 262144 --memtable-bytes-max 1048576 --block-cache-bytes 1048576 \
      --node-id "$node" --replication-factor 3 "${seeds[@]}" > "$data/log-$node" 2>&1 &
    pids+=($!)
  done
  for index in "${!pids[@]}"; do
    node=$((index + 1))
    port=$((base_port + node * 10))
    up=0
    for _ in $(seq 1 300); do
      if listening "$port" && listening "$((port + 1))" && listening "$((port + 2))"; then
        up=1
        break
      fi
      sleep 0.1
    done
    starts=$((starts + 1))
    if [ "$up" = 0 ]; then
      hung=$((hung + 1))
      name="$out/hung-$batch-$node"
      echo "batch $batch: node $node did not listen within 30 s"
      cp "$data/log-$node" "$name.log"
      pid=${pids[$index]}
      switches() {
        for task in /proc/"$pid"/task/*; do
          echo "$(cat "$task/comm") $(grep ctxt_switches "$task/status" | tr -s '\t\n' '  ')"
        done
      }
      { switches; sleep 3; echo "3 s later:"; switches; } > "$name.switches" 2>&1 || true
      if command -v gdb > /dev/null; then
        gdb -p "$pid" -batch -ex "thread apply all bt" > "$name.backtrace" 2>&1 || true
      fi
    fi
  done
  for node in $(seq 1 "$per_batch"); do
    if grep -q "waking it" "$data/log-$node"; then
      nudged=$((nudged + 1))
      cp "$data/log-$node" "$out/nudged-$batch-$node.log"
    fi
  done
  kill -9 "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
done
rm -rf "$work/batch"
echo "hung $hung of $starts starts; $nudged starts nudged"
[ "$hung" = 0 ]
