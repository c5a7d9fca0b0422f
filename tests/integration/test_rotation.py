"""Live key rotation: tables pushed through ECDS under load, and clock-scheduled overlap."""

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from support.ecds import EcdsEnvoy
from support.harness import UNAUTHORIZED, bearer, http1, sha256_hex

STEADY = "steady-key"  # in every table: must never fail, whatever is pushed


def table(*keys, disabled=()):
    entries = [{"id": "steady", "sha256": sha256_hex(STEADY)}]
    entries += [{"id": k, "sha256": sha256_hex(k), "disabled": k in disabled} for k in keys]
    return {"keys": entries}


class Load:
    """Threads sending requests with every key in turn until stopped (bounded in count and time)."""

    def __init__(self, port, keys, threads=2, max_requests=20_000, max_seconds=60):
        self.port, self.keys = port, keys
        self.results = Counter()
        self.problems = []
        self.stop_at = time.monotonic() + max_seconds
        self.budget = max_requests
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        i = 0
        while not self.stopping.is_set() and time.monotonic() < self.stop_at:
            with self.lock:
                if self.budget == 0:
                    return
                self.budget -= 1
            key = self.keys[i % len(self.keys)]
            i += 1
            try:
                r = http1(self.port, "GET", "/api/x", [bearer(key)])
                outcome = (key, r.status)
                ok = (r.status == 200 and r.upstream() is not None) or (r.status == 401 and r.body == UNAUTHORIZED)
                if not ok or (key == STEADY and r.status != 200):
                    self.problems.append((key, r.status, r.body[:100]))
            except OSError as e:
                outcome = (key, "error")
                self.problems.append((key, repr(e)))
            with self.lock:
                self.results[outcome] += 1

    def done(self) -> int:
        with self.lock:
            return sum(self.results.values())

    def overlap(self, n=30, timeout=20):
        """Lets at least n more requests complete, so the load spans the update just made."""
        target, deadline = self.done() + n, time.monotonic() + timeout
        while self.done() < target:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join(30)


def test_rotation_under_load_fails_no_request(tmp_path):
    e = EcdsEnvoy(table("old")).start()
    try:
        get = lambda key: e.envoy.get("/api/x", [bearer(key)]).status  # noqa: E731
        with Load(e.envoy.port, [STEADY, "old", "new", "newer"]) as load:
            # Add the new key beside the old one; then disable the old one.
            load.overlap()
            e.push(table("old", "new"))
            load.overlap()
            assert (get("old"), get("new")) == (200, 200)
            e.push(table("old", "new", disabled={"old"}))
            load.overlap()
            assert (get("old"), get("new")) == (401, 200)
            e.envoy.wait_counter("denied_disabled", 1, at_least=True)
            # A few more swaps.
            e.push(table("new", "newer"))
            load.overlap()
            assert (get("old"), get("new"), get("newer")) == (401, 200, 200)
            e.push(table("newer"))
            load.overlap()
            assert (get("new"), get("newer")) == (401, 200)
            # An invalid table is rejected by Envoy; the previous one keeps serving.
            rejected = e.stat("update_rejected")
            e.push({"keys": [{"id": "broken", "sha256": "not-hex"}]}, expect="update_rejected")
            load.overlap()
            assert e.stat("update_rejected") == rejected + 1
            assert (get(STEADY), get("newer"), get("new")) == (200, 200, 401)
            assert "invalid configuration: keys[0].sha256: expected 64 hex characters" in e.envoy.log()
            e.push(table("newer", "newest"))
            load.overlap()
            assert get("newest") == 200
        assert load.problems == []
        assert load.results[(STEADY, 200)] >= 40, load.results  # the load ran throughout
        assert sum(n for (k, s), n in load.results.items() if s not in (200, 401)) == 0
    finally:
        e.stop()


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def wait_until(moment: datetime, margin: float = 0.05):
    """Waits for a clock boundary to pass: the rule under test is about time itself."""
    delay = (moment - datetime.now(UTC)).total_seconds() + margin
    assert delay < 10
    if delay > 0:
        time.sleep(delay)


def test_scheduled_overlap_rotation_at_real_clock_boundaries(envoy_factory):
    now = datetime.now(UTC)
    new_from, old_until = now + timedelta(seconds=1.5), now + timedelta(seconds=3.0)
    e = envoy_factory({"keys": [
        {"id": "old", "sha256": sha256_hex("old-key"), "expires_at": rfc3339(old_until)},
        {"id": "new", "sha256": sha256_hex("new-key"), "not_before": rfc3339(new_from)},
    ]})
    status = lambda key: e.get("/x", [bearer(key)]).status  # noqa: E731
    assert datetime.now(UTC) < new_from - timedelta(seconds=0.2), "machine too slow for this test"
    assert (status("old-key"), status("new-key")) == (200, 401)
    e.wait_counter("denied_not_yet_valid", 1)
    wait_until(new_from)
    assert datetime.now(UTC) < old_until - timedelta(seconds=0.2)
    assert (status("old-key"), status("new-key")) == (200, 200)  # the overlap
    wait_until(old_until)
    assert (status("old-key"), status("new-key")) == (401, 200)
    e.wait_counter("denied_expired", 1)


def test_replaced_tables_are_released_and_the_newest_serves():
    """keygate frees nothing per stream (it exports no delete callback); a root context whose
    table was replaced is released once Envoy stops ticking it. Without that, every push
    would keep a whole key table in the VM."""
    e = EcdsEnvoy(table("first"))
    e.envoy.component_log_level = "wasm:debug"
    e.start()
    try:
        for i, key in enumerate(["second", "third", "fourth"]):
            e.push(table(key))
            assert e.envoy.get("/api/x", [bearer(key)]).status == 200, i
        released = "stopped ticking: its configuration is released"
        deadline = time.monotonic() + 45
        while e.envoy.log().count(released) < 3:
            assert time.monotonic() < deadline, f"replaced roots never released:\n{e.envoy.log()[-3000:]}"
            time.sleep(0.2)
        # The live root was never mistaken for a released one.
        assert e.envoy.get("/api/x", [bearer("fourth")]).status == 200
        assert e.envoy.get("/api/x", [bearer("third")]).status == 401
        assert e.envoy.get("/api/x", [bearer(STEADY)]).status == 200
    finally:
        e.stop()
