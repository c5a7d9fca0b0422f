#!/usr/bin/env bash
# The main job: Envoy on 127.0.0.1:10000 with keygate and the demo key table (envoy/envoy.yaml;
# admin on 127.0.0.1:9901), and beside it the key service (`keygate serve`: admin API on
# 127.0.0.1:9100, the filter's protocol on 127.0.0.1:9101, the rate-limit service on
# 127.0.0.1:9102, counters in memory) on SQLite under demo/, seeded with
# envoy/demo-service-keys.json. Keys the table does not hold are looked up in the service.
# The demo admin token is kg_demo_admin_0c5e2f7a91 (README). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
./wasm-build.sh
cargo build --release --locked -p keygate-tools --bin keygate
source scripts/envoy-command.sh
mkdir -p demo
# The demo token's SHA-256: the service never sees the token itself.
export KEYGATE_ADMIN_TOKEN_SHA256=a43c7f065e90e0f64d2ec135e234212f8deeecc218773927ac515db260ea4d36
target/release/keygate serve --db sqlite:demo/keygate.db --import envoy/demo-service-keys.json &
service=$!
trap 'kill "$service" 2>/dev/null || true' EXIT INT TERM
echo "keygate demo: http://127.0.0.1:10000  (Envoy admin http://127.0.0.1:9901, key service http://127.0.0.1:9100) - demo keys in README.md"
"${ENVOY[@]}" -c envoy/envoy.yaml --concurrency 1 "$@"
