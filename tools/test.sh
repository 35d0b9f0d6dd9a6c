#!/usr/bin/env bash
# Runs the whole test suite: installs what the Redis-protocol tests drive when it is missing
# (redis-cli and redis-benchmark from Debian's redis-tools, redis-py from PyPI) and the
# Prometheus client whose parser the metrics test reads /metrics with, then
#
#   cargo test --workspace --no-fail-fast [ARGS...]
#
# (every test binary runs even after one fails, so a run shows every failure, not the first).
# Installing needs root and apt-get (as on CI); elsewhere it says what to install, and the
# tests that need it fail saying the same.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing redis-tools (redis-cli, redis-benchmark)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null
  else
    echo "redis-cli and redis-benchmark are missing: install redis-tools (the RESP tests need them)" >&2
  fi
fi
if ! python3 -c 'import redis' 2>/dev/null; then
  echo "installing redis-py"
  python3 -m pip install -q redis || echo "could not install redis-py (pip install redis)" >&2
fi

if ! python3 -c 'import prometheus_client' 2>/dev/null; then
  echo "installing prometheus-client"
  python3 -m pip install -q prometheus-client || echo "could not install prometheus-client (pip install prometheus-client)" >&2
fi

cargo test --workspace --no-fail-fast "$@"
