#!/usr/bin/env bash
# The long soaks, loopback only and bounded in time.
#   scripts/soak.sh [--requests N] [--seconds S]
#     a few hundred thousand mixed requests against one Envoy (default 300,000, at most 10
#     minutes). Passes when every answer is exactly the one its request must get, keygate's
#     counters equal the requests sent, and Envoy's resident memory after warm-up grows less
#     than a leak of 20 bytes per request would make it.
#   scripts/soak.sh --churn [MINUTES]
#     traffic through Envoy (two workers) while keys are created, rotated, disabled, enabled and
#     deleted in the real key service every second (default 30 minutes, over 1,000,000 requests
#     on this machine). Passes with every answer agreeing with its key's state after the feed's
#     delay (and most answers judged), no 5xx, and RSS growing less after warm-up than a leak of
#     20 bytes per request would make it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
./wasm-build.sh
if [ "${1:-}" = "--churn" ]; then
  cargo build --locked -p keygate-tools --bin keygate
  exec .venv/bin/python -m support.churn --minutes "${2:-30}"
fi
exec .venv/bin/python -m support.soak "$@"
