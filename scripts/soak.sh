#!/usr/bin/env bash
# The long soaks, loopback only and bounded in time.
#   scripts/soak.sh [--requests N] [--seconds S]
#     a few hundred thousand mixed requests against one Envoy (default 300,000, at most 10
#     minutes). Passes with zero 5xx, Envoy's resident memory growing < 2 % after warm-up, and
#     keygate's counters equal to the requests sent.
#   scripts/soak.sh --churn [MINUTES]
#     traffic through Envoy (two workers) while keys are created, rotated, disabled, enabled and
#     deleted in the real key service every second (default 30 minutes, over 1,000,000 requests
#     on this machine). Passes with every answer agreeing with its key's state after the feed's
#     delay, no 5xx, and RSS growth < 2 % after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
./wasm-build.sh
if [ "${1:-}" = "--churn" ]; then
  cargo build --locked -p keygate-tools --bin keygate
  exec .venv/bin/python -m support.churn --minutes "${2:-30}"
fi
exec .venv/bin/python -m support.soak "$@"
