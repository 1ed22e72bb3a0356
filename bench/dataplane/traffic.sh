#!/usr/bin/env bash
# Data-plane traffic benchmark, every backend side by side in one run, in the
# same namespace topology as the tests: client ns -> proxy ns (two NICs) ->
# backend ns. Per mode (plain routing with no forwarder, relay, nft, iptables,
# socat): single-stream throughput (BYTES through one TCP connection to a
# sink), short-connection rate (CONC clients, 64-byte request/reply, one
# connection each; p50/p99), and new-connection latency (one client, one
# connection at a time; p50/p99). Then nft and iptables again with BIG filler
# forwards installed (new-connection latency at 100,000 forwards).
# The forwarders are the real backends (crates/dataplane/examples/dp_hold.rs);
# the client and servers are crates/relay/examples/relay_bench.rs. Needs root.
# One command:
#   bench/dataplane/traffic.sh   (env: BYTES, RATE_SECS, LAT_SECS, CONC, BIG, MODES, OUT, SVG)
# Writes a Markdown table to stdout and an SVG plot to $SVG
# (default docs/dataplane-traffic.svg). Every process started is stopped by
# PID and every namespace deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BYTES="${BYTES:-2147483648}"     # 2 GiB per throughput run
RATE_SECS="${RATE_SECS:-4}"
LAT_SECS="${LAT_SECS:-3}"
CONC="${CONC:-64}"
BIG="${BIG:-100000}"
MODES="${MODES:-plain relay nft iptables socat}"
OUT="${OUT:-/tmp/dataplane-traffic}"
SVG="${SVG:-docs/dataplane-traffic.svg}"
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in nft iptables-restore socat ip; do
  command -v "$t" >/dev/null || { echo "$t not installed" >&2; exit 1; }
done
mkdir -p "$OUT"
cargo build --release -q -p navigator-relay --examples
cargo build --release -q -p navigator-dataplane --examples
RB="$CARGO_TARGET_DIR/release/examples/relay_bench"
HOLD="$CARGO_TARGET_DIR/release/examples/dp_hold"

N="nvtr$$"; C="${N}c"; P="${N}p"; B="${N}b"
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
trap cleanup EXIT INT TERM
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

for ns in "$C" "$P" "$B"; do ip netns add "$ns"; nsx "$ns" ip link set lo up; done
ip link add eth0 netns "$C" type veth peer name ext0 netns "$P"
ip link add eth0 netns "$B" type veth peer name int0 netns "$P"
nsx "$C" ip addr add 10.91.0.2/24 dev eth0; nsx "$C" ip link set eth0 up
nsx "$P" ip addr add 10.91.0.1/24 dev ext0; nsx "$P" ip link set ext0 up
nsx "$P" ip addr add 10.92.0.1/24 dev int0; nsx "$P" ip link set int0 up
nsx "$B" ip addr add 10.92.0.2/24 dev eth0; nsx "$B" ip link set eth0 up
nsx "$C" ip route add default via 10.91.0.1
# Plain routing needs the route back; the forwarders do not use it (they
# SNAT or connect from the proxy's own address).
nsx "$B" ip route add 10.91.0.0/24 via 10.92.0.1
nsx "$P" sysctl -q -w net.ipv4.ip_forward=1
for ns in "$C" "$P" "$B"; do
  # Short connections by the hundred thousand: reuse TIME_WAIT ports.
  nsx "$ns" sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done

nsx "$B" "$RB" backend 10.92.0.2:9001 10.92.0.2:9002 >"$OUT/backend.out" 2>"$OUT/backend.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q READY "$OUT/backend.out" 2>/dev/null && break; sleep 0.05; done

RESULTS="$OUT/results.tsv"
: >"$RESULTS"
# measure LABEL SINK ECHO: throughput, rate, latency from the client namespace.
measure() {
  local label=$1 sink=$2 echo=$3 tp rate lat
  tp=$(nsx "$C" "$RB" throughput "$sink" "$BYTES" | awk -F'[= ]' '{print $3}')
  rate=$(nsx "$C" "$RB" rate "$echo" "$CONC" "$RATE_SECS")
  lat=$(nsx "$C" "$RB" rate "$echo" 1 "$LAT_SECS")
  local f='{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}} END{print v["cps"], v["p50_us"], v["p99_us"], v["errors"]}'
  read -r cps p50 p99 err <<<"$(echo "$rate" | awk "$f")"
  read -r _ l50 l99 lerr <<<"$(echo "$lat" | awk "$f")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$tp" "$cps" "$p50" "$p99" "$err" "$l50" "$l99" >>"$RESULTS"
  echo "  $label: ${tp} MB/s, ${cps} conn/s (p50 ${p50} us, p99 ${p99} us, errors ${err}), latency p50 ${l50} us p99 ${l99} us" >&2
}
# hold MODE EXTRA: starts the backend in the proxy namespace; its stdin is a
# fifo, closing it makes dp_hold remove everything and exit.
hold() {
  local mode=$1 extra=$2 fifo="$OUT/ctl.$1.$2"
  rm -f "$fifo"; mkfifo "$fifo"
  nsx "$P" "$HOLD" "$mode" "$extra" tcp:10.91.0.1:30001=10.92.0.2:9001 tcp:10.91.0.1:30002=10.92.0.2:9002 \
    <"$fifo" >"$OUT/hold.$mode.$extra.out" 2>"$OUT/hold.$mode.$extra.log" &
  HOLD_PID=$!
  PIDS+=("$HOLD_PID")
  exec 7>"$fifo"
  for _ in $(seq 2400); do
    grep -q READY "$OUT/hold.$mode.$extra.out" 2>/dev/null && break
    kill -0 "$HOLD_PID" 2>/dev/null || { cat "$OUT/hold.$mode.$extra.log" >&2; return 1; }
    sleep 0.05
  done
  echo "  $mode with $extra filler forwards applied in $(awk '{print $2}' "$OUT/hold.$mode.$extra.out") s" >&2
}
unhold() { exec 7>&-; wait "$HOLD_PID" 2>/dev/null || true; }

echo "# $(date -u +%F) $(uname -r), $(nproc) cores, BYTES=$BYTES CONC=$CONC RATE_SECS=$RATE_SECS LAT_SECS=$LAT_SECS" >&2
for mode in $MODES; do
  echo "$mode:" >&2
  if [ "$mode" = plain ]; then
    measure plain 10.92.0.2:9001 10.92.0.2:9002
  else
    hold "$mode" 0
    measure "$mode" 10.91.0.1:30001 10.91.0.1:30002
    unhold
  fi
done
for mode in nft iptables; do
  case " $MODES " in *" $mode "*) ;; *) continue ;; esac
  [ "$BIG" -gt 0 ] || continue
  echo "$mode at $BIG forwards:" >&2
  hold "$mode" "$BIG"
  lat=$(nsx "$C" "$RB" rate 10.91.0.1:30002 1 "$LAT_SECS")
  echo "$lat" | awk -v m="$mode@$BIG" '{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}} END{printf "%s\t\t\t\t\t\t%s\t%s\n", m, v["p50_us"], v["p99_us"]}' >>"$RESULTS"
  echo "  latency $lat" >&2
  unhold
done

echo "| mode | throughput MB/s | conn/s ($CONC clients) | p50 / p99 µs | errors | new-connection latency p50 / p99 µs |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' '{ if ($2 == "") printf "| %s | | | | | %s / %s |\n", $1, $7, $8;
              else printf "| %s | %s | %s | %s / %s | %s | %s / %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$RESULTS"

# The plot: two bar panels (throughput, connection rate), written by awk so
# nothing beyond the base system is needed.
awk -F'\t' -v title="Navigator data planes, $(date -u +%F), $(nproc) cores" '
  $2 != "" { n++; name[n]=$1; tp[n]=$2; cps[n]=$3; if ($2>mt) mt=$2; if ($3>mc) mc=$3 }
  END {
    bw=360; rowh=26; top=50; h=top+n*rowh+40;
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", 2*bw+220, h;
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">%s</text>\n", title;
    split("Single-stream throughput (MB/s)|Short connections per second", head, "|");
    for (p=1; p<=2; p++) {
      x0=(p==1)?80:bw+180; y0=top;
      printf "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">%s</text>\n", x0, y0, head[p];
      for (i=1;i<=n;i++) {
        v=(p==1)?tp[i]:cps[i]; m=(p==1)?mt:mc; w=(m>0)?v/m*(bw-60):0; y=y0+10+(i-1)*rowh;
        printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", x0-6, y+15, name[i];
        printf "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"18\" fill=\"%s\"/>\n", x0, y+2, w, (name[i]=="plain")?"#999":"#3b6ea5";
        printf "<text x=\"%.1f\" y=\"%d\">%s</text>\n", x0+w+4, y+15, v;
      }
    }
    print "</svg>";
  }' "$RESULTS" >"$SVG"
echo "plot written to $SVG" >&2
