"""The key service fails in every way the fault-injecting server knows, through a real
Envoy (--concurrency 2). Every unverified key gets the exact 503, never a 200 and never a 401;
static keys and public endpoints keep working; once a fault clears, the same Envoy (no restart)
serves again; the VM never traps.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import h2.events
import pytest

from support.ecds import EcdsEnvoy
from support.harness import Envoy, forbidden, sha256_hex, static_cluster
from support.keyserver import KeyServer
from support.remote import (
    APP,
    AUTHORITY,
    CLUSTER,
    ELSEWHERE,
    PREFIX,
    STATIC,
    STATIC_CORS,
    STATIC_DISABLED,
    STATIC_ORIGIN,
    UNAVAILABLE,
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


@pytest.fixture(scope="module")
def server():
    s = KeyServer(prefix=PREFIX, authority=AUTHORITY).start()
    yield s
    s.kill()


@pytest.fixture(scope="module")
def envoy(server):
    e = start_remote(server, base_config(changes_poll_ms=200))
    yield e
    e.stop()


def module_remote(config: dict, concurrency: int = 1):
    """A module-scoped fixture body: one fake key service and one Envoy for every case that uses
    this configuration; each case uses keys (and origins) of its own and clears its faults."""
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, config, concurrency=concurrency)
        try:
            yield server, e
        finally:
            e.stop()


@pytest.fixture(scope="module")
def held_lookups():
    """(server, Envoy) for the cases that hold a lookup while its key or origin changes: one
    worker, timeout_ms 3000 (a held lookup still answers), the feed polled every 200 ms."""
    yield from module_remote(base_config(timeout_ms=3000, changes_poll_ms=200))


@pytest.fixture(scope="module")
def paused():
    """(server, Envoy) for the cases that hold a lookup while the request's body arrives."""
    yield from module_remote(base_config(timeout_ms=3000))


@pytest.fixture(autouse=True)
def no_faults_left(request):
    if "server" in request.fixturenames:
        s = request.getfixturevalue("server")
        s.clear_faults()
        s.restart()
    return


def recovers(e: Envoy, server: KeyServer) -> None:
    """The fault is gone: a key new to every VM works, on both workers, without a restart."""
    server.clear_faults()
    server.restart()
    key = new_key("after")
    server.add(key, {"id": "r-after-fault"})
    rs = on_every_worker(e, lambda: call(e, key))
    assert set(statuses(rs)) == {200}, statuses(rs)
    assert rs[0].upstream_all("x-api-key-id") == ["r-after-fault"]
    assert_no_trap(e, key)


def nested(depth: int) -> bytes:
    return b'{"sha256": "@SHA256@", "key": ' + b"[" * depth + b"]" * depth + b"}"


# (name, fault kwargs for KeyServer.fault on the keys and origins endpoints, or "kill")
FAULTS = [
    ("status 500", dict(kind="status", status=500)),
    ("status 502", dict(kind="status", status=502)),
    ("status 503", dict(kind="status", status=503)),
    ("status 429", dict(kind="status", status=429)),
    ("status 403", dict(kind="status", status=403)),
    ("status 301", dict(kind="status", status=301)),
    ("status 204", dict(kind="status", status=204)),
    ("slower than timeout_ms", dict(kind="slow", delay=1.0)),
    ("connection reset", dict(kind="reset")),
    ("truncated body", dict(kind="truncated_body")),
    ("truncated json", dict(kind="truncated_json")),
    ("10 MiB body", dict(kind="huge")),
    ("64 KiB + 1 body", dict(kind="padded", size=64 * 1024 + 1)),
    ("text/plain", dict(kind="wrong_type", content_type="text/plain")),
    ("text/html", dict(kind="wrong_type", content_type="text/html; charset=utf-8")),
    ("empty content-type", dict(kind="wrong_type", content_type="")),
    ("empty body", dict(kind="body", body=b"")),
    ("array", dict(kind="body", body=b"[]")),
    ("null", dict(kind="body", body=b"null")),
    ("empty object", dict(kind="body", body=b"{}")),
    ("no sha256", dict(kind="body", body=b'{"key": {"id": "x"}}')),
    ("another sha256", dict(kind="body", body=b'{"sha256": "' + b"ab" * 32 + b'", "key": {"id": "x"}}')),
    ("key null", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": null}')),
    ("entry without id", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"owner": "o"}}')),
    ("bad id", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "bad id"}}')),
    ("unknown entry field", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x", "unknown": 1}}')),
    (
        "entry with sha256",
        dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x", "sha256": "' + b"a" * 64 + b'"}}'),
    ),
    ("entry with key", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x", "key": "plain"}}')),
    ("bad timestamp", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x", "expires_at": "soon"}}')),
    ("unknown envelope field", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x"}, "extra": 1}')),
    ("invalid utf-8", dict(kind="body", body=b'{"sha256": "@SHA256@", "key": {"id": "x\xff\xfe"}}')),
    ("nested 10000 deep", dict(kind="body", body=nested(10000))),
    ("service killed", "kill"),
]


@pytest.mark.parametrize("name,fault", FAULTS, ids=[f[0] for f in FAULTS])
def test_lookup_fault_is_the_exact_503_and_clears(envoy, server, name, fault):
    key = new_key()
    server.add(key, {"id": "r-fault", "owner": "o"})
    if fault == "kill":
        server.kill()
    else:
        server.fault(on=("keys", "origins"), **fault)
    before = envoy.counters()
    t = time.monotonic()
    r = call(envoy, key)
    took = time.monotonic() - t
    assert_unavailable(r)
    assert took < 0.9, f"503 after {took:.2f}s (timeout_ms is 250)"
    # CORS headers as a 401 would have: readable by an origin a static CORS key allows, not by others.
    assert_unavailable(call(envoy, key, origin=STATIC_ORIGIN), readable_by=STATIC_ORIGIN)
    assert_unavailable(call(envoy, key, origin=ELSEWHERE), origin_sent=True)
    envoy.wait_counter("remote.unavailable", before["remote.unavailable"] + 3)
    envoy.wait_counter("remote.errors", before["remote.errors"] + 1, at_least=True)
    assert envoy.counter("allowed") == before["allowed"]
    # Static keys are unaffected by the fault.
    assert call(envoy, STATIC).upstream_all("x-api-key-id") == ["static-s"]
    server.clear_faults()
    server.restart()
    r = call(envoy, key)
    assert r.status == 200, (r.status, r.body)
    assert r.upstream_all("x-api-key-id") == ["r-fault"]
    recovers(envoy, server)


def test_a_body_of_exactly_64_kib_is_accepted(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-64k"})
    server.fault("padded", on="keys", size=64 * 1024)
    r = call(envoy, key)
    assert r.status == 200, (r.status, r.body)
    assert r.upstream_all("x-api-key-id") == ["r-64k"]


def test_json_content_type_with_parameters_is_accepted(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-charset"})
    server.fault("wrong_type", on="keys", content_type="application/json; charset=utf-8")
    assert call(envoy, key).upstream_all("x-api-key-id") == ["r-charset"]


def test_a_hand_written_answer_naming_the_digest_is_taken(envoy, server):
    """The control for the malformed bodies above: `@SHA256@` becomes the digest asked for, so
    each of them is refused for its own flaw, not for naming no digest."""
    server.fault("body", on="keys", body=b'{"sha256": "@SHA256@", "key": {"id": "r-hand-written"}}')
    assert call(envoy, new_key()).upstream_all("x-api-key-id") == ["r-hand-written"]
    server.clear_faults()
    recovers(envoy, server)


def test_an_answer_for_another_key_is_the_503(envoy, server):
    key, other = new_key(), new_key()
    server.add(other, {"id": "r-other"})
    server.fault("other_key", on="keys", key=other)
    # The answer names the other key's digest: never taken as this key's entry.
    assert_unavailable(call(envoy, key))
    server.clear_faults()
    assert_unauthorized(call(envoy, new_key()))
    recovers(envoy, server)


def test_preflight_when_the_origins_endpoint_fails(envoy, server):
    origin = f"https://pf-{new_key('o').lower().replace('_', '')[:20]}.example"
    web = new_key("web")
    server.add(web, {"id": "r-pf", "cors": {"allowed_origins": [origin]}})
    server.fault("status", on="origins", status=500)
    r = preflight(envoy, "/api/stream/s1", origin, "GET")
    assert (r.status, r.body) == (503, b'{"error": "Service Unavailable", "message": "API key could not be verified"}')
    assert r.all("retry-after") == ["1"]
    assert r.header("content-type") == "application/json"
    assert r.header("access-control-allow-origin") is None
    # A static CORS origin needs no lookup.
    assert preflight(envoy, "/api/stream/s1", STATIC_ORIGIN, "GET").status == 204
    server.clear_faults()
    r = preflight(envoy, "/api/stream/s1", origin, "GET")
    assert r.status == 204 and r.header("access-control-allow-origin") == origin
    recovers(envoy, server)


def test_an_origins_answer_with_keys_that_do_not_list_the_origin_is_an_error(envoy, server):
    origin = f"https://pf-{secrets.token_hex(6)}.example"
    server.fault("body", on="origins", body=b'{"keys": [{"id": "not-cors"}]}')
    r = preflight(envoy, "/api/stream/s1", origin, "GET")
    assert (r.status, r.body) == (503, UNAVAILABLE)
    server.fault("body", on="origins",
                 body=b'{"keys": [{"id": "other", "cors": {"allowed_origins": ["https://other.example"]}}]}')
    r = preflight(envoy, "/api/stream/s1", f"https://pf-{secrets.token_hex(6)}.example", "GET")
    assert (r.status, r.body) == (503, UNAVAILABLE)
    recovers(envoy, server)


def test_every_request_waiting_on_a_failed_lookup_gets_the_503(envoy, server):
    key = new_key()
    server.add(key, {"id": "r-shared-fail"})
    server.fault("status", on="keys", status=500, delay=0.15)
    before = envoy.counter("remote.unavailable")
    rs = together([lambda: call(envoy, key) for _ in range(12)])
    for r in rs:
        assert_unavailable(r)
    assert 1 <= server.lookups(key) <= 2
    envoy.wait_counter("remote.unavailable", before + 12)
    recovers(envoy, server)


def test_static_keys_and_public_endpoints_work_while_the_service_is_down(envoy, server):
    server.kill()
    before = envoy.counters()
    for r in many(envoy, 20, STATIC):
        assert r.status == 200 and r.upstream_all("x-api-key-id") == ["static-s"]
    for r in many(envoy, 10, STATIC_DISABLED):
        assert_unauthorized(r)
    r = call(envoy, STATIC_CORS, "/api/stream/s1", origin=STATIC_ORIGIN)
    assert r.status == 200 and r.header("access-control-allow-origin") == STATIC_ORIGIN
    assert preflight(envoy, "/api/stream/s1", STATIC_ORIGIN, "PATCH").status == 204
    for r in many(envoy, 10, path="/healthz"):
        assert r.status == 200 and r.upstream() is not None
    # Unverifiable keys are 503, never 401 (which would claim they are invalid).
    unknown = many(envoy, 20, None, extra=())  # no key at all: a plain 401, no lookup needed
    assert set(statuses(unknown)) == {401}
    rs = [call(envoy, new_key()) for _ in range(10)]
    for r in rs:
        assert_unavailable(r)
    envoy.wait_counter("remote.unavailable", before["remote.unavailable"] + 10)
    recovers(envoy, server)


FEED_FAULTS = [
    ("connection reset", dict(kind="reset")),
    ("truncated json", dict(kind="truncated_json")),
    ("text/plain", dict(kind="wrong_type")),
    ("10 MiB body", dict(kind="huge")),
    ("empty cursor", dict(kind="body", body=b'{"cursor": "", "keys": []}')),
    ("cursor with a space", dict(kind="body", body=b'{"cursor": "a b", "keys": []}')),
    ("long cursor", dict(kind="body", body=json.dumps({"cursor": "c" * 300, "keys": []}).encode())),
    ("not a digest", dict(kind="body", body=b'{"cursor": "c", "keys": ["nothex"]}')),
    ("bad origin", dict(kind="body", body=b'{"cursor": "c", "keys": [], "origins": ["not an origin"]}')),
    ("no cursor", dict(kind="body", body=b'{"keys": []}')),
    ("nested 10000 deep", dict(kind="body", body=b'{"cursor": "c", "keys": ' + b"[" * 10000 + b"]" * 10000 + b"}")),
    ("unknown field", dict(kind="body", body=b'{"cursor": "c", "keys": [], "extra": 1}')),
    ("status 404", dict(kind="status", status=404)),
    ("slower than timeout_ms", dict(kind="slow", delay=1.0)),
]


@pytest.mark.parametrize("name,fault", FEED_FAULTS, ids=[f[0] for f in FEED_FAULTS])
def test_a_failing_feed_is_counted_keys_keep_working_and_it_recovers(envoy, server, name, fault):
    cached = new_key()
    server.add(cached, {"id": "r-feed-cached"})
    assert set(statuses(warm(envoy, cached))) == {200}
    errors = envoy.counter("remote.feed_errors")
    server.fault(on="changes", **fault)
    # Every VM's polls fail (changes_poll_ms 200; a slow answer fails after timeout_ms 250).
    envoy.wait_counter("remote.feed_errors", errors + 3, at_least=True, timeout=3.0)
    assert set(statuses(many(envoy, 20, cached))) == {200}
    fresh = new_key()
    server.add(fresh, {"id": "r-feed-fresh"})
    assert set(statuses(many(envoy, 10, fresh))) == {200}
    assert set(statuses(many(envoy, 10, STATIC))) == {200}
    server.clear_faults()
    # Polling resumes: a revocation made now is seen on every worker.
    server.remove(cached)
    ok, took = until(lambda: all(r.status == 401 for r in many(envoy, 10, cached)), timeout=4.0)
    assert ok and took <= 2.0, f"revocation after the feed recovered: {ok} after {took:.2f}s"
    recovers(envoy, server)


def test_stale_if_error_serves_expired_entries_for_a_while_but_never_invalidated_ones():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(changes_poll_ms=200, cache={
            "ttl_seconds": 1, "negative_ttl_seconds": 1, "stale_if_error_seconds": 3}))
        try:
            kept, dropped = new_key("kept"), new_key("dropped")
            server.add(kept, {"id": "r-kept"})
            server.add(dropped, {"id": "r-dropped"})
            for k in (kept, dropped):
                assert set(statuses(warm(e, k, asked=lambda k=k: server.lookups(k)))) == {200}
            with server._lock:
                cached_at = [q.at for q in server.requests if q.kind == "keys"]
            first, last = min(cached_at), max(cached_at)
            # The service now fails every lookup; the feed still works and lists `dropped`.
            server.fault("status", on=("keys", "origins"), status=500)
            server.feed_key(dropped)
            time.sleep(max(0.0, last + 1.3 - time.monotonic()))  # every entry has expired
            assert time.monotonic() < first + 3.5
            for r in many(e, 20, kept):
                assert r.status == 200, (r.status, r.body)
                assert r.upstream_all("x-api-key-id") == ["r-kept"]
            for r in many(e, 20, dropped):
                assert_unavailable(r)
            assert_unavailable(call(e, new_key()))  # never seen: nothing to serve
            # Unreachable instead of 500: still stale-served.
            server.kill()
            assert time.monotonic() < first + 3.8
            assert set(statuses(many(e, 10, kept))) == {200}
            # Past the stale window (ttl 1 + stale 3 after caching): 503.
            time.sleep(max(0.0, last + 1 + 3 + 0.5 - time.monotonic()))
            for r in many(e, 20, kept):
                assert_unavailable(r)
            server.restart()
            server.clear_faults()
            assert set(statuses(many(e, 10, kept))) == {200}
            assert set(statuses(many(e, 10, dropped))) == {200}
            assert_no_trap(e, kept, dropped)
        finally:
            e.stop()


def test_an_unknown_cluster_is_503_and_static_keys_keep_working():
    e = start_remote(None, base_config(cluster="no-such-cluster"))
    try:
        before = e.counters()
        for r in many(e, 10, new_key()):
            assert_unavailable(r)
        assert_unavailable(call(e, new_key(), origin=STATIC_ORIGIN), readable_by=STATIC_ORIGIN)
        for r in many(e, 10, STATIC):
            assert r.status == 200 and r.upstream_all("x-api-key-id") == ["static-s"]
        assert call(e, path="/healthz").status == 200
        e.wait_counter("remote.unavailable", before["remote.unavailable"] + 11)
        assert_no_trap(e)
    finally:
        e.stop()


def test_random_key_flood_with_the_service_down_never_evicts_a_valid_key():
    """2,000 random keys while the service is down (the flood with the service up, and
    max_pending, run under load in test_faults_under_load.py): each is the 503, and the valid
    key's cached answer is never evicted (cache of 50 entries)."""
    max_pending = 8
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(max_pending=max_pending, cache={"max_entries": 50}))
        try:
            valid = new_key("valid")
            server.add(valid, {"id": "r-valid"})
            assert set(statuses(warm(e, valid, asked=lambda: server.lookups(valid)))) == {200}
            asked = server.lookups(valid)
            server.kill()
            unavailable = e.counter("remote.unavailable")
            done = threading.Event()
            valid_statuses = []

            def keep_calling():
                while not done.is_set():
                    valid_statuses.append(call(e, valid).status)
                    time.sleep(0.01)

            checker = threading.Thread(target=keep_calling)
            checker.start()
            t = time.monotonic()
            try:
                with ThreadPoolExecutor(16) as pool:
                    flood = list(pool.map(lambda _: call(e, new_key("flood")).status, range(2000)))
            finally:
                done.set()
                checker.join()
            took = time.monotonic() - t
            assert set(flood) == {503}, set(flood)
            assert valid_statuses and set(valid_statuses) == {200}, set(valid_statuses)
            assert server.lookups(valid) == asked, "a random key evicted the valid key's entry"
            e.wait_counter("remote.unavailable", unavailable + len(flood))
            assert took < 60
            server.clear_faults()
            server.restart()
            assert set(statuses(many(e, 20, valid))) == {200}
            assert_no_trap(e, valid)
        finally:
            e.stop()


def h2_request_headers(key: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", b"/api/x"), (b":scheme", b"http"), (b":authority", b"localhost"),
            (b"authorization", f"Bearer {key}".encode())]


def test_a_stream_reset_while_its_lookup_is_in_flight():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(timeout_ms=2000))
        try:
            # Two streams on one connection (one worker, one VM) wait on one lookup; the first is reset.
            key = new_key()
            server.add(key, {"id": "r-reset-stream"})
            server.fault("hold", on="keys")
            conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
            with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
                conn.initiate_connection()
                conn.send_headers(1, h2_request_headers(key), end_stream=True)
                conn.send_headers(3, h2_request_headers(key), end_stream=True)
                s.sendall(conn.data_to_send())
                assert until(lambda: server.lookups(key) >= 1, 2.0)[0]
                time.sleep(0.05)
                conn.reset_stream(1)
                s.sendall(conn.data_to_send())
                time.sleep(0.05)
                server.release()  # the answer arrives for one stream that is gone and one that waits
                status, body, ended = 0, b"", False
                while not ended:
                    data = s.recv(65536)
                    if not data:
                        break
                    for ev in conn.receive_data(data):
                        if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3:
                            status = int(dict(ev.headers)[b":status"])
                        elif isinstance(ev, h2.events.DataReceived):
                            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                            if ev.stream_id == 3:
                                body += ev.data
                        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)) and ev.stream_id == 3:
                            ended = True
                    s.sendall(conn.data_to_send())
            assert status == 200, (status, body[:200])
            assert b'"x-api-key-id", "r-reset-stream"' in body
            assert server.lookups(key) == 1
            server.clear_faults()

            # Twenty connections whose only stream goes away while its lookup is held.
            keys = [new_key("gone") for _ in range(20)]
            for i, k in enumerate(keys):
                server.add(k, {"id": f"r-gone-{i}"})
            server.fault("hold", on="keys")
            base = server.count("keys")
            socks = []
            for k in keys:
                s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
                s.sendall(f"GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {k}\r\n\r\n".encode())
                socks.append(s)
            assert server.wait_for("keys", base + 20, timeout=3.0), server.count("keys") - base
            for s in socks:
                s.close()
            time.sleep(0.1)
            server.release()
            server.clear_faults()
            time.sleep(0.1)
            for i, k in enumerate(keys):
                r = call(e, k)
                assert r.status == 200 and r.upstream_all("x-api-key-id") == [f"r-gone-{i}"], (r.status, r.body)
            # Failed answers (500 after 0.3 s) for streams that are gone.
            failing = [new_key("gone-500") for _ in range(10)]
            server.fault("status", on="keys", status=500, delay=0.3)
            base = server.count("keys")
            socks = []
            for k in failing:
                s = socket.create_connection(("127.0.0.1", e.port), timeout=10)
                s.sendall(f"GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {k}\r\n\r\n".encode())
                socks.append(s)
            assert server.wait_for("keys", base + 10, timeout=3.0)
            for s in socks:
                s.close()
            time.sleep(0.5)
            server.clear_faults()
            fine = new_key("fine")
            server.add(fine, {"id": "r-fine"})
            assert set(statuses(many(e, 10, fine))) == {200}

            # A lookup that times out after its stream is gone.
            late = new_key("late")
            server.add(late, {"id": "r-late"})
            server.fault("slow", on="keys", delay=2.5)
            with socket.create_connection(("127.0.0.1", e.port), timeout=10) as s:
                s.sendall(f"GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {late}\r\n\r\n".encode())
                assert until(lambda: server.lookups(late) >= 1, 2.0)[0]
            time.sleep(2.2)  # past timeout_ms 2000
            server.clear_faults()
            assert call(e, late).upstream_all("x-api-key-id") == ["r-late"]
            for r in many(e, 20, late):
                assert r.status == 200
            assert_no_trap(e, key, late, *keys)
        finally:
            e.stop()


def test_report_mode_lets_unverified_keys_through_marked():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, {**base_config(), "mode": "report"}, concurrency=1)
        try:
            server.kill()
            r = call(e, new_key(), extra=[("x-keygate-would-deny", "forged"), ("x-api-key-id", "forged")])
            assert r.status == 200, (r.status, r.body)
            assert r.upstream_all("x-keygate-would-deny") == ["remote.unavailable"]
            assert r.upstream_all("x-api-key-id") == []
            r = call(e, STATIC)
            assert r.upstream_all("x-api-key-id") == ["static-s"]
            assert r.upstream_all("x-keygate-would-deny") == []
            server.restart()
            r = call(e, new_key())  # the service says 404
            assert r.status == 200 and r.upstream_all("x-keygate-would-deny") == ["denied_unknown"]
            known = new_key()
            server.add(known, {"id": "r-report"})
            r = call(e, known)
            assert r.upstream_all("x-api-key-id") == ["r-report"] and r.upstream_all("x-keygate-would-deny") == []
            assert_no_trap(e)
        finally:
            e.stop()


def test_a_table_pushed_while_a_lookup_is_held():
    """ECDS replaces the plugin configuration while requests wait on a lookup (the root they
    paused under is replaced): they are still answered, and the new configuration serves."""
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        first = base_config(timeout_ms=5000)
        ecds = EcdsEnvoy(first)
        ecds.envoy.concurrency = 2
        ecds.envoy.bootstrap["static_resources"]["clusters"].append(static_cluster(CLUSTER, server.port))
        ecds.start()
        e = ecds.envoy
        try:
            key = new_key()
            server.add(key, {"id": "r-held"})
            promoted = new_key("promoted")  # cached as a remote key, then pushed into the table
            server.add(promoted, {"id": "r-promoted"})
            assert set(statuses(warm(e, promoted, asked=lambda: server.lookups(promoted)))) == {200}
            server.fault("hold", on="keys")
            held = []
            t = threading.Thread(target=lambda: held.append(call(e, key)))
            t.start()
            assert until(lambda: server.lookups(key) >= 1, 3.0)[0]
            second = base_config(timeout_ms=5000)
            second["keys"].append({"id": "pushed", "sha256": sha256_hex("pushed-key")})
            second["keys"].append({"id": "static-promoted", "sha256": sha256_hex(promoted)})
            ecds.push(second)
            time.sleep(0.1)
            server.release()
            t.join(10)
            assert held and held[0].status == 200, (held[0].status, held[0].body) if held else "no answer"
            assert held[0].upstream_all("x-api-key-id") == ["r-held"]
            server.clear_faults()
            assert set(statuses(many(e, 10, "pushed-key"))) == {200}
            assert set(statuses(many(e, 10, key))) == {200}
            # The static table wins over the remote answer cached before the push.
            for r in many(e, 20, promoted):
                assert r.upstream_all("x-api-key-id") == ["static-promoted"]

            # New key_service settings (a new cache) while a lookup is held.
            changed = base_config(timeout_ms=6000, cache={"ttl_seconds": 30})
            changed["keys"] = second["keys"]
            third = new_key()
            server.add(third, {"id": "r-held-3"})
            server.fault("hold", on="keys")
            held = []
            t = threading.Thread(target=lambda: held.append(call(e, third)))
            t.start()
            assert until(lambda: server.lookups(third) >= 1, 3.0)[0]
            ecds.push(changed)
            time.sleep(0.1)
            server.release()
            server.clear_faults()
            t.join(10)
            assert held, "no answer"
            assert held[0].status in (200, 503), (held[0].status, held[0].body)
            if held[0].status == 503:
                assert_unavailable(held[0])
            else:
                assert held[0].upstream_all("x-api-key-id") == ["r-held-3"]
            assert set(statuses(many(e, 10, third))) == {200}
            second = changed

            # The key service taken out of the configuration while a lookup is held.
            other = new_key()
            server.add(other, {"id": "r-held-2"})
            server.fault("hold", on="keys")
            held = []
            t = threading.Thread(target=lambda: held.append(call(e, other)))
            t.start()
            assert until(lambda: server.lookups(other) >= 1, 3.0)[0]
            ecds.push({k: v for k, v in second.items() if k != "key_service"})
            time.sleep(0.1)
            server.release()
            t.join(10)
            assert held, "no answer"
            assert held[0].status in (200, 503), (held[0].status, held[0].body)
            if held[0].status == 503:
                assert_unavailable(held[0])
            server.clear_faults()
            # Without a key service, keys the table does not hold are unknown; no lookups any more.
            asked = server.count("keys")
            for r in many(e, 10, new_key()):
                assert r.status == 401
            assert server.count("keys") == asked
            assert set(statuses(many(e, 10, "pushed-key"))) == {200}
            assert_no_trap(e, key, other)
        finally:
            server.clear_faults()
            ecds.stop()


@pytest.mark.parametrize("change", ["disabled", "removed", "created", "reset"])
def test_a_change_listed_while_its_lookup_is_in_flight_wins(held_lookups, change):
    """The service answers from its state when the lookup arrived; the key changes and the feed
    lists it before that answer reaches the VM. The late answer must not outlive the change:
    the key is decided by its new state within changes_poll_ms plus a round trip."""
    server, e = held_lookups
    try:
        key = new_key()
        if change != "created":
            server.add(key, {"id": "r-race"})
        else:
            assert_unauthorized(call(e, new_key()))  # (a 404 on record for another key)
        server.fault("hold", on="keys", snapshot=True)
        answers = []
        t = threading.Thread(target=lambda: answers.append(call(e, key)))
        t.start()
        assert until(lambda: server.lookups(key) >= 1, 3.0)[0]
        with server._lock:
            polls = server.counts["changes"]
        if change == "disabled":
            server.set_disabled(key)
        elif change == "removed":
            server.remove(key)
        elif change == "created":
            server.add(key, {"id": "r-race"}, feed=True)
        else:
            server.set_disabled(key, feed=False)
            server.force_reset(times=1000)
        # The feed has answered (at least twice) since the change.
        assert until(lambda: server.count("changes") >= polls + 2, 3.0)[0]
        server.release()
        t.join(10)
        assert answers, "no answer"
        # The request in flight came before the change: it gets the answer it waited for,
        # the key's state before the change.
        if change == "created":
            assert_unauthorized(answers[0])
        else:
            assert answers[0].status == 200, (answers[0].status, answers[0].body)
            assert answers[0].upstream_all("x-api-key-id") == ["r-race"], answers[0].body
        server.clear_faults()
        want = 200 if change == "created" else 401
        # After the change every later request sees it (allow one more poll and a round trip).
        ok, took = until(lambda: call(e, key).status == want, timeout=3.0)
        assert ok, f"the answer in flight outlived the change ({change}): still {call(e, key).status}"
        assert took <= 0.5, f"{change}: {took:.2f}s after the change had been listed"
        assert set(statuses(many(e, 10, key))) == {want}
        assert_no_trap(e, key)
    finally:
        server.clear_faults()


@pytest.mark.parametrize("listed", ["the origin", "*"])
def test_an_origin_listed_while_its_lookup_is_in_flight_wins(held_lookups, listed):
    server, e = held_lookups
    try:
        origin = f"https://race-{secrets.token_hex(4)}.example"
        web = new_key("web")
        server.add(web, {"id": "r-race-web", "cors": {"allowed_origins": [origin if listed != "*" else "*"]}})
        polls = server.count("changes")
        assert until(lambda: server.count("changes") >= polls + 2, 3.0)[0]  # the creation went through the feed
        server.fault("hold", on="origins", snapshot=True)
        answers = []
        t = threading.Thread(target=lambda: answers.append(preflight(e, "/api/stream/s1", origin, "GET")))
        t.start()
        assert until(lambda: server.count("origins") >= 1, 3.0)[0]
        polls = server.count("changes")
        server.remove(web)  # the feed lists the origin (or "*")
        assert until(lambda: server.count("changes") >= polls + 2, 3.0)[0]
        server.release()
        t.join(10)
        # The origin's state before the change (the answer it waited for) or after it (that
        # answer dropped, the origin asked again): exactly one of the two.
        assert answers, "no answer"
        if answers[0].status == 204:
            assert answers[0].header("access-control-allow-origin") == origin
        else:
            assert (answers[0].status, answers[0].body) == (403, forbidden("CORS preflight not allowed")), answers[0]
        server.clear_faults()
        ok, took = until(lambda: preflight(e, "/api/stream/s1", origin, "GET").status == 403, timeout=3.0)
        assert ok, "the origin answer in flight outlived the change"
        assert took <= 0.5, f"{took:.2f}s after the change had been listed"
        assert_no_trap(e, web)
    finally:
        server.clear_faults()


def test_a_feed_answer_near_64_kib_is_read_whole():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(changes_poll_ms=200), concurrency=1)
        try:
            key = new_key()
            server.add(key, {"id": "r-big-feed"})
            assert set(statuses(warm(e, key, asked=lambda: server.lookups(key)))) == {200}
            errors, invalidations = e.counter("remote.feed_errors"), e.counter("remote.invalidations")
            with server._lock:  # one batch: the next poll answers all of it (about 61 KB)
                for _ in range(900):
                    server.feed_key(new_key("noise"))
                server.set_disabled(key)
            ok, took = until(lambda: call(e, key).status == 401, timeout=3.0)
            assert ok and took <= 1.0, f"{ok} after {took:.2f}s"
            assert e.counter("remote.feed_errors") == errors
            e.wait_counter("remote.invalidations", invalidations + 1, at_least=True)
            assert_no_trap(e, key)
        finally:
            server.clear_faults()
            e.stop()


@pytest.mark.parametrize("origin_cached", [False, True], ids=["origin not cached", "origin cached"])
def test_a_503_is_readable_by_an_origin_only_a_remote_key_allows(origin_cached):
    """CORS headers on the 503 as a 401 would have them: for an origin that only a remote key
    lists, the 401 is readable (the origins endpoint says so), so the 503 is too."""
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(), concurrency=1)
        try:
            web = new_key("web")
            server.add(web, {"id": "r-web", "cors": {"allowed_origins": [APP]}})
            if origin_cached:
                r = call(e, new_key(), "/api/stream/s1", origin=APP)
                assert_unauthorized(r)
                assert r.cors_headers() == [("access-control-allow-origin", APP)]
            server.fault("status", on="keys", status=500)
            r = call(e, new_key(), "/api/stream/s1", origin=APP)
            assert_unavailable(r, readable_by=APP)
            r = call(e, new_key(), "/api/stream/s1", origin=ELSEWHERE)
            assert_unavailable(r, origin_sent=True)
            assert_no_trap(e, web)
        finally:
            e.stop()


def h2_exchange(port: int, key: str, body: bytes, trailers: bool, on_sent=None, timeout: float = 10):
    """One h2 request with a body (and trailers); on_sent() runs once it is all sent.
    Returns (status, headers, body)."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        conn.initiate_connection()
        hdrs = h2_request_headers(key)
        hdrs[0] = (b":method", b"POST")
        conn.send_headers(1, hdrs, end_stream=False)
        conn.send_data(1, body, end_stream=not trailers)
        if trailers:
            conn.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)
        s.sendall(conn.data_to_send())
        if on_sent:
            on_sent()
        status, headers, data, ended = 0, [], b"", False
        while not ended:
            chunk = s.recv(65536)
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    headers = ev.headers
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    data += ev.data
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            s.sendall(conn.data_to_send())
    return status, headers, data


@pytest.mark.parametrize("trailers", [False, True], ids=["body", "body and trailers"])
def test_a_paused_request_cannot_slip_through_while_its_body_arrives(paused, trailers):
    server, e = paused
    try:
        unknown, known = new_key("unknown"), new_key("known")
        server.add(known, {"id": "r-known"})
        for key, want in ((unknown, 401), (known, 200)):
            server.fault("hold", on="keys")
            upstream_before = e.stat("cluster.echo.upstream_rq_total")
            seen = []

            def after_sent(key=key, seen=seen):
                assert until(lambda: server.lookups(key) >= 1, 3.0)[0]
                time.sleep(0.3)  # body (and trailers) delivered while the lookup is held
                seen.append(e.stat("cluster.echo.upstream_rq_total"))
                server.release()

            status, _, data = h2_exchange(e.port, key, b"b" * 4000, trailers, on_sent=after_sent)
            server.clear_faults()
            assert seen == [upstream_before], "the request reached the upstream before its key was decided"
            assert status == want, (status, data[:200])
            if want == 401:
                assert data == b'{"error": "Unauthorized", "message": "Invalid API key"}'
            else:
                assert b'"x-api-key-id", "r-known"' in data
                after = e.stat("cluster.echo.upstream_rq_total")
                assert after == upstream_before + 1  # (the counter does count upstream requests)
        assert_no_trap(e, unknown, known)
    finally:
        server.clear_faults()


def test_the_module_envoy_serves_after_every_fault(envoy, server):
    recovers(envoy, server)
    fresh = new_key()
    server.add(fresh, {"id": "r-end"})
    assert set(statuses(many(envoy, 20, fresh))) == {200}
    server.remove(fresh)
    ok, took = until(lambda: all(r.status == 401 for r in many(envoy, 10, fresh)), timeout=4.0)
    assert ok and took <= 2.0
    assert server.violations == []
    assert_no_trap(envoy, fresh)
