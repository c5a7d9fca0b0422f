#!/usr/bin/env bash
# Builds the release filter and puts it at dist/keygate.wasm (the one documented path).
set -euo pipefail
cd "$(dirname "$0")"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi
cargo build --release --locked -p keygate --target wasm32-wasip1 --lib
mkdir -p dist
src=target/wasm32-wasip1/release/keygate.wasm
if command -v wasm-opt >/dev/null 2>&1; then
  # -Oz: smaller module, faster V8 compile; --strip-debug keeps names out of the artifact.
  wasm-opt -Oz --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
    --enable-mutable-globals "$src" -o dist/keygate.wasm.tmp
  mv dist/keygate.wasm.tmp dist/keygate.wasm
else
  cp "$src" dist/keygate.wasm
fi
echo "built dist/keygate.wasm ($(wc -c < dist/keygate.wasm) bytes)"
