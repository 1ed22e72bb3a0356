#!/usr/bin/env bash
# Control plane at scale on one proxy (issue #18): the new user's case, an
# all-in-one navigator-server (embedded SQLite, noauth, nft backend) holding
# FORWARDS forwards, run inside a network namespace this script creates, so
# that the nft table it writes is that namespace's and nothing outside it is
# touched. The load generator runs in the namespace too and reaches the API
# on the namespace's loopback.
#
#   bench/control/scale.sh    (as root; env to override: FORWARDS, CONC,
#                              BLOCK, IDLE_SECS, SETTLE_SECS, REPORT_INTERVAL,
#                              RESYNC_INTERVAL, PORT_RANGE, OUT, BIN_DIR,
#                              PERF_AT, PERF_SECS)
#
# a. creates: FORWARDS creates by CONC clients (`cluster_load blocks`), in
#    blocks of BLOCK: creates/s per block, p50/p99, the server's CPU per 1,000
#    creates (its own and its children's: the `nft` runs) and the load
#    generator's CPU (in cores, to show it is not the bottleneck). A create
#    counts only if it answered 201 ACTIVE. PERF_AT=N records the server
#    (and its nft runs) with `perf record --call-graph dwarf` at 499 Hz for
#    PERF_SECS (20) seconds once N forwards exist (OUT/perf.data; read it
#    with `perf report -i OUT/perf.data --no-children`).
# b. idle: the server's CPU (with children) over IDLE_SECS (60) with FORWARDS
#    stored and no requests, after SETTLE_SECS (10) without any.
# c. restart: SIGTERM, then the same command on the same database (the
#    all-in-one agent starts with it): the "agent synced" lines it logs (how
#    many, and the first one's elapsed_ms: the full sync of FORWARDS), and
#    the time from the start command until the API counts every forward
#    ACTIVE (GET /metrics, navigator_forwards by status: one GROUP BY) AND
#    the start-up sync has been logged: statuses persist across a restart,
#    so the API alone would say ACTIVE before the agent carries anything.
#    Syncs are counted until 3 report intervals after that.
# d. memory: the server's RSS and USS (Private_* of smaps_rollup) at start,
#    after the creates and after the restart, per forward; the nft ruleset's
#    size (`nft list table` lines and bytes).
#
# Defaults are the issue's user's: report_interval 10, resync_interval 60 (the
# server's defaults). PORT_RANGE (10000-60999) is each external address's
# pool; the script gives the namespace as many addresses as FORWARDS needs
# and has the load generator name them in turn (one address: none named).
#
# Verdict lines start with "TARGET" (the issue's targets; MET or MISSED) and
# summary lines with "SUMMARY". No number is asserted: a debug build's mean
# nothing. BIN_DIR: a directory with release navigator-server and the
# cluster_load example (or examples/cluster_load); without it they are built
# here. Every process is tracked by PID and stopped on exit, and the
# namespace is deleted then.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
FORWARDS="${FORWARDS:-100000}"
CONC="${CONC:-16}"
BLOCK="${BLOCK:-10000}"
IDLE_SECS="${IDLE_SECS:-60}"
SETTLE_SECS="${SETTLE_SECS:-10}"
REPORT_INTERVAL="${REPORT_INTERVAL:-10}"
RESYNC_INTERVAL="${RESYNC_INTERVAL:-60}"
PORT_RANGE="${PORT_RANGE:-10000-60999}"
PERF_AT="${PERF_AT:-}"
PERF_SECS="${PERF_SECS:-20}"
OUT="${OUT:-/tmp/control-scale}"
# The namespace's networks: external addresses EXT_NET.1, .2, ...; the
# forwards' target (never contacted: no traffic flows) on TARGET_NET.
EXT_NET="${EXT_NET:-10.203.0}"
TARGET="${TARGET:-10.203.1.2}"
API_PORT=9797
API="http://127.0.0.1:$API_PORT"

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, nft)" >&2; exit 1; }
for t in nft ip nsenter curl jq; do
  command -v "$t" >/dev/null || { echo "$t not installed" >&2; exit 1; }
done

if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p navigator-server --bin navigator-server --example cluster_load
  BIN_DIR="$CARGO_TARGET_DIR/release"
fi
SERVER="$BIN_DIR/navigator-server"
LOAD="$BIN_DIR/cluster_load"
[ -x "$LOAD" ] || LOAD="$BIN_DIR/examples/cluster_load"
for b in "$SERVER" "$LOAD"; do
  [ -x "$b" ] || { echo "$b missing" >&2; exit 1; }
done

rm -rf "$OUT" && mkdir -p "$OUT"
NS="navscale$$"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Anything still inside our own namespace (nothing else) goes with it.
  for p in $(ip netns pids "$NS" 2>/dev/null || true); do kill -9 "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
nsx() { ip netns exec "$NS" "$@"; }
# For processes measured or signalled by PID: nsenter execs the command in
# place (ip netns exec forks; a shell function run with & is a subshell), so
# that "$NSENTER" CMD & makes $! the command's own PID.
NSENTER=(nsenter --net="/run/netns/$NS" --)

# Addresses: enough pools of PORT_RANGE for FORWARDS with 5 % to spare.
first=${PORT_RANGE%-*}; last=${PORT_RANGE#*-}
pool=$((last - first + 1))
naddr=$(( (FORWARDS + FORWARDS / 20 + pool - 1) / pool ))
[ "$naddr" -ge 1 ] || naddr=1
[ "$naddr" -le 250 ] || { echo "FORWARDS=$FORWARDS needs $naddr addresses of PORT_RANGE=$PORT_RANGE; widen it" >&2; exit 1; }
addresses=""
ip netns add "$NS"
nsx ip link set lo up
# A veth pair with both ends in the namespace (no dummy module needed).
nsx ip link add ext0 type veth peer name ext1
nsx ip link set ext1 up
for i in $(seq "$naddr"); do
  nsx ip addr add "$EXT_NET.$i/24" dev ext0
  addresses="${addresses:+$addresses,}$EXT_NET.$i"
done
nsx ip link set ext0 up
nsx ip route add "${TARGET%.*}.0/24" dev ext0
nsx sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# Outgoing connections (the load generator's) borrow ports above every pool.
nsx sysctl -q -w net.ipv4.ip_local_port_range="61000 65000" net.ipv4.tcp_tw_reuse=1
named=""
[ "$naddr" -gt 1 ] && named=$addresses

cat >"$OUT/navigator.conf" <<CONF
[DEFAULT]
host = scale-proxy
bind_host = 127.0.0.1
bind_port = $API_PORT
[database]
connection = sqlite:///$OUT/navigator.db
[api]
# One client address far above the per-client limit.
rate_limit = 0
[quotas]
# FORWARDS forwards in one project; the quota claims are still made.
forwards = -1
ports = -1
[agent]
backend = nft
external_addresses = $addresses
port_range = $PORT_RANGE
report_interval = $REPORT_INTERVAL
resync_interval = $RESYNC_INTERVAL
CONF

SERVER_PID=""
# start_server LOG: runs the server in the namespace and waits for its API.
start_server() {
  "${NSENTER[@]}" "$SERVER" --config-file "$OUT/navigator.conf" >>"$OUT/server.out" 2>"$OUT/$1" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1200); do
    nsx curl -sf -o /dev/null "$API/healthcheck" && return
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "server did not start; see $OUT/$1" >&2; tail -5 "$OUT/$1" >&2; exit 1
}
stop_server() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 1200); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.05; done
  wait "$SERVER_PID" 2>/dev/null || true
}

# cpu_s PID: user + system seconds of the process and its waited-for
# children (the nft runs).
cpu_s() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13 + $14 + $15) / hz }' "/proc/$1/stat"
}
# mem PID: "rss_kib uss_kib".
mem() {
  local rss uss
  rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$1/status")
  uss=$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0)
  echo "$rss $uss"
}
# per_forward KIB BASE_KIB: bytes per forward of what grew above BASE.
per_forward() { awk -v a="$1" -v b="$2" -v n="$FORWARDS" 'BEGIN { printf "%.0f", (a - b) * 1024 / (n > 0 ? n : 1) }'; }
verdict() { if awk "BEGIN { exit !($1) }"; then echo MET; else echo MISSED; fi; }
# active: forwards the API counts ACTIVE (all protocols).
active() {
  nsx curl -sf "$API/metrics" | awk '/^navigator_forwards\{/ && /status="ACTIVE"/ { s += $NF } END { print s + 0 }'
}
synced_lines() { grep -c "agent synced" "$OUT/$1" || true; }

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "machine: $machine; $(date -u +%FT%TZ); FORWARDS=$FORWARDS CONC=$CONC BLOCK=$BLOCK, $naddr external address(es) of $pool ports, binaries $BIN_DIR" | tee "$OUT/summary.txt"

start_server server.log
# Until the start-up sync of the empty set is done, creates would race it.
for _ in $(seq 1200); do [ "$(synced_lines server.log)" -ge 1 ] && break; sleep 0.05; done
read -r rss0 uss0 < <(mem "$SERVER_PID")
echo "SUMMARY server at start (no forwards): RSS $((rss0 / 1024)) MiB, USS $((uss0 / 1024)) MiB" | tee -a "$OUT/summary.txt"

# a. Creates, block by block.
echo "creating $FORWARDS forwards by $CONC clients in blocks of $BLOCK" >&2
syncs_before=$(synced_lines server.log)
"${NSENTER[@]}" "$LOAD" blocks "$API" "$FORWARDS" "$CONC" "$BLOCK" --target "$TARGET" \
  ${named:+--addresses "$named"} --server-pid "$SERVER_PID" >"$OUT/blocks.jsonl" 2>"$OUT/load.log" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
perf_pid=""
while kill -0 "$LOAD_PID" 2>/dev/null; do
  if [ -n "$PERF_AT" ] && [ -z "$perf_pid" ] &&
    [ "$(jq -s 'map(select(.mode == "block") | .to) | max // 0' "$OUT/blocks.jsonl")" -ge "$PERF_AT" ]; then
    echo "recording the server with perf for $PERF_SECS s at $PERF_AT forwards" >&2
    perf record -q -F 499 --call-graph dwarf -p "$SERVER_PID" -o "$OUT/perf.data" -- sleep "$PERF_SECS" >"$OUT/perf.log" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
  fi
  sleep 1
done
wait "$LOAD_PID" || { echo "load generator failed; see $OUT/load.log" >&2; cat "$OUT/load.log" >&2; exit 1; }
[ -z "$perf_pid" ] || wait "$perf_pid" || true
echo "| forwards | creates/s | p50 ms | p99 ms | errors | server CPU s per 1,000 (own + children) | load generator cores |" | tee -a "$OUT/summary.txt"
echo "|---|---|---|---|---|---|---|" | tee -a "$OUT/summary.txt"
jq -r 'select(.mode == "block") | "| \(.from)-\(.to) | \(.creates_per_s) | \(.p50_ms * 10 | round / 10) | \(.p99_ms * 10 | round / 10) | \(.errors) | \(.server_cpu_s_per_1000) (\(.server_cpu_s * 100 | round / 100) + \(.server_children_cpu_s * 100 | round / 100) s) | \(.load_cores) |"' \
  "$OUT/blocks.jsonl" | tee -a "$OUT/summary.txt"
summary=$(jq -c 'select(.mode == "blocks")' "$OUT/blocks.jsonl")
rate=$(jq .creates_per_s <<<"$summary")
ratio=$(jq .last_to_first <<<"$summary")
created=$(jq .created <<<"$summary")
syncs_during=$(( $(synced_lines server.log) - syncs_before ))
drift=$(grep -c "differ from the store in two reports" "$OUT/server.log" || true)
echo "SUMMARY creates: $created of $FORWARDS created ACTIVE, $(jq .errors <<<"$summary") errors, $rate creates/s overall; first block $(jq .first_block_per_s <<<"$summary")/s, last $(jq .last_block_per_s <<<"$summary")/s; $syncs_during full syncs during the creates ($drift for drift)" | tee -a "$OUT/summary.txt"
first_error=$(jq -r 'select(.mode == "block" and .first_error != null) | .first_error' "$OUT/blocks.jsonl" | head -1)
[ -z "$first_error" ] || echo "  first error: $first_error" | tee -a "$OUT/summary.txt"
echo "TARGET creates >= 1000/s: $rate/s $(verdict "$rate >= 1000")" | tee -a "$OUT/summary.txt"
echo "TARGET last block within 20% of the first: last/first = $ratio $(verdict "$ratio >= 0.8 && $ratio <= 1.2")" | tee -a "$OUT/summary.txt"

# d (1). Memory and ruleset with FORWARDS stored.
read -r rss1 uss1 < <(mem "$SERVER_PID")
echo "SUMMARY server after the creates: RSS $((rss1 / 1024)) MiB ($(per_forward "$rss1" 0) B per forward, $(per_forward "$rss1" "$rss0") above the empty server's), USS $((uss1 / 1024)) MiB ($(per_forward "$uss1" "$uss0") B per forward above the empty server's)" | tee -a "$OUT/summary.txt"
nsx nft list table inet navigator >"$OUT/ruleset.nft"
echo "SUMMARY nft table inet navigator: $(wc -l <"$OUT/ruleset.nft") lines, $(( $(wc -c <"$OUT/ruleset.nft") / 1024 )) KiB listed" | tee -a "$OUT/summary.txt"

# b. Idle.
sleep "$SETTLE_SECS"
syncs_before=$(synced_lines server.log)
c0=$(cpu_s "$SERVER_PID"); t0=$(date +%s.%N)
sleep "$IDLE_SECS"
c1=$(cpu_s "$SERVER_PID"); t1=$(date +%s.%N)
idle=$(awk -v a="$c0" -v b="$c1" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.2f", (b - a) / (e - s) * 100 }')
echo "SUMMARY idle with $FORWARDS forwards: $idle % of a core over $IDLE_SECS s ($(( $(synced_lines server.log) - syncs_before )) full syncs in it; report_interval $REPORT_INTERVAL s, resync_interval $RESYNC_INTERVAL s)" | tee -a "$OUT/summary.txt"
echo "TARGET idle < 2% of a core: $idle % $(verdict "$idle < 2")" | tee -a "$OUT/summary.txt"

# c. Restart.
stop_server
started=$(date +%s.%N)
start_server restart.log
api_up=$(date +%s.%N)
all_active=""
for _ in $(seq 3000); do
  if [ "$(synced_lines restart.log)" -ge 1 ] && [ "$(active)" -ge "$created" ]; then
    all_active=$(date +%s.%N)
    break
  fi
  sleep 0.2
done
sleep $((3 * REPORT_INTERVAL))
syncs=$(synced_lines restart.log)
needs=$(grep -c "agent needs a full sync" "$OUT/restart.log" || true)
sync_ms=$(grep -m1 "agent synced" "$OUT/restart.log" | sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p')
all_ms=$(grep "agent synced" "$OUT/restart.log" | sed -n 's/.*forwards=\([0-9]*\).*elapsed_ms=\([0-9]*\).*/\1 forwards in \2 ms/p' | paste -sd, -)
echo "SUMMARY restart: API answering $(awk -v a="$started" -v b="$api_up" 'BEGIN { printf "%.2f", b - a }') s after the start command; $syncs sync(s) logged in the first $((3 * REPORT_INTERVAL)) s after all ACTIVE ($all_ms); \"agent needs a full sync\" $needs time(s)" | tee -a "$OUT/summary.txt"
echo "TARGET one sync at start-up: $syncs $(verdict "$syncs == 1")" | tee -a "$OUT/summary.txt"
echo "TARGET full sync <= 2 s: ${sync_ms:-none} ms $(verdict "${sync_ms:-999999} <= 2000")" | tee -a "$OUT/summary.txt"
if [ -n "$all_active" ]; then
  restart=$(awk -v a="$started" -v b="$all_active" 'BEGIN { printf "%.2f", b - a }')
else
  restart=never
fi
echo "TARGET restart to all ACTIVE <= 10 s: $restart s $(verdict "\"$restart\" != \"never\" && $restart <= 10")" | tee -a "$OUT/summary.txt"

# d (2). Memory after the restart.
read -r rss2 uss2 < <(mem "$SERVER_PID")
echo "SUMMARY server after the restart: RSS $((rss2 / 1024)) MiB ($(per_forward "$rss2" 0) B per forward, $(per_forward "$rss2" "$rss0") above the empty server's), USS $((uss2 / 1024)) MiB ($(per_forward "$uss2" "$uss0") B per forward above it)" | tee -a "$OUT/summary.txt"
stop_server
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
echo "results: $OUT/summary.txt, $OUT/blocks.jsonl; logs in $OUT" >&2
