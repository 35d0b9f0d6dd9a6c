#!/usr/bin/env bash
# Starts a local ringkv cluster of N nodes on loopback, for trying the cluster and for tests.
#
#   tools/local-cluster.sh 3            start 3 nodes in the foreground; Ctrl-C stops them all
#   tools/local-cluster.sh 3 --detach   start them in the background and return
#   tools/local-cluster.sh join 4       add node 4 to a running cluster (detached, `--join`):
#                                       it restores its ranges by anti-entropy before it
#                                       answers replica reads
#   tools/local-cluster.sh stop         stop a detached cluster
#
# Node i (1-based) has node id i, client port 7379 + 10 * (i - 1) (so 7379, 7389, 7399, ...),
# its shard ports just above, its peer port client + 1000, one shard, and its own data
# directory under ${RINGKV_CLUSTER_DIR:-./ringkv-cluster}/node-i. Every node after the first
# joins through node 1's peer port. Extra `ringkv serve` flags go in RINGKV_SERVE_FLAGS; with
# RINGKV_RESP_PORT_BASE set, node i also speaks the Redis protocol on that port + i - 1.
set -euo pipefail

repository_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cluster_dir="${RINGKV_CLUSTER_DIR:-./ringkv-cluster}"
binary="${RINGKV_BINARY:-$repository_root/target/release/ringkv}"

stop_cluster() {
  local stopped=0 pids=() pid
  for pid_file in "$cluster_dir"/node-*.pid; do
    [ -e "$pid_file" ] || continue
    pid="$(cat "$pid_file")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      stopped=$((stopped + 1))
      pids+=("$pid")
    fi
    rm -f "$pid_file"
  done
  # Until they have exited (at most 30 s): their ports are free for the next cluster.
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  echo "stopped $stopped node(s)"
}

case "${1:-}" in
  stop)
    stop_cluster
    exit 0
    ;;
  ''|-h|--help)
    sed -n '2,16p' "$0"
    exit 0
    ;;
esac

if [ ! -x "$binary" ]; then
  echo "building ringkv (release)" >&2
  (cd "$repository_root" && cargo build --release --bin ringkv >&2)
fi
mkdir -p "$cluster_dir"
seed="127.0.0.1:8379"

# start_node I [FLAGS...]: node I in the background, joining through node 1 unless it is node 1.
start_node() {
  local i="$1"
  shift
  local client_port=$((7379 + 10 * (i - 1)))
  local peer_port=$((client_port + 1000))
  local seeds=()
  [ "$i" -gt 1 ] && seeds=(--seeds "$seed")
  local resp=() ports=("$client_port" "$peer_port") port
  if [ -n "${RINGKV_RESP_PORT_BASE:-}" ]; then
    resp=(--resp-listen "127.0.0.1:$((RINGKV_RESP_PORT_BASE + i - 1))")
    ports+=("$((RINGKV_RESP_PORT_BASE + i - 1))")
  fi
  # A port another process listens on would make this node exit, and node 1's status describe
  # the other process's cluster.
  for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "error: port $port is taken (another cluster running? stop it first)" >&2
      exit 1
    fi
  done
  # shellcheck disable=SC2086
  RINGKV_LOG="${RINGKV_LOG:-info}" "$binary" serve \
    --data-dir "$cluster_dir/node-$i" \
    --listen "127.0.0.1:$client_port" \
    --peer-listen "127.0.0.1:$peer_port" \
    --node-id "$i" \
    --shards 1 \
    "${seeds[@]}" \
    "${resp[@]}" \
    "$@" \
    ${RINGKV_SERVE_FLAGS:-} \
    >>"$cluster_dir/node-$i.log" 2>&1 &
  echo $! >"$cluster_dir/node-$i.pid"
  echo "node $i: client 127.0.0.1:$client_port, peer 127.0.0.1:$peer_port, log $cluster_dir/node-$i.log"
}

# wait_for_nodes N NODE...: until node 1 sees N nodes up (at most 30 s); prints how many it
# saw. Fails when fewer are up, or when one of the nodes NODE... just started has exited (a port
# taken by another process, say: node 1's status would then describe someone else's cluster).
wait_for_nodes() {
  local wanted="$1" up=0 i
  shift
  for _ in $(seq 1 60); do
    up="$("$binary" status --addr 127.0.0.1:7379 2>/dev/null | grep -cw up || true)"
    [ "$up" -ge "$wanted" ] && break
    sleep 0.5
  done
  for i in "$@"; do
    if ! kill -0 "$(cat "$cluster_dir/node-$i.pid")" 2>/dev/null; then
      echo "error: node $i exited; the end of $cluster_dir/node-$i.log:" >&2
      tail -n 5 "$cluster_dir/node-$i.log" >&2
      exit 1
    fi
  done
  echo "$up of $wanted node(s) up"
  if [ "$up" -lt "$wanted" ]; then
    echo "error: node 1 sees $up of $wanted nodes up" >&2
    exit 1
  fi
}

if [ "$1" = join ]; then
  node="${2:-}"
  if ! [[ "$node" =~ ^[2-9]$ ]]; then
    echo "error: join needs the new node's number, 2 to 9" >&2
    exit 2
  fi
  if [ -e "$cluster_dir/node-$node.pid" ] && kill -0 "$(cat "$cluster_dir/node-$node.pid")" 2>/dev/null; then
    echo "error: node $node is already running" >&2
    exit 2
  fi
  known="$(ls -d "$cluster_dir"/node-* 2>/dev/null | grep -c '/node-[0-9]$' || true)"
  start_node "$node" --join
  wait_for_nodes "$((known > node ? known : node))" "$node"
  echo "node $node answers replica reads once its log says \"serving replica reads again\""
  exit 0
fi

nodes="$1"
detach=false
[ "${2:-}" = "--detach" ] && detach=true
if ! [[ "$nodes" =~ ^[1-9]$ ]]; then
  echo "error: the node count must be 1 to 9" >&2
  exit 2
fi
for i in $(seq 1 "$nodes"); do
  start_node "$i"
done

# Node 1 sees every node up before the first request: the cluster is whole.
wait_for_nodes "$nodes" $(seq 1 "$nodes")

if $detach; then
  echo "stop with: $0 stop"
  exit 0
fi
trap 'stop_cluster; exit 0' INT TERM
echo "Ctrl-C stops the cluster"
wait
