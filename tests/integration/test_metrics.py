"""The key service's Prometheus metrics against the real `keygate serve` on SQLite.

Each kind of call the metrics count is made a known number of times (admin writes, key and
origin lookups, change-feed answers, a held poll, usage batches, rate-limit decisions over
gRPC, wrong admin tokens), then /metrics is read with the reference Prometheus parser and
every counter is checked exactly, and each database operation used has timed calls. Both
ways to scrape are checked: `/metrics` on the admin listener with the admin token, and
`/metrics` on `--metrics-listen` without one, where nothing else is served.
"""

from __future__ import annotations

import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
from prometheus_client.parser import text_string_to_metric_families

from support.service import Service, free_port, request, sha256_hex

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample, by its name and labels, as Prometheus itself reads the text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: dict, name: str, **labels) -> float | None:
    return all_samples.get((name, frozenset(labels.items())))


def scrape(s: Service, port: int) -> dict:
    r = request(port, "GET", "/metrics")
    assert r.status == 200, r
    assert r.headers["content-type"] == CONTENT_TYPE
    return samples(r.body.decode())


# A gRPC call without a gRPC library: the request is hand-encoded protobuf (strings only),
# sent over HTTP/2 with prior knowledge, as Envoy sends it.

def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def rate_limit_request(domain: str, entries: list[tuple[str, str]]) -> bytes:
    """envoy.service.ratelimit.v3.RateLimitRequest: domain (1), one descriptor (2) whose
    entries (1) each have a key (1) and a value (2)."""
    descriptor = b"".join(field(1, field(1, k.encode()) + field(2, v.encode())) for k, v in entries)
    return field(1, domain.encode()) + field(2, descriptor)


def should_rate_limit(port: int, message: bytes) -> tuple[str, int | None]:
    """One ShouldRateLimit call: its grpc-status and the response's overall_code (1 OK,
    2 OVER_LIMIT)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", RLS),
                                   (":authority", f"127.0.0.1:{port}"),
                                   ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(stream, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
        sock.sendall(conn.data_to_send())
        body, status, ended = b"", None, False
        while not ended:
            data = sock.recv(65536)
            assert data, "the rate-limit service closed the connection"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    status = dict(event.headers).get("grpc-status", status)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    message = body[5:]
    # overall_code is field 1, a varint: its tag is 0x08, first in the message.
    code = message[1] if message[:1] == b"\x08" else None
    return status, code


def test_every_metric_counts_exactly_what_was_done(services):
    metrics_port = free_port()
    s = services(args=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    assert s.lines[0].startswith("keygate serve: admin http://")
    assert s.lines[0].endswith(f", metrics http://127.0.0.1:{metrics_port}\n"), s.lines[0]

    # Admin writes: two keys, one of them listing an origin.
    created = [s.admin("POST", "/v1/keys", entry)
               for entry in ({"id": "m-plain"}, {"id": "m-cors", "cors": {"allowed_origins": ["https://a.example"]}})]
    assert [r.status for r in created] == [201, 201], created
    secret = created[0].json()["key"]

    # Key lookups: one found, one unknown digest, one that is not a digest at all.
    assert s.filter(f"/v1/filter/keys/{sha256_hex(secret)}").status == 200
    assert s.filter(f"/v1/filter/keys/{'0' * 64}").status == 404
    assert s.filter("/v1/filter/keys/not-a-digest").status == 404
    # Origin lookups: one with a live key, one without.
    assert s.filter("/v1/filter/origins/https%3A%2F%2Fa.example").json()["keys"]
    assert s.filter("/v1/filter/origins/https%3A%2F%2Fb.example").json() == {"keys": []}

    # The feed: the current cursor (empty), nothing new after it (empty), a cursor of
    # another database (reset), and a held poll answered by the next change (changes).
    cursor = s.cursor()
    assert s.changes(cursor)["keys"] == []
    assert s.changes("another-db.00000000.1").get("reset") is True
    held: dict = {}
    poll = threading.Thread(target=lambda: held.update(
        answer=s.filter(f"/v1/filter/changes?after={cursor}&wait_ms=10000")))
    poll.start()
    deadline = time.monotonic() + 5
    while value(scrape(s, metrics_port), "keygate_feed_held") != 1:
        assert time.monotonic() < deadline, "the poll was never held"
        time.sleep(0.05)
    assert s.admin("POST", "/v1/keys", {"id": "m-third"}).status == 201
    poll.join(timeout=10)
    assert held["answer"].status == 200 and held["answer"].json()["keys"], held

    # Usage: a batch counted (3 rows), the same batch again, one refused.
    minute = int(time.time() // 60 * 60_000)
    batch = {"batch": "metrics-vm-1", "minute": minute, "unkeyed": {"public": 1},
             "keys": [{"id": "m-plain", "counts": {"allowed": 3, "upstream_2xx": 2}}]}
    answers = [request(s.filter_port, "POST", "/v1/filter/usage", b, {"content-type": "application/json"})
               for b in (batch, batch, {"batch": "metrics-vm-1", "minute": 1, "keys": []})]
    assert [(r.status, r.json().get("counted")) for r in answers] == [(200, True), (200, False), (400, None)]

    # Rate limits: a key allowed one request a day, asked twice.
    limited = rate_limit_request("keygate", [("limits", "1/day"), ("key_id", "m-plain")])
    assert should_rate_limit(s.ratelimit_port, limited) == ("0", 1)
    assert should_rate_limit(s.ratelimit_port, limited) == ("0", 2)

    # The admin listener: /metrics needs the admin token; one wrong token is counted.
    assert s.admin("GET", "/metrics", token="").status == 401
    assert s.admin("GET", "/metrics", token="kg_not_an_admin").status == 401
    assert s.admin("GET", "/v1/nothing-here").status == 404
    on_admin = s.admin("GET", "/metrics")
    assert on_admin.status == 200, on_admin
    assert on_admin.headers["content-type"] == CONTENT_TYPE
    assert value(samples(on_admin.body.decode()), "keygate_lookups_total", kind="key", result="found") == 1

    m = scrape(s, metrics_port)
    expected = {
        ("keygate_lookups_total", (("kind", "key"), ("result", "found"))): 1,
        ("keygate_lookups_total", (("kind", "key"), ("result", "not_found"))): 2,
        ("keygate_lookups_total", (("kind", "key"), ("result", "error"))): 0,
        ("keygate_lookups_total", (("kind", "origin"), ("result", "found"))): 1,
        ("keygate_lookups_total", (("kind", "origin"), ("result", "not_found"))): 1,
        ("keygate_lookups_total", (("kind", "origin"), ("result", "error"))): 0,
        ("keygate_feed_answers_total", (("result", "empty"),)): 2,
        ("keygate_feed_answers_total", (("result", "reset"),)): 1,
        ("keygate_feed_answers_total", (("result", "changes"),)): 1,
        ("keygate_feed_held", ()): 0,
        ("keygate_usage_batches_total", (("result", "counted"),)): 1,
        ("keygate_usage_batches_total", (("result", "duplicate"),)): 1,
        ("keygate_usage_batches_total", (("result", "refused"),)): 1,
        ("keygate_usage_batches_total", (("result", "error"),)): 0,
        ("keygate_usage_rows_total", ()): 3,
        ("keygate_ratelimit_decisions_total", (("code", "ok"),)): 1,
        ("keygate_ratelimit_decisions_total", (("code", "over_limit"),)): 1,
        ("keygate_ratelimit_decisions_total", (("code", "error"),)): 0,
        ("keygate_admin_token_failures_total", ()): 1,
        ("keygate_admin_calls_total", (("method", "POST"), ("route", "/v1/keys"), ("status", "201"))): 3,
        ("keygate_admin_calls_total", (("method", "GET"), ("route", "/metrics"), ("status", "401"))): 2,
        ("keygate_admin_calls_total", (("method", "GET"), ("route", "/metrics"), ("status", "200"))): 1,
        ("keygate_admin_calls_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))): 1,
        # The database calls timed: one per lookup that reached it, per commit, per batch taken.
        ("keygate_db_seconds_count", (("op", "lookup"),)): 2,
        ("keygate_db_seconds_count", (("op", "origin"),)): 2,
        ("keygate_db_seconds_count", (("op", "write"),)): 3,
        ("keygate_db_seconds_count", (("op", "usage"),)): 2,
        # The move of recent usage minutes that starts the ten-minute roll-up, at startup.
        ("keygate_db_seconds_count", (("op", "usage_move"),)): 1,
    }
    got = {k: value(m, k[0], **dict(k[1])) for k in expected}
    assert got == expected
    # The feed is read once per answer and again each time a held poll wakes.
    assert value(m, "keygate_db_seconds_count", op="feed") >= 4
    # Every database call lands in the +Inf bucket.
    for op in ("lookup", "origin", "feed", "write", "usage", "usage_move"):
        assert value(m, "keygate_db_seconds_bucket", op=op, le="+Inf") == value(m, "keygate_db_seconds_count", op=op)
        assert value(m, "keygate_db_seconds_sum", op=op) > 0


def test_the_metrics_listener_serves_only_the_metrics(services):
    metrics_port = free_port()
    s = services(args=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
    r = request(metrics_port, "GET", "/metrics")
    assert (r.status, r.headers["content-type"]) == (200, CONTENT_TYPE)
    assert b"# TYPE keygate_lookups_total counter" in r.body
    for method, path, status in [("GET", "/", 404), ("GET", "/v1/metrics", 404), ("GET", "/v1/keys", 404),
                                 ("GET", "/metrics/x", 404), ("POST", "/metrics", 405)]:
        r = request(metrics_port, method, path, b"" if method == "POST" else None)
        assert r.status == status, (method, path, r)
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == ("Not Found" if status == 404 else "Method Not Allowed")
    # The admin listener keeps its own: the page needs no token, the metrics do.
    assert s.admin("GET", "/metrics", token="").status == 401


def test_without_metrics_listen_the_start_line_is_unchanged(services):
    s = services()
    assert s.lines[0].endswith(f"db sqlite:{s.workdir / 'keys.db'}\n"), s.lines[0]
    assert s.admin("GET", "/metrics").status == 200
