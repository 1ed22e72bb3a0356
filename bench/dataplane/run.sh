#!/usr/bin/env bash
# Data-plane benchmark: nft backend control-plane cost at 1 / 1,000 / 10,000 /
# 100,000 forwards (apply all; add one, remove one: median of 7), each in a throw-away
# network namespace. Needs root. One command:
#   bench/dataplane/run.sh              (SIZES=1,1000 to override; NFT_COMMENTS=1 for element comments; BIN=dir for prebuilt)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, nft)" >&2; exit 1; }
command -v nft >/dev/null || { echo "nft not installed (apt-get install -y nftables)" >&2; exit 1; }
if [ -n "${BIN:-}" ]; then
  SCALE="$BIN/nft_scale"   # prebuilt (BIN=dir), when the target directory is busy
else
  cargo build --release -q -p navigator-dataplane --example nft_scale
  SCALE="$CARGO_TARGET_DIR/release/examples/nft_scale"
fi
echo "# $(date -u +%F) $(uname -r), nft $(nft --version | awk '{print $2}'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$SCALE" "${SIZES:-1,1000,10000,100000}"
# Traffic through every backend side by side: bench/dataplane/traffic.sh;
# the cost of a source allowlist per backend: bench/dataplane/allowlist.sh
