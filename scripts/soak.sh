#!/usr/bin/env bash
# The long soak: a few hundred thousand mixed requests against one Envoy on loopback
# (default 300,000, at most 10 minutes). Passes with zero 5xx, Envoy's resident memory
# growing < 2 % after warm-up, and keygate's counters equal to the requests sent.
#   scripts/soak.sh [--requests N] [--seconds S]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
./wasm-build.sh
exec .venv/bin/python tests/integration/soak.py "$@"
