# shellcheck shell=bash
# What the data-plane traffic benchmarks share (sourced by traffic.sh and
# allowlist.sh, after they set their knobs): the root and tool checks, the
# binaries, the test topology (client ns -> proxy ns with two NICs -> backend
# ns) with the backend's sink and echo servers, and `hold`/`unhold`, which
# start and stop one real backend carrying the measured forwards.
#
# Inputs: NS_PREFIX (namespace names, unique per run: add $$), OUT, PIN, BIN,
# CLIENT_NET (the client side's /24, default 10.91.0: client .2, proxy .1),
# RB_ECHO (where relay_bench's echo server listens, default 10.92.0.2:9002).
# Sets: C P B (namespaces), FWD GEN (CPU pinning), RB HOLD (binaries), PIDS,
# EXT (the proxy's address the client connects to). Every process started is
# stopped by PID and every namespace deleted on exit (trap).

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in nft iptables-restore socat ip; do
  command -v "$t" >/dev/null || { echo "$t not installed" >&2; exit 1; }
done
if [ "$(nproc)" -ge 2 ]; then PIN="${PIN:-1}"; else PIN=0; fi
if [ "$PIN" = 1 ]; then FWD=(taskset -c 0); GEN=(taskset -c 1); else FWD=(); GEN=(); fi
mkdir -p "$OUT"
if [ -n "${BIN:-}" ]; then
  # Prebuilt binaries (a shared target directory may be busy): BIN=dir with
  # relay_bench and dp_hold built by the two cargo commands below.
  RB="$BIN/relay_bench"; HOLD="$BIN/dp_hold"
else
  cargo build --release -q -p navigator-relay --examples
  cargo build --release -q -p navigator-dataplane --examples
  RB="$CARGO_TARGET_DIR/release/examples/relay_bench"
  HOLD="$CARGO_TARGET_DIR/release/examples/dp_hold"
fi

CLIENT_NET="${CLIENT_NET:-10.91.0}"
EXT="$CLIENT_NET.1"
C="${NS_PREFIX}c"; P="${NS_PREFIX}p"; B="${NS_PREFIX}b"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$C" "$P" "$B"; do
    # Children of the forwarders (socat's per-connection forks) live in the
    # namespace; only processes inside our own namespaces are killed.
    for p in $(ip netns pids "$ns" 2>/dev/null || true); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
# A signal ends the run (through the EXIT trap) instead of letting it go on
# without its namespaces.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for ns in "$C" "$P" "$B"; do ip netns add "$ns"; nsx "$ns" ip link set lo up; done
ip link add eth0 netns "$C" type veth peer name ext0 netns "$P"
ip link add eth0 netns "$B" type veth peer name int0 netns "$P"
nsx "$C" ip addr add "$CLIENT_NET.2/24" dev eth0; nsx "$C" ip link set eth0 up
nsx "$P" ip addr add "$EXT/24" dev ext0; nsx "$P" ip link set ext0 up
nsx "$P" ip addr add 10.92.0.1/24 dev int0; nsx "$P" ip link set int0 up
nsx "$B" ip addr add 10.92.0.2/24 dev eth0; nsx "$B" ip link set eth0 up
nsx "$C" ip route add default via "$EXT"
# Plain routing needs the route back; the forwarders do not use it (they
# SNAT or connect from the proxy's own address).
nsx "$B" ip route add "$CLIENT_NET.0/24" via 10.92.0.1
nsx "$P" sysctl -q -w net.ipv4.ip_forward=1
for ns in "$C" "$P" "$B"; do
  # Short connections by the hundred thousand: reuse TIME_WAIT ports.
  nsx "$ns" sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done

# RB_ECHO moves relay_bench's echo server elsewhere (forwarders.sh serves
# 10.92.0.2:9002 with loadgen's epoll echo instead).
nsx "$B" "${GEN[@]}" "$RB" backend 10.92.0.2:9001 "${RB_ECHO:-10.92.0.2:9002}" >"$OUT/backend.out" 2>"$OUT/backend.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$OUT/backend.out" 2>/dev/null && break; sleep 0.05; done

# hold MODE EXTRA [TAG]: starts the backend in the proxy namespace carrying
# $EXT:30001 -> sink and $EXT:30002 -> echo (plus EXTRA filler forwards); its
# stdin is a fifo, closing it (unhold) makes dp_hold remove everything and
# exit. dp_hold's environment (CIDRS...) passes through. TAG names the files
# (default EXTRA). Returns 1, with dp_hold's log on stderr, if the backend
# failed the forwards; call unhold then too.
hold() {
  local mode=$1 extra=$2 tag=${3:-$2}
  local fifo="$OUT/ctl.$mode.$tag" out="$OUT/hold.$mode.$tag.out" log="$OUT/hold.$mode.$tag.log"
  rm -f "$fifo"; mkfifo "$fifo"
  nsx "$P" "${FWD[@]}" "$HOLD" "$mode" "$extra" "tcp:$EXT:30001=10.92.0.2:9001" "tcp:$EXT:30002=10.92.0.2:9002" \
    <"$fifo" >"$out" 2>"$log" &
  HOLD_PID=$!
  PIDS+=("$HOLD_PID")
  exec 7>"$fifo"
  for _ in $(seq 2400); do
    grep -q READY "$out" 2>/dev/null && break
    kill -0 "$HOLD_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.05
  done
  if [ -z "${3:-}" ]; then
    echo "  $mode with $extra filler forwards applied in $(awk '{print $2}' "$out") s" >&2
  else
    echo "  $mode ($tag) applied in $(awk '{print $2}' "$out") s" >&2
  fi
}
# dp_hold's exit empties the kernel backends' rules but, as the agent does on
# stop, leaves their table and chains, whose ct matches keep conntrack on in
# the proxy namespace: every later mode (plain routing and the process
# forwarders too) would then pay for tracking its connections. unhold
# removes them (nft's table, and iptables' when nft-backed) and the tracked
# connections, so that modes start equal.
unhold() {
  exec 7>&-; wait "$HOLD_PID" 2>/dev/null || true
  nsx "$P" nft delete table inet navigator 2>/dev/null || true
  # iptables (nft-backed, Debian's default): its tables in this namespace only.
  for t in "ip nat" "ip6 nat" "ip filter" "ip6 filter" "ip mangle" "ip6 mangle" "ip raw" "ip6 raw"; do
    # shellcheck disable=SC2086 # family and name are two words on purpose
    nsx "$P" nft delete table $t 2>/dev/null || true
  done
  if command -v conntrack >/dev/null; then nsx "$P" conntrack -F >/dev/null 2>&1 || true; fi
}
