# Sourced: sets ENVOY to the command that runs Envoy, in the harness's order:
# $ENVOY_BIN, else `func-e run` when func-e is on PATH, else the project's pinned envoy.
if [ -n "${ENVOY_BIN:-}" ]; then
  ENVOY=("$ENVOY_BIN")
elif command -v func-e >/dev/null 2>&1; then
  ENVOY=(func-e run)
else
  ENVOY=("$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/envoy")
fi
