"""Usage per key through real Envoy (two workers) and the real key service: every request counted
by key, result and upstream status class, batches taken once however often they are sent,
`last_used_at` and `unused_since`, totals per owner and the top keys.

Needs `cargo build -p keygate-tools` (target/debug/keygate).
"""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.harness import Envoy, bearer
from support.service import KEYGATE, Service, request

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")


def start_envoy(service: Service, flush_ms: int = 1000, concurrency: int = 2, upstream_status: bool = True) -> Envoy:
    config = {
        "keys": [],
        "public_endpoints": [{"methods": ["GET"], "paths": ["/public/*"]}],
        "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 200, "timeout_ms": 1000},
        "usage": {"flush_ms": flush_ms, "upstream_status": upstream_status},
    }
    return Envoy(plugin_config=config, clusters={"keygate-keys": service.filter_port},
                 concurrency=concurrency).start()


def create(s: Service, entry: dict) -> str:
    r = s.admin("POST", "/v1/keys", entry)
    assert r.status == 201, r
    return r.json()["key"]


def until(predicate, timeout: float, what: str, step: float = 0.1):
    began = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)


def key_totals(s: Service, key_id: str) -> dict:
    r = s.admin("GET", f"/v1/keys/{key_id}/usage?step=minute")
    assert r.status == 200, r
    totals: dict[str, int] = {}
    for point in r.json()["points"]:
        for result, n in point["counts"].items():
            totals[result] = totals.get(result, 0) + n
    return totals


def away_from_the_minute_boundary():
    """Minute buckets: a short test stays within one minute so its counts are in one point."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60 - into + 0.5)


def test_every_request_is_counted_by_key_result_and_upstream_class(services):
    s = services()
    e = start_envoy(s)
    try:
        web = create(s, {"id": "web", "owner": "acme"})
        cli = create(s, {"id": "cli", "owner": "acme"})
        old = create(s, {"id": "old", "owner": "umbrella", "expires_at": "2020-01-01T00:00:00Z"})
        create(s, {"id": "never-used"})
        away_from_the_minute_boundary()
        began = time.time()
        statuses = []
        for status in [200] * 5 + [503, 503, 429, 404]:
            statuses.append(e.get("/api/x", [bearer(web), ("x-echo-status", str(status))]).status)
        assert statuses == [200] * 5 + [503, 503, 429, 404]
        assert [e.get("/api/x", [bearer(cli), ("x-echo-status", "302")]).status for _ in range(3)] == [302] * 3
        assert [e.get("/api/x", [bearer(old)]).status for _ in range(2)] == [401, 401]
        assert [e.get("/api/x", [bearer("kg_nobody_" + str(i))]).status for i in range(4)] == [401] * 4
        assert [e.get("/public/doc", []).status for _ in range(2)] == [200, 200]
        assert [e.get("/api/x", []).status for _ in range(3)] == [401] * 3

        expected_web = {"allowed": 9, "upstream_2xx": 5, "upstream_5xx": 2, "upstream_429": 1, "upstream_4xx": 1}
        until(lambda: key_totals(s, "web") == expected_web, 10, "web's counts")
        assert key_totals(s, "cli") == {"allowed": 3, "upstream_3xx": 3}
        assert key_totals(s, "old") == {"denied_expired": 2}
        assert key_totals(s, "never-used") == {}
        totals = s.admin("GET", "/v1/usage?step=minute").json()
        assert totals["counts"] == {"allowed": 12, "denied_expired": 2, "denied_unknown": 4, "public": 2,
                                    "denied_missing": 3, "upstream_2xx": 5, "upstream_3xx": 3, "upstream_4xx": 1,
                                    "upstream_429": 1, "upstream_5xx": 2}, totals["counts"]
        assert totals["requests"] == 23
        assert [(o["owner"], o["requests"]) for o in totals["owners"]] == [("acme", 12), ("umbrella", 2)]
        assert [(k["key_id"], k["requests"]) for k in totals["top_keys"]] == [("web", 9), ("cli", 3), ("old", 2)]
        acme = s.admin("GET", "/v1/usage?owner=acme&step=minute").json()
        assert (acme["owner"], acme["requests"], [k["key_id"] for k in acme["top_keys"]]) == \
            ("acme", 12, ["web", "cli"])
        # last_used_at: the minute each key was last presented; null for one never used.
        minute = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(began))
        keys = {k["id"]: k for k in s.admin("GET", "/v1/keys").json()["entries"]}
        assert {k: v["last_used_at"] for k, v in keys.items()} == \
            {"web": minute, "cli": minute, "old": minute, "never-used": None}
        unused = s.admin("GET", f"/v1/keys?unused_since={minute}").json()["entries"]
        assert [k["id"] for k in unused] == ["never-used"]
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began + 120))
        assert [k["id"] for k in s.admin("GET", f"/v1/keys?unused_since={later}").json()["entries"]] == \
            ["cli", "never-used", "old", "web"]
        # The entry as shown can be sent back: last_used_at is read-only and ignored.
        assert s.admin("PATCH", "/v1/keys/web", {**keys["web"], "name": "Web"}).status == 200
        assert "last_used_at" not in s.admin("GET", "/v1/export").body.decode(), "never stored in an entry"
        assert e.counter("usage.batches_sent") >= 1
        assert e.counter("usage.batches_failed") == 0
    finally:
        e.stop()


def test_without_upstream_status_only_decisions_are_counted(services):
    s = services()
    e = start_envoy(s, upstream_status=False)
    try:
        key = create(s, {"id": "plain"})
        away_from_the_minute_boundary()
        assert [e.get("/api/x", [bearer(key), ("x-echo-status", "503")]).status for _ in range(4)] == [503] * 4
        until(lambda: key_totals(s, "plain") == {"allowed": 4}, 10, "the decisions, and no upstream class")
    finally:
        e.stop()


def post_batch(s: Service, body: dict | bytes):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(s.filter_port, "POST", "/v1/filter/usage", raw, {"content-type": "application/json"})


def test_a_batch_sent_twice_is_counted_once(services):
    s = services()
    create(s, {"id": "twice", "owner": "acme"})
    minute = int(time.time() // 60 * 60_000)
    batch = {"batch": "test-vm-1", "minute": minute,
             "keys": [{"id": "twice", "owner": "acme", "counts": {"allowed": 7, "upstream_2xx": 7}}]}
    first = post_batch(s, batch)
    again = post_batch(s, batch)
    assert (first.status, first.json()) == (200, {"counted": True})
    assert (again.status, again.json()) == (200, {"counted": False})
    assert key_totals(s, "twice") == {"allowed": 7, "upstream_2xx": 7}
    other = post_batch(s, {**batch, "batch": "test-vm-2"})
    assert other.json() == {"counted": True}
    assert key_totals(s, "twice") == {"allowed": 14, "upstream_2xx": 14}


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_minutes_older_than_two_days_are_rolled_into_hours_and_still_counted(services, tmp_path, pg, engine):
    db = f"sqlite:{tmp_path / 'rolled.db'}" if engine == "sqlite" else pg.createdb("usage_rolled")
    s = services(db=db)
    create(s, {"id": "old", "owner": "acme"})
    hour = int(time.time() // 3600 * 3_600_000) - 3 * 86_400_000
    recent = int(time.time() // 60 * 60_000)
    for i, (minute, n) in enumerate([(hour + 60_000, 3), (hour + 59 * 60_000, 4), (recent, 5)]):
        batch = {"batch": f"vm-{i}", "minute": minute,
                 "keys": [{"id": "old", "owner": "acme", "counts": {"allowed": n}}]}
        assert post_batch(s, batch).json() == {"counted": True}
    s.restart()  # the roll-up runs at start: the two old minutes become one hour, the recent one stays


    def rows(table: str, where: str) -> int:
        query = f"SELECT COUNT(*) FROM {table} WHERE {where}"
        if engine == "postgresql":
            return int(pg.scalar("usage_rolled", query))
        with sqlite3.connect(tmp_path / "rolled.db") as conn:
            return conn.execute(query).fetchone()[0]

    until(lambda: rows("usage_hours", f"key_id = 'old' AND hour = {hour} AND allowed = 7") == 1, 10, "the roll-up")
    assert rows("usage_minutes", f"minute < {hour + 3_600_000}") == 0
    assert rows("usage_minutes", f"minute = {recent} AND allowed = 5") == 1
    assert key_totals(s, "old") == {"allowed": 5}  # the default window: the last 24 hours
    day = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(hour / 1000))
    r = s.admin("GET", f"/v1/keys/old/usage?from={day}&step=day")
    assert r.status == 200, r
    assert sum(p["counts"].get("allowed", 0) for p in r.json()["points"]) == 12
    assert s.admin("GET", "/v1/usage?owner=acme").json()["requests"] == 5


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not JSON"),
    ({"batch": "b", "minute": 1, "keys": []}, "minute: expected the Unix milliseconds of a minute's start"),
    ({"batch": "b", "minute": 0, "keys": [{"id": "k", "counts": {"allowd": 1}}]},
     'keys[0].counts: unknown result "allowd"'),
])
def test_a_malformed_batch_is_a_400_and_counts_nothing(services, body, reason):
    s = services()
    r = post_batch(s, body)
    assert r.status == 400 and r.json()["message"].startswith(reason), r
    assert s.admin("GET", "/v1/usage").json()["requests"] == 0


def test_usage_queries_check_their_parameters(services):
    s = services()
    create(s, {"id": "k"})
    for query, message in [
        ("step=week", "step: expected minute, hour or day"),
        ("from=yesterday", "from: expected an RFC 3339 time such as 2026-12-01T00:00:00Z"),
        ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "from: must be before to"),
        ("from=2000-01-01T00:00:00Z&step=minute", "at most 10000 points: a longer step, or a shorter window"),
    ]:
        r = s.admin("GET", f"/v1/keys/k/usage?{query}")
        assert (r.status, r.json()["message"]) == (400, message), query
    assert s.admin("GET", "/v1/keys/nope/usage").status == 404
    r = s.admin("GET", "/v1/keys/k/usage?from=2026-12-01T00:00:00Z&to=2026-12-01T03:00:00Z")
    assert [p["at"] for p in r.json()["points"]] == [
        "2026-12-01T00:00:00Z", "2026-12-01T01:00:00Z", "2026-12-01T02:00:00Z"]
    assert all(p["requests"] == 0 and p["counts"] == {} for p in r.json()["points"])


def test_the_cli_prints_a_keys_series_the_totals_and_unused_keys(services):
    from support.service import run_keygate

    s = services()
    create(s, {"id": "busy", "owner": "acme"})
    create(s, {"id": "idle", "owner": "acme"})
    minute = int(time.time() // 60 * 60_000)
    batch = {"batch": "cli-vm-1", "minute": minute,
             "keys": [{"id": "busy", "owner": "acme",
                       "counts": {"allowed": 5, "denied_endpoint": 2, "upstream_2xx": 4, "upstream_5xx": 1}}],
             "unkeyed": {"public": 3}}
    assert post_batch(s, batch).json() == {"counted": True}
    env = {"KEYGATE_ADMIN_TOKEN": s.token}
    server = f"http://127.0.0.1:{s.admin_port}"
    at = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(minute / 1000))
    p = run_keygate("keys", "usage", "busy", "--server", server, "--step", "minute", "--from", "5m", env=env)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()[2:]}
    assert rows[at] == ["7", "5", "2", "0", "0", "4", "0", "0", "0", "1"], p.stdout
    assert f"last used {at}" in p.stdout.splitlines()[0]
    p = run_keygate("keys", "usage", "busy", "--server", server, "--json", env=env)
    assert json.loads(p.stdout)["key_id"] == "busy"
    p = run_keygate("usage", "--server", server, "--owner", "acme", "--step", "minute", "--from", "5m", env=env)
    lines = p.stdout.splitlines()
    assert lines[2].split() == ["total", "7", "5", "2", "0", "0", "4", "0", "0", "0", "1"], p.stdout
    assert lines[-1].split() == ["busy", "7", "5", "2", "0", "0", "4", "0", "0", "0", "1"], p.stdout
    p = run_keygate("keys", "list", "--server", server, "--unused-since", "0m", env=env)
    assert p.stdout.splitlines() == ["idle  owner acme"], p.stdout
    p = run_keygate("keys", "list", "--server", server, "--unused-since", "90d", env=env)
    assert p.stdout.splitlines() == ["idle  owner acme"], p.stdout
    p = run_keygate("keys", "list", "--server", server, "--unused-since", "soon", env=env)
    assert p.returncode == 2 and "span back from now" in p.stderr


def test_a_flood_of_distinct_keys_goes_in_bounded_batches_and_nothing_is_dropped():
    """3,000 distinct valid keys within at most two flush intervals of one worker, max_keys 1,000:
    each interval keeps 1,000 keys' own rows at most, the rest are counted in `other` (and in
    keygate.usage.overflow), every batch is at most 64 KiB, and the batches add up to every
    request sent."""
    import hashlib

    from support.keyserver import KeyServer
    from support.remote import CLUSTER, key_service

    keys = [f"kg_flood_key_{i:05d}" for i in range(3000)]
    config = {"keys": [{"id": f"flood-{i:05d}", "sha256": hashlib.sha256(k.encode()).hexdigest(),
                        "owner": "o" * 200} for i, k in enumerate(keys)],
              "key_service": key_service(), "usage": {"flush_ms": 8_000, "max_keys": 1000}}
    with KeyServer() as server:
        e = Envoy(plugin_config=config, clusters={CLUSTER: server.port}, concurrency=1).start()
        try:
            away_from_the_minute_boundary()
            # Four clients send the 3,000 in a second or two: within two flush intervals.
            sent = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(lambda k: e.get("/api/x", [bearer(k)]).status, keys))
            assert statuses == [200] * 3000 and time.monotonic() - sent < 8
            began = time.monotonic()
            # A flush (every 8 s) or the minute's end sends them: wait for every request.
            def counted(bodies):
                docs = [json.loads(b) for b in bodies]
                return sum(d.get("other", {}).get("allowed", 0) + sum(k["counts"]["allowed"] for k in d["keys"])
                           for d in docs)

            bodies = until(lambda: list(server.usage_batches) if counted(server.usage_batches) == 3000 else None,
                           45, "every request in a batch")
            assert time.monotonic() - began < 12
            assert max(len(b.encode()) for b in bodies) <= 64 * 1024
            docs = [json.loads(b) for b in bodies]
            own = [k for d in docs for k in d["keys"]]
            other = sum(d.get("other", {}).get("allowed", 0) for d in docs)
            assert len(own) + other == 3000 and len(own) <= 2000 and other >= 1000
            assert len({k["id"] for k in own}) == len(own), "a key counted twice"
            assert len(docs) >= 4, "1,000 keys with 200-byte owners do not fit one batch"
            assert len({d["batch"] for d in docs}) == len(docs)
            assert sum(d.get("overflow", 0) for d in docs) == other
            until(lambda: e.counter("usage.overflow") == other, 2, "the overflow counter")
            assert e.counter("usage.dropped") == 0
        finally:
            e.stop()


def test_a_configuration_push_keeps_the_vms_counts():
    """A new configuration pushed by ECDS (as Istio pushes a WasmPlugin change) reaches the same
    VMs: the counts from before the push are sent with those from after it, none lost."""
    import hashlib

    from support.ecds import EcdsEnvoy
    from support.harness import static_cluster
    from support.keyserver import KeyServer
    from support.remote import CLUSTER, key_service

    key = "kg_pushed_config_key_0001"

    def config(extra_keys: int) -> dict:
        keys = [{"id": "pushed", "sha256": hashlib.sha256(key.encode()).hexdigest()}]
        keys += [{"id": f"extra-{i}", "sha256": hashlib.sha256(f"x{i}".encode()).hexdigest()}
                 for i in range(extra_keys)]
        return {"keys": keys, "key_service": key_service(), "usage": {"flush_ms": 10_000}}

    away_from_the_minute_boundary()
    with KeyServer() as server:
        ecds = EcdsEnvoy(config(0))
        ecds.envoy.concurrency = 2
        ecds.envoy.bootstrap["static_resources"]["clusters"].append(static_cluster(CLUSTER, server.port))
        ecds.start()
        e = ecds.envoy
        try:
            assert [e.get("/api/x", [bearer(key)]).status for _ in range(150)] == [200] * 150
            # Nothing sent yet: the counts from before the push are only in the VMs.
            assert not server.usage_batches
            ecds.push(config(5))
            assert [e.get("/api/x", [bearer(key)]).status for _ in range(150)] == [200] * 150

            def allowed():
                return sum(k["counts"].get("allowed", 0) for b in server.usage_batches
                           for k in json.loads(b)["keys"] if k["id"] == "pushed")

            until(lambda: allowed() == 300, 45, "every request's count, from before and after the push")
            time.sleep(1)
            assert allowed() == 300
        finally:
            ecds.stop()
