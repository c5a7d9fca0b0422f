"""Remote keys through a real Envoy (--concurrency 2): keys the static table does not hold are looked
up in a key service (tests/integration/support/keyserver.py), cached per VM and invalidated by the feed.

Requests go on fresh connections, which the kernel spreads over both workers; where a test needs
both VMs it checks Envoy's per-worker connection counters. The helpers here are shared with
test_remote_faults.py.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from support.harness import UNAUTHORIZED, _complete, bearer, forbidden, http1, parse_http1
from support.keyserver import KeyServer, digest
from support.remote import (
    APP,
    AUTHORITY,
    CLUSTER,
    ELSEWHERE,
    PREFIX,
    STATIC,
    STATIC_DISABLED,
    STATIC_ORIGIN,
    assert_no_trap,
    assert_unauthorized,
    assert_unavailable,
    base_config,
    call,
    many,
    new_key,
    on_every_worker,
    preflight,
    start_remote,
    statuses,
    together,
    until,
    warm,
)

# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server():
    s = KeyServer(prefix=PREFIX, authority=AUTHORITY).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def envoy(server):
    e = start_remote(server, base_config())
    yield e
    e.stop()


@pytest.fixture(autouse=True)
def no_faults_left(request):
    if "server" in request.fixturenames:
        s = request.getfixturevalue("server")
        s.clear_faults()
        s.restart()
    return


# -- behaviour ---------------------------------------------------------------------------------

def test_remote_key_is_forwarded_with_its_identity(envoy, server):
    key = new_key()
    server.add(key, {"id": "r1", "owner": "remote-owner"})
    before = envoy.counters()
    r = call(envoy, key, extra=[("x-api-key-id", "forged"), ("x-api-key-owner", "forged")])
    assert r.status == 200, r.body
    assert r.upstream_all("x-api-key-id") == ["r1"]
    assert r.upstream_all("x-api-key-owner") == ["remote-owner"]
    assert server.lookups(key) == 1
    asked = [q for q in server.requests if q.kind == "keys" and digest(key) in q.path]
    assert [(q.path, q.host) for q in asked] == [(f"{PREFIX}/keys/{digest(key)}", AUTHORITY)]
    envoy.wait_counters({"allowed": before["allowed"] + 1, "remote.lookups": before["remote.lookups"] + 1})
    envoy.wait_counter("remote.cache_entries", 1, at_least=True)
    assert server.violations == []
    assert_no_trap(envoy, key)


def test_the_key_itself_never_leaves_the_proxy(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-secret"})
    assert call(envoy, key).status == 200
    assert call(envoy, new_key()).status == 401
    with server._lock:
        seen = [q.path + " " + json.dumps(q.headers) for q in server.requests]
    assert seen and not any(key in s for s in seen)
    assert not any("authorization" in q.headers for q in server.requests)


def test_concurrent_requests_share_one_lookup_per_vm(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-shared"})
    server.fault("slow", on="keys", delay=0.15)  # the lookup is in flight while all 20 arrive
    before = envoy.counter("remote.lookups")
    rs = together([lambda: call(envoy, key) for _ in range(20)])
    assert [getattr(r, "status", r) for r in rs] == [200] * 20
    assert all(r.upstream_all("x-api-key-id") == ["r-shared"] for r in rs)
    assert 1 <= server.lookups(key) <= 2, server.lookups(key)
    # Counted once per shared lookup, not once per waiting request.
    envoy.wait_counter("remote.lookups", before + server.lookups(key))


def test_answer_is_cached_within_its_ttl(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-cached"})
    warm(envoy, key)
    asked = server.lookups(key)
    assert 1 <= asked <= 2
    hits = envoy.counter("remote.cache_hits")
    rs = many(envoy, 40, key)
    assert statuses(rs) == [200] * 40
    assert server.lookups(key) == asked
    envoy.wait_counter("remote.cache_hits", hits + 40, at_least=True)


def test_unknown_key_is_cached_negative_and_the_feed_undoes_it(envoy, server):
    key = new_key()
    first = warm(envoy, key)
    for r in first:
        assert_unauthorized(r)
    assert r.all("www-authenticate") == ['Bearer error="invalid_token"']
    asked = server.lookups(key)
    assert 1 <= asked <= 2
    neg = envoy.counter("remote.negative_hits")
    rs = many(envoy, 20, key)
    for r in rs:
        assert_unauthorized(r)
    assert server.lookups(key) == asked, "a 404 was not cached"
    envoy.wait_counter("remote.negative_hits", neg + 20, at_least=True)
    invalidations = envoy.counter("remote.invalidations")

    server.add(key, {"id": "r-created-late", "owner": "late"})
    ok, took = until(lambda: all(r.status == 200 for r in many(envoy, 10, key)), timeout=3.0)
    assert ok, "the key created in the service never worked"
    assert took <= 1.5, f"the feed took {took:.2f}s to undo the negative entry (changes_poll_ms 1000)"
    rs = many(envoy, 40, key)
    assert statuses(rs) == [200] * 40
    assert rs[0].upstream_all("x-api-key-id") == ["r-created-late"]
    envoy.wait_counter("remote.invalidations", invalidations + 1, at_least=True)


@pytest.mark.parametrize("how", ["removed", "disabled"])
def test_revocation_reaches_every_worker_within_2s(envoy, server, how):
    key = new_key()
    server.add(key, {"id": f"r-{how}"})
    assert set(statuses(warm(envoy, key))) == {200}
    assert statuses(many(envoy, 20, key)) == [200] * 20
    if how == "removed":
        server.remove(key)
    else:
        server.set_disabled(key)
    ok, took = until(lambda: all(r.status == 401 for r in many(envoy, 10, key)), timeout=4.0)
    assert ok, f"the {how} key was never refused"
    assert took <= 2.0, f"revocation took {took:.2f}s"
    rs = many(envoy, 40, key)
    for r in rs:
        assert_unauthorized(r)


def test_revocation_p99_over_repeated_revocations(envoy, server):
    """Five keys revoked one after another at arbitrary points of the poll cycle: every one is
    refused on both workers within 2 s."""
    took_all = []
    for i in range(5):
        key = new_key()
        server.add(key, {"id": f"r-rev-{i}"})
        assert set(statuses(warm(envoy, key))) == {200}
        time.sleep(0.17 * i)  # a different phase of the 1 s poll cycle each time
        server.remove(key)
        ok, took = until(lambda key=key: all(r.status == 401 for r in many(envoy, 10, key)), timeout=4.0)
        assert ok, f"revocation {i} never seen"
        took_all.append(round(took, 2))
        assert set(statuses(many(envoy, 20, key))) == {401}
    assert max(took_all) <= 2.0, took_all


def test_keep_alive_connection_with_lookups_in_turn(envoy, server):
    keys = [new_key() for _ in range(4)]
    for i, k in enumerate(keys):
        server.add(k, {"id": f"r-ka-{i}"})
    server.fault("slow", on="keys", delay=0.05)
    with socket.create_connection(("127.0.0.1", envoy.port), timeout=10) as s:
        for i, k in enumerate(keys + [new_key(), keys[0]]):
            s.sendall(f"GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {k}\r\n\r\n".encode())
            data = b""
            while not _complete(data, False):
                chunk = s.recv(65536)
                assert chunk, "connection closed"
                data += chunk
            r = parse_http1(data)
            if i < 4:
                assert r.status == 200 and r.upstream_all("x-api-key-id") == [f"r-ka-{i}"]
            elif i == 4:
                assert_unauthorized(r)
            else:
                assert r.upstream_all("x-api-key-id") == ["r-ka-0"]


def test_a_cursor_the_service_forgot_resets_the_cache(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-forgotten"})
    assert set(statuses(warm(envoy, key))) == {200}
    server.remove(key, feed=False)
    server.reset_feed()  # the VMs' cursors are now unknown: the service answers reset
    ok, took = until(lambda: all(r.status == 401 for r in many(envoy, 10, key)), timeout=4.0)
    assert ok and took <= 2.0, f"{ok} after {took:.2f}s"
    # The feed goes on from the new cursor.
    late = new_key()
    assert call(envoy, late).status == 401
    server.add(late, {"id": "r-after-reset"})
    ok, took = until(lambda: all(r.status == 200 for r in many(envoy, 10, late)), timeout=4.0)
    assert ok and took <= 2.0, f"{ok} after {took:.2f}s"


def test_static_keys_never_go_remote(envoy, server):
    # The service knows both digests with other identities; the static table wins, even disabled.
    server.add(STATIC, {"id": "remote-impostor"})
    server.add(STATIC_DISABLED, {"id": "remote-enabled"})
    for r in many(envoy, 20, STATIC):
        assert r.status == 200
        assert r.upstream_all("x-api-key-id") == ["static-s"]
        assert r.upstream_all("x-api-key-owner") == ["team-static"]
    for r in many(envoy, 20, STATIC_DISABLED):
        assert_unauthorized(r)
    assert server.lookups(STATIC) == 0
    assert server.lookups(STATIC_DISABLED) == 0
    # Public endpoints never ask either.
    asked = server.count("keys") + server.count("origins")
    assert call(envoy, path="/healthz").status == 200
    assert server.count("keys") + server.count("origins") == asked


REMOTE_DECISIONS = [
    # (entry, method, path, origin, status, body (None: upstream), counter)
    ({"id": "r-disabled", "disabled": True}, "GET", "/api/x", None, 401, UNAUTHORIZED, "denied_disabled"),
    ({"id": "r-expired", "expires_at": "2021-01-01T00:00:00Z"}, "GET", "/api/x", None, 401, UNAUTHORIZED,
     "denied_expired"),
    ({"id": "r-future", "not_before": "2099-01-01T00:00:00Z"}, "GET", "/api/x", None, 401, UNAUTHORIZED,
     "denied_not_yet_valid"),
    ({"id": "r-rules", "rules": [{"methods": ["GET"], "paths": ["/api/asset/{id}"]}]}, "GET", "/api/asset/a1", None,
     200, None, "allowed"),
    ({"id": "r-rules2", "rules": [{"methods": ["GET"], "paths": ["/api/asset/{id}"]}]}, "PATCH", "/api/asset/a1", None,
     403, forbidden("Endpoint not allowed for this API key"), "denied_endpoint"),
    ({"id": "r-backend"}, "GET", "/api/x", STATIC_ORIGIN, 403, forbidden("API key does not allow CORS access"),
     "denied_cors_backend_key"),
    ({"id": "r-window", "not_before": "2020-01-01T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z",
      "owner": "o-window"}, "GET", "/api/x", None, 200, None, "allowed"),
]


@pytest.mark.parametrize("entry,method,path,orig,status,body,counter", REMOTE_DECISIONS,
                         ids=[d[0]["id"] for d in REMOTE_DECISIONS])
def test_remote_entries_are_decided_exactly_as_static_ones(envoy, server, entry, method, path, orig, status, body,
                                                           counter):
    key = new_key()
    server.add(key, entry)
    for _ in range(2):  # the lookup, then the cached answer
        before = envoy.counter(counter)
        r = call(envoy, key, path, origin=orig, method=method)
        envoy.wait_counter(counter, before + 1)
        if body is None:
            assert r.status == 200
            assert r.upstream_all("x-api-key-id") == [entry["id"]]
        else:
            assert (r.status, r.body) == (status, body)
            assert r.upstream() is None
    assert 1 <= server.lookups(key) <= 2


def test_a_request_body_waits_for_the_lookup(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-body"})
    server.fault("slow", on="keys", delay=0.15)
    body = b"x" * 200_000
    r = http1(envoy.port, "POST", "/api/x", [bearer(key), ("content-type", "application/octet-stream")], body)
    assert r.status == 200 and r.upstream_all("x-api-key-id") == ["r-body"]
    other = new_key()
    server.add(other, {"id": "r-body2"})
    r = envoy.get2("/api/x", [bearer(other)], method="POST", body=body[:16000])  # one h2 DATA frame
    assert r.status == 200, (r.status, r.body[:200])
    assert r.upstream_all("x-api-key-id") == ["r-body2"]
    # Refused while the body is still arriving: the answer, not a hang.
    r = http1(envoy.port, "POST", "/api/x", [bearer(new_key())], body)
    assert_unauthorized(r)


def test_remote_cors_key_and_preflight_via_the_origins_endpoint():
    """Own server and Envoy: the origin answers must not be cached by earlier tests."""
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        web = new_key("web")
        server.add(web, {"id": "r-web", "cors": {"allowed_origins": [APP]}, "resources": ["s1"]})
        e = start_remote(server, base_config())
        try:
            # Preflight for an origin only a remote key allows.
            r = preflight(e, "/api/stream/s1", APP, "PATCH")
            assert r.status == 204, (r.status, r.body)
            assert r.header("access-control-allow-origin") == APP
            assert r.header("access-control-allow-methods") == "PATCH"
            assert server.origin_lookups(APP) >= 1
            asked = [q.path for q in server.requests if q.kind == "origins"]
            assert f"{PREFIX}/origins/https%3A%2F%2Fapp.example.com" in [p.replace("%3a", "%3A").replace("%2f", "%2F")
                                                                        for p in asked]
            # Not an allowed method / endpoint / origin.
            r = preflight(e, "/api/stream/s1", APP, "DELETE")
            assert (r.status, r.body) == (403, forbidden("CORS preflight not allowed"))
            r = preflight(e, "/api/stream/s1", ELSEWHERE, "GET")
            assert (r.status, r.body) == (403, forbidden("CORS preflight not allowed"))
            # The key itself, with the CORS rules of a static key.
            r = call(e, web, "/api/stream/s1", origin=APP)
            assert r.status == 200
            assert r.upstream_all("x-api-key-id") == ["r-web"]
            assert r.header("access-control-allow-origin") == APP
            r = call(e, web, "/api/stream/s2", origin=APP)
            assert (r.status, r.body) == (403, forbidden("Resource not allowed for this API key"))
            r = call(e, web, "/api/stream/s1", origin=ELSEWHERE)
            assert (r.status, r.body) == (403, forbidden("Origin not allowed"))
            # A 401 is readable by an origin only a remote key allows, not by others.
            r = call(e, new_key(), "/api/stream/s1", origin=APP)
            assert_unauthorized(r)
            assert r.cors_headers() == [("access-control-allow-origin", APP)]
            r = call(e, new_key(), "/api/stream/s1", origin=ELSEWHERE)
            assert_unauthorized(r)
            assert r.cors_headers() == []
            # Origin answers are cached like keys: at most one lookup per VM.
            warm_rs = on_every_worker(e, lambda: preflight(e, "/api/stream/s1", APP, "GET"))
            assert set(statuses(warm_rs)) == {204}
            cached = server.origin_lookups(APP)
            assert set(statuses([preflight(e, "/api/stream/s1", APP, "GET") for _ in range(20)])) == {204}
            assert server.origin_lookups(APP) == cached
            assert cached <= 2
            # The feed lists the origin when its key goes: preflights from it are refused.
            server.remove(web)
            ok, took = until(lambda: all(preflight(e, "/api/stream/s1", APP, "GET").status == 403
                                         for _ in range(10)), timeout=4.0)
            assert ok and took <= 2.0, f"{ok} after {took:.2f}s"
            assert server.violations == []
            assert_no_trap(e, web)
        finally:
            e.stop()


def test_origins_are_compared_exactly_as_for_static_keys():
    """allowed_origins are normalised (case, default port); the request's Origin is compared as
    sent, like static CORS keys: a non-browser spelling is refused, never a 503."""
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        web = new_key("web")
        server.add(web, {"id": "r-norm", "cors": {"allowed_origins": ["HTTPS://Norm.Example.com:443"]}})
        e = start_remote(server, base_config(), concurrency=1)
        try:
            r = preflight(e, "/api/stream/s1", "https://norm.example.com", "GET")
            assert r.status == 204 and r.header("access-control-allow-origin") == "https://norm.example.com"
            assert call(e, web, "/api/stream/s1", origin="https://norm.example.com").status == 200
            for odd in ("https://NORM.example.com", "https://norm.example.com:443"):
                r = preflight(e, "/api/stream/s1", odd, "GET")
                assert (r.status, r.body) == (403, forbidden("CORS preflight not allowed")), (odd, r.status, r.body)
                r = call(e, web, "/api/stream/s1", origin=odd)
                assert (r.status, r.body) == (403, forbidden("Origin not allowed")), (odd, r.status, r.body)
            assert server.violations == []
        finally:
            e.stop()


def test_a_remote_star_key_and_the_feed_listing_star():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        anywhere = new_key("any")
        server.add(anywhere, {"id": "r-anywhere", "cors": {"allowed_origins": ["*"]}})
        e = start_remote(server, base_config(changes_poll_ms=200), concurrency=1)
        try:
            origins = [f"https://o{i}.example" for i in range(3)]
            for o in origins:
                r = preflight(e, "/api/stream/s1", o, "GET")
                assert r.status == 204 and r.header("access-control-allow-origin") == o
                r = call(e, anywhere, "/api/stream/s1", origin=o)
                assert r.status == 200 and r.header("access-control-allow-origin") == o
            server.remove(anywhere)  # the feed lists "*": every cached origin answer goes
            ok, took = until(lambda: all(preflight(e, "/api/stream/s1", o, "GET").status == 403 for o in origins),
                             timeout=3.0)
            assert ok and took <= 1.0, f"{ok} after {took:.2f}s"
            assert_no_trap(e, anywhere)
        finally:
            e.stop()


def test_a_remote_key_on_a_public_endpoint(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-public"})
    r = call(envoy, key, "/healthz", origin="https://anyone.example")
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["r-public"]
    r = call(envoy, new_key(), "/healthz")
    assert_unauthorized(r)
    # The service down: no key is still public; a key sent there must be verified like
    # anywhere else, so an unverifiable one is the 503 (never a 401, never forwarded).
    server.kill()
    try:
        r = call(envoy, path="/healthz")
        assert r.status == 200 and r.upstream_all("x-api-key-id") == []
        assert_unavailable(call(envoy, new_key(), "/healthz"))
    finally:
        server.restart()


def test_log_lines_name_the_digest_prefix_or_the_id_never_the_key():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(changes_poll_ms=200), concurrency=1,
                         component_log_level="wasm:debug")
        try:
            good, unknown, failing, slow = (new_key(t) for t in ("good", "unknown", "failing", "slow"))
            server.add(good, {"id": "r-logged"})
            server.add(failing, {"id": "r-failing"})
            server.add(slow, {"id": "r-slow"})
            assert call(e, good).status == 200
            assert call(e, unknown).status == 401
            server.fault("status", on="keys", status=500)
            assert call(e, failing).status == 503
            server.fault("slow", on="keys", delay=0.5)
            assert call(e, slow).status == 503
            server.clear_faults()
            server.set_disabled(good)
            time.sleep(0.6)
            server.fault("status", on="changes", status=500)
            time.sleep(0.5)
            server.clear_faults()
            time.sleep(0.3)
            lines = [line for line in e.log().splitlines() if "wasm log keygate" in line]
            text = "\n".join(lines)
            for k in (good, unknown, failing, slow):
                assert k not in text, "a key in the log"
                assert digest(k) not in text, "a whole digest in the log (the first 8 hex characters name it)"
            assert digest(failing)[:8] in text, text[-2000:]
            assert "feed" in text  # the failing feed is logged
        finally:
            e.stop()


def test_authority_defaults_to_the_cluster_name_and_the_prefix_to_v1_filter():
    with KeyServer(prefix="/v1/filter", authority=CLUSTER) as server:
        key = new_key()
        server.add(key, {"id": "r-defaults"})
        e = start_remote(server, {"keys": [], "key_service": {"cluster": CLUSTER}}, concurrency=1)
        try:
            r = call(e, key)
            assert r.status == 200 and r.upstream_all("x-api-key-id") == ["r-defaults"]
            assert server.lookups(key) == 1
            assert server.violations == []
        finally:
            e.stop()


def test_a_custom_prefix_and_authority_are_used():
    with KeyServer(prefix="/internal/keygate/v7", authority="keys.example.internal") as server:
        key = new_key()
        server.add(key, {"id": "r-prefix"})
        cfg = {"keys": [], "key_service": {"cluster": CLUSTER, "authority": "keys.example.internal",
                                           "path_prefix": "/internal/keygate/v7"}}
        e = start_remote(server, cfg, concurrency=1)
        try:
            assert call(e, key).upstream_all("x-api-key-id") == ["r-prefix"]
            assert server.lookups(key) == 1
            assert server.count("changes") >= 1
            assert server.violations == []
        finally:
            e.stop()


REFUSED = [
    ("missing cluster", {"authority": "x"}, "key_service: missing field `cluster`"),
    ("unknown field", {"cluster": CLUSTER, "clusterz": "x"}, "key_service.clusterz: unknown field `clusterz`"),
    ("unknown cache field", {"cluster": CLUSTER, "cache": {"ttl": 5}}, "key_service.cache.ttl: unknown field `ttl`"),
    ("wrong type", {"cluster": CLUSTER, "timeout_ms": "250"}, "key_service.timeout_ms: invalid type: string"),
    ("negative", {"cluster": CLUSTER, "max_pending": -1}, "key_service.max_pending:"),
    ("not an object", "keygate-keys", "key_service: invalid type: string"),
]


@pytest.mark.parametrize("name,ks,line", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_key_service_refuses_the_configuration(envoy_factory, name, ks, line):
    e = envoy_factory({"keys": [], "key_service": ks}, expect_failure=True, clusters={CLUSTER: 9})
    log = e.log()
    assert e.proc.returncode != 0
    assert f"invalid configuration: {line}" in log, log[-3000:]
    assert "Unable to create Wasm plugin keygate" in log


def test_the_module_envoy_never_trapped(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-final"})
    assert set(statuses(many(envoy, 20, key))) == {200}
    assert server.violations == []
    assert_no_trap(envoy, key)
