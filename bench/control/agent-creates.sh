#!/usr/bin/env bash
# Creates per second of one agent: serves the agent (batching included) over
# a real backend in a network namespace of its own
# (crates/agent/examples/agent_creates.rs), sends TOTAL creates from CONC
# concurrent callers and prints one JSON line per run: the overall rate and
# the rate of each tenth of the run (docs/benchmarks.md, "Agent: creates per
# second").
#
#   bench/control/agent-creates.sh                    # nft, 100,000 creates, 16 callers
#   BACKENDS="nft relay" TOTAL=10000 CONC=64 bench/control/agent-creates.sh
#   BIN=target/debug/examples bench/control/agent-creates.sh   # prebuilt example
#
# Root (network namespaces). Each run gets a fresh namespace, deleted however
# the script ends; the example is stopped by PID on a signal.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
BACKENDS="${BACKENDS:-nft}"
TOTAL="${TOTAL:-100000}"
CONC="${CONC:-16}"
if [ -n "${BIN:-}" ]; then
    EXAMPLE="$BIN/agent_creates"
else
    cargo build --release -q -p navigator-agent --example agent_creates
    EXAMPLE="${CARGO_TARGET_DIR:-$PWD/target}/release/examples/agent_creates"
fi
[ -x "$EXAMPLE" ] || { echo "$EXAMPLE missing" >&2; exit 1; }

NS="navcreate$$"
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for backend in $BACKENDS; do
    ip netns add "$NS"
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" "$EXAMPLE" "$backend" "$TOTAL" "$CONC" &
    PID=$!
    wait "$PID"
    PID=""
    ip netns del "$NS"
done
