"""Limits per key and per owner, through real Envoy (keygate, then Envoy's own rate-limit filter),
the real key service's rate-limit service and a real Redis: the 429 contract and its headers, a
browser's view of it, key and owner limits together, exact counting across two Envoys and two
service replicas, changes in force within 2 s, and every failure (Redis down, the rate-limit
service down) answered as documented.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's redis-server.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from support.harness import Envoy, bearer
from support.redis import Redis
from support.service import KEYGATE, Service, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")

LIMITED = b'{"error": "Too Many Requests", "message": "Rate limit exceeded"}'
APP = "https://app.example.com"
STATIC_KEY = "kg_static_limited_key_0001"


def plugin_config(service: Service, static=()) -> dict:
    return {
        "keys": list(static),
        "cors_endpoints": [{"methods": ["GET"], "paths": ["/api/thing/{id}"]}],
        "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 200, "changes_wait_ms": 20_000,
                        "timeout_ms": 1000},
    }


def start_envoy(service: Service, static=(), concurrency: int = 2, ratelimit_port=None, **opts) -> Envoy:
    return Envoy(plugin_config=plugin_config(service, static), clusters={"keygate-keys": service.filter_port},
                 ratelimit_port=ratelimit_port or service.ratelimit_port, concurrency=concurrency, **opts).start()


@pytest.fixture
def rig(services, tmp_path):
    """One key service (counters in memory) and one Envoy in front of it."""
    s = services()
    e = start_envoy(s)
    yield s, e
    e.stop()


def create(s: Service, entry: dict) -> str:
    r = s.admin("POST", "/v1/keys", entry)
    assert r.status == 201, r
    return r.json()["key"]


def get(e: Envoy, key: str, path: str = "/api/x", headers=()):
    return e.get(path, [bearer(key), *headers])


def statuses(e: Envoy, key: str, n: int, path: str = "/api/x") -> list[int]:
    return [get(e, key, path).status for _ in range(n)]


def until(predicate, timeout: float, what: str, step: float = 0.05):
    """Polls predicate() until it holds; the seconds it took."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - began


def until_all(e: Envoy, key: str, expect: int, timeout: float, what: str) -> float:
    """Until six requests in a row, on fresh connections (which reach both workers, each with
    its own VM and cache), all answer `expect`; the seconds it took."""
    return until(lambda: all(get(e, key).status == expect for _ in range(6)), timeout, what, step=0.02)


def away_from_the_hour_boundary():
    """Hour-long windows make counts independent of timing; a test must not straddle two."""
    into = time.time() % 3600
    if into > 3600 - 30:
        time.sleep(3600 - into + 1)


# The 429 ---------------------------------------------------------------------------------------

def test_over_the_limit_is_a_429_with_json_retry_after_and_ratelimit_headers(rig):
    s, e = rig
    away_from_the_hour_boundary()
    key = create(s, {"id": "three-an-hour", "limits": [{"name": "hourly", "requests": 3, "per": "hour"}]})
    until(lambda: get(e, key).status in (200, 429), 5, "the key works")
    # That first call counted too: two more are allowed, then refused.
    answers = [get(e, key) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]
    allowed, refused = answers[1], answers[2]
    assert allowed.upstream() is not None, "an allowed request reaches the upstream"
    assert allowed.header("x-ratelimit-limit") == '3, 3;w=3600;name="hourly"'
    assert allowed.header("x-ratelimit-remaining") == "0"
    reset = int(allowed.header("x-ratelimit-reset"))
    assert 1 <= reset <= 3600
    assert refused.body == LIMITED
    assert refused.header("content-type") == "application/json"
    assert refused.all("content-type") == ["application/json"]
    assert refused.header("x-ratelimit-limit") == '3, 3;w=3600;name="hourly"'
    assert refused.header("x-ratelimit-remaining") == "0"
    retry = int(refused.header("retry-after"))
    assert abs(retry - int(refused.header("x-ratelimit-reset"))) <= 1 and 1 <= retry <= 3600
    assert refused.upstream() is None, "a refused request never reaches the upstream"
    # Envoy's own counters of those calls (the ones an unlimited key never moves).
    calls = e.stats("cluster.echo.ratelimit")
    assert calls.get("cluster.echo.ratelimit.ok") == 3 and calls.get("cluster.echo.ratelimit.over_limit") == 1, calls
    # The key check still comes first: a bad key is a 401, not a 429.
    assert get(e, "kg_not_a_key").status == 401


def test_a_browser_on_an_allowed_origin_can_read_the_429(rig):
    s, e = rig
    away_from_the_hour_boundary()
    key = create(s, {"id": "web", "cors": {"allowed_origins": [APP]},
                     "limits": [{"requests": 1, "per": "hour"}]})
    origin = [("origin", APP)]
    until(lambda: get(e, key, "/api/thing/1", origin).status in (200, 429), 5, "the key works")
    refused = get(e, key, "/api/thing/1", origin)
    assert refused.status == 429 and refused.body == LIMITED
    assert refused.header("access-control-allow-origin") == APP
    assert "origin" in (refused.header("vary") or "").lower()


def test_a_key_without_limits_never_calls_the_rate_limit_service(rig):
    s, e = rig
    key = create(s, {"id": "free"})
    until(lambda: get(e, key).status == 200, 5, "the key works")
    assert statuses(e, key, 50) == [200] * 50
    answer = get(e, key)
    assert answer.header("x-ratelimit-limit") is None
    calls = e.stats("cluster.echo.ratelimit")
    assert sum(calls.values()) == 0, calls
    # A client cannot make itself limited (or pick its limits) by sending the header.
    spoofed = get(e, key, headers=[("x-api-key-limits", "1/hour")])
    assert spoofed.status == 200 and "x-api-key-limits" not in dict(spoofed.upstream())
    assert sum(e.stats("cluster.echo.ratelimit").values()) == 0


def test_a_static_table_key_carries_its_own_limits(services):
    s = services()
    away_from_the_hour_boundary()
    entry = {"id": "static-limited", "sha256": sha256_hex(STATIC_KEY), "limits": [{"requests": 2, "per": "hour"}]}
    e = start_envoy(s, static=[entry])
    try:
        assert statuses(e, STATIC_KEY, 4) == [200, 200, 429, 429]
        up = get(e, "kg_nope").status
        assert up == 401
    finally:
        e.stop()


# Keys and owners -------------------------------------------------------------------------------

def test_key_and_owner_limits_together_each_request_counted_once_against_each(rig):
    s, e = rig
    away_from_the_hour_boundary()
    r = s.admin("PUT", "/v1/owners/acme", {"limits": [{"name": "acme-hourly", "requests": 5, "per": "hour"}]})
    assert r.status == 201, r
    assert r.json()["limits"] == [{"name": "acme-hourly", "requests": 5, "per": "hour"}]
    a = create(s, {"id": "acme-a", "owner": "acme", "limits": [{"requests": 3, "per": "hour"}]})
    b = create(s, {"id": "acme-b", "owner": "acme"})
    other = create(s, {"id": "other", "owner": "globex"})
    # a: its own 3 first. b: no limits of its own, but its owner's.
    assert statuses(e, a, 4) == [200, 200, 200, 429]
    # The owner has 5; a used 3 (its refused 4th counted against nothing): b gets 2.
    assert statuses(e, b, 3) == [200, 200, 429]
    # Now the owner's limit refuses a too, though a's own would... still refuse: both are spent.
    assert get(e, a).status == 429
    # Another owner is untouched, and never calls the service (no limits anywhere).
    assert statuses(e, other, 10) == [200] * 10
    shown = s.admin("GET", "/v1/owners/acme").json()
    assert shown["owner"] == "acme" and shown["limits"][0]["requests"] == 5
    assert [o["owner"] for o in s.admin("GET", "/v1/owners").json()["owners"]] == ["acme"]
    audit = s.admin("GET", "/v1/audit").json()["entries"]
    assert any(x["action"] == "owner-set" and x["owner"] == "acme" and x["key_id"] == "" for x in audit)


def test_owner_and_key_limits_are_refused_with_path_and_reason(rig):
    s, _ = rig
    r = s.admin("PUT", "/v1/owners/acme", {"limits": [{"requests": 0, "per": "hour"}]})
    assert (r.status, r.json()) == (400, {"error": "Bad Request", "message": "expected 1 to 1000000000000",
                                          "path": "limits[0].requests"})
    r = s.admin("POST", "/v1/keys", {"id": "x", "limits": [{"requests": 1, "per": "week"}]})
    assert (r.status, r.json()["path"]) == (400, "limits[0].per")
    assert r.json()["message"].startswith("unknown variant, expected one of `second`, `minute`, `hour`, `day`")
    r = s.admin("PUT", "/v1/owners/acme", {"limits": [{"name": "n", "requests": 1, "per": "day"},
                                                       {"name": "n", "requests": 2, "per": "day"}]})
    assert (r.status, r.json()) == (400, {"error": "Bad Request", "path": "limits[1].name",
                                          "message": 'a limit named "n" is already in the list (name one of them)'})
    assert s.admin("GET", "/v1/owners/acme").status == 404
    assert s.admin("DELETE", "/v1/owners/acme").status == 404


# Changes in force within 2 s -------------------------------------------------------------------

def test_limit_changes_are_in_force_within_two_seconds(rig):
    s, e = rig
    away_from_the_hour_boundary()
    key = create(s, {"id": "changing", "owner": "initech",
                     "limits": [{"name": "hourly", "requests": 2, "per": "hour"}]})
    assert statuses(e, key, 3) == [200, 200, 429]
    # Raised: the same named limit keeps its count (2), so one more is allowed.
    r = s.admin("PATCH", "/v1/keys/changing", {"limits": [{"name": "hourly", "requests": 3, "per": "hour"}]})
    assert r.status == 200, r
    took = until(lambda: get(e, key).status == 200, 2.0, "a raised key limit")
    assert get(e, key).status == 429
    # Removed: unlimited, on every worker.
    assert s.admin("PATCH", "/v1/keys/changing", {"limits": None}).status == 200
    took = max(took, until_all(e, key, 200, 2.0, "a removed key limit"))
    # An owner limit added: the key (now without limits of its own) is limited by it.
    assert s.admin("PUT", "/v1/owners/initech", {"limits": [{"requests": 1, "per": "hour"}]}).status == 201
    took = max(took, until_all(e, key, 429, 2.0, "an added owner limit"))
    # And removed again.
    assert s.admin("DELETE", "/v1/owners/initech").status == 204
    took = max(took, until_all(e, key, 200, 2.0, "a removed owner limit"))
    print(f"slowest change in force after {took:.2f} s")


def test_an_owner_limit_set_on_one_replica_is_in_force_on_another_within_two_seconds(services, tmp_path):
    redis = Redis().start()
    try:
        db = f"sqlite:{tmp_path / 'shared.db'}"
        one = services(db=db, args=["--redis", redis.url])
        two = services(db=db, args=["--redis", redis.url])
        key = create(one, {"id": "replicated", "owner": "hooli"})
        e = start_envoy(two)  # lookups, feed and rate limits all from the second replica
        try:
            until(lambda: get(e, key).status == 200, 5, "the key works")
            assert one.admin("PUT", "/v1/owners/hooli", {"limits": [{"requests": 1, "per": "hour"}]}).status == 201
            took = until_all(e, key, 429, 2.0, "an owner limit set on the other replica")
            print(f"in force on the other replica after {took:.2f} s")
        finally:
            e.stop()
    finally:
        redis.stop()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_lookup_on_another_replica_names_a_just_limited_owner_at_once(services, tmp_path, pg, engine):
    """The feed may announce an owner's change before a replica's own copy of the owners'
    limits is re-read; the lookup that change sets off must already name the owner, or the
    filter would cache the key as unlimited for its whole TTL."""
    db = f"sqlite:{tmp_path / 'shared.db'}" if engine == "sqlite" else pg.createdb("limits_lookup")
    one = services(db=db)
    two = services(db=db)
    key = create(one, {"id": "looked-up", "owner": "pied-piper"})
    digest = sha256_hex(key)
    assert "limited_owners" not in two.filter(f"/v1/filter/keys/{digest}").json()
    assert one.admin("PUT", "/v1/owners/pied-piper", {"limits": [{"requests": 1, "per": "hour"}]}).status == 201
    assert two.filter(f"/v1/filter/keys/{digest}").json()["limited_owners"] == ["pied-piper"]
    cors = create(one, {"id": "looked-up-web", "owner": "pied-piper",
                        "cors": {"allowed_origins": [APP], "full_access": True}})
    assert cors
    answer = two.filter(f"/v1/filter/origins/{APP.replace(':', '%3A').replace('/', '%2F')}").json()
    assert [k["id"] for k in answer["keys"]] == ["looked-up-web"]
    assert answer["limited_owners"] == ["pied-piper"]
    assert one.admin("DELETE", "/v1/owners/pied-piper").status == 204
    assert "limited_owners" not in two.filter(f"/v1/filter/keys/{digest}").json()


# Exact across Envoys and replicas ---------------------------------------------------------------

def hammer(port: int, key: str, total: int, threads: int) -> list[int]:
    """`total` requests over `threads` keep-alive connections; every status."""
    results: list[int] = []
    lock = threading.Lock()
    share = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]

    def run(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        got = []
        for _ in range(n):
            try:
                conn.request("GET", "/api/x", headers={"authorization": f"Bearer {key}"})
                r = conn.getresponse()
                r.read()
                got.append(r.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                got.append(-1)
        conn.close()
        with lock:
            results.extend(got)

    workers = [threading.Thread(target=run, args=(n,)) for n in share]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return results


def test_counts_are_exact_across_two_envoys_and_two_replicas_sharing_redis(services, tmp_path):
    redis = Redis().start()
    try:
        db = f"sqlite:{tmp_path / 'shared.db'}"
        one = services(db=db, args=["--redis", redis.url])
        two = services(db=db, args=["--redis", redis.url])
        away_from_the_hour_boundary()
        limit = 150
        key = create(one, {"id": "hammered", "limits": [{"requests": limit, "per": "hour"}]})
        envoys = [start_envoy(one), start_envoy(two)]
        try:
            for e in envoys:  # each Envoy has looked the key up (one request each, counted)
                until(lambda e=e: get(e, key).status == 200, 5, "the key works")
            got: list[int] = []
            runs = [threading.Thread(target=lambda e=e: got.extend(hammer(e.port, key, 5 * limit // 2, 4)))
                    for e in envoys]
            for t in runs:
                t.start()
            for t in runs:
                t.join()
            assert got.count(-1) == 0
            assert set(got) <= {200, 429}
            # Exactly the limit, the two warm-up requests included: none over, none refused short.
            assert got.count(200) + 2 == limit, (got.count(200), got.count(429))
        finally:
            for e in envoys:
                e.stop()
    finally:
        redis.stop()


# Failures ---------------------------------------------------------------------------------------

def test_redis_down_fails_open_counted_and_is_exact_again_once_back(services):
    redis = Redis().start()
    try:
        s = services(args=["--redis", redis.url])
        e = start_envoy(s)
        try:
            away_from_the_hour_boundary()
            key = create(s, {"id": "redis-bound", "limits": [{"requests": 2, "per": "hour"}]})
            assert statuses(e, key, 3) == [200, 200, 429]
            redis.kill()
            # Open: the key is still checked (a bad one is 401), its limit is not.
            assert statuses(e, key, 5) == [200] * 5
            assert get(e, "kg_unknown_while_redis_is_down").status == 401
            until(lambda: "counters unavailable" in s.output(), 5, "the failure is logged")
            assert "allowing" in s.output()
            # Back, empty (its data was not saved): once a probe key is counted again, the
            # limit counts from zero, exactly.
            redis.proc = None
            redis.start()
            probe = create(s, {"id": "redis-probe", "limits": [{"requests": 1, "per": "hour"}]})
            until(lambda: get(e, probe).status == 429, 10, "counting again after Redis came back")
            assert statuses(e, key, 4) == [200, 200, 429, 429]
        finally:
            e.stop()
    finally:
        redis.stop()


def test_redis_down_with_deny_and_failure_mode_deny_is_a_503(services):
    redis = Redis().start()
    try:
        s = services(args=["--redis", redis.url, "--ratelimit-on-error", "deny"])
        e = start_envoy(s, ratelimit_failure_mode_deny=True)
        try:
            key = create(s, {"id": "closed", "limits": [{"requests": 100, "per": "hour"}]})
            unlimited = create(s, {"id": "closed-free"})
            until(lambda: get(e, key).status == 200, 5, "the key works")
            redis.kill()
            assert statuses(e, key, 3) == [503] * 3
            # Keys without limits never ask, so they are never refused for it.
            until(lambda: get(e, unlimited).status == 200, 5, "the unlimited key works")
        finally:
            e.stop()
    finally:
        redis.stop()


def test_the_rate_limit_service_down_fails_open_in_the_shipped_configuration(services):
    s = services()
    e = start_envoy(s)
    try:
        away_from_the_hour_boundary()
        key = create(s, {"id": "service-bound", "limits": [{"requests": 1, "per": "hour"}]})
        assert statuses(e, key, 2) == [200, 429]
        # Another Envoy pointed at a rate-limit port nobody listens on.
        from support.service import free_port
        lonely = start_envoy(s, ratelimit_port=free_port())
        try:
            assert statuses(lonely, key, 3) == [200] * 3
            assert lonely.stats("cluster.echo.ratelimit").get("cluster.echo.ratelimit.failure_mode_allowed", 0) >= 3
            assert get(lonely, "kg_unknown").status == 401
        finally:
            lonely.stop()
    finally:
        e.stop()


def test_the_rate_limit_service_down_with_failure_mode_deny_is_a_503(services):
    s = services()
    from support.service import free_port
    e = start_envoy(s, ratelimit_port=free_port(), ratelimit_failure_mode_deny=True)
    try:
        key = create(s, {"id": "deny-bound", "limits": [{"requests": 1000, "per": "hour"}]})
        free = create(s, {"id": "deny-free"})
        until(lambda: get(e, key).status == 503, 5, "a limited key is refused while nobody counts")
        assert get(e, free).status == 200
    finally:
        e.stop()


def test_the_cli_manages_limits(services):
    from support.service import run_keygate

    s = services()
    env = {"KEYGATE_ADMIN_TOKEN": s.token}
    server = f"http://127.0.0.1:{s.admin_port}"
    p = run_keygate("keys", "create", "--server", server, "--id", "cli-limited", "--owner", "umbrella",
                    "--limit", "100/minute", "--limit", "daily=100000/day", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["entry"]["limits"] == [{"requests": 100, "per": "minute"},
                                                       {"requests": 100000, "per": "day", "name": "daily"}]
    p = run_keygate("owners", "set", "umbrella", "--server", server, "--limit", "1000/minute", env=env)
    assert p.returncode == 0 and p.stdout == "umbrella  1000/minute\n", (p.stdout, p.stderr)
    p = run_keygate("owners", "list", "--server", server, env=env)
    assert p.stdout == "umbrella  1000/minute\n"
    p = run_keygate("keys", "update", "cli-limited", "--server", server, "--no-limits", "--json", env=env)
    assert p.returncode == 0 and "limits" not in json.loads(p.stdout)["entry"]
    p = run_keygate("keys", "update", "cli-limited", "--server", server, "--limit", "5/week", env=env)
    assert p.returncode == 1 and "--limit \"5/week\"" in p.stderr
    p = run_keygate("owners", "delete", "umbrella", "--server", server, env=env)
    assert p.returncode == 0 and p.stdout == "removed the limits of umbrella\n"
    p = run_keygate("owners", "show", "umbrella", "--server", server, env=env)
    assert p.returncode == 1 and "no limits for owner" in p.stderr
