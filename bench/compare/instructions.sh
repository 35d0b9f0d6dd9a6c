#!/usr/bin/env bash
# Instructions per request on ringkv's server and client paths, counted by callgrind: the same
# figure on every run of the same build, whatever else the machine is doing, so a change's
# effect shows without timing noise.
#
#   bench/compare/instructions.sh [OPS]
#
# Each figure is the difference of two runs (OPS and 2 x OPS requests) over OPS, counting only
# inside the measured function (`ringkv-path`'s counted_server / counted_client), so start-up,
# loading and connecting cancel out.
#   server  the request path in process: decode, verify, execute on the engine (in-memory disk),
#           encode the reply. No sockets or executor: glommio's io_uring loop does not run under
#           valgrind. GET reads a cached key; PUT includes the WAL append and group commit.
#   client  the tokio client (the request and reply handling all adapters share), 16 requests in
#           flight, against a one-shard node started here; includes tokio's scheduling and the
#           user-space side of the socket calls.
#   server GET from tables  a GET of a key flushed to a table, through the filter, the index, the
#           block cache and the block search; with callgrind's cache model's misses per request.
#   peer    one replicated write's frames at both ends: a Replicate encoded into a link's outbox,
#           decoded and read by the replica, its ack encoded and read back; with the frames laid
#           out by hand (what links do) and, for comparison, through the FlatBuffers builder.
# Also prints heap allocations per request on the node's shard thread and the client's thread
# (`ringkv-path allocations`, a counting allocator, real sockets, pipeline 16).
set -euo pipefail

ops="${1:-20000}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
cargo build --release -q -p ringkv -p ringkv-bench
bin="$root/target/release"
work="$(mktemp -d "${TMPDIR:-/tmp}/instructions.XXXXXX")"
# Below the kernel's ephemeral range (32768 up by default), so no outgoing connection holds it.
port=$((20000 + RANDOM % 12000))
node=""
cleanup() {
  [ -n "$node" ] && kill "$node" 2>/dev/null && wait "$node" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export RUST_BACKTRACE=0

# counted MODE OP N [args]: the instructions callgrind counted inside counted_MODE (for the peer
# mode, OP is the encoder).
counted() {
  local mode="$1" op="$2" n="$3" flag=--op
  shift 3
  # The peer mode's variants are its encoders.
  [ "$mode" = peer ] && flag=--encoder
  # No wildcard after the name: callgrind toggles collection on entering any function that
  # matches, so a pattern that also matched the measured function's closures
  # (`counted_server::{{closure}}`) switched counting off inside them.
  valgrind --tool=callgrind --toggle-collect="*counted_${mode}" --callgrind-out-file="$work/out" \
    "$bin/ringkv-path" "$mode" "$flag" "$op" --ops "$n" "$@" >/dev/null 2>"$work/log" ||
    { cat "$work/log" >&2; exit 1; }
  awk '/^summary:|^totals:/ { print $2; exit }' "$work/out"
}

# per MODE OP [args]: instructions per request.
per() {
  local mode="$1" op="$2"
  shift 2
  local one two
  one=$(counted "$mode" "$op" "$ops" "$@")
  two=$(counted "$mode" "$op" $((2 * ops)) "$@")
  echo $(((two - one) / ops))
}

"$bin/ringkv" serve --data-dir "$work/data" --listen "127.0.0.1:$port" --shards 1 \
  --peer-listen "127.0.0.1:$((port + 2))" >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 1 100); do
  # A node that exited (its port held by another program, say) must not leave the run to
  # whatever else listens there.
  kill -0 "$node" 2>/dev/null || { echo "the node exited:" >&2; tail -5 "$work/node.log" >&2; exit 1; }
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
"$bin/ringkv-bench" load --target "ringkv://127.0.0.1:$port" --records 10000 --value-size 100 >/dev/null

printf '%-8s %-4s %s\n' path op "instructions/request"
printf '%-8s %-4s %s\n' server GET "$(per server get)"
printf '%-8s %-4s %s\n' server PUT "$(per server put)"
printf '%-8s %-4s %s\n' client GET "$(per client get --addr "127.0.0.1:$port")"
printf '%-8s %-4s %s\n' client PUT "$(per client put --addr "127.0.0.1:$port")"
printf '%-8s %-4s %s\n' peer write "$(per peer hand)"
printf '%-8s %-4s %s\n' peer "write (builder)" "$(per peer builder)"

# table_events N: instructions, L1 data read misses and last-level data read misses inside
# counted_server over N GETs of keys that live in a table (100,000 keys flushed, their blocks in
# the block cache): the filter, the index, the cache and the block search. callgrind's cache
# model is fixed here (32 KiB L1 data, 8 MiB last level), so the misses repeat as the
# instructions do, whatever machine runs it; they are what a read from the tables waits on.
table_events() {
  valgrind --tool=callgrind --cache-sim=yes --D1=32768,8,64 --LL=8388608,16,64 \
    --toggle-collect="*counted_server" --callgrind-out-file="$work/out" \
    "$bin/ringkv-path" server --op get --from-tables --records 100000 --ops "$1" >/dev/null 2>"$work/log" ||
    { cat "$work/log" >&2; exit 1; }
  awk '/^events:/ { for (i = 2; i <= NF; i++) column[$i] = i }
       /^summary:|^totals:/ { print $column["Ir"], $column["D1mr"], $column["DLmr"]; exit }' "$work/out"
}
read -r ir_one d1_one ll_one <<<"$(table_events "$ops")"
read -r ir_two d1_two ll_two <<<"$(table_events $((2 * ops)))"
awk -v ir=$((ir_two - ir_one)) -v d1=$((d1_two - d1_one)) -v ll=$((ll_two - ll_one)) -v n="$ops" \
  'BEGIN { printf "%-8s %-4s %d (L1 data read misses %.1f, last-level %.1f)\n", "server", "GET from tables", ir / n, d1 / n, ll / n }'
echo
for op in get put; do
  printf '%s: ' "$op"
  "$bin/ringkv-path" allocations --op "$op" --ops "$ops" | tail -n 1
done
