#!/usr/bin/env bash
# Seamless agent restarts under load: the real navigator-agent (relay
# backend) restarted RESTARTS times, every other time into a copy of its
# binary (an upgrade), under a supervisor that stands in for systemd's file
# descriptor store, while 200 streaming connections check every byte and a
# loop makes new connections (crates/agent/tests/restart.rs). Prints one line
# per restart (the old process's exit and the restart gap: SIGTERM to the new
# process's READY=1) and a RESULT line: connections lost and new connections
# refused (goal 0) and the largest gap (docs/benchmarks.md, "Agent: seamless
# restart").
#
#   bench/agent/restart.sh                  # 20 restarts, release build
#   RESTARTS=4 PROFILE=debug bench/agent/restart.sh
#
# Needs RabbitMQ: NAVIGATOR_TEST_TRANSPORT_URL, else a throwaway broker from
# scripts/rabbitmq (stopped however the script ends). Traffic stays on
# loopback, ports 31000-31999.
set -euo pipefail
cd "$(dirname "$0")/../.."

RESTARTS="${RESTARTS:-20}"
PROFILE="${PROFILE:-release}"
profile_flag=()
[ "$PROFILE" = release ] && profile_flag=(--release)

broker_dir=""
cleanup() {
    if [ -n "$broker_dir" ]; then
        scripts/rabbitmq stop "$broker_dir" >/dev/null 2>&1 || true
        rm -rf "$broker_dir"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${NAVIGATOR_TEST_TRANSPORT_URL:-}" ]; then
    broker_dir=$(mktemp -d "${TMPDIR:-/tmp}/navigator-restart-bench.XXXXXX")
    scripts/rabbitmq start "$broker_dir" >/dev/null
    # shellcheck disable=SC1091
    . "$broker_dir/env"
fi

echo "machine: $(nproc) cores, $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC'), profile $PROFILE"
NAVIGATOR_RESTARTS="$RESTARTS" cargo test -q "${profile_flag[@]}" -p navigator-agent --test restart \
    -- --nocapture --test-threads 1 2>&1 | grep -E '^(restart [0-9]+:|RESULT|test result|.*panicked|.*errors:)'
