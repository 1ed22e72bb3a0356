#!/usr/bin/env bash
# GET /v1/forwards with auth_strategy = keystone (warm token cache) vs noauth,
# against two release-mode all-in-one servers running side by side.
#   source DIR/env   # from scripts/keystone start DIR
#   bench/api/run.sh            (env: SECS, CONC, ROUNDS, FORWARDS, OUT to override)
# Rounds alternate between the two servers so background load hits both alike.
# Every process started here is tracked by PID and killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SECS="${SECS:-10}"
CONC="${CONC:-16}"
ROUNDS="${ROUNDS:-3}"
FORWARDS="${FORWARDS:-20}"
OUT="${OUT:-/tmp/api-bench}"
: "${NAVIGATOR_TEST_KEYSTONE_URL:?source the env file of scripts/keystone start DIR}"
rm -rf "$OUT" && mkdir -p "$OUT"

cargo build --release -q -p navigator-server --bin navigator-server --example api_load
BIN="$CARGO_TARGET_DIR/release/navigator-server"
LOAD="$CARGO_TARGET_DIR/release/examples/api_load"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

KS=$NAVIGATOR_TEST_KEYSTONE_URL
cat > "$OUT/noauth.conf" <<CONF
[DEFAULT]
bind_port = 0
[agent]
port_range = 47000-47099
CONF
cat > "$OUT/keystone.conf" <<CONF
[DEFAULT]
bind_port = 0
auth_strategy = keystone
[keystone_authtoken]
auth_url = $KS
username = $NAVIGATOR_TEST_SERVICE_USER
password = $NAVIGATOR_TEST_SERVICE_PASSWORD
project_name = service
token_cache_time = 300
[agent]
port_range = 47100-47199
CONF

# start NAME: runs a server with OUT/NAME.conf and sets URL to where it listens.
start() {
  "$BIN" --config-file "$OUT/$1.conf" --data-dir "$OUT/$1" >"$OUT/$1.out" 2>"$OUT/$1.log" &
  PIDS+=("$!")
  for _ in $(seq 200); do
    URL=$(sed -n 's/^  API *\(http:[^ ]*\).*/\1/p' "$OUT/$1.out" 2>/dev/null | head -1)
    [ -n "$URL" ] && return
    sleep 0.05
  done
  echo "$1 server did not start; see $OUT/$1.log" >&2; exit 1
}
start noauth; NOAUTH_URL=$URL
start keystone; KEYSTONE_URL=$URL

# The caller: admin in project admin (a member there too). Same data on both servers.
TOKEN=$(curl -sf -D - -o /dev/null -H 'Content-Type: application/json' \
  -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$NAVIGATOR_TEST_ADMIN_PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"}}}}}" \
  "$KS/auth/tokens" | tr -d '\r' | sed -n 's/^[Xx]-[Ss]ubject-[Tt]oken: //p')
[ -n "$TOKEN" ] || { echo "cannot get a token from $KS" >&2; exit 1; }
for i in $(seq 1 "$FORWARDS"); do
  body="{\"forward\":{\"protocol\":\"tcp\",\"internal_ip_address\":\"127.0.0.1\",\"internal_port\":$((9000 + i))}}"
  curl -sf -o /dev/null -H 'Content-Type: application/json' -H 'X-Project-Id: bench' -d "$body" "$NOAUTH_URL/v1/forwards"
  curl -sf -o /dev/null -H 'Content-Type: application/json' -H "X-Auth-Token: $TOKEN" -d "$body" "$KEYSTONE_URL/v1/forwards"
done

# Warm-up (fills the token cache, JITs nothing but warms the page cache and sockets).
"$LOAD" "$NOAUTH_URL/v1/forwards" 2 "$CONC" "X-Project-Id: bench" >/dev/null
"$LOAD" "$KEYSTONE_URL/v1/forwards" 2 "$CONC" "X-Auth-Token: $TOKEN" >/dev/null

echo "round mode rps p50_ms p99_ms requests errors" | tee "$OUT/results.txt"
for r in $(seq 1 "$ROUNDS"); do
  for mode in noauth keystone; do
    if [ $mode = noauth ]; then
      line=$("$LOAD" "$NOAUTH_URL/v1/forwards" "$SECS" "$CONC" "X-Project-Id: bench")
    else
      line=$("$LOAD" "$KEYSTONE_URL/v1/forwards" "$SECS" "$CONC" "X-Auth-Token: $TOKEN")
    fi
    echo "$line" | /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($r, '$mode', d['rps'], d['p50_ms'], d['p99_ms'], d['requests'], d['errors'])" | tee -a "$OUT/results.txt"
  done
done
/usr/bin/python3 - "$OUT/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
med = {m: (statistics.median(float(r[2]) for r in rows if r[1] == m),
           statistics.median(float(r[4]) for r in rows if r[1] == m)) for m in ("noauth", "keystone")}
(n_rps, n_p99), (k_rps, k_p99) = med["noauth"], med["keystone"]
print(f"median noauth:   {n_rps:.0f} req/s, p99 {n_p99:.2f} ms")
print(f"median keystone: {k_rps:.0f} req/s, p99 {k_p99:.2f} ms")
print(f"keystone overhead: {100 * (1 - k_rps / n_rps):+.1f}% req/s, {100 * (k_p99 / n_p99 - 1):+.1f}% p99")
PY
