#!/bin/sh
# Builds and runs the counter bench (release), and writes what it printed, with the command
# and the machine, to bench/results/counters-<date>.txt (each run appends). About 95 s of
# running, 127.0.0.1 only.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target/counters}

# limitador 0.14.0 does not compile with `redis_storage` alone: its Redis key code calls
# `storage::keys::bin` and `Counter::variables_for_key`, both gated on `disk_storage`
# (RocksDB). Cargo.toml patches it with the registry's own source, those two gates widened
# to `redis_storage`, nothing else.
patched=$here/patched/limitador-0.14.0
widen() { # FILE, the item under the gate
    sed -i "/^ *#\[cfg(feature = \"disk_storage\")\]\$/{N;/\n *$2/s/feature = \"disk_storage\"/any(feature = \"disk_storage\", feature = \"redis_storage\")/}" "$1"
    grep -q 'any(feature = "disk_storage", feature = "redis_storage")' "$1"
}
if [ ! -d "$patched" ]; then
    cache=${CARGO_HOME:-$HOME/.cargo}/registry/cache
    crate=$(ls "$cache"/*/limitador-0.14.0.crate 2>/dev/null | head -n 1 || true)
    if [ -z "$crate" ]; then
        tmp=$(mktemp -d)
        mkdir "$tmp/src" && : >"$tmp/src/lib.rs"
        printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nlimitador = { version = "=0.14.0", default-features = false }\n[workspace]\n' >"$tmp/Cargo.toml"
        cargo fetch --manifest-path "$tmp/Cargo.toml"
        rm -rf "$tmp"
        crate=$(ls "$cache"/*/limitador-0.14.0.crate | head -n 1)
    fi
    rm -rf "$here/patched.tmp" && mkdir -p "$here/patched.tmp"
    tar xzf "$crate" -C "$here/patched.tmp"
    widen "$here/patched.tmp/limitador-0.14.0/src/storage/keys.rs" "pub mod bin {"
    widen "$here/patched.tmp/limitador-0.14.0/src/counter.rs" "pub(crate) fn variables_for_key"
    mkdir -p "$here/patched"
    mv "$here/patched.tmp/limitador-0.14.0" "$patched"
    rm -rf "$here/patched.tmp"
fi

cargo build --release --manifest-path "$here/Cargo.toml" --target-dir "$target" -j "${JOBS:-1}"
out=$root/bench/results/counters-$(date -u +%Y-%m-%d).txt
{
    echo "command: bench/counters/run.sh ($target/release/counters-bench), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) cores, $(uname -srm), load average $(cut -d" " -f1-3 /proc/loadavg) before the run, keygate $(git -C "$root" rev-parse --short HEAD)"
    echo
    "$target/release/counters-bench"
    echo
} | tee -a "$out"
echo "written: $out" >&2
