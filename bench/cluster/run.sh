#!/usr/bin/env bash
# Cluster-mode benchmarks: release navigator-server(s) and navigator-agents
# (relay backend, each agent on its own loopback address) over a RabbitMQ and
# PostgreSQL/MariaDB that this script starts with their DURABLE defaults
# (fsync and a log flush at every commit: no durability shortcuts).
#
#   bench/cluster/run.sh      (env to override: CREATES, CONC, FIRST_BYTE,
#                              SYNC_FORWARDS, BACKENDS, SERVERS, STRATEGY,
#                              OUT, BIN_DIR;
#                              FAILOVER_FORWARDS;
#                              FIRST_BYTE=0, SYNC_FORWARDS=0 or
#                              FAILOVER_FORWARDS=0 skips that part;
#                              PG_STATS=1 prints PostgreSQL's busiest
#                              statements of each create run)
#
# 1. creates/s through one and through two servers, on each database, two
#    agents (CREATES creates by CONC concurrent clients, round-robin over
#    the servers); a create counts only when it answered 201 ACTIVE;
# 2. create -> first byte through the forward on a remote agent, p50/p99
#    (FIRST_BYTE forwards one after another, one server, PostgreSQL);
# 3. full sync of SYNC_FORWARDS forwards to one agent: the agent is killed
#    (SIGKILL) and started again, and the server's "agent synced" log line
#    gives the time of the whole sync (store read, RPC, agent apply, statuses
#    recorded);
# 4. failover of FAILOVER_FORWARDS forwards: their agent is killed (SIGKILL);
#    after agent_down_time the server moves them to the other agent and
#    syncs it. The server's log times the moves and the sync.
#
# BIN_DIR: a directory with release navigator-server, navigator-agent and the
# cluster_load example; without it they are built here. Every process is
# tracked by PID and stopped on exit. Summary lines start with "SUMMARY".
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
CREATES="${CREATES:-3000}"
CONC="${CONC:-32}"
FIRST_BYTE="${FIRST_BYTE:-300}"
SYNC_FORWARDS="${SYNC_FORWARDS:-10000}"
FAILOVER_FORWARDS="${FAILOVER_FORWARDS:-2000}"
# The failover run's agent_down_time (agents report every 2 s).
FAILOVER_DOWN_TIME=6
BACKENDS="${BACKENDS:-postgres mariadb}"
SERVERS="${SERVERS:-1 2}"
STRATEGY="${STRATEGY:-round_robin}"
OUT="${OUT:-/tmp/cluster-bench}"
rm -rf "$OUT" && mkdir -p "$OUT"

if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -q -p navigator-server --bin navigator-server --example cluster_load
  cargo build --release -q -p navigator-agent --bin navigator-agent
  BIN_DIR="$CARGO_TARGET_DIR/release"
  LOAD="$BIN_DIR/examples/cluster_load"
else
  LOAD="$BIN_DIR/cluster_load"
  [ -x "$LOAD" ] || LOAD="$BIN_DIR/examples/cluster_load"
fi
SERVER="$BIN_DIR/navigator-server"
AGENT="$BIN_DIR/navigator-agent"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/databases stop "$OUT/db" >/dev/null 2>&1 || true
  scripts/rabbitmq stop "$OUT/rabbitmq" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

echo "starting RabbitMQ and durable PostgreSQL/MariaDB in $OUT"
scripts/rabbitmq start "$OUT/rabbitmq" >"$OUT/rabbitmq.log"
if [ "${PG_STATS:-0}" = 1 ]; then
  export PG_OPTIONS="-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
fi
DURABLE=1 scripts/databases start "$OUT/db" >"$OUT/db.log"
# shellcheck disable=SC1091
. "$OUT/rabbitmq/env"
# shellcheck disable=SC1091
. "$OUT/db/env"
TRANSPORT="$NAVIGATOR_TEST_TRANSPORT_URL"

# new_database KIND NAME: creates it and prints its URL.
new_database() {
  local admin base
  case $1 in
    postgres)
      admin=$NAVIGATOR_TEST_POSTGRES_URL
      psql -q "$admin" -c "CREATE DATABASE $2" >/dev/null ;;
    mariadb)
      admin=$NAVIGATOR_TEST_MYSQL_URL
      local rest=${admin#mysql://} creds hostport
      creds=${rest%%@*}; hostport=${rest#*@}; hostport=${hostport%%/*}
      mariadb --no-defaults -h "${hostport%:*}" -P "${hostport#*:}" -u "${creds%%:*}" \
        -p"${creds#*:}" -e "CREATE DATABASE $2 CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" ;;
  esac
  base=${admin%/*}
  echo "$base/$2"
}

# server_conf NAME DB_URL [AGENT_DOWN_TIME]: writes OUT/NAME.conf for a
# cluster-mode server.
server_conf() {
  cat >"$OUT/$1.conf" <<CONF
[DEFAULT]
host = $1
bind_port = 0
transport_url = $TRANSPORT
[database]
connection = $2
[api]
# The load generator is one client address far above the per-client limit.
rate_limit = 0
[forwards]
allow_loopback_targets = true
[quotas]
# The load generator creates thousands of forwards in one project; the
# claims on its quota counter are still made (and measured).
forwards = -1
ports = -1
[agent]
report_interval = 2
agent_down_time = ${3:-20}
rpc_timeout = 10
resync_interval = 600
[scheduler]
strategy = $STRATEGY
CONF
}

# start_server NAME: runs it and sets URL.
start_server() {
  "$SERVER" --config-file "$OUT/$1.conf" >"$OUT/$1.out" 2>"$OUT/$1.log" &
  PIDS+=("$!")
  for _ in $(seq 600); do
    URL=$(sed -n 's/^  API *\(http:[^ ]*\).*/\1/p' "$OUT/$1.out" 2>/dev/null | head -1)
    [ -n "$URL" ] && return
    sleep 0.1
  done
  echo "server $1 did not start; see $OUT/$1.log" >&2; exit 1
}

# start_agent HOST ADDRESS PORTS: runs an agent and sets AGENT_PID.
start_agent() {
  cat >"$OUT/$1.conf" <<CONF
[DEFAULT]
host = $1
transport_url = $TRANSPORT
[agent]
backend = relay
external_addresses = $2
port_range = $3
report_interval = 2
CONF
  "$AGENT" --config-file "$OUT/$1.conf" >>"$OUT/$1.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
}

# wait_up URL N: until N proxies are up.
wait_up() {
  for _ in $(seq 600); do
    local up
    up=$(curl -sf -H 'X-Project-Id: bench' "$1/v1/proxies" | grep -o '"state": *"up"' | wc -l || true)
    [ "${up:-0}" -ge "$2" ] && return
    sleep 0.1
  done
  echo "proxies did not come up at $1" >&2; exit 1
}

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  # Heartbeats the stopped agents sent last would register them, as live
  # proxies, with the next run's server.
  scripts/rabbitmq ctl "$OUT/rabbitmq" -q purge_queue -p navigator navigator-server >/dev/null 2>&1 || true
}

# cpu_ticks: "comm ticks" for every process (user + system time, in clock
# ticks); two snapshots around a measurement show where the CPU went.
cpu_ticks() {
  local f
  for f in /proc/[0-9]*/stat; do
    # comm may hold spaces; fields 14 and 15 follow the closing parenthesis.
    # A process may exit between the glob and the read: skip it.
    { sed -n 's/^[0-9]* (\(.*\)) [A-Za-z] \(.*\)$/\1|\2/p' "$f" 2>/dev/null || true; } |
      awk -F'|' '{ split($2, a, " "); gsub(/ /, "_", $1); print $1, a[11] + a[12] }'
  done
}

# cpu_share BEFORE AFTER: CPU seconds per program between two cpu_ticks
# files (programs that used at least 1% of a core), busiest first.
cpu_share() {
  local hz
  hz=$(getconf CLK_TCK)
  awk -v hz="$hz" 'NR == FNR { before[$1] += $2; next } { after[$1] += $2 }
    END { for (c in after) { d = (after[c] - before[c]) / hz; if (d >= 0.01) printf "%s=%.2fs ", c, d } }' "$1" "$2" |
    tr ' ' '\n' | sort -t= -k2 -rn | tr '\n' ' '
}

# pg_super DATABASE ARGS...: psql as PostgreSQL's superuser (for PG_STATS).
pg_super() {
  local name=$1; shift
  runuser -u postgres -- psql -q -h "$OUT/db/postgres" -p "$(cat "$OUT/db/postgres/port")" -U postgres -d "$name" "$@"
}

# pg_stats_reset BACKEND DB_URL / pg_stats_dump BACKEND DB_URL: with
# PG_STATS=1 on PostgreSQL, clear pg_stat_statements, then print its busiest
# statements.
pg_stats_reset() {
  [ "${PG_STATS:-0}" = 1 ] && [ "$1" = postgres ] || return 0
  pg_super "${2##*/}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "SELECT pg_stat_statements_reset()" >/dev/null
}
pg_stats_dump() {
  [ "${PG_STATS:-0}" = 1 ] && [ "$1" = postgres ] || return 0
  pg_super "${2##*/}" -c "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms, \
    round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query \
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12" | tee -a "$OUT/summary.txt"
}

json_field() { sed -n "s/.*\"$2\": *\\([0-9.]*\\).*/\\1/p" <<<"$1"; }

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
echo "machine: $machine; $(date -u +%FT%TZ)" | tee "$OUT/summary.txt"

run=0
for backend in $BACKENDS; do
  for servers in $SERVERS; do
    run=$((run + 1))
    db=$(new_database "$backend" "bench_${run}_$$")
    server_conf "s${run}a" "$db"
    "$SERVER" --config-file "$OUT/s${run}a.conf" db sync >/dev/null
    start_server "s${run}a"; urls=$URL
    if [ "$servers" = 2 ]; then
      server_conf "s${run}b" "$db"
      start_server "s${run}b"; urls="$urls,$URL"
    fi
    start_agent "bench-${run}-a" 127.0.0.2 20000-39999
    start_agent "bench-${run}-b" 127.0.0.3 20000-39999
    wait_up "${urls%%,*}" 2
    "$LOAD" create "$urls" 200 "$CONC" >/dev/null   # warm-up
    pg_stats_reset "$backend" "$db"
    cpu_ticks >"$OUT/cpu.before"
    result=$("$LOAD" create "$urls" "$CREATES" "$CONC")
    cpu_ticks >"$OUT/cpu.after"
    echo "$result" >>"$OUT/results.jsonl"
    echo "  CPU time by program during the creates: $(cpu_share "$OUT/cpu.before" "$OUT/cpu.after")" | tee -a "$OUT/summary.txt"
    pg_stats_dump "$backend" "$db"
    echo "SUMMARY creates $backend servers=$servers: $(json_field "$result" creates_per_s) creates/s (created $(json_field "$result" created) of $CREATES, errors $(json_field "$result" errors), p50 $(json_field "$result" p50_ms) ms, p99 $(json_field "$result" p99_ms) ms; target >= 500/s with 2 servers; strategy $STRATEGY)" | tee -a "$OUT/summary.txt"
    if [ "$backend" = postgres ] && [ "$servers" = 1 ] && [ "$FIRST_BYTE" -gt 0 ]; then
      result=$("$LOAD" first-byte "${urls%%,*}" "$FIRST_BYTE")
      echo "$result" >>"$OUT/results.jsonl"
      echo "SUMMARY create->first byte on a remote agent ($backend, $FIRST_BYTE forwards): p50 $(json_field "$result" p50_ms) ms, p99 $(json_field "$result" p99_ms) ms, max $(json_field "$result" max_ms) ms (target p99 <= 100 ms)" | tee -a "$OUT/summary.txt"
    fi
    stop_all
  done

  # Full sync of SYNC_FORWARDS forwards to one agent.
  if [ "$SYNC_FORWARDS" -gt 0 ]; then
    run=$((run + 1))
    db=$(new_database "$backend" "bench_${run}_$$")
    server_conf "s${run}" "$db"
    "$SERVER" --config-file "$OUT/s${run}.conf" db sync >/dev/null
    start_server "s${run}"
    host="bench-${run}-sync"
    start_agent "$host" 127.0.0.4 20000-39999
    wait_up "$URL" 1
    result=$("$LOAD" create "$URL" "$SYNC_FORWARDS" "$CONC")
    echo "$result" >>"$OUT/results.jsonl"
    echo "  ($SYNC_FORWARDS forwards created for the sync test: $(json_field "$result" creates_per_s) creates/s with one agent)"
    before=$(grep -c "agent synced.*host=$host.*forwards=$SYNC_FORWARDS" "$OUT/s${run}.log" || true)
    kill -9 "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
    start_agent "$host" 127.0.0.4 20000-39999
    line=""
    for _ in $(seq 1200); do
      if [ "$(grep -c "agent synced.*host=$host.*forwards=$SYNC_FORWARDS" "$OUT/s${run}.log" || true)" -gt "$before" ]; then
        line=$(grep "agent synced.*host=$host.*forwards=$SYNC_FORWARDS" "$OUT/s${run}.log" | tail -1)
        break
      fi
      sleep 0.1
    done
    ms=$(sed -n 's/.*elapsed_ms=\([0-9]*\).*/\1/p' <<<"$line")
    echo "SUMMARY full sync of $SYNC_FORWARDS forwards to one agent ($backend): ${ms:-FAILED} ms (target <= 2000 ms)" | tee -a "$OUT/summary.txt"
    stop_all
  fi

  # Failover of FAILOVER_FORWARDS forwards off a killed agent.
  if [ "$FAILOVER_FORWARDS" -gt 0 ]; then
    run=$((run + 1))
    db=$(new_database "$backend" "bench_${run}_$$")
    server_conf "s${run}" "$db" "$FAILOVER_DOWN_TIME"
    "$SERVER" --config-file "$OUT/s${run}.conf" db sync >/dev/null
    start_server "s${run}"
    from="bench-${run}-from"; to="bench-${run}-to"
    start_agent "$from" 127.0.0.5 20000-39999
    from_pid=$AGENT_PID
    wait_up "$URL" 1
    "$LOAD" create "$URL" "$FAILOVER_FORWARDS" "$CONC" >/dev/null
    start_agent "$to" 127.0.0.6 20000-39999
    wait_up "$URL" 2
    pg_stats_reset "$backend" "$db"
    killed=$(date +%s.%N)
    kill -9 "$from_pid"; wait "$from_pid" 2>/dev/null || true
    log="$OUT/s${run}.log"
    line=""
    for _ in $(seq 1200); do
      line=$(grep "agent synced.*host=$to.*forwards=$FAILOVER_FORWARDS" "$log" | head -1 || true)
      [ -n "$line" ] && break
      sleep 0.1
    done
    moved=$(grep -c "forward moved off a down proxy.*from=$from" "$log" || true)
    first=$(grep -m1 "forward moved off a down proxy.*from=$from" "$log" | cut -d' ' -f1)
    done_at=$(cut -d' ' -f1 <<<"$line")
    if [ -n "$first" ] && [ -n "$done_at" ]; then
      detect=$(awk -v a="$killed" -v b="$(date -d "$first" +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
      work=$(awk -v a="$(date -d "$first" +%s.%N)" -v b="$(date -d "$done_at" +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
      echo "SUMMARY failover of $FAILOVER_FORWARDS forwards ($backend): $moved moved; first move ${detect} s after the kill (agent_down_time $FAILOVER_DOWN_TIME s, heartbeats every 2 s); first move to the receiving agent synced: ${work} ms" | tee -a "$OUT/summary.txt"
    else
      echo "SUMMARY failover of $FAILOVER_FORWARDS forwards ($backend): FAILED (see $log)" | tee -a "$OUT/summary.txt"
    fi
    pg_stats_dump "$backend" "$db"
    stop_all
  fi
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.txt"
echo "results: $OUT/results.jsonl, logs in $OUT"
