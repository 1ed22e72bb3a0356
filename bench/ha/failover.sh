#!/usr/bin/env bash
# Address-group failover time: the network-namespace topology of
# crates/agent/tests/common/ha.rs (client, proxies A and B sharing a virtual
# address through the agent-supervised keepalived, backend), run by the
# failover test of crates/agent/tests/vrrp_netns.rs. Per round: the holder
# dies (link down, then kill -9 of its agent and keepalived) and a client
# connecting in a loop (200 ms connect timeout, 20 ms apart) times the first
# new connection that reaches the backend through the standby. Prints one
# line per round and a summary (min, median, max) per backend and
# advert_int (docs/benchmarks.md, "Address groups: failover time").
#
#   bench/ha/failover.sh                          # nft and relay, advert_int 1 and 0.2, 5 rounds
#   ROUNDS=1 ADVERTS="1" BACKENDS=relay bench/ha/failover.sh
#
# Root (network namespaces). Each round builds and deletes its own
# namespaces (unique navk* names), and stops every process it started by PID,
# however it ends (the test's Drop guard).
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
command -v keepalived >/dev/null || [ -x /usr/sbin/keepalived ] || { echo "install keepalived" >&2; exit 1; }
ROUNDS="${ROUNDS:-5}"
ADVERTS="${ADVERTS:-1 0.2}"
BACKENDS="${BACKENDS:-nft relay}"

# The test binary (debug: the time is VRRP's timers, not the agent's code).
exe=$(cargo test -q -p navigator-agent --test vrrp_netns --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*vrrp_netns[^"]*\)".*/\1/p' | tail -1)
[ -x "$exe" ] || { echo "cannot build the vrrp_netns test binary" >&2; exit 1; }

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, keepalived $(keepalived --version 2>&1 | head -1 | awk '{print $2}')"
for backend in $BACKENDS; do
    for advert in $ADVERTS; do
        times=()
        for round in $(seq 1 "$ROUNDS"); do
            line=$(NAVIGATOR_PRIVILEGED_TESTS=1 NAVK_ADVERT_INT="$advert" \
                "$exe" --exact "failover_$backend" --nocapture --test-threads=1 2>/dev/null |
                grep -o 'failover (.*' || true)
            t=$(sed -n 's/.* \([0-9.]*\) s after.*/\1/p' <<<"$line")
            if [ -z "$t" ]; then
                echo "backend=$backend advert_int=$advert round=$round FAILED (run the test for details)"
                continue
            fi
            echo "backend=$backend advert_int=$advert round=$round failover_s=$t"
            times+=("$t")
        done
        if [ "${#times[@]}" -gt 0 ]; then
            printf '%s\n' "${times[@]}" | sort -n | awk -v b="$backend" -v a="$advert" '
                { v[NR] = $1 }
                END { printf "SUMMARY backend=%s advert_int=%s rounds=%d min=%.2f median=%.2f max=%.2f\n",
                      b, a, NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
        fi
    done
done
