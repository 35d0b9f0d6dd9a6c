#!/usr/bin/env bash
# ringkv's Redis-protocol port against Redis, both driven by the same `redis-benchmark`: SET and
# GET at pipeline 1 and 16, alternating the two servers over several rounds, each round on a
# fresh data directory. Besides requests per second it reports each server's CPU per request
# and the client's own CPU per request, and from that the client's ceiling: the most requests per
# second `redis-benchmark` (one thread) could issue with a whole core to itself and a server
# that cost nothing. On a small machine that ceiling, not the server, can decide a cell.
#
#   bench/compare/resp-vs-redis.sh [ROUNDS] [REQUESTS_P1] [REQUESTS_P16] [REDIS_FSYNC]
#
# ROUNDS       alternating rounds (default 5).
# REQUESTS_P1  requests per P1 cell (default 100000); REQUESTS_P16 per P16 cell (default 1000000).
# REDIS_FSYNC  Redis's appendfsync: always (default: ringkv acknowledges a SET after its fdatasync)
#              | everysec | no-aof.
#
# 50 connections, 3-byte values, keys drawn from 100,000 (`-r 100000`); each round runs SET
# before GET, so GETs find keys. ringkv runs with its defaults (one shard on a two-core machine,
# `--sync always`). Installs redis-server and redis-tools if missing (Debian's packages).
set -euo pipefail

rounds="${1:-5}"
requests_p1="${2:-100000}"
requests_p16="${3:-1000000}"
redis_fsync="${4:-always}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools) >/dev/null
fi
cargo build --release -q -p ringkv
work="$(mktemp -d "${TMPDIR:-/tmp}/resp-vs-redis.XXXXXX")"
trap 'rm -rf "$work"' EXIT

python3 - "$root/target/release/ringkv" "$work" "$rounds" "$requests_p1" "$requests_p16" "$redis_fsync" <<'PY'
import os, resource, socket, statistics, subprocess, sys, time

ringkv, work, rounds, requests_p1, requests_p16, redis_fsync = sys.argv[1:]
rounds, requests = int(rounds), {1: int(requests_p1), 16: int(requests_p16)}
ticks = os.sysconf("SC_CLK_TCK")
cells = [("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16)]
# Below the kernel's ephemeral range (32768 up by default), so no outgoing connection holds it.
base_port = 20000 + os.getpid() % 12000


def wait_port(port, server):
    for _ in range(200):
        # A server that exited (its port held by another program, say) must not leave the run
        # to whatever else listens there.
        if server.poll() is not None:
            sys.exit(f"the server for port {port} exited with status {server.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


def server_seconds(pid):
    # utime + stime of the whole process, all its threads (io_uring workers included).
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks


def start(side, round_, port):
    directory = f"{work}/{side}-{round_}"
    os.makedirs(directory)
    if side == "ringkv":
        command = [ringkv, "serve", "--data-dir", directory, "--listen", f"127.0.0.1:{port + 100}",
                   "--peer-listen", f"127.0.0.1:{port + 200}", "--resp-listen", f"127.0.0.1:{port}"]
    else:
        aof = ["--appendonly", "no"] if redis_fsync == "no-aof" else \
            ["--appendonly", "yes", "--appendfsync", redis_fsync]
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--dir", directory, *aof]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, server)
    return server


def cell(server, port, test, pipeline):
    """requests/s, server CPU us/request, client CPU us/request"""
    n = requests[pipeline]
    before_server = server_seconds(server.pid)
    before_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", test.lower(), "-r", "100000", "-P", str(pipeline),
         "-n", str(n), "--csv"], capture_output=True, text=True, check=True).stdout
    after_client = resource.getrusage(resource.RUSAGE_CHILDREN)
    after_server = server_seconds(server.pid)
    rps = next(float(line.split(",")[1].strip('"')) for line in out.splitlines()
               if line.startswith(f'"{test}"'))
    client = (after_client.ru_utime - before_client.ru_utime) + (after_client.ru_stime - before_client.ru_stime)
    return rps, (after_server - before_server) * 1e6 / n, client * 1e6 / n


results = {(side, c): [] for side in ("ringkv", "redis") for c in cells}
print(f"{rounds} rounds, 50 connections, redis-benchmark -r 100000; Redis appendfsync {redis_fsync}; "
      f"P1 cells {requests[1]} requests, P16 cells {requests[16]}")
for round_ in range(1, rounds + 1):
    for offset, side in enumerate(("ringkv", "redis")):
        port = base_port + 10 * offset
        server = start(side, round_, port)
        try:
            for test, pipeline in cells:
                results[(side, (test, pipeline))].append(cell(server, port, test, pipeline))
        finally:
            server.terminate()
            server.wait()
    print(f"round {round_} done", file=sys.stderr)

median = statistics.median
print(f"\n{'cell':8} {'side':7} {'requests/s (median; rounds)':>44} {'server us':>9} {'client us':>9} "
      f"{'ceiling':>9}")
for test, pipeline in cells:
    label = f"{test} P{pipeline}"
    for side in ("ringkv", "redis"):
        runs = results[(side, (test, pipeline))]
        rounds_text = " / ".join(f"{run[0]:.0f}" for run in runs)
        print(f"{label:8} {side:7} {median(r[0] for r in runs):>10.0f} ({rounds_text:>31}) "
              f"{median(r[1] for r in runs):>9.2f} {median(r[2] for r in runs):>9.2f} "
              f"{1e6 / median(r[2] for r in runs):>9.0f}")
print("\nserver us, client us: CPU time per request (user + system), medians of the rounds. ceiling: "
      "1e6 / client us, requests/s the client could issue on a core of its own.")
cores = os.cpu_count()
goal = 1.5
print(f"\n{'cell':8} {'ringkv / Redis':>15} {'ceiling / Redis':>16} {'budget us':>10} {'Redis us':>9}")
for test, pipeline in cells:
    ours = median(r[0] for r in results[("ringkv", (test, pipeline))])
    theirs = median(r[0] for r in results[("redis", (test, pipeline))])
    # The cheapest the client ever was, against either server: the most generous ceiling.
    cheapest = min(r[2] for side in ("ringkv", "redis") for r in results[(side, (test, pipeline))])
    # The server CPU per request left at `goal` x Redis once the client has had its share of the
    # machine's cores (at its cheapest).
    budget = cores * 1e6 / (goal * theirs) - cheapest
    redis_server = median(r[1] for r in results[("redis", (test, pipeline))])
    print(f"{test + ' P' + str(pipeline):8} {ours / theirs:>15.2f} {1e6 / cheapest / theirs:>16.2f} "
          f"{budget:>10.2f} {redis_server:>9.2f}")
print("ceiling / Redis: the highest ratio to Redis any server could show in that cell with this client "
      "on a core of its own (its cheapest round).")
print(f"budget us: the server CPU per request that {goal}x Redis leaves on this machine's {cores} cores "
      "once the client has had its share; Redis us: what Redis spent.")
PY
