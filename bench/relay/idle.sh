#!/usr/bin/env bash
# Memory per idle relayed TCP connection, on loopback. One command:
#   bench/relay/idle.sh                 (env: COUNTS="1000 9000", MODE=auto|always|never, OUT,
#                                        TCP_IDLE_TIMEOUT=seconds: default 3600, the agent's; 0 = none)
# For each count: a fresh relay process (`relay_bench serve`), a warm-up of a
# few connections (so the runtime's threads have their scratch buffers and
# one-time allocations are not charged to the connections), USS before, then
# `relay_bench hold` opens COUNT connections (one round trip each) and keeps
# them idle; USS after. USS = Private_Clean + Private_Dirty of
# /proc/PID/smaps_rollup: the memory that leaving the relay would free.
# Prints one line per count: `IDLE mode=.. count=N uss_before_kB=.. uss_after_kB=.. bytes_per_conn=..`.
# Every process started here is tracked by PID and stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
COUNTS="${COUNTS:-1000 9000}"
MODE="${MODE:-auto}"
TCP_IDLE_TIMEOUT="${TCP_IDLE_TIMEOUT:-3600}"
# relay_bench: unset = no idle timeout (the relay library's default).
if [ "$TCP_IDLE_TIMEOUT" = 0 ]; then unset TCP_IDLE_TIMEOUT; else export TCP_IDLE_TIMEOUT; fi
OUT="${OUT:-/tmp/relay-idle}"
mkdir -p "$OUT"

# Each held connection costs the relay 2 fds, the holder 1 and the backend 1.
need=$(( $(echo "$COUNTS" | tr ' ' '\n' | sort -n | tail -1) * 2 + 64 ))
if [ "$(ulimit -n)" -lt "$need" ]; then
  ulimit -n "$need" 2>/dev/null || { echo "open-file limit $(ulimit -n) < $need needed" >&2; exit 1; }
fi

if [ -z "${BIN:-}" ]; then
  cargo build --release -q -p navigator-relay --examples
  BIN="$CARGO_TARGET_DIR/release/examples/relay_bench"
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# start NAME CMD... : in the background, output in $OUT/NAME.{out,log}; waits for READY.
start() {
  local name=$1; shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  for _ in $(seq 200); do grep -q READY "$OUT/$name.out" 2>/dev/null && return 0; sleep 0.05; done
  echo "$name did not start; see $OUT/$name.log" >&2
  return 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
uss_kb() { awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }

# hold ADDR COUNT: opens COUNT idle connections; sets HOLD_PID; waits for HELD.
hold() {
  # coproc sets HOLD (its stdout, stdin) and HOLD_PID.
  coproc HOLD { exec "$BIN" hold "$1" "$2"; }
  local line
  read -r line <&"${HOLD[0]}"
  HELD_LINE=$line
}
unhold() { local fd=${HOLD[1]}; exec {fd}>&-; wait "$HOLD_PID" 2>/dev/null || true; }

ECHO=127.0.0.1:24402
start backend "$BIN" backend 127.0.0.1:24401 $ECHO
port=24410
for n in $COUNTS; do
  port=$((port + 1))
  start "relay-$n" "$BIN" serve "$MODE" 127.0.0.1:$port=$ECHO
  rp=$LAST_PID
  hold 127.0.0.1:$port 64 && unhold     # warm-up
  sleep 0.5
  before=$(uss_kb "$rp")
  hold 127.0.0.1:$port "$n"
  case "$HELD_LINE" in "HELD ok=$n failed=0") ;; *) echo "hold: $HELD_LINE" >&2 ;; esac
  sleep 0.5
  after=$(uss_kb "$rp")
  fds=$(find "/proc/$rp/fd" -mindepth 1 | wc -l)
  unhold
  stop "$rp"
  echo "IDLE mode=$MODE idle_timeout=${TCP_IDLE_TIMEOUT:-none} count=$n uss_before_kB=$before uss_after_kB=$after relay_fds=$fds bytes_per_conn=$(( (after - before) * 1024 / n ))"
done
