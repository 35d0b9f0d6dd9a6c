#!/usr/bin/env bash
# The short chaos form CI runs: every scenario for a few seconds on 3 nodes, real processes under
# real faults, judged by the simulator's checkers (see docs/reliability.md).
#
#   tools/chaos/ci.sh [extra ringkv-bench chaos flags]
#
# Installs what the scenarios need when it is missing and it can (nftables, iproute2, faketime,
# through apt-get as root). Where network namespaces cannot be made (not root, no CAP_NET_ADMIN),
# `ringkv-bench chaos` says so and runs its loopback form: the process faults only
# (kill-restart, pause). CHAOS_DURATION sets the seconds per scenario (default 12), CHAOS_SEED
# the seed (default: the commit's, so a CI failure names a seed that replays its schedule).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v nft >/dev/null || missing+=(nftables)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing ${missing[*]} and cannot install them here; the scenarios needing them are skipped"
  fi
fi

# The test profile's build (opt-level 1), with every test selected: the same build `cargo test
# --workspace` makes (the same features of shared crates), so the test step after this one
# compiles nothing again, where a release build would cost CI minutes of its own. 300 operations
# a second need no more.
cargo build --workspace --tests --bins
seed="${CHAOS_SEED:-$(( 16#$(git rev-parse --short=8 HEAD 2>/dev/null || echo 0) ))}"
./target/debug/ringkv-bench chaos --scenario "${CHAOS_SCENARIOS:-all}" \
  --duration "${CHAOS_DURATION:-12}" --nodes 3 --seed "$seed" "$@"
