#!/usr/bin/env bash
# Forwarder benchmark: what each TCP forwarder costs, measured with a load
# generator that is not the bottleneck, with calibration rows in the same run.
#
# Topology (bench/dataplane/lib.sh): client namespace -> proxy namespace with
# two NICs -> backend namespace. The generator runs in the client namespace,
# the servers in the backend namespace, the forwarder in the proxy namespace.
# Rows (MODES, all in one run, interleaved per round, order reversed every
# other round; the table shows median and min-max of ROUNDS):
#   plain        routing through the proxy namespace, no forwarder
#   nft          kernel DNAT (dp_hold nft: the agent's nft backend)
#   plain-2cpu, nft-2cpu  the same with the echo server moved to CPU 0 (the
#                forwarder CPU, idle in kernel rows): with PIN=1 the kernel's
#                forwarding work runs in the context of the generator and
#                echo server, so in plain/nft it shares CPU 1 with them while
#                a process forwarder has CPU 0 on top; these rows give the
#                kernel both CPUs, as the relay rows use both
#   relay        Navigator's relay (dp_hold relay: the agent's relay backend,
#                with the agent's default caps, see "Idle limit" below), on
#                the forwarder CPU (CPU 0 with PIN=1)
#   relay-1core  the same, pinned to CPU 0 whatever PIN says
#   relay-2core  the same, allowed both CPUs (shared with the generator)
#   minrelay     crates/relay/examples/minrelay.rs: single-threaded epoll +
#                splice, a pipe pair per connection (the calibration relay;
#                6 files per connection, so at most 3,332 held at 20,000)
#   minrelay-2p  two minrelay processes on one port (SO_REUSEPORT), both CPUs
#   haproxy      Debian's haproxy, tcp mode, nbthread 1, no logging
#                ($OUT/haproxy.cfg)
#   socat        dp_hold socat (a fork per connection; rate run SOCAT_SECS)
# Per row:
#   - conn/s, p50/p99 latency and the generator's own CPU %:
#     `loadgen rate` (crates/relay/examples/loadgen.rs, single-threaded
#     epoll, CONC connections in flight, 64-byte request and reply, plain
#     close, client-side TIME_WAIT reused thanks to tcp_tw_reuse=1 and the
#     1024-65000 port range lib.sh sets) against loadgen's epoll echo server;
#   - forwarder CPU per 1,000 connections and per Gbit/s (method below);
#   - single-stream MB/s: relay_bench throughput (BYTES) into relay_bench's
#     sink;
#   - memory per idle connection (relay, minrelay, haproxy; round 1 only):
#     `loadgen hold` keeps IDLE idle connections (one 1-byte round trip
#     each) through the forwarder; USS = Private_Clean + Private_Dirty of
#     /proc/PID/smaps_rollup before and after, over IDLE;
#   - idle-connection limit (relay only, once, LIMIT=1): see below.
#
# CPU accounting. Process forwarders (relay, minrelay, haproxy, socat):
# utime+stime+cutime+cstime of /proc/PID/stat of the forwarder's processes
# and their live descendants (socat's exited forks are in its cutime/cstime),
# delta over the run, divided by the connections completed (or by the
# Gbit/s moved). Kernel rows (plain, nft) have no process: this kernel has
# CONFIG_IRQ_TIME_ACCOUNTING unset (checked at start and printed), so softirq
# time is not split from the time of the task it interrupts: the tick that
# lands in a softirq is counted in /proc/stat's softirq column *and* in the
# interrupted task's stime. On veth the whole forwarding path (routing,
# conntrack, NAT, the next veth's receive) runs in softirq in the context of
# the task that sent the packet, i.e. the generator or the echo server, so
# "system CPU outside the generator and echo" is about zero by construction
# and would hide the kernel's work. The kernel rows therefore report the
# delta of /proc/stat's irq+softirq columns (all CPUs, tick-sampled) per
# connection: routing/NAT plus the TCP receive processing of the endpoints.
# The same column is printed for every row ("softirq"), so that
# nft - plain is what DNAT and conntrack add, and a process forwarder's own
# figure can be read next to the kernel work its connections cause (some of
# which, sent from its own context, is already inside its process CPU).
# The unattributed CPU (all busy CPU of /proc/stat minus generator, echo
# server and forwarder processes) is in $OUT/results.tsv: other load on the
# machine shows there.
#
# Idle limit (relay, LIMIT=1): a fresh relay backend with the caps
# navigator-agent derives from RLIMIT_NOFILE with its defaults
# (RELAY_CAPS=agent in dp_hold: 256 files kept for the process, the rest the
# relay's; half of that in TCP connections: 20,000 -> 19,744 files, 9,872
# connections) and no per-forward cap (RELAY_PER_FORWARD=0; the agent's
# default is 1,024 per forward, which one benchmark forward would hit first).
# Idle connections are opened by `loadgen hold` processes of LIMIT_STEP
# each (one process cannot hold more than its own 20,000 files) until one
# fails or LIMIT_MAX are held; the first failure is classified (reset at once,
# refused, closed, or timeout after 3 s: left unanswered). Then every holder
# closes and a new connection is tried (does the relay recover by itself?),
# and the relay's log lines about the limit are shown.
#
# Pinning (PIN=1, default with 2+ CPUs): forwarders on CPU 0, generator,
# echo server and sink on CPU 1; relay-2core and minrelay-2p may use both
# (then they share CPU 1 with the generator). Kernel rows do their work on
# the senders' CPU (CPU 1).
#
# One command (root):
#   bench/relay/forwarders.sh
# env: RATE_SECS (5) CONC (64) ROUNDS (3) BYTES (2 GiB) IDLE (5000)
#      SOCAT_SECS (2) LIMIT (1) LIMIT_STEP (8000) LIMIT_MAX (30000)
#      QUIET_WAIT (30: seconds to wait for a quiet machine before each rate run)
#      TW_BUCKETS (4096: net.ipv4.tcp_max_tw_buckets in the client and proxy
#      namespaces, see below; empty keeps the kernel's)
#      PIN BIN OUT (/tmp/relay-forwarders) MODES (all rows above)
# BIN=dir uses prebuilt relay_bench, loadgen, minrelay and dp_hold (release).
# Markdown table and verdict lines on stdout, progress on stderr, raw rows in
# $OUT/results.tsv. Every process started is stopped by PID and the
# namespaces deleted on exit (lib.sh's trap).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
RATE_SECS="${RATE_SECS:-5}"
CONC="${CONC:-64}"
ROUNDS="${ROUNDS:-3}"
BYTES="${BYTES:-2147483648}"
IDLE="${IDLE:-5000}"
SOCAT_SECS="${SOCAT_SECS:-2}"
QUIET_WAIT="${QUIET_WAIT:-30}"
TW_BUCKETS="${TW_BUCKETS-4096}"
LIMIT="${LIMIT:-1}"
LIMIT_STEP="${LIMIT_STEP:-8000}"
LIMIT_MAX="${LIMIT_MAX:-30000}"
MODES="${MODES:-plain nft plain-2cpu nft-2cpu relay relay-1core relay-2core minrelay minrelay-2p haproxy socat}"
OUT="${OUT:-/tmp/relay-forwarders}"
NS_PREFIX="nvfw$$"
# relay_bench's echo moves aside: loadgen's epoll echo serves 10.92.0.2:9002.
RB_ECHO=10.92.0.2:9012
# shellcheck source=bench/dataplane/lib.sh
. bench/dataplane/lib.sh
LG="$(dirname "$RB")/loadgen"; MR="$(dirname "$RB")/minrelay"
# TIME_WAIT: the client closes first, and the forwarders close first toward
# the backend, so every row leaves ~100,000 TIME_WAIT sockets (60 s) in the
# client and proxy namespaces, and connect() of the next row searches a port
# table full of them. A small TIME_WAIT table in those two namespaces (the
# kernel then ends TIME_WAIT early, harmless on veth) keeps that the same for
# every row. A precaution: the slowdown of later rows seen while writing this
# script turned out to be conntrack (see unhold in lib.sh), not TIME_WAIT.
# TW_BUCKETS= (empty) keeps the kernel's default.
if [ -n "$TW_BUCKETS" ]; then
  for ns in "$C" "$P"; do nsx "$ns" sysctl -q -w net.ipv4.tcp_max_tw_buckets="$TW_BUCKETS"; done
fi
for b in "$LG" "$MR"; do [ -x "$b" ] || { echo "$b missing (cargo build --release -p navigator-relay --examples)" >&2; exit 1; }; done
case " $MODES " in *" haproxy "*) command -v haproxy >/dev/null || { echo "haproxy not installed (apt-get install -y haproxy)" >&2; exit 1; } ;; esac
# The relay rows run as the agent would (RELAY_CAPS: its derived caps), with
# no per-forward cap so one forward can carry IDLE connections.
export RELAY_CAPS=agent RELAY_PER_FORWARD=0
HZ=$(getconf CLK_TCK)
IRQ_ACCT=$({ zcat /proc/config.gz 2>/dev/null || cat "/boot/config-$(uname -r)" 2>/dev/null || true; } | grep -E '^CONFIG_IRQ_TIME_ACCOUNTING=y' || echo "CONFIG_IRQ_TIME_ACCOUNTING unset")

# ip netns exec (not the nsx function) so that $! is the echo server itself,
# which the -2cpu rows move between CPUs.
ip netns exec "$B" "${GEN[@]}" "$LG" echo 10.92.0.2:9002 >"$OUT/echo.out" 2>"$OUT/echo.log" &
ECHO_PID=$!; PIDS+=("$ECHO_PID")
for _ in $(seq 100); do grep -q READY "$OUT/echo.out" 2>/dev/null && break; sleep 0.05; done

# --- measurement helpers ----------------------------------------------------
# Descendants of the given PIDs (socat's forks, dp_hold's socat processes).
# shellcheck disable=SC2046 # the children list is split on purpose
tree() { local p; for p in "$@"; do echo "$p"; tree $(cat /proc/"$p"/task/*/children 2>/dev/null || true); done; }
# CPU seconds (utime+stime+cutime+cstime) of the PIDs and their descendants.
cpu_s() {
  local s=0 p v
  [ $# -gt 0 ] || { echo 0; return; }
  for p in $(tree "$@"); do
    v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    s=$((s + ${v:-0}))
  done
  awk -v t="$s" -v hz="$HZ" 'BEGIN { printf "%.4f", t / hz }'
}
# /proc/stat, all CPUs, in seconds: "irq+softirq busy" (busy = user, nice,
# system, irq, softirq).
stat_s() { awk -v hz="$HZ" '/^cpu / { printf "%.4f %.4f\n", ($7 + $8) / hz, ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# Busy seconds of CPU 0 alone (the forwarder's CPU with PIN=1): what else ran
# there shows whether the forwarder had its core to itself.
cpu0_s() { awk -v hz="$HZ" '/^cpu0 / { printf "%.4f\n", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }
# USS in KiB of the PIDs and their descendants.
uss_kb() { local s=0 p v; for p in $(tree "$@"); do
  v=$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0); s=$((s + v)); done; echo "$s"; }
kv() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == k) print a[2] } }' <<<"$2"; }
wait_listen() { # port: until the proxy's port accepts (from the client namespace)
  for _ in $(seq 200); do nsx "$C" bash -c "exec 3<>/dev/tcp/$EXT/$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 not listening" >&2; return 1
}

# --- forwarders ---------------------------------------------------------------
FPIDS=()      # the running forwarder's processes (empty for kernel rows)
KIND=process  # or kernel
cat >"$OUT/haproxy.cfg" <<EOF
# Written by bench/relay/forwarders.sh: minimal tcp-mode relay, one thread
# (the pinned row), connection caps above anything the benchmark opens, no
# logging.
global
    nbthread 1
    maxconn 9500
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    maxconn 9500
frontend sink
    bind $EXT:30001
    default_backend sink
backend sink
    server sink 10.92.0.2:9001
frontend echo
    bind $EXT:30002
    default_backend echo
backend echo
    server echo 10.92.0.2:9002
EOF
# spawn NAME CMD...: a forwarder process in the proxy namespace.
# `ip netns exec` execs the command, so $! is the forwarder itself (a shell
# function in the background would leave a subshell between them).
spawn() { local name=$1; shift; ip netns exec "$P" "$@" >"$OUT/$name.out" 2>>"$OUT/$name.log" & FPIDS+=($!); PIDS+=($!); }
cpus_of() {
  case $1 in
    plain|nft) echo "kernel (senders' CPU)" ;;
    plain-2cpu|nft-2cpu) if [ "$PIN" = 1 ]; then echo "kernel; echo server on 0"; else echo "kernel (senders' CPU)"; fi ;;
    relay-2core|minrelay-2p) echo "0,1" ;;
    relay-1core) echo "0" ;;
    *) if [ "$PIN" = 1 ]; then echo "0"; else echo "any"; fi ;;
  esac
}
start_fwd() {
  FPIDS=(); KIND=process; SINK="$EXT:30001"; ECHO="$EXT:30002"
  local saved=("${FWD[@]}")
  case $1 in
    plain|plain-2cpu) KIND=kernel; SINK=10.92.0.2:9001; ECHO=10.92.0.2:9002 ;;
    nft|nft-2cpu) KIND=kernel; hold nft 0 "$1" >/dev/null 2>&1 || return 1 ;;
    relay|relay-1core|relay-2core|socat)
      [ "$1" = relay-1core ] && FWD=(taskset -c 0)
      [ "$1" = relay-2core ] && FWD=(taskset -c "0,1")
      hold "${1%%-*}" 0 "$1" >/dev/null 2>&1 || { FWD=("${saved[@]}"); return 1; }
      FPIDS=("$HOLD_PID") ;;
    minrelay|minrelay-2p)
      local n=1 opt=() t=("${FWD[@]}")
      [ "$1" = minrelay-2p ] && { n=2; opt=(--reuseport); t=(taskset -c "0,1"); }
      for _ in $(seq $n); do
        spawn "$1-sink" "${t[@]}" "$MR" "$SINK" 10.92.0.2:9001 "${opt[@]}"
        spawn "$1-echo" "${t[@]}" "$MR" "$ECHO" 10.92.0.2:9002 "${opt[@]}"
      done
      wait_listen 30001; wait_listen 30002 ;;
    haproxy)
      spawn haproxy "${FWD[@]}" haproxy -db -f "$OUT/haproxy.cfg"
      wait_listen 30001; wait_listen 30002 ;;
    *) echo "unknown mode $1" >&2; return 1 ;;
  esac
  case $1 in *-2cpu) [ "$PIN" != 1 ] || taskset -pc 0 "$ECHO_PID" >/dev/null ;; esac
  FWD=("${saved[@]}")
}
stop_fwd() {
  case $1 in *-2cpu) [ "$PIN" != 1 ] || taskset -pc 1 "$ECHO_PID" >/dev/null ;; esac
  case $1 in
    plain|plain-2cpu) ;;
    # unhold (lib.sh) also removes what the nft backend leaves behind.
    nft|nft-2cpu|relay|relay-1core|relay-2core|socat) unhold ;;
    *) for p in "${FPIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done ;;
  esac
  FPIDS=()
}
# The forwarder's CPU seconds, or for kernel rows irq+softirq of /proc/stat.
fwd_s() { if [ "$KIND" = kernel ]; then stat_s | cut -d' ' -f1; else cpu_s "${FPIDS[@]}"; fi; }
d() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
# Other engineers' builds share this machine: before a rate run, wait (at
# most QUIET_WAIT seconds) until the whole machine is under 10% busy over
# half a second, our idle servers and forwarder included. What still lands
# during a run shows as "others on CPU 0".
quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) a b
  while [ "$SECONDS" -lt "$deadline" ]; do
    a=$(stat_s | cut -d' ' -f2); sleep 0.5; b=$(stat_s | cut -d' ' -f2)
    awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN { exit !((b - a) / 0.5 / n < 0.10) }' && return 0
  done
  echo "  (machine still busy after ${QUIET_WAIT}s: measuring anyway)" >&2
}

RESULTS="$OUT/results.tsv"
printf 'mode\tround\tcps\tp50_us\tp99_us\tok\terrors\tgen_pct\tfwd_us_conn\tsoftirq_us_conn\techo_us_conn\tunattributed_us_conn\tMBps\tfwd_pct_per_gbit\tuss_before_kb\tuss_after_kb\tuss_b_per_idle\tidle_held\techo_pct\tfwd_pct\tcpu0_other_pct\n' >"$RESULTS"
measure() { # mode round
  local mode=$1 round=$2 secs=$RATE_SECS
  [ "$mode" = socat ] && secs=$SOCAT_SECS
  # Throughput, one stream.
  local f0 f1 tp tsecs mbps fpg
  quiet
  f0=$(fwd_s)
  tp=$(nsx "$C" "${GEN[@]}" "$RB" throughput "$SINK" "$BYTES" 2>&1 || true)
  f1=$(fwd_s)
  mbps=$(kv MBps "$tp"); tsecs=$(kv secs "$tp")
  fpg=$(awk -v c="$(d "$f0" "$f1")" -v s="${tsecs:-0}" -v m="${mbps:-0}" 'BEGIN { if (s > 0 && m > 0) printf "%.1f", 100 * c / s / (m * 8 / 1000); }')
  # Connection rate, once the machine is quiet (see quiet()).
  quiet
  local sq0 sq1 busy0 busy1 e0 e1 z0 z1 r ok
  read -r sq0 busy0 <<<"$(stat_s)"; f0=$(fwd_s); e0=$(cpu_s "$ECHO_PID"); z0=$(cpu0_s)
  r=$(nsx "$C" "${GEN[@]}" "$LG" rate "$ECHO" "$CONC" "$secs")
  read -r sq1 busy1 <<<"$(stat_s)"; f1=$(fwd_s); e1=$(cpu_s "$ECHO_PID"); z1=$(cpu0_s)
  ok=$(kv ok "$r")
  local per='function per(x) { return (ok > 0) ? sprintf("%.1f", x * 1e6 / ok) : "" }'
  local fwd_us sq_us echo_us un_us gen fc
  fc=$(d "$f0" "$f1")
  fwd_us=$(awk -v ok="$ok" -v x="$fc" "$per BEGIN { print per(x) }")
  sq_us=$(awk -v ok="$ok" -v x="$(d "$sq0" "$sq1")" "$per BEGIN { print per(x) }")
  echo_us=$(awk -v ok="$ok" -v x="$(d "$e0" "$e1")" "$per BEGIN { print per(x) }")
  gen=$(kv gen_cpu_pct "$r")
  # Busy CPU nobody here accounts for: generator (its own CPU % over the
  # run), echo server and, for process rows, the forwarder.
  un_us=$(awk -v ok="$ok" -v b="$(d "$busy0" "$busy1")" -v g="$gen" -v s="$secs" -v e="$(d "$e0" "$e1")" \
    -v f="$([ "$KIND" = process ] && echo "$fc" || echo 0)" "$per BEGIN { print per(b - g / 100 * s - e - f) }")
  # Memory per idle connection, round 1, relay/minrelay/haproxy.
  local ub="" ua="" upc="" held=""
  case $mode in relay|minrelay|haproxy)
    if [ "$round" = 1 ] && [ "$IDLE" -gt 0 ]; then
      local mp=("${FPIDS[@]}")
      # minrelay: the echo forwarder's process (the second one started).
      [ "$mode" = minrelay ] && mp=("${FPIDS[1]}")
      ub=$(uss_kb "${mp[@]}")
      local fifo="$OUT/idle.$mode.in" hout="$OUT/idle.$mode.out" hp
      rm -f "$fifo"; mkfifo "$fifo"
      nsx "$C" "${GEN[@]}" "$LG" hold "$ECHO" "$IDLE" <"$fifo" >"$hout" 2>&1 &
      hp=$!; PIDS+=("$hp"); exec 8>"$fifo"
      for _ in $(seq 1200); do grep -q HELD "$hout" && break; kill -0 "$hp" 2>/dev/null || break; sleep 0.05; done
      sleep 1   # let the forwarder finish its per-connection work
      ua=$(uss_kb "${mp[@]}"); held=$(kv ok "$(cat "$hout")")
      upc=$(awk -v a="$ub" -v b="$ua" -v n="${held:-0}" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n }')
      exec 8>&-; wait "$hp" 2>/dev/null || true
    fi ;;
  esac
  local echo_pct fwd_pct other0
  echo_pct=$(awk -v x="$(d "$e0" "$e1")" -v s="$secs" 'BEGIN { printf "%.0f", 100 * x / s }')
  fwd_pct=$(awk -v x="$fc" -v s="$secs" 'BEGIN { printf "%.0f", 100 * x / s }')
  # CPU 0 busy minus the forwarder (pinned rows only; meaningless for the
  # 2-core rows and kernel rows, where others run there by design).
  # In plain and nft nothing of ours runs on CPU 0 (the kernel forwards on
  # the sending CPU): all of its busy time is someone else's.
  [ "$KIND" = kernel ] && fc=0
  other0=$(awk -v z="$(d "$z0" "$z1")" -v f="$fc" -v s="$secs" 'BEGIN { x = 100 * (z - f) / s; printf "%.0f", (x < 0) ? 0 : x }')
  case $mode in *-2cpu|*-2core|*-2p) other0="" ;; esac
  [ "$PIN" = 1 ] || other0=""
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$round" \
    "$(kv cps "$r")" "$(kv p50_us "$r")" "$(kv p99_us "$r")" "$ok" "$(kv errors "$r")" "$gen" \
    "$fwd_us" "$sq_us" "$echo_us" "$un_us" "$mbps" "$fpg" "$ub" "$ua" "$upc" "$held" "$echo_pct" "$fwd_pct" "$other0" >>"$RESULTS"
  # Diagnostic: conntrack entries left in the proxy namespace (nft's
  # TIME_WAIT entries live 120 s and outlast the row).
  local ct; ct=$(nsx "$P" cat /proc/sys/net/netfilter/nf_conntrack_count 2>/dev/null || echo "n/a")
  echo "  $mode (round $round): conntrack entries in the proxy namespace: $ct" >&2
  echo "  $mode (round $round): $(kv cps "$r") conn/s p50/p99 $(kv p50_us "$r")/$(kv p99_us "$r") us errors $(kv errors "$r") CPU gen ${gen}% echo ${echo_pct}% fwd ${fwd_pct}%${other0:+ others on CPU 0 ${other0}%}, fwd ${fwd_us} us/conn, softirq ${sq_us} us/conn, ${mbps:-?} MB/s (${fpg:-?} %core/Gbit/s)${upc:+, USS $upc B/idle conn ($held held)}" >&2
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "# $(date -u '+%F %T') UTC, $(uname -r), $(nproc) cores, load average $LOAD_START; $IRQ_ACCT; TW_BUCKETS=${TW_BUCKETS:-default} CONC=$CONC RATE_SECS=$RATE_SECS ROUNDS=$ROUNDS BYTES=$BYTES IDLE=$IDLE PIN=$PIN" >&2
read -r -a ORDER <<<"$MODES"
for round in $(seq "$ROUNDS"); do
  echo "round $round: ${ORDER[*]}" >&2
  for mode in "${ORDER[@]}"; do
    if start_fwd "$mode"; then
      measure "$mode" "$round"
    else
      echo "  $mode: the forwarder did not start (logs in $OUT)" >&2
    fi
    stop_fwd "$mode"
  done
  REV=(); for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do REV+=("${ORDER[i]}"); done; ORDER=("${REV[@]}")
done

# --- idle-connection limit of the relay ----------------------------------------
LIMIT_LINE=""
if [ "$LIMIT" = 1 ] && case " $MODES " in *" relay "*) true ;; *) false ;; esac; then
  echo "relay idle-connection limit:" >&2
  hold relay 0 limit >/dev/null
  RELAY_LOG="$OUT/hold.relay.limit.log"
  total=0; k=0; HFDS=(); HPIDS=(); first=none; first_ms=""; lines=()
  while [ "$total" -lt "$LIMIT_MAX" ]; do
    k=$((k + 1)); fifo="$OUT/limit.$k.in"; hout="$OUT/limit.$k.out"
    rm -f "$fifo"; mkfifo "$fifo"
    nsx "$C" "$LG" hold "$EXT:30002" "$LIMIT_STEP" <"$fifo" >"$hout" 2>&1 &
    hp=$!; PIDS+=("$hp"); HPIDS+=("$hp")
    exec {fd}>"$fifo"; HFDS+=("$fd")
    for _ in $(seq 2400); do grep -q HELD "$hout" && break; kill -0 "$hp" 2>/dev/null || break; sleep 0.05; done
    line=$(cat "$hout"); lines+=("$line")
    echo "  holder $k: $line" >&2
    n=$(kv ok "$line"); total=$((total + ${n:-0}))
    first=$(kv first_fail "$line"); first_ms=$(kv first_fail_ms "$line")
    if [ "${first:-none}" != none ] || [ -z "$n" ]; then break; fi
  done
  # Every holder closes; then is a new connection served again?
  for fd in "${HFDS[@]}"; do exec {fd}>&-; done
  for hp in "${HPIDS[@]}"; do wait "$hp" 2>/dev/null || true; done
  sleep 2
  again=$(nsx "$C" "$LG" hold "$EXT:30002" 10 </dev/null 2>&1 || true)
  unhold
  case ${first:-none} in
    reset) how="reset at once (${first_ms} ms)" ;;
    refused) how="refused (${first_ms} ms)" ;;
    closed) how="closed without a reply (${first_ms} ms)" ;;
    timeout) how="left unanswered (timed out after ${first_ms} ms)" ;;
    none) how="none refused up to LIMIT_MAX=$LIMIT_MAX" ;;
    *) how="$first after ${first_ms} ms" ;;
  esac
  caps=$(grep -o 'RLIMIT_NOFILE.*' "$RELAY_LOG" | head -1)
  LIMIT_LINE="relay idle-connection limit: held $total idle connections ($caps; no per-forward cap); the first one over: $how; after all closed, 10 new connections: $(kv ok "$again") served"
  echo "  $LIMIT_LINE" >&2
  echo "  relay log about limits:" >&2
  grep -iE 'limit|refus|EMFILE|open files' "$RELAY_LOG" | sed 's/\x1b\[[0-9;]*m//g' | head -5 | sed 's/^/    /' >&2 || true
fi

# --- summary ------------------------------------------------------------------------
SUMMARY="$OUT/summary.tsv"
awk -F'\t' '
  function med(s,   a, n, t, i, j) { n = split(s, a, " "); for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
                                     lo = a[1]; hi = a[n]; return a[int((n + 1) / 2)] }
  NR == 1 { next }
  !($1 in seen) { seen[$1] = 1; order[++n] = $1 }
  { for (c = 3; c <= 21; c++) if ($c != "") v[$1, c] = v[$1, c] " " $c }
  END {
    for (k = 1; k <= n; k++) {
      m = order[k]; line = m
      for (c = 3; c <= 21; c++) {
        if (v[m, c] == "") { line = line "\t-\t-"; continue }
        x = med(v[m, c]); line = line "\t" x "\t" lo "-" hi
      }
      print line
    }
  }' "$RESULTS" >"$SUMMARY"
# Summary columns ("-" where a row has no value): 1 mode, then (median, min-max) pairs: cps 2,3 p50 4,5 p99
# 6,7 ok 8,9 errors 10,11 gen 12,13 fwd_us 14,15 softirq_us 16,17 echo_us
# 18,19 unattributed 20,21 MBps 22,23 fwd_pct_per_gbit 24,25 uss_before
# 26,27 uss_after 28,29 uss_b_per_idle 30,31 idle_held 32,33 echo_pct
# 34,35 fwd_pct 36,37 cpu0_other_pct 38,39.
# (a missing value, "-" in the file, is empty)
get() { awk -F'\t' -v m="$1" -v c="$2" '$1 == m { print ($c == "-") ? "" : $c }' "$SUMMARY"; }
echo "| row | forwarder CPUs | conn/s, $CONC clients | p50 / p99 µs | errors (max) | CPU % of a core: generator / echo / forwarder (/ others on CPU 0) | forwarder CPU ms per 1,000 conn | softirq ms per 1,000 conn (all CPUs) | MB/s, 1 stream | forwarder % of a core per Gbit/s | USS per idle conn (bytes) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
while IFS=$'\t' read -r -a f; do
  m=${f[0]}
  star=""; case $m in plain*|nft*) star=" ¹" ;; esac
  e=${f[10]#*-}
  printf '| %s | %s | %s (%s) | %s / %s | %s | %s / %s / %s%s%s | %s (%s)%s | %s (%s) | %s (%s) | %s%s | %s |\n' \
    "$m" "$(cpus_of "$m")" "${f[1]}" "${f[2]}" "${f[3]}" "${f[5]}" "${e:-${f[9]}}" "${f[11]}" "${f[33]}" "${f[35]}" "$star" "$([ "${f[37]}" = - ] || echo " / ${f[37]}")" \
    "${f[13]}" "${f[14]}" "$star" "${f[15]}" "${f[16]}" "${f[21]}" "${f[22]}" "${f[23]}" "$star" "${f[29]:-}"
done <"$SUMMARY"
echo
echo "Medians of $ROUNDS rounds (min-max). ¹ kernel rows: irq+softirq of /proc/stat (tick-sampled, all CPUs), which also holds the endpoints' TCP receive work; see the method in bench/relay/forwarders.sh. Memory: round 1, $IDLE idle connections, USS delta over the count. Load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg). Raw rows: $RESULTS."
echo

# --- verdicts ------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
has() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }
best=0; bestm=""; genmax=0; genm=""
for m in relay relay-1core relay-2core minrelay minrelay-2p haproxy socat; do
  has "$m" || continue
  c=$(get "$m" 2); g=$(get "$m" 12)
  [ -n "$c" ] || continue
  if awk -v a="$c" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$c; bestm=$m; fi
  if awk -v a="$g" -v b="$genmax" 'BEGIN { exit !(a > b) }'; then genmax=$g; genm=$m; fi
done
# The better of each kernel row's two placements (see -2cpu above).
best_of() { local a b; a=$(get "$1" 2); b=$(get "$1-2cpu" 2)
  if [ -n "$b" ] && awk -v a="${a:-0}" -v b="$b" 'BEGIN { exit !(b > a) }'; then echo "$b $1-2cpu"; else echo "$a $1"; fi; }
if has plain && has nft && [ -n "$bestm" ]; then
  read -r pl plm <<<"$(best_of plain)"; read -r nf nfm <<<"$(best_of nft)"
  rp=$(ratio "$pl" "$best"); rn=$(ratio "$nf" "$best")
  fp=$(get "$bestm" 36); cp=$(awk -v a="$(get "$bestm" 12)" -v b="$(get "$bestm" 34)" 'BEGIN { print a + b }')
  if awk -v a="$rp" -v b="$rn" -v g="$genmax" 'BEGIN { exit !(a >= 1.3 && b >= 1.3 && g < 90) }'; then
    verdict="the run measured the forwarder"
  elif awk -v a="$rp" -v g="$genmax" -v f="$fp" -v c="$cp" 'BEGIN { exit !(a >= 1.3 && g < 90 && f >= 90 && c < 90) }'; then
    # nft's work runs on the client CPU (softirq in the senders' context),
    # so its row is bound by that CPU; the forwarder rows are not.
    verdict="the calibration is short of 1.3x for nft, whose forwarding runs on the client CPU; in the $bestm row the forwarder used ${fp}% of its core while generator + echo used ${cp}% of theirs: the forwarder rows measured the forwarder"
  else
    verdict="the run measured the client (plain and nft must be >= 1.3x the best forwarder and the generator < 90% of a core)"
  fi
  echo "CALIBRATION $plm $pl conn/s (${rp}x) and $nfm $nf conn/s (${rn}x) vs best forwarder $bestm $best conn/s, generator at most ${genmax}% of a core ($genm): $verdict"
  # Where each side's limit was: the client CPU (generator + echo, which
  # with PIN=1 also runs the kernel rows' softirq work) and, for the best
  # forwarder, its own share of a core.
  echo "CPU in the $plm row: generator $(get "$plm" 12)% + echo $(get "$plm" 34)%; $nfm row: $(get "$nfm" 12)% + $(get "$nfm" 34)% (kernel forwarding runs in their context); $bestm row: generator $(get "$bestm" 12)% + echo $(get "$bestm" 34)%, forwarder $(get "$bestm" 36)% of a core"
fi
# Per process row: which side ran out of CPU (medians). Forwarder-bound:
# the forwarder used >= 90% of its core while generator + echo (one core
# with PIN=1) used < 90%; client-bound: the reverse.
for m in relay relay-1core relay-2core minrelay minrelay-2p haproxy socat; do
  has "$m" || continue
  fp=$(get "$m" 36); [ -n "$fp" ] || continue
  cp=$(awk -v a="$(get "$m" 12)" -v b="$(get "$m" 34)" 'BEGIN { print a + b }')
  why=$(awk -v f="$fp" -v c="$cp" 'BEGIN { if (f >= 90 && c < 90) print "forwarder-bound"; else if (c >= 90 && f < 90) print "client-bound"; else if (f >= 90) print "both near their limit"; else print "neither saturated (latency-bound, or disturbed: see others on CPU 0)" }')
  echo "BOUND $m: forwarder ${fp}% of a core, generator + echo ${cp}%: $why"
done
if has relay && has minrelay; then
  ru=$(get relay 14); mu=$(get minrelay 14)
  ok=$(awk -v a="$ru" -v b="$mu" 'BEGIN { print (a + 0 <= b + 0) ? "met" : "NOT met" }')
  ok35=$(awk -v a="$ru" 'BEGIN { print (a + 0 <= 35) ? "met" : "NOT met" }')
  echo "TARGET relay CPU per connection below minrelay's: relay $ru us vs minrelay $mu us ($(ratio "$ru" "$mu")x): $ok; <= 35 us: $ok35"
fi
if has relay && has nft; then
  r=$(ratio "$(get relay 22)" "$(get nft 22)")
  echo "TARGET relay single-stream throughput >= 0.8x nft: ${r}x (relay $(get relay 22) / nft $(get nft 22) MB/s): $(awk -v r="$r" 'BEGIN { print (r + 0 >= 0.8) ? "met" : "NOT met" }')"
fi
if has relay && [ "$IDLE" -gt 0 ]; then
  u=$(get relay 30)
  echo "TARGET relay USS per idle connection <= 1 KiB: ${u:-n/a} bytes: $(awk -v u="$u" 'BEGIN { print (u != "" && u + 0 <= 1024) ? "met" : "NOT met" }')"
fi
if has relay-1core && has relay-2core; then
  a=$(get relay-1core 2); b=$(get relay-2core 2)
  echo "SCALING relay 2-core vs 1-core conn/s: $b vs $a ($(ratio "$b" "$a")x; 2-core shares CPU 1 with the generator)"
fi
[ -z "$LIMIT_LINE" ] || echo "LIMIT $LIMIT_LINE"
