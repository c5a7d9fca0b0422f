#!/usr/bin/env bash
# The benchmark (not part of the test command): keygate beside no auth, Envoy's native
# api_key_auth, the bare wasm floor and ext_authz, at 10 / 10,000 / 100,000 keys.
#   bench/run.sh                    full run (about 10-15 minutes; keep the machine otherwise idle)
#   bench/run.sh --quick            one short round, about a minute
#   bench/run.sh --paired 20        the target ratios as medians of 20 back-to-back pairs (~3 minutes)
#   bench/run.sh --instructions 2000  instructions per request under callgrind: exact, repeatable
#                                     (~40 minutes; --only REGEX for some variants)
#   bench/run.sh --probes DIR       req/s of the cost probes (bench/probe/) beside no auth
#   bench/run.sh --memory           memory per keygate VM for 100,000 keys
# Results: printed, and written to bench/results/<date>-<kind>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if ! command -v wrk >/dev/null 2>&1 || ! command -v taskset >/dev/null 2>&1 || ! command -v callgrind_control >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk util-linux valgrind >/dev/null
fi
./wasm-build.sh
(cd bench/floor && cargo build --quiet --release --target wasm32-wasip1)
# The cost probes: the least filter the host accepts, plus one per-request cost each.
mkdir -p bench/work/probes
for features in none pairs response lifecycle response,lifecycle response,status response,status_property add_header sha256 reply reply_bare reply_continue; do
  flags=(); [ "$features" = none ] || flags=(--features "$features")
  (cd bench/probe && cargo build --quiet --release --target wasm32-wasip1 "${flags[@]}")
  cp bench/probe/target/wasm32-wasip1/release/wasm_probe.wasm "bench/work/probes/probe-${features/,/+}.wasm"
done
# keygate with every crate at opt-level 3, to measure what the size-optimised parts cost.
CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_TARGET_DIR=target/bench-o3 \
  cargo build --quiet --release --locked --target wasm32-wasip1 --lib
o3=target/bench-o3/wasm32-wasip1/release/keygate.wasm
if command -v wasm-opt >/dev/null 2>&1; then
  wasm-opt -O3 --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals "$o3" -o target/bench-o3/keygate-o3.wasm
  o3=target/bench-o3/keygate-o3.wasm
fi
exec .venv/bin/python bench/bench.py --o3-wasm "$o3" "$@"
