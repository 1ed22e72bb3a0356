#!/usr/bin/env bash
# Data-plane traffic benchmark, every backend side by side in one run, in the
# same namespace topology as the tests: client ns -> proxy ns (two NICs) ->
# backend ns. Per mode (plain routing with no forwarder, relay, nft, iptables,
# socat): single-stream throughput (BYTES through one TCP connection to a
# sink), short-connection rate (CONC clients, 64-byte request/reply, one
# connection each; p50/p99), and new-connection latency (one client, one
# connection at a time; p50/p99). Then nft and iptables again with BIG filler
# forwards installed and without them, back to back (new-connection latency
# at 100,000 forwards against the measured pair alone).
# Fairness on a small host: with PIN=1 (the default when there are 2+ CPUs)
# the forwarder process (relay, socat and its forks; idle for nft/iptables)
# runs on CPU 0 and the load generator and backend servers on CPU 1, as
# bench/relay/run.sh PIN=1 does. Kernel NAT has no process of its own: its
# work runs in softirq on the CPU that sends the packet, i.e. CPU 1 with the
# generator. Each mode is measured ROUNDS times (default 3), the modes
# interleaved and their order reversed every other round so a burst of load
# on a shared host hits every mode alike; the table shows the median and
# (min-max) of the rounds, and one `TARGET` line per target closes the output.
# The forwarders are the real backends (crates/dataplane/examples/dp_hold.rs);
# the client and servers are crates/relay/examples/relay_bench.rs; the
# topology and the backend's start and stop are in lib.sh (shared with
# allowlist.sh). Needs root.
# One command:
#   bench/dataplane/traffic.sh   (env: BYTES, RATE_SECS, LAT_SECS, CONC, BIG, MODES, ROUNDS, SETTLE, PIN, BIN, OUT, SVG)
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
ROUNDS="${ROUNDS:-3}"
SETTLE="${SETTLE:-5}"
OUT="${OUT:-/tmp/dataplane-traffic}"
SVG="${SVG:-docs/dataplane-traffic.svg}"
# Checks, binaries, topology, backend servers, hold/unhold: lib.sh.
NS_PREFIX="nvtr$$"
# shellcheck source=bench/dataplane/lib.sh
. bench/dataplane/lib.sh

RESULTS="$OUT/results.tsv"
: >"$RESULTS"
# measure LABEL ROUND SINK ECHO: throughput, rate, latency from the client
# namespace, on the generator's CPU.
measure() {
  local label=$1 round=$2 sink=$3 echo=$4 tp rate lat
  tp=$(nsx "$C" "${GEN[@]}" "$RB" throughput "$sink" "$BYTES" | awk -F'[= ]' '{print $3}')
  rate=$(nsx "$C" "${GEN[@]}" "$RB" rate "$echo" "$CONC" "$RATE_SECS")
  lat=$(nsx "$C" "${GEN[@]}" "$RB" rate "$echo" 1 "$LAT_SECS")
  local f='{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}} END{print v["cps"], v["p50_us"], v["p99_us"], v["errors"]}'
  read -r cps p50 p99 err <<<"$(echo "$rate" | awk "$f")"
  read -r _ l50 l99 lerr <<<"$(echo "$lat" | awk "$f")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$round" "$tp" "$cps" "$p50" "$p99" "$err" "$l50" "$l99" >>"$RESULTS"
  echo "  $label (round $round): ${tp} MB/s, ${cps} conn/s (p50 ${p50} us, p99 ${p99} us, errors ${err}), latency p50 ${l50} us p99 ${l99} us" >&2
}

echo "# $(date -u +%F) $(uname -r), $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg), BYTES=$BYTES CONC=$CONC RATE_SECS=$RATE_SECS LAT_SECS=$LAT_SECS ROUNDS=$ROUNDS PIN=$PIN" >&2
read -r -a ORDER <<<"$MODES"
for round in $(seq "$ROUNDS"); do
  echo "round $round: ${ORDER[*]}" >&2
  for mode in "${ORDER[@]}"; do
    if [ "$mode" = plain ]; then
      measure plain "$round" 10.92.0.2:9001 10.92.0.2:9002
    else
      hold "$mode" 0
      measure "$mode" "$round" "$EXT:30001" "$EXT:30002"
      unhold
    fi
  done
  # Reverse the order for the next round.
  REV=(); for ((i=${#ORDER[@]}-1; i>=0; i--)); do REV+=("${ORDER[i]}"); done; ORDER=("${REV[@]}")
done
# New-connection latency with 2 forwards and with BIG filler forwards more,
# measured the same way back to back (rounds interleaved), so the two differ
# only in the number of forwards installed.
for mode in nft iptables; do
  case " $MODES " in *" $mode "*) ;; *) continue ;; esac
  [ "$BIG" -gt 0 ] || continue
  echo "$mode at 2 and at $BIG forwards:" >&2
  for round in $(seq "$ROUNDS"); do
    for extra in 0 "$BIG"; do
      label="$mode@$BIG"; [ "$extra" = 0 ] && label="$mode@2"
      hold "$mode" "$extra"
      lat=$(nsx "$C" "${GEN[@]}" "$RB" rate "$EXT:30002" 1 "$LAT_SECS")
      echo "$lat" | awk -v m="$label" -v r="$round" '{for(i=1;i<=NF;i++){split($i,kv,"=");v[kv[1]]=kv[2]}} END{printf "%s\t%s\t\t\t\t\t\t%s\t%s\n", m, r, v["p50_us"], v["p99_us"]}' >>"$RESULTS"
      echo "  $label latency (round $round) $lat" >&2
      unhold
      # Deleting a table of BIG elements leaves the kernel freeing them in
      # the background for a while; let that finish before the next sample.
      sleep "$SETTLE"
    done
  done
done

# Per mode: the median of the rounds and (min-max), in first-seen order.
SUMMARY="$OUT/summary.tsv"
awk -F'\t' '
  function med(s,   a, n, t, i, j) { n = split(s, a, " "); for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
                                     lo = a[1]; hi = a[n]; return a[int((n + 1) / 2)] }
  !($1 in seen) { seen[$1] = 1; order[++n] = $1 }
  { for (c = 3; c <= 9; c++) if ($c != "") v[$1, c] = v[$1, c] " " $c }
  END {
    for (k = 1; k <= n; k++) {
      m = order[k]; line = m
      for (c = 3; c <= 9; c++) {
        if (v[m, c] == "") { line = line "\t\t"; continue }
        x = med(v[m, c]); line = line "\t" x "\t" lo "-" hi
      }
      print line
    }
  }' "$RESULTS" >"$SUMMARY"

echo "| mode | throughput MB/s, median (min-max) | conn/s ($CONC clients), median (min-max) | p50 / p99 µs | errors (max) | new-connection latency p50 / p99 µs |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F'\t' '{ if ($2 == "") printf "| %s | | | | | %s / %s |\n", $1, $12, $14;
              else { split($11, e, "-"); printf "| %s | %s (%s) | %s (%s) | %s / %s | %s | %s / %s |\n", $1, $2, $3, $4, $5, $6, $8, e[2], $12, $14 } }' "$SUMMARY"
echo "(rounds: $ROUNDS; all values per round are in $RESULTS)"

# One line per target.
get() { awk -F'\t' -v m="$1" -v c="$2" '$1 == m { print $c }' "$SUMMARY"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN { ok = (op == ">=") ? (x + 0 >= t) : (x + 0 <= t); print (x == "n/a") ? "n/a" : (ok ? "met" : "NOT met") }'; }
rounds_ratio() { # per-round ratios of column $3 for modes $1/$2
  awk -F'\t' -v a="$1" -v b="$2" -v c="$3" '$1 == a { x[$2] = $c } $1 == b { y[$2] = $c }
    END { s = ""; for (r in x) if (y[r] > 0) s = s (s == "" ? "" : "/") sprintf("%.2f", x[r] / y[r]); print s }' "$RESULTS"
}
has() { case " $MODES " in *" $1 "*) return 0 ;; esac; return 1; }
if has relay && has nft; then
  r=$(ratio "$(get relay 2)" "$(get nft 2)")
  echo "TARGET relay throughput >= 0.7x nft: ${r}x (median relay $(get relay 2) / nft $(get nft 2) MB/s; per round $(rounds_ratio relay nft 3)): $(verdict "$r" ">=" 0.7)"
  r=$(ratio "$(get relay 4)" "$(get nft 4)")
  echo "TARGET relay connection rate >= 0.8x nft: ${r}x (median relay $(get relay 4) / nft $(get nft 4) conn/s; per round $(rounds_ratio relay nft 4)): $(verdict "$r" ">=" 0.8)"
fi
if [ "$BIG" -gt 0 ] && has nft; then
  r=$(ratio "$(get "nft@$BIG" 12)" "$(get nft@2 12)")
  echo "TARGET nft new-connection latency at $BIG within 10% of at 1: ${r}x (p50 $(get "nft@$BIG" 12) vs $(get nft@2 12) us with the measured pair alone, medians): $(verdict "$r" "<=" 1.10)"
fi

# The plot: two bar panels (throughput, connection rate), written by awk so
# nothing beyond the base system is needed.
awk -F'\t' -v title="Navigator data planes, $(date -u +%F), $(nproc) cores, median of $ROUNDS rounds, PIN=$PIN" '
  $2 != "" { n++; name[n]=$1; tp[n]=$2; cps[n]=$4; if ($2>mt) mt=$2; if ($4>mc) mc=$4 }
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
  }' "$SUMMARY" >"$SVG"
echo "plot written to $SVG" >&2
