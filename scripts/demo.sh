#!/usr/bin/env bash
# Builds keygate and starts Envoy on 127.0.0.1:10000 with the demo key table
# (envoy/envoy.yaml); the admin interface is on 127.0.0.1:9901. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
./wasm-build.sh
source scripts/envoy-command.sh
echo "keygate demo: http://127.0.0.1:10000  (admin http://127.0.0.1:9901) - demo keys in README.md"
exec "${ENVOY[@]}" -c envoy/envoy.yaml --concurrency 1 "$@"
