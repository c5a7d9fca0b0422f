import pytest

from support.harness import WASM, Envoy


def pytest_sessionstart(session):
    if not WASM.exists():
        raise pytest.UsageError(f"{WASM} is missing: run ./wasm-build.sh (scripts/test.sh does)")


@pytest.fixture
def envoy_factory():
    """Starts Envoys for one test and stops them afterwards: envoy_factory(config, **opts)."""
    started = []

    def start(plugin_config=None, expect_failure=False, **opts):
        e = Envoy(plugin_config=plugin_config, **opts)
        started.append(e)
        return e.start(expect_failure=expect_failure)

    yield start
    for e in started:
        e.stop()
