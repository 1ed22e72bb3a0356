#!/usr/bin/env bash
# Relay vs socat on loopback: bulk throughput, short-connection rate, RSS per idle
# relayed connection, and the open-file-limit warning. One command:
#   bench/relay/run.sh            (env: BYTES, RATE_SECS, REPEAT, CONC, HOLD_MAX, OUT to override)
#   PIN=1 bench/relay/run.sh      forwarders (relay, socat) on CPU 0, load generator and backend on CPU 1
# Every process started here is tracked by PID and killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BYTES="${BYTES:-2147483648}"      # 2 GiB per bulk run
RATE_SECS="${RATE_SECS:-5}"
REPEAT="${REPEAT:-3}"
CONC="${CONC:-64}"
HOLD_SMALL=1000
HOLD_MAX="${HOLD_MAX:-9500}"      # 2 fds each in the relay: 19,000 of the 20,000 fd cap
OUT="${OUT:-/tmp/relay-bench}"
mkdir -p "$OUT"
# With PIN=1 each forwarder gets one core to itself and the clients and backend
# the other, so that a forwarder's rate is not capped by the CPU the load
# generator takes (on a 2-core machine that is otherwise the bottleneck).
if [ "${PIN:-0}" = 1 ]; then FWD=(taskset -c 0); GEN=(taskset -c 1); else FWD=(); GEN=(); fi

cargo build --release -q -p navigator-relay --examples
BIN="$CARGO_TARGET_DIR/release/examples/relay_bench"
command -v socat >/dev/null || { echo "socat not installed (apt-get install -y socat)" >&2; exit 1; }

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do
    # socat forks a child per connection; stop the children of our socat PIDs too.
    for c in $(pgrep -P "$p" 2>/dev/null || true); do kill "$c" 2>/dev/null || true; done
    kill "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# start NAME CMD... : starts in background, logs to $OUT/NAME.log, waits for READY.
start() {
  local name=$1; shift
  "$@" >"$OUT/$name.out" 2>"$OUT/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do grep -q READY "$OUT/$name.out" 2>/dev/null && break; sleep 0.05; done
  LAST_PID=$pid
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# RSS / PSS summed over a process and its children (socat forks one per connection).
tree_kb() { local f=$1 p=$2 s=0 v; for q in $p $(pgrep -P "$p" || true); do
  v=$(awk -v f="$f" '$1==f":" {print $2}' "/proc/$q/smaps_rollup" 2>/dev/null || echo 0); s=$((s + ${v:-0})); done; echo $s; }

SINK=127.0.0.1:24101 ECHO=127.0.0.1:24102
start backend "${GEN[@]}" "$BIN" backend $SINK $ECHO
declare -A PORTS=([auto]=24201 [never]=24211 [always]=24221 [socat]=24231 [socatbl]=24241)
for m in auto never always; do
  p=${PORTS[$m]}
  start "relay-$m" "${FWD[@]}" "$BIN" serve $m 127.0.0.1:$p=$SINK 127.0.0.1:$((p+1))=$ECHO
done
p=${PORTS[socat]}
"${FWD[@]}" socat TCP-LISTEN:$p,fork,reuseaddr,bind=127.0.0.1 TCP:$SINK 2>"$OUT/socat-sink.log" & PIDS+=($!)
"${FWD[@]}" socat TCP-LISTEN:$((p+1)),fork,reuseaddr,bind=127.0.0.1 TCP:$ECHO 2>"$OUT/socat-echo.log" & PIDS+=($!)
# Same, with a listen backlog of 1024 like the relay (socat's default backlog is 5,
# which on its own causes SYN retries under 64 concurrent clients).
p=${PORTS[socatbl]}
"${FWD[@]}" socat TCP-LISTEN:$p,fork,reuseaddr,backlog=1024,bind=127.0.0.1 TCP:$SINK 2>"$OUT/socat-sink-bl.log" & PIDS+=($!)
"${FWD[@]}" socat TCP-LISTEN:$((p+1)),fork,reuseaddr,backlog=1024,bind=127.0.0.1 TCP:$ECHO 2>"$OUT/socat-echo-bl.log" & PIDS+=($!)
for q in ${PORTS[socat]} ${PORTS[socatbl]}; do wait_port $q; wait_port $((q+1)); done

RESULTS="$OUT/results.md"
# Rounds are interleaved (every path once per round) and the median is reported, so
# a burst of unrelated load on the machine hits all paths alike.
NAMES=("direct (no relay)" "navigator relay, splice=auto (default)" "navigator relay, splice=never" "navigator relay, splice=always" "socat fork (original command)" "socat fork, backlog=1024")
TARGETS=(24101 ${PORTS[auto]} ${PORTS[never]} ${PORTS[always]} ${PORTS[socat]} ${PORTS[socatbl]})
rm -f "$OUT"/m.*
for round in $(seq "$REPEAT"); do
  for i in "${!NAMES[@]}"; do
    port=${TARGETS[$i]}
    "${GEN[@]}" "$BIN" throughput 127.0.0.1:$port "$BYTES" | sed -n 's/.*MBps=\([0-9]*\).*/\1/p' >>"$OUT/m.$i.tput"
    r=$("${GEN[@]}" "$BIN" rate 127.0.0.1:$((port+1)) "$CONC" "$RATE_SECS")
    for k in cps p50_us p99_us errors; do sed -n "s/.* $k=\([0-9]*\).*/\1/p; s/^RATE $k=\([0-9]*\).*/\1/p" <<<"$r" >>"$OUT/m.$i.$k"; done
  done
  echo "round $round/$REPEAT done" >&2
done
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
all() { paste -sd/ "$1"; }
{
  echo "| path | bulk MB/s, 1 stream of $((BYTES>>20)) MiB (median; all runs) | conn/s, $CONC clients (median; all runs) | p50 µs | p99 µs | failed conns |"
  echo "|---|---:|---:|---:|---:|---:|"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | $(med "$OUT/m.$i.tput") ($(all "$OUT/m.$i.tput")) | $(med "$OUT/m.$i.cps") ($(all "$OUT/m.$i.cps")) | $(med "$OUT/m.$i.p50_us") | $(med "$OUT/m.$i.p99_us") | $(awk '{s+=$1} END {print s+0}' "$OUT/m.$i.errors") |"
  done
} >"$RESULTS"

# RSS per idle relayed connection: fresh relay process, baseline, hold N, measure.
echo >>"$RESULTS"
echo "| path | idle connections held | RSS before (KiB) | RSS after (KiB) | per connection (bytes) |" >>"$RESULTS"
echo "|---|---:|---:|---:|---:|" >>"$RESULTS"
hold_measure() { # name count kind(relay|socat) port pid
  local name=$1 n=$2 kind=$3 port=$4 pid=$5 before after ok
  if [ "$kind" = relay ]; then before=$(rss_kb "$pid"); else before=$(tree_kb Rss "$pid"); fi
  coproc HOLD { exec "$BIN" hold 127.0.0.1:$port "$n"; }
  local hp=$HOLD_PID; PIDS+=("$hp")
  read -r line <&"${HOLD[0]}"; ok=$(sed -n 's/.*ok=\([0-9]*\).*/\1/p' <<<"$line")
  sleep 1   # let the relay finish its per-connection work before sampling
  if [ "$kind" = relay ]; then after=$(rss_kb "$pid"); else after=$(tree_kb Rss "$pid"); fi
  echo "| $name | $ok (asked $n) | $before | $after | $(( (after - before) * 1024 / (ok > 0 ? ok : 1) )) |" >>"$RESULTS"
  if [ "$kind" = socat ]; then echo "| $name (PSS, shared pages split) | $ok | - | $(tree_kb Pss "$pid") | $(( ($(tree_kb Pss "$pid") - before) * 1024 / (ok > 0 ? ok : 1) )) |" >>"$RESULTS"; fi
  eval "exec ${HOLD[1]}>&-"; wait "$hp" 2>/dev/null || true
}
for n in $HOLD_SMALL $HOLD_MAX; do
  start "relay-hold-$n" "$BIN" serve auto 127.0.0.1:24301=$ECHO
  rp=$LAST_PID
  hold_measure "navigator relay" "$n" relay 24301 "$rp" 2>/dev/null || true
  stop "$rp"
done
# socat: one process per connection, so only the 1,000 case (9,500 processes is pointless).
socat TCP-LISTEN:24311,fork,reuseaddr,backlog=1024,bind=127.0.0.1 TCP:$ECHO 2>/dev/null & sp=$!; PIDS+=($sp)
wait_port 24311
hold_measure "socat fork, backlog=1024" $HOLD_SMALL socat 24311 "$sp"
stop "$sp"

# Open-file limit: a relay with RLIMIT_NOFILE=256 asked to carry 200 connections (400 fds).
start relay-fdlimit bash -c "ulimit -n 256 && exec '$BIN' serve auto 127.0.0.1:24321=$ECHO"
fp=$LAST_PID
coproc HOLD { exec "$BIN" hold 127.0.0.1:24321 200; }
hp=$HOLD_PID; PIDS+=("$hp")
read -r line <&"${HOLD[0]}"
eval "exec ${HOLD[1]}>&-"; wait "$hp" 2>/dev/null || true
stop "$fp"
{
  echo
  echo "fd-limit demo (RLIMIT_NOFILE=256, 200 connections asked): client saw: $line"
  echo 'relay log:'
  grep -E "open-file limit|available again" "$OUT/relay-fdlimit.log" | head -3 | sed 's/\x1b\[[0-9;]*m//g'
} >>"$RESULTS"
cat "$RESULTS"
