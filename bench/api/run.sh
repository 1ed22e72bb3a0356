#!/usr/bin/env bash
# GET /v1/forwards (`navigator forward list`) with auth_strategy = keystone
# (warm token cache) vs noauth, and noauth over HTTPS ([ssl], a throwaway CA
# made here with openssl) vs plain HTTP, against three release-mode all-in-one
# servers running side by side. Modes: noauth, keystone and https keep their
# connections alive; http-new and https-new open one per request (https-new:
# a full TLS handshake per request).
#   source DIR/env   # from scripts/keystone start DIR PORT
#   bench/api/run.sh            (env: SECS, CONC, ROUNDS, FORWARDS, OUT to override)
# Rounds alternate between the two servers, in ABBA order, so background load
# and drift hit both alike; each round's keystone figure is compared with the
# noauth figure of the same round, and the summary is the median and spread of
# those paired overheads. The last line is the one-line summary.
# Binaries: built here (release) unless NAVIGATOR_SERVER_BIN and API_LOAD_BIN
# name copies (useful when the target directory is shared).
# Every process started here is tracked by PID and killed on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SECS="${SECS:-5}"
CONC="${CONC:-16}"
ROUNDS="${ROUNDS:-10}"
# Which modes each round runs (all by default).
MODES="${MODES:-noauth keystone https http-new https-new}"
FORWARDS="${FORWARDS:-20}"
OUT="${OUT:-/tmp/api-bench}"
: "${NAVIGATOR_TEST_KEYSTONE_URL:?source the env file of scripts/keystone start DIR}"
rm -rf "$OUT" && mkdir -p "$OUT"

if [ -n "${NAVIGATOR_SERVER_BIN:-}" ] && [ -n "${API_LOAD_BIN:-}" ]; then
  BIN=$NAVIGATOR_SERVER_BIN
  LOAD=$API_LOAD_BIN
else
  cargo build --release -q -p navigator-server --bin navigator-server --example api_load
  BIN="$CARGO_TARGET_DIR/release/navigator-server"
  LOAD="$CARGO_TARGET_DIR/release/examples/api_load"
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

KS=$NAVIGATOR_TEST_KEYSTONE_URL
# Both servers log the same way (one line per request, to a file), so
# logging costs both alike.
cat > "$OUT/noauth.conf" <<CONF
[DEFAULT]
bind_port = 0
[api]
# The load generator is one client address far above the per-client limit.
rate_limit = 0
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
[api]
# The load generator is one client address far above the per-client limit.
rate_limit = 0
[agent]
port_range = 47100-47199
# The forwards target 127.0.0.1, refused under Keystone by default.
[forwards]
allow_loopback_targets = true
CONF

# The HTTPS server: noauth, with a certificate from a throwaway CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/ca.key" \
  -out "$OUT/ca.pem" -days 1 -subj "/CN=api bench CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$OUT/server.key" \
  -out "$OUT/server.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$OUT/server.ext"
openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -set_serial 1 \
  -days 1 -extfile "$OUT/server.ext" -out "$OUT/server.pem" 2>/dev/null
chmod 600 "$OUT/server.key"
cat > "$OUT/tls.conf" <<CONF
[DEFAULT]
bind_port = 0
[api]
rate_limit = 0
[agent]
port_range = 47200-47299
[ssl]
cert_file = $OUT/server.pem
key_file = $OUT/server.key
CONF

# start NAME: runs a server with OUT/NAME.conf and sets URL to where it listens.
start() {
  "$BIN" --config-file "$OUT/$1.conf" --data-dir "$OUT/$1" >"$OUT/$1.out" 2>"$OUT/$1.log" &
  PIDS+=("$!")
  for _ in $(seq 200); do
    URL=$(sed -n 's/^  API *\(https\{0,1\}:[^ ]*\).*/\1/p' "$OUT/$1.out" 2>/dev/null | head -1)
    [ -n "$URL" ] && return
    sleep 0.05
  done
  echo "$1 server did not start; see $OUT/$1.log" >&2; exit 1
}
start noauth; NOAUTH_URL=$URL
start keystone; KEYSTONE_URL=$URL
start tls; TLS_URL=$URL

# The caller: admin in project admin (a member there too). Same data on both servers.
TOKEN=$(curl -sf -D - -o /dev/null -H 'Content-Type: application/json' \
  -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"},\"password\":\"$NAVIGATOR_TEST_ADMIN_PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"admin\",\"domain\":{\"id\":\"default\"}}}}}" \
  "$KS/auth/tokens" | tr -d '\r' | sed -n 's/^[Xx]-[Ss]ubject-[Tt]oken: //p')
[ -n "$TOKEN" ] || { echo "cannot get a token from $KS" >&2; exit 1; }
for i in $(seq 1 "$FORWARDS"); do
  body="{\"forward\":{\"protocol\":\"tcp\",\"internal_ip_address\":\"127.0.0.1\",\"internal_port\":$((9000 + i))}}"
  curl -sf -o /dev/null -H 'Content-Type: application/json' -H 'X-Project-Id: bench' -d "$body" "$NOAUTH_URL/v1/forwards"
  curl -sf -o /dev/null -H 'Content-Type: application/json' -H "X-Auth-Token: $TOKEN" -d "$body" "$KEYSTONE_URL/v1/forwards"
  curl -sf -o /dev/null --cacert "$OUT/ca.pem" -H 'Content-Type: application/json' -H 'X-Project-Id: bench' -d "$body" "$TLS_URL/v1/forwards"
done

# Warm-up: fills the token cache, the page cache and the connection pools.
"$LOAD" "$NOAUTH_URL/v1/forwards" 2 "$CONC" "X-Project-Id: bench" >/dev/null
"$LOAD" "$KEYSTONE_URL/v1/forwards" 2 "$CONC" "X-Auth-Token: $TOKEN" >/dev/null
API_LOAD_CACERT="$OUT/ca.pem" "$LOAD" "$TLS_URL/v1/forwards" 2 "$CONC" "X-Project-Id: bench" >/dev/null

run() { # MODE ROUND
  local line
  case "$1" in
    noauth) line=$("$LOAD" "$NOAUTH_URL/v1/forwards" "$SECS" "$CONC" "X-Project-Id: bench") ;;
    keystone) line=$("$LOAD" "$KEYSTONE_URL/v1/forwards" "$SECS" "$CONC" "X-Auth-Token: $TOKEN") ;;
    https) line=$(API_LOAD_CACERT="$OUT/ca.pem" "$LOAD" "$TLS_URL/v1/forwards" "$SECS" "$CONC" "X-Project-Id: bench") ;;
    http-new) line=$(API_LOAD_NEW_CONNECTIONS=1 "$LOAD" "$NOAUTH_URL/v1/forwards" "$SECS" "$CONC" "X-Project-Id: bench") ;;
    https-new) line=$(API_LOAD_NEW_CONNECTIONS=1 API_LOAD_CACERT="$OUT/ca.pem" "$LOAD" "$TLS_URL/v1/forwards" "$SECS" "$CONC" "X-Project-Id: bench") ;;
  esac
  echo "$line" | /usr/bin/python3 -c "import json,sys; d=json.load(sys.stdin); print($2, '$1', d['rps'], d['p50_ms'], d['p99_ms'], d['requests'], d['errors'])" | tee -a "$OUT/results.txt"
}

echo "round mode rps p50_ms p99_ms requests errors" | tee "$OUT/results.txt"
# Odd rounds run the modes in order, even rounds in reverse (ABBA).
REVERSED=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' ')
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=$MODES; else order=$REVERSED; fi
  for m in $order; do run "$m" "$r"; done
done

/usr/bin/python3 - "$OUT/results.txt" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import statistics, sys, datetime
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for r in rows:
    by.setdefault(int(r[0]), {})[r[1]] = (float(r[2]), float(r[4]), int(r[6]))
errors = sum(v[2] for m in by.values() for v in m.values())
def q(xs, p):
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))]
def paired(a, b):
    """Median and IQR of a's req/s cost against b's, per round (%)."""
    xs = sorted(100 * (1 - m[a][0] / m[b][0]) for m in by.values())
    return f"{statistics.median(xs):+.1f}% (IQR {q(xs, .25):+.1f}..{q(xs, .75):+.1f})"
modes = sorted({mode for m in by.values() for mode in m}, key=["noauth", "keystone", "https", "http-new", "https-new"].index)
for mode in modes:
    rps = [m[mode][0] for m in by.values()]
    print(f"{mode:9} median {statistics.median(rps):.0f} req/s (rounds {min(rps):.0f}-{max(rps):.0f}), p99 {statistics.median(m[mode][1] for m in by.values()):.2f} ms")
print(f"errors {errors}; {sys.argv[2]} CPUs, load {sys.argv[3]}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
if "https" in modes:
    print(f"SUMMARY-TLS https vs http, keep-alive: {paired('https', 'noauth')} req/s")
if "https-new" in modes and "http-new" in modes:
    print(f"SUMMARY-TLS a connection per request, https vs http: {paired('https-new', 'http-new')} req/s")
if "keystone" not in modes:
    sys.exit(0)
rps_over = sorted(100 * (1 - m["keystone"][0] / m["noauth"][0]) for m in by.values())
p99_over = sorted(100 * (m["keystone"][1] / m["noauth"][1] - 1) for m in by.values())
print("paired req/s overhead per round (%): " + " ".join(f"{x:+.1f}" for x in rps_over))
verdict = "meets" if statistics.median(rps_over) <= 10 else "MISSES"
print(
    f"SUMMARY keystone vs noauth, forward list: overhead {statistics.median(rps_over):+.1f}% req/s "
    f"(IQR {q(rps_over, .25):+.1f}..{q(rps_over, .75):+.1f}, {len(rps_over)} rounds), "
    f"{statistics.median(p99_over):+.1f}% p99 (IQR {q(p99_over, .25):+.1f}..{q(p99_over, .75):+.1f}); "
    f"{verdict} the 10% target; errors {errors}; {sys.argv[2]} CPUs, load {sys.argv[3]}, "
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"
)
PY
