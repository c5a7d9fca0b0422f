#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), from the seed corpora in
# fuzz/corpus/. Installs cargo-fuzz when missing. The toolchain here is stable Rust, so
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the instrumentation flags it needs.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in bearer path config decide remote entry admin_body github_body usage_body; do
  echo "== fuzz $target for ${seconds}s"
  # A scratch copy of the corpus, so a run's findings don't dirty the checked-in seeds.
  work="fuzz/work/$target"
  mkdir -p "$work"
  cp -n fuzz/corpus/"$target"/* "$work"/ 2>/dev/null || true
  # The whole output goes to a log: a passing run prints its last lines, a failing one
  # (a build error, a full disk, a finding) prints the log's end, so CI shows why.
  log="fuzz/work/$target.log"
  if cargo fuzz run --fuzz-dir fuzz --sanitizer none "$target" "$work" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    grep -E "^(Done|stat::number_of_executed_units)" "$log" | tail -2
  else
    echo "fuzz target $target failed; the end of its output:" >&2
    tail -60 "$log" >&2
    exit 1
  fi
done
