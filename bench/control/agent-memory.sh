#!/usr/bin/env bash
# Memory per forward in the agent: runs the agent over a real backend
# (crates/agent/examples/agent_memory.rs) in a network namespace of its own,
# syncs N forwards and prints one JSON line per run with the resident memory
# and the allocator's bytes per forward (docs/benchmarks.md, "Agent memory").
#
#   bench/control/agent-memory.sh                     # nft and relay, 10,000 and 100,000
#   BACKENDS=nft SIZES=1000 bench/control/agent-memory.sh
#   BIN=target/debug/examples bench/control/agent-memory.sh   # prebuilt example
#
# Root (network namespaces). Each run gets a fresh namespace, deleted however
# the script ends; the example is stopped by PID on a signal.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
BACKENDS="${BACKENDS:-nft relay}"
SIZES="${SIZES:-10000 100000}"
if [ -n "${BIN:-}" ]; then
    EXAMPLE="$BIN/agent_memory"
else
    cargo build --release -q -p navigator-agent --example agent_memory
    EXAMPLE="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/agent_memory"
fi
[ -x "$EXAMPLE" ] || { echo "$EXAMPLE missing" >&2; exit 1; }

NS="navmem$$"
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for backend in $BACKENDS; do
    for n in $SIZES; do
        ip netns add "$NS"
        ip netns exec "$NS" ip link set lo up
        ip netns exec "$NS" "$EXAMPLE" "$backend" "$n" &
        PID=$!
        wait "$PID"
        PID=""
        ip netns del "$NS"
    done
done
