#!/usr/bin/env bash
# Control plane at scale: two release navigator-servers in cluster mode on one
# PostgreSQL and one RabbitMQ, PROXIES simulated agents (the real agent code
# with a no-op data plane, crates/agent/examples/sim_agents.rs), and FORWARDS
# creates round-robin over both servers, measured in BLOCKS blocks.
#
#   bench/cluster/scale.sh    (env to override: FORWARDS=1000000 PROXIES=100
#                              PER_PROCESS=100 CONC=64 PROJECTS=100 BLOCKS=10 IDLE_SECS=60
#                              PREFILL=0 (forwards written into the database first)
#                              REPORT_INTERVAL=10 RESYNC_INTERVAL= (server
#                              default) OUT=/tmp/cluster-scale BIN_DIR;
#                              TRANSPORT_URL and POSTGRES_URL use a running
#                              RabbitMQ and PostgreSQL instead of starting
#                              them: POSTGRES_URL's user must be allowed to
#                              create databases; the benchmark's database is
#                              dropped at the end)
#
# Per block: creates/s, p50/p99 latency of a create (201 ACTIVE: stored,
# applied by the agent, its report recorded), and the CPU each component
# used (each server, PostgreSQL, RabbitMQ, the simulated agents, the load
# generator): CPU seconds per 1,000 creates and cores busy, with the
# machine's total, so that a saturated component (or load generator) shows.
# Then: a full resync of one proxy (sim-000, FORWARDS/PROXIES forwards: its
# agent restarts with nothing applied, SIGUSR1 to its process, and the
# server's "agent synced" line gives the sync's time), the servers' idle CPU
# over IDLE_SECS, the servers' and agents' memory per forward, and
# PostgreSQL's sizes per forward. Lines starting with SUMMARY and TARGET
# close the run.
#
# Agents: PER_PROCESS agents per sim_agents process (1 process of 100 by
# default; docs/benchmarks.md compares it with 10 of 10), each agent with its
# own RabbitMQ connection, host sim-NNN, a TEST-NET external address (never
# bound) and the port pool 20000-59999.
#
# BIN_DIR: a directory with release navigator-server and the cluster_load and
# sim_agents examples (directly or under examples/); without it they are built
# here (release). Every process is tracked by PID and stopped on exit; the
# services started here listen on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
FORWARDS="${FORWARDS:-1000000}"
PROXIES="${PROXIES:-100}"
PER_PROCESS="${PER_PROCESS:-100}"
CONC="${CONC:-64}"
# Creates come from this many projects in turn (cluster_load LOAD_PROJECTS), as
# a cloud's tenants: one project's creates queue on its quota counter row.
export LOAD_PROJECTS="${PROJECTS:-100}"
# Forwards written into the database before the run (see below).
PREFILL="${PREFILL:-0}"
BLOCKS="${BLOCKS:-10}"
IDLE_SECS="${IDLE_SECS:-60}"
REPORT_INTERVAL="${REPORT_INTERVAL:-10}"
RESYNC_INTERVAL="${RESYNC_INTERVAL:-}"
OUT="${OUT:-/tmp/cluster-scale}"
TRANSPORT_URL="${TRANSPORT_URL:-}"
POSTGRES_URL="${POSTGRES_URL:-}"
# The targets of issue #18 for the simulation.
TARGET_CREATES=2000
TARGET_RESYNC_MS=1000

die() { echo "scale.sh: $*" >&2; exit 1; }
if [ "$BLOCKS" -lt 1 ] || [ "$FORWARDS" -lt "$BLOCKS" ]; then die "FORWARDS must be at least BLOCKS (>= 1)"; fi
if [ "$PROXIES" -lt 1 ] || [ "$PER_PROCESS" -lt 1 ]; then die "PROXIES and PER_PROCESS must be >= 1"; fi
rm -rf "$OUT" && mkdir -p "$OUT"

find_bin() { # NAME: BIN_DIR/NAME or BIN_DIR/examples/NAME
  if [ -x "$BIN_DIR/$1" ]; then echo "$BIN_DIR/$1"; else echo "$BIN_DIR/examples/$1"; fi
}
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p navigator-server --bin navigator-server --example cluster_load
  cargo build --release -q -p navigator-agent --example sim_agents
  BIN_DIR="$CARGO_TARGET_DIR/release"
fi
SERVER=$(find_bin navigator-server)
LOAD=$(find_bin cluster_load)
SIM=$(find_bin sim_agents)
for b in "$SERVER" "$LOAD" "$SIM"; do [ -x "$b" ] || die "$b missing"; done

PIDS=()
SIM_PIDS=()
OWN_SERVICES=0
DB_URL=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$OWN_SERVICES" = 1 ]; then
    scripts/databases stop "$OUT/db" >/dev/null 2>&1 || true
    scripts/rabbitmq stop "$OUT/rabbitmq" >/dev/null 2>&1 || true
  elif [ -n "$DB_URL" ]; then
    psql -q "$POSTGRES_URL" -c "DROP DATABASE IF EXISTS ${DB_URL##*/}" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT INT TERM

if [ -z "$TRANSPORT_URL" ] || [ -z "$POSTGRES_URL" ]; then
  echo "starting RabbitMQ and durable PostgreSQL in $OUT"
  OWN_SERVICES=1
  scripts/rabbitmq start "$OUT/rabbitmq" >"$OUT/rabbitmq.log"
  DURABLE=1 scripts/databases start "$OUT/db" postgres >"$OUT/db.log"
  # shellcheck disable=SC1091
  . "$OUT/rabbitmq/env"
  # shellcheck disable=SC1091
  . "$OUT/db/env"
  TRANSPORT_URL=$NAVIGATOR_TEST_TRANSPORT_URL
  POSTGRES_URL=$NAVIGATOR_TEST_POSTGRES_URL
fi
DB_NAME="scale_$$"
# CREATE DATABASE fails while another session uses template1 (another
# client of a shared PostgreSQL creating its own): try again.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  psql -q "$POSTGRES_URL" -c "CREATE DATABASE $DB_NAME" >/dev/null && break
  [ "$attempt" = 10 ] && die "cannot create database $DB_NAME"
  sleep 1
done
DB_URL="${POSTGRES_URL%/*}/$DB_NAME"

# listener_pid URL: the PID of the process listening on URL's port (the
# postmaster, RabbitMQ's beam.smp).
listener_pid() {
  local port=${1##*@}
  port=${port#*:}; port=${port%%/*}; port=${port%%\?*}
  ss -Htlnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}
PG_PID=$(listener_pid "$POSTGRES_URL")
MQ_PID=$(listener_pid "$TRANSPORT_URL")
if [ -z "$PG_PID" ] || [ -z "$MQ_PID" ]; then die "cannot find the PostgreSQL or RabbitMQ process (ss -tlnp)"; fi

server_conf() { # NAME
  cat >"$OUT/$1.conf" <<CONF
[DEFAULT]
host = $1
bind_port = 0
transport_url = $TRANSPORT_URL
[database]
connection = $DB_URL
[api]
# The load generator is one client address far above the per-client limit.
rate_limit = 0
[forwards]
allow_loopback_targets = true
[quotas]
# One project holds every forward; its quota claims are still made.
forwards = -1
ports = -1
[agent]
report_interval = $REPORT_INTERVAL
${RESYNC_INTERVAL:+resync_interval = $RESYNC_INTERVAL}
[scheduler]
strategy = round_robin
CONF
}

start_server() { # NAME: runs it, sets URL and SERVER_PID
  "$SERVER" --config-file "$OUT/$1.conf" >"$OUT/$1.out" 2>"$OUT/$1.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 600); do
    URL=$(sed -n 's/^  API *\(http:[^ ]*\).*/\1/p' "$OUT/$1.out" 2>/dev/null | head -1)
    [ -n "$URL" ] && return
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  die "server $1 did not start; see $OUT/$1.log"
}

up_proxies() { # URL
  curl -sf -H 'X-Project-Id: bench' "$1/v1/proxies?limit=1000" | grep -o '"state": *"up"' | wc -l || true
}

# tree_ticks PID...: CPU clock ticks (user + system) of these processes and
# all their descendants, including children they have reaped (cutime,
# cstime): each tick is counted once, by a live process or by its reaper.
tree_ticks() {
  local roots=" $* "
  # A process may exit between the glob and the read: cat then fails.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v roots="$roots" '{
      rest = substr($0, index($0, ") ") + 2); split(rest, f, " ")
      pid = $1 + 0; parent[pid] = f[2] + 0; ticks[pid] = f[12] + f[13] + f[14] + f[15]
    } END {
      total = 0
      for (pid in ticks) {
        p = pid + 0
        for (depth = 0; p > 1 && depth < 64; depth++) {
          if (index(roots, " " p " ")) { total += ticks[pid]; break }
          p = parent[p]
        }
      }
      print total
    }'
}
# busy_ticks: ticks all CPUs spent not idle (from /proc/stat).
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
HZ=$(getconf CLK_TCK)
NCPU=$(nproc)
rss_kb() { # PID...: summed VmRSS
  local total=0 p kb
  for p in "$@"; do
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
json_field() { sed -n "s/.*\"$2\": *\\([0-9.]*\\).*/\\1/p" <<<"$1"; }
ms() { awk -v m="$1" 'BEGIN { printf "%.1f", m }'; } # rounds a latency
# per_k SECONDS COUNT: seconds per 1,000 of COUNT.
per_k() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.3f", (n > 0 ? s * 1000 / n : 0) }'; }
# cores SECONDS WALL: cores busy on average.
cores() { awk -v s="$1" -v w="$2" 'BEGIN { printf "%.2f", (w > 0 ? s / w : 0) }'; }
secs() { awk -v t="$1" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'; }

machine="$NCPU cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "machine: $machine; $(date -u +%FT%TZ); FORWARDS=$FORWARDS PROXIES=$PROXIES PER_PROCESS=$PER_PROCESS CONC=$CONC BLOCKS=$BLOCKS" | tee "$OUT/summary.txt"

server_conf server-a
server_conf server-b
"$SERVER" --config-file "$OUT/server-a.conf" db sync >/dev/null

# PREFILL forwards written straight into the database before anything
# starts (as a cloud that has run for a while holds them): spread evenly
# over the proxies (proxy i % PROXIES, its pool from 20000 up, its TEST-NET
# address as sim_agents gives it) and over PROJECTS projects, ACTIVE, with
# their port rows and quota counters. The servers build each proxy's
# summary and the agents get their full syncs at start; the creates that
# follow are then measured at PREFILL + n forwards.
if [ "$PREFILL" -gt 0 ]; then
  [ "$PROXIES" -le 254 ] || die "PREFILL needs PROXIES <= 254 (one 192.0.2.x address each)"
  started=$(date +%s.%N)
  psql -q -v ON_ERROR_STOP=1 "$DB_URL" >/dev/null <<SQL || die "prefill failed"
INSERT INTO forwards (id, project_id, description, protocol, external_address, external_port,
  external_port_end, internal_ip_address, internal_port, internal_port_end, instance_id, proxy,
  status, status_reason, created_at, updated_at, allowed_cidrs, max_connections, proxy_protocol)
SELECT md5('prefill-' || i)::uuid::text, 'bench-' || (i % $LOAD_PROJECTS), '', 'tcp',
  '192.0.2.' || (i % $PROXIES + 1), 20000 + i / $PROXIES, 20000 + i / $PROXIES, '127.0.0.1', 9, 9,
  NULL, 'sim-' || lpad((i % $PROXIES)::text, 3, '0'), 'ACTIVE', NULL,
  '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z', '', NULL, 'none'
FROM generate_series(0, $PREFILL - 1) AS i;
INSERT INTO forward_ports (external_address, protocol, port, forward_id)
  SELECT external_address, protocol, external_port, id FROM forwards;
INSERT INTO quota_usages (project_id, forwards, ports)
  SELECT project_id, count(*), count(*) FROM forwards GROUP BY project_id;
ANALYZE forwards; ANALYZE forward_ports; ANALYZE quota_usages;
SQL
  echo "prefilled $PREFILL forwards in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s" | tee -a "$OUT/summary.txt"
fi
start_server server-a; URL_A=$URL; PID_A=$SERVER_PID
start_server server-b; URL_B=$URL; PID_B=$SERVER_PID

# Simulated agents, PER_PROCESS per process.
first=0
while [ "$first" -lt "$PROXIES" ]; do
  count=$((PROXIES - first)); [ "$count" -gt "$PER_PROCESS" ] && count=$PER_PROCESS
  NAVIGATOR_TEST_TRANSPORT_URL=$TRANSPORT_URL "$SIM" --first "$first" --count "$count" \
    --report-interval "$REPORT_INTERVAL" >"$OUT/sim-$first.out" 2>"$OUT/sim-$first.log" &
  PIDS+=("$!"); SIM_PIDS+=("$!")
  first=$((first + count))
done
for _ in $(seq 1200); do
  [ "$(up_proxies "$URL_A")" -ge "$PROXIES" ] && break
  for p in "${SIM_PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "sim_agents $p exited; see $OUT/sim-*.log"; done
  sleep 0.1
done
[ "$(up_proxies "$URL_A")" -ge "$PROXIES" ] || die "only $(up_proxies "$URL_A") of $PROXIES proxies up"
echo "$PROXIES simulated proxies up ($((${#SIM_PIDS[@]})) processes); servers $URL_A $URL_B"
sleep 2
RSS_A0=$(rss_kb "$PID_A"); RSS_B0=$(rss_kb "$PID_B"); RSS_SIM0=$(rss_kb "${SIM_PIDS[@]}")

# The creates, block by block.
per_block=$((FORWARDS / BLOCKS))
created_total=0
seconds_total=0
first_rate=""; last_rate=""
for block in $(seq 1 "$BLOCKS"); do
  n=$per_block
  [ "$block" = "$BLOCKS" ] && n=$((FORWARDS - per_block * (BLOCKS - 1)))
  a0=$(tree_ticks "$PID_A"); b0=$(tree_ticks "$PID_B"); pg0=$(tree_ticks "$PG_PID")
  mq0=$(tree_ticks "$MQ_PID"); sim0=$(tree_ticks "${SIM_PIDS[@]}"); all0=$(busy_ticks)
  TIMEFORMAT='%U %S'
  { time "$LOAD" create "$URL_A,$URL_B" "$n" "$CONC" >"$OUT/block-$block.json" 2>"$OUT/load.err"; } 2>"$OUT/load.time"
  a1=$(tree_ticks "$PID_A"); b1=$(tree_ticks "$PID_B"); pg1=$(tree_ticks "$PG_PID")
  mq1=$(tree_ticks "$MQ_PID"); sim1=$(tree_ticks "${SIM_PIDS[@]}"); all1=$(busy_ticks)
  result=$(cat "$OUT/block-$block.json")
  echo "$result" >>"$OUT/results.jsonl"
  created=$(json_field "$result" created); wall=$(json_field "$result" seconds)
  rate=$(json_field "$result" creates_per_s)
  created_total=$((created_total + ${created:-0}))
  seconds_total=$(awk -v a="$seconds_total" -v b="${wall:-0}" 'BEGIN { print a + b }')
  [ -z "$first_rate" ] && first_rate=$rate
  last_rate=$rate
  load_s=$(awk '{ printf "%.2f", $1 + $2 }' "$OUT/load.time")
  line="block $block/$BLOCKS: $rate creates/s ($created of $n, errors $(json_field "$result" errors)), p50 $(ms "$(json_field "$result" p50_ms)") ms, p99 $(ms "$(json_field "$result" p99_ms)") ms;"
  line="$line CPU s per 1000 creates (cores busy):"
  for c in server-a:$((a1 - a0)) server-b:$((b1 - b0)) postgres:$((pg1 - pg0)) rabbitmq:$((mq1 - mq0)) agents:$((sim1 - sim0)); do
    s=$(secs "${c#*:}")
    line="$line ${c%%:*} $(per_k "$s" "$created") ($(cores "$s" "$wall"))"
  done
  line="$line loadgen $(per_k "$load_s" "$created") ($(cores "$load_s" "$wall")); machine $(cores "$(secs $((all1 - all0)))" "$wall") of $NCPU cores busy"
  echo "$line" | tee -a "$OUT/summary.txt"
  if [ "${created:-0}" = 0 ]; then
    echo "  first error: $(sed -n 's/.*"first_error": *\("[^"]*"\).*/\1/p' <<<"$result")" | tee -a "$OUT/summary.txt"
  fi
done
overall=$(awk -v n="$created_total" -v s="$seconds_total" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }')
forwards_now=$(psql -Atq "$DB_URL" -c "SELECT count(*) FROM forwards")
sleep 2
RSS_A=$(rss_kb "$PID_A"); RSS_B=$(rss_kb "$PID_B"); RSS_SIM=$(rss_kb "${SIM_PIDS[@]}")

# One proxy's full resync: sim-000 (the first agent of the first process)
# comes back with nothing applied. Whichever server takes its heartbeat
# syncs it and logs "agent synced host=sim-000 forwards=N ... elapsed_ms=M".
synced_lines() { cat "$OUT/server-a.log" "$OUT/server-b.log" | grep -c "agent synced.*host=sim-000[^0-9]" || true; }
before=$(synced_lines)
restarted=$(date +%s.%N)
kill -USR1 "${SIM_PIDS[0]}"
resync_line=""
for _ in $(seq 1200); do
  if [ "$(synced_lines)" -gt "$before" ]; then
    # The newest line of either log that names sim-000.
    resync_line=$(cat "$OUT/server-a.log" "$OUT/server-b.log" | grep "agent synced.*host=sim-000[^0-9]" | sort | tail -1)
    break
  fi
  sleep 0.1
done
resync_wall=$(awk -v a="$restarted" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
resync_ms=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' <<<"$resync_line")
resync_n=$(sed -n 's/.*forwards=\([0-9]*\).*/\1/p' <<<"$resync_line")
echo "resync of sim-000: ${resync_line:-no \"agent synced\" line within 120 s}" | tee -a "$OUT/summary.txt"

# Idle: no creates, every agent heartbeating.
a0=$(tree_ticks "$PID_A"); b0=$(tree_ticks "$PID_B"); pg0=$(tree_ticks "$PG_PID")
mq0=$(tree_ticks "$MQ_PID"); sim0=$(tree_ticks "${SIM_PIDS[@]}")
sleep "$IDLE_SECS"
a1=$(tree_ticks "$PID_A"); b1=$(tree_ticks "$PID_B"); pg1=$(tree_ticks "$PG_PID")
mq1=$(tree_ticks "$MQ_PID"); sim1=$(tree_ticks "${SIM_PIDS[@]}")
idle=""
for c in server-a:$((a1 - a0)) server-b:$((b1 - b0)) postgres:$((pg1 - pg0)) rabbitmq:$((mq1 - mq0)) agents:$((sim1 - sim0)); do
  idle="$idle ${c%%:*} $(awk -v t="${c#*:}" -v hz="$HZ" -v w="$IDLE_SECS" 'BEGIN { printf "%.1f%%", 100 * t / hz / w }')"
done

# The agents stop and print what they measured: per method, the time from a
# message's arrival in their process to their reply (p50 averaged over the
# processes, weighted by count; p99 and max: the worst process's).
for p in "${SIM_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${SIM_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
handling() { # METHOD: "N calls, p50 X ms, p99 Y ms, max Z ms"
  local f
  for f in "$OUT"/sim-*.out; do
    sed -n "s/.*\"$1\":{\([^}]*\)}.*/\1/p" "$f"
  done | awk -F, '{
      for (i = 1; i <= NF; i++) { split($i, kv, ":"); gsub(/"/, "", kv[1]); v[kv[1]] = kv[2] + 0 }
      n += v["count"]; p50 += v["count"] * v["p50_ms"]
      if (v["p99_ms"] > p99) p99 = v["p99_ms"]; if (v["max_ms"] > max) max = v["max_ms"]
    } END { if (n > 0) printf "%d calls, p50 %.1f ms, p99 %.1f ms, max %.1f ms", n, p50 / n, p99, max; else printf "no calls" }'
}

# Sizes: every table of the schema (new ones included), and the database.
psql -Atq -F' ' "$DB_URL" -c "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'
  ORDER BY 2 DESC" >"$OUT/tables.txt"
db_bytes=$(psql -Atq "$DB_URL" -c "SELECT pg_database_size(current_database())")
per_fwd() { awk -v b="$1" -v n="$forwards_now" 'BEGIN { printf "%.0f", (n > 0 ? b / n : 0) }'; }
tables=""
while read -r name bytes; do
  [ "$bytes" -ge 65536 ] || continue
  tables="$tables $name $(per_fwd "$bytes") B,"
done <"$OUT/tables.txt"

{
  echo "SUMMARY creates: $created_total of $FORWARDS in ${seconds_total} s = $overall creates/s over 2 servers (first block $first_rate/s, last block $last_rate/s; CONC $CONC)"
  echo "SUMMARY resync of one proxy: ${resync_n:-?} forwards in ${resync_ms:-?} ms (server's elapsed_ms); ${resync_wall} s from the restart to the log line"
  echo "SUMMARY idle CPU over ${IDLE_SECS} s (% of one core):$idle"
  echo "SUMMARY agent-side handling (arrival in the agent's process to its reply): create_forward $(handling create_forward); sync_forwards $(handling sync_forwards)"
  echo "SUMMARY memory at $forwards_now forwards: server-a $((RSS_A / 1024)) MiB, server-b $((RSS_B / 1024)) MiB (from $((RSS_A0 / 1024)) and $((RSS_B0 / 1024)) MiB with no forwards; $(per_fwd $(( (RSS_A + RSS_B - RSS_A0 - RSS_B0) * 1024 ))) B per forward grown, both together); agents $((RSS_SIM / 1024)) MiB in ${#SIM_PIDS[@]} processes (from $((RSS_SIM0 / 1024)) MiB; $(per_fwd $(( (RSS_SIM - RSS_SIM0) * 1024 ))) B per forward grown)"
  echo "SUMMARY PostgreSQL at $forwards_now forwards: database $((db_bytes / 1048576)) MiB ($(per_fwd "$db_bytes") B per forward); per forward by table (>= 64 KiB):${tables%,}"
  verdict() { if [ "$1" = 1 ]; then echo MET; else echo "NOT MET"; fi; }
  echo "TARGET creates/s >= $TARGET_CREATES on two servers: $overall/s: $(verdict "$(awk -v r="$overall" -v t="$TARGET_CREATES" 'BEGIN { print (r >= t) }')")"
  scaled=""
  [ "${resync_n:-0}" -lt 10000 ] && scaled=" (only ${resync_n:-0} forwards: the target is for 10,000)"
  echo "TARGET resync 10k <= 1 s: ${resync_n:-?} forwards in ${resync_ms:-?} ms: $(verdict "$(awk -v m="${resync_ms:-}" -v t="$TARGET_RESYNC_MS" 'BEGIN { print (m != "" && m <= t) }')")$scaled"
} | tee -a "$OUT/summary.txt"
echo "disk used by $OUT: $(du -sh "$OUT" | cut -f1); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
echo "results: $OUT/results.jsonl, logs in $OUT"
