"""What Envoy does with keygate when the module or its VM fails, per failure_policy."""

import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from support.harness import ROOT, UNAUTHORIZED, bearer, sha256_hex

CONFIG = {"keys": [{"id": "k", "sha256": sha256_hex("good-key")}]}
TRAP_CRATE = ROOT / "tests" / "fixtures" / "trap-filter"


@pytest.fixture(scope="module")
def trap_wasm():
    subprocess.run(["cargo", "build", "--quiet", "--release", "--target", "wasm32-wasip1"], cwd=TRAP_CRATE,
                   check=True, timeout=600)
    return TRAP_CRATE / "target" / "wasm32-wasip1" / "release" / "trap_filter.wasm"


@pytest.fixture
def garbage_wasm(tmp_path):
    path = tmp_path / "garbage.wasm"
    path.write_bytes(b"\x00asm\x01\x00\x00\x00this is not a module")
    return path


@pytest.mark.parametrize("policy", ["FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"])
def test_unloadable_module_stops_envoy_from_starting_whatever_the_policy(envoy_factory, garbage_wasm, policy):
    e = envoy_factory(CONFIG, wasm=garbage_wasm, failure_policy=policy, expect_failure=True)
    assert "Unable to create Wasm plugin keygate" in e.log()


def test_crashed_vm_fail_closed_answers_503_and_never_reaches_upstream(envoy_factory, trap_wasm):
    e = envoy_factory(CONFIG, wasm=trap_wasm, failure_policy="FAIL_CLOSED")
    for _ in range(3):  # the trap, then every later request on the dead VM
        r = e.get("/api/x", [bearer("good-key")])
        assert r.status == 503 and r.upstream() is None, (r.status, r.body[:100])


def test_crashed_vm_fail_reload_answers_503_and_reloads_the_vm(envoy_factory, trap_wasm):
    e = envoy_factory(CONFIG, wasm=trap_wasm, failure_policy="FAIL_RELOAD")
    r = e.get("/api/x")
    assert r.status == 503 and r.upstream() is None
    deadline = time.monotonic() + 10
    while e.stat("wasm.keygate.vm_reload_success") < 1:
        assert time.monotonic() < deadline, "no VM reload"
        e.get("/api/x")  # a reload happens on a request after the backoff
    assert e.get("/api/x").status == 503  # this module traps again; it never fails open


def test_crashed_vm_fail_open_lets_requests_through(envoy_factory, trap_wasm):
    # Why keygate must never run with FAIL_OPEN: after a crash nothing is checked at all.
    e = envoy_factory(CONFIG, wasm=trap_wasm, failure_policy="FAIL_OPEN")
    e.get("/api/x")  # traps the VM
    r = e.get("/api/x")
    assert r.status == 200 and r.upstream() is not None


def test_keys_outside_their_window_are_refused_right_after_load(envoy_factory):
    now = datetime.now(UTC)
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    e = envoy_factory({"keys": [
        {"id": "past", "sha256": sha256_hex("past-key"), "expires_at": fmt(now - timedelta(seconds=1))},
        {"id": "future", "sha256": sha256_hex("future-key"), "not_before": fmt(now + timedelta(hours=1))},
    ]})
    assert e.get("/x", [bearer("past-key")]).body == UNAUTHORIZED
    assert e.get("/x", [bearer("future-key")]).body == UNAUTHORIZED
    e.wait_counters({"denied_expired": 1, "denied_not_yet_valid": 1})
