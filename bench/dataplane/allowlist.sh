#!/usr/bin/env bash
# The cost of a forward's source allowlist (`allowed_cidrs`) per backend: for
# each backend in MODES and each allowlist size in CIDRS, single-stream
# throughput (BYTES through one TCP connection to a sink) and short-connection
# rate (CONC clients, 64-byte request/reply, one connection each; p50/p99),
# in traffic.sh's topology (client ns -> proxy ns -> backend ns, lib.sh),
# with plain routing (no forwarder) measured in the same rounds as the
# calibration row. Each backend's rows are compared with the same backend
# without an allowlist (CIDRS=0): the ratio of each round's value to that
# round's CIDRS=0 value, median and (min-max) over ROUNDS rounds. The
# configurations of a round are interleaved (a backend's sizes back to back)
# and their order reversed every other round.
#
# The allowlist of N is built by dp_hold (CIDRS=N): N-1 networks that do not
# match, spread over 1.0.0.0 up to the client's network with prefix lengths
# /16-/32, then the client's network (198.18.0.0/24, the RFC 2544
# benchmarking range) last, also in the canonical (sorted) order the backends
# receive, so a linear scan would be the worst case. The client's connections
# are all allowed: the rows measure the cost of the lookup, not of refusals.
#
# Before the rounds, each backend carries a forward whose one allowed network
# excludes the client: no connection may succeed. Otherwise the script prints
# `SANITY FAILED: the allowlist is not enforced by <mode>` (then the numbers
# measure nothing) and exits 2 after the table.
#
# Also shown: the CPU the load generator used (user+sys over wall time, % of
# one core; with PIN=1 it has CPU 1, shared with the backend's servers and,
# for nft/iptables, the kernel's NAT), to show it is not the bottleneck, and
# the time the backend took to apply the forwards with their allowlist.
#
# One command (root):
#   bench/dataplane/allowlist.sh   (env: MODES, CIDRS, BYTES, RATE_SECS, CONC, ROUNDS, SANITY_SECS, PIN, BIN, OUT)
# e.g. BIN=<dir with release relay_bench and dp_hold> bench/dataplane/allowlist.sh
# Writes a Markdown table to stdout, progress to stderr, every value of every
# round to $OUT/results.tsv. Every process started is stopped by PID and
# every namespace deleted on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BYTES="${BYTES:-1073741824}"     # 1 GiB per throughput run
RATE_SECS="${RATE_SECS:-4}"
CONC="${CONC:-64}"
MODES="${MODES:-relay nft iptables}"
SIZES="${CIDRS:-0 1 100 10000}"
ROUNDS="${ROUNDS:-5}"
SANITY_SECS="${SANITY_SECS:-2}"
OUT="${OUT:-/tmp/dataplane-allowlist}"
# dp_hold reads CIDRS, CIDRS_CLIENT and CIDRS_REFUSE: only hold_with sets them.
unset CIDRS CIDRS_CLIENT CIDRS_REFUSE
# Ratios need the backend without an allowlist.
case " $SIZES " in *" 0 "*) ;; *) SIZES="0 $SIZES" ;; esac
for n in $SIZES; do
  case "$n" in '' | *[!0-9]*) echo "CIDRS must be numbers, got '$n'" >&2; exit 1 ;; esac
done
CLIENT_NET=198.18.0
NS_PREFIX="nval$$"
# Checks (root, tools), binaries, topology, backend servers, hold/unhold.
# shellcheck source=bench/dataplane/lib.sh
. bench/dataplane/lib.sh

RESULTS="$OUT/results.tsv"
FAILURES="$OUT/failures.tsv"
: >"$RESULTS"; : >"$FAILURES"
SANITY_FAILED=()

# hold_with MODE N [refuse]: the backend carrying the two forwards with an
# allowlist of N (none for 0); `refuse` leaves the client's network out.
hold_with() {
  local mode=$1 n=$2 refuse=${3:-}
  CIDRS=$n CIDRS_CLIENT="$CLIENT_NET.0/24" CIDRS_REFUSE=$([ -n "$refuse" ] && echo 1 || echo 0) \
    hold "$mode" 0 "cidrs$n$refuse"
}
# Why dp_hold failed, one line (its error is its last line naming it).
hold_error() {
  local log="$OUT/hold.$1.cidrs$2$3.log"
  { grep 'dp_hold:' "$log" || tail -n1 "$log"; } 2>/dev/null | tail -n1 | tr '\t' ' '
}

# timed FILE CMD...: runs CMD (stdout to FILE, stderr to generator.log) and
# prints the CPU it used in % of one core. Never fails: a failed run leaves
# FILE without its result line.
timed() {
  local file=$1 t TIMEFORMAT='%3U %3S %3R'
  shift
  t=$( { time "$@" >"$file" 2>>"$OUT/generator.log"; } 2>&1 ) || true
  t=${t##*$'\n'}   # time's line is the last (bash -x writes its trace before it)
  awk -v t="$t" 'BEGIN { n = split(t, a, " "); if (n == 3 && a[3] > 0) printf "%.0f", (a[1] + a[2]) / a[3] * 100 }'
}
# kv KEY FILE: the value of KEY=value in relay_bench's result line.
kv() { awk -v k="$1" '{ for (i = 1; i <= NF; i++) { split($i, p, "="); if (p[1] == k) print p[2] } }' "$2"; }

# measure MODE N ROUND SINK ECHO [APPLY]: one row of results.tsv.
measure() {
  local mode=$1 n=$2 round=$3 sink=$4 echo=$5 apply=${6:-} tcpu rcpu
  tcpu=$(timed "$OUT/throughput.out" nsx "$C" "${GEN[@]}" "$RB" throughput "$sink" "$BYTES")
  rcpu=$(timed "$OUT/rate.out" nsx "$C" "${GEN[@]}" "$RB" rate "$echo" "$CONC" "$RATE_SECS")
  local tp cps p50 p99 err
  tp=$(kv MBps "$OUT/throughput.out"); cps=$(kv cps "$OUT/rate.out")
  p50=$(kv p50_us "$OUT/rate.out"); p99=$(kv p99_us "$OUT/rate.out"); err=$(kv errors "$OUT/rate.out")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$mode" "$n" "$round" "$tp" "$cps" "$p50" "$p99" "$err" "$tcpu" "$rcpu" "$apply" >>"$RESULTS"
  echo "  $mode, $n CIDRs (round $round): ${tp:-failed} MB/s, ${cps:-failed} conn/s (p50 ${p50} us, p99 ${p99} us, errors ${err}), generator CPU ${tcpu}% / ${rcpu}%" >&2
}

echo "# $(date -u +%F) $(uname -r), $(nproc) cores, load average $(cut -d" " -f1-3 /proc/loadavg), MODES=\"$MODES\" CIDRS=\"$SIZES\" BYTES=$BYTES CONC=$CONC RATE_SECS=$RATE_SECS ROUNDS=$ROUNDS PIN=$PIN" >&2

# Sanity: a forward whose allowlist excludes the client must carry nothing.
for mode in $MODES; do
  if ! hold_with "$mode" 1 refuse; then
    unhold
    echo "SANITY FAILED: the allowlist is not enforced by $mode (it could not carry the forward: $(hold_error "$mode" 1 refuse))" >&2
    SANITY_FAILED+=("$mode")
    continue
  fi
  timed "$OUT/sanity.out" nsx "$C" "${GEN[@]}" "$RB" rate "$EXT:30002" 4 "$SANITY_SECS" >/dev/null
  unhold
  ok=$(kv ok "$OUT/sanity.out"); errors=$(kv errors "$OUT/sanity.out")
  if [ "${ok:-x}" = 0 ]; then
    echo "  sanity: $mode refused the client outside its allowlist ($errors attempts, 0 connections)" >&2
  else
    echo "SANITY FAILED: the allowlist is not enforced by $mode (${ok:-?} connections from outside the allowlist succeeded, ${errors:-?} failed)" >&2
    SANITY_FAILED+=("$mode")
  fi
done

ORDER=(plain)
for mode in $MODES; do for n in $SIZES; do ORDER+=("$mode:$n"); done; done
for round in $(seq "$ROUNDS"); do
  echo "round $round: ${ORDER[*]}" >&2
  for config in "${ORDER[@]}"; do
    if [ "$config" = plain ]; then
      measure plain - "$round" 10.92.0.2:9001 10.92.0.2:9002
      continue
    fi
    mode=${config%%:*}; n=${config#*:}
    if grep -q "^$mode"$'\t'"$n"$'\t' "$FAILURES"; then continue; fi
    if ! hold_with "$mode" "$n"; then
      unhold
      printf '%s\t%s\t%s\n' "$mode" "$n" "$(hold_error "$mode" "$n" "")" >>"$FAILURES"
      continue
    fi
    measure "$mode" "$n" "$round" "$EXT:30001" "$EXT:30002" "$(awk '{print $2}' "$OUT/hold.$mode.cidrs$n.out")"
    unhold
  done
  REV=(); for ((i=${#ORDER[@]}-1; i>=0; i--)); do REV+=("${ORDER[i]}"); done; ORDER=("${REV[@]}")
done

# One line per (mode, size), plain first, then MODES x CIDRS as given:
# medians and (min-max) of the rounds; ratios are per round against the same
# backend's CIDRS=0 in that round.
SUMMARY="$OUT/summary.tsv"
awk -F'\t' -v modes="$MODES" -v sizes="$SIZES" '
  function sort(s, a,   n, t, i, j) { n = split(s, a, " "); for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t } return n }
  function stat(s,   a, n) { n = sort(s, a); if (n == 0) return "\t"; return a[int((n + 1) / 2)] "\t" a[1] "-" a[n] }
  function ratio(m, n, c,   r, s) { s = ""; for (r in rounds) if (v[m, n, r, c] != "" && v[m, 0, r, c] > 0) s = s " " sprintf("%.3f", v[m, n, r, c] / v[m, 0, r, c]); return s }
  FILENAME == ARGV[1] { for (c = 4; c <= 11; c++) v[$1, $2, $3, c] = $c; rounds[$3] = 1
                        for (c = 4; c <= 11; c++) if ($c != "") all[$1, $2, c] = all[$1, $2, c] " " $c; next }
  { failed[$1, $2] = $3 }
  END {
    print "plain\t-\t" stat(all["plain", "-", 4]) "\t\t\t" stat(all["plain", "-", 5]) "\t\t\t" stat(all["plain", "-", 6]) "\t" stat(all["plain", "-", 7]) "\t" stat(all["plain", "-", 8]) "\t" stat(all["plain", "-", 9]) "\t" stat(all["plain", "-", 10]) "\t\t\t"
    nm = split(modes, M, " "); ns = split(sizes, S, " ")
    for (i = 1; i <= nm; i++) for (j = 1; j <= ns; j++) {
      m = M[i]; n = S[j]
      if ((m, n) in failed) { print m "\t" n "\tFAILED\t" failed[m, n]; continue }
      line = m "\t" n "\t" stat(all[m, n, 4]) "\t" stat(ratio(m, n, 4)) "\t" stat(all[m, n, 5]) "\t" stat(ratio(m, n, 5))
      for (c = 6; c <= 11; c++) line = line "\t" stat(all[m, n, c])
      print line
    }
  }' "$RESULTS" "$FAILURES" >"$SUMMARY"

# Columns of summary.tsv: 1 mode, 2 CIDRs, then value and min-max pairs:
# 3/4 MB/s, 5/6 x none, 7/8 conn/s, 9/10 x none, 11/12 p50, 13/14 p99,
# 15/16 errors, 17/18 generator CPU throughput, 19/20 generator CPU rate,
# 21/22 apply seconds.
echo "| mode | CIDRs | throughput MB/s, median (min-max) | × no allowlist | conn/s ($CONC clients), median (min-max) | × no allowlist | p50 / p99 µs | errors (max) | generator CPU %, throughput / conn/s | apply s |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '
  function cell(x, r) { return (x == "") ? "" : (r == "" ? x : x " (" r ")") }
  $3 == "FAILED" { printf "| %s | %s | refused by the backend: %s | | | | | | | |\n", $1, $2, $4; next }
  { m = ($1 == "plain") ? "plain (routing, no forwarder)" : $1; split($16, e, "-")
    printf "| %s | %s | %s | %s | %s | %s | %s / %s | %s | %s / %s | %s |\n", m, ($2 == "-") ? "" : $2,
      cell($3, $4), cell($5, $6), cell($7, $8), cell($9, $10), $11, $13, e[2], $17, $19, $21 }' "$SUMMARY"
echo "(rounds: $ROUNDS; × no allowlist: the round's value over the same backend's with CIDRS=0 in that round, median (min-max); generator CPU: % of one core; all values per round are in $RESULTS)"

# The goal: within 5 % at the largest allowlist, for nft and the relay.
max=0
for n in $SIZES; do if [ "$n" -gt "$max" ]; then max=$n; fi; done
for mode in relay nft; do
  case " $MODES " in *" $mode "*) ;; *) continue ;; esac
  [ "$max" -gt 0 ] || continue
  live=1
  case " ${SANITY_FAILED[*]} " in *" $mode "*) live=0 ;; esac
  awk -F'\t' -v m="$mode" -v n="$max" -v live="$live" '
    $1 == m && $2 == n {
      if ($3 == "FAILED") { printf "TARGET %s with %s CIDRs within 5%% of none: n/a (refused by the backend)\n", m, n; found = 1; exit }
      ok = ($5 != "" && $9 != "" && $5 >= 0.95 && $9 >= 0.95)
      printf "TARGET %s with %s CIDRs within 5%% of none: throughput %sx (rounds %s), conn/s %sx (rounds %s): %s\n", m, n, $5, $6, $9, $10, !live ? "no verdict (SANITY FAILED: no filter was measured)" : ok ? "met" : "NOT met"
      found = 1 }
    END { if (!found) printf "TARGET %s with %s CIDRs within 5%% of none: n/a (not measured)\n", m, n }' "$SUMMARY"
done

if [ "${#SANITY_FAILED[@]}" -gt 0 ]; then
  for mode in "${SANITY_FAILED[@]}"; do
    echo "SANITY FAILED: the allowlist is not enforced by $mode"
  done
  echo "(each of these backends either carried connections from outside the forward's allowlist or could not apply it: see the SANITY lines of the progress output; their rows measure no filter)"
  exit 2
fi
echo "sanity: every backend refused the client outside its allowlist"
