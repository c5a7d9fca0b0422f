#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, lint, unit tests, the real-Envoy
# integration tests (including the headless-Chromium CORS test). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
./wasm-build.sh

echo "== format and lints (native and wasm32-wasip1)"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked -p keygate --target wasm32-wasip1 --lib -- -D warnings
.venv/bin/ruff check tests bench
# The fuzz and bench crates are workspaces of their own (the bench ones build for
# wasm32-wasip1); sharing target/ reuses what the lines above built.
for crate in fuzz bench/floor bench/probe bench/rls-load bench/keyformat-native; do
  cargo fmt --manifest-path "$crate/Cargo.toml" --check
done
cargo clippy --manifest-path fuzz/Cargo.toml --target-dir target --bins -- -D warnings
cargo clippy --manifest-path bench/floor/Cargo.toml --target-dir target --target wasm32-wasip1 -- -D warnings
cargo clippy --manifest-path bench/probe/Cargo.toml --target-dir target --target wasm32-wasip1 -- -D warnings
cargo clippy --manifest-path bench/probe/Cargo.toml --target-dir target --target wasm32-wasip1 --all-features -- -D warnings
cargo clippy --manifest-path bench/rls-load/Cargo.toml --target-dir target -- -D warnings
cargo clippy --manifest-path bench/keyformat-native/Cargo.toml --target-dir target -- -D warnings

echo "== unit tests (pure core, filter bookkeeping, tools; native)"
cargo test --locked --workspace

echo "== fuzzing, short bounded run (scripts/fuzz.sh SECONDS for longer)"
scripts/fuzz.sh 10

echo "== integration tests (real Envoy, the real key service on SQLite and PostgreSQL, Chromium)"
cargo build --locked -p keygate-tools --bin keygate
.venv/bin/python -m pytest tests/integration -q -p no:cacheprovider "$@"
