import os
import shutil
import tempfile

import pytest

from support.harness import WASM, Envoy
from support.service import Postgres, Service

SCRATCH = pytest.StashKey[str]()


def pytest_sessionstart(session):
    if not WASM.exists():
        raise pytest.UsageError(f"{WASM} is missing: run ./wasm-build.sh (scripts/test.sh does)")
    # Every temporary folder the run makes (Envoy's logs, databases, browser profiles) goes
    # under one: removed after a passing run, kept for reading after a failing one. Others may
    # pass through it: PostgreSQL runs as its own user in a folder of its own inside.
    scratch = tempfile.mkdtemp(prefix="keygate-tests-")
    os.chmod(scratch, 0o711)
    session.config.stash[SCRATCH] = scratch
    tempfile.tempdir = scratch


def pytest_sessionfinish(session, exitstatus):
    scratch = session.config.stash.get(SCRATCH, None)
    tempfile.tempdir = None
    if scratch is None:
        return
    if exitstatus == 0:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"\nkeygate: logs and databases of this run kept in {scratch}")


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


@pytest.fixture(scope="module")
def pg():
    """A throwaway PostgreSQL cluster for a module's tests (Debian's initdb and pg_ctl)."""
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture
def services(tmp_path):
    """services(db=None, **opts): `keygate serve` on tmp_path/keys.db unless db is given,
    each stopped after the test."""
    started = []

    def start(db=None, **opts):
        s = Service(db or f"sqlite:{tmp_path / 'keys.db'}", tmp_path, **opts)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()
