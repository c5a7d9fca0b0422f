"""Remote keys through a real Envoy: the key service's settings as tests write them, requests on
fresh connections (which the kernel spreads over the workers), waits that reach every worker's
VM, and the exact answers the filter gives when a key cannot be verified.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from support.harness import UNAUTHORIZED, Envoy, Response, bearer, http1, sha256_hex
from support.keyserver import KeyServer

AUTHORITY = "keygate-keys.internal"
PREFIX = "/v1/filter"
CLUSTER = "keygate-keys"
UNAVAILABLE = b'{"error": "Service Unavailable", "message": "API key could not be verified"}'
TRAP_SIGNS = ("Uncaught", "RuntimeError", "panicked", "wasm trap", "Function: proxy_on")

APP = "https://app.example.com"            # allowed only by remote CORS keys
STATIC_ORIGIN = "https://static.example.com"  # allowed by a static CORS key
ELSEWHERE = "https://elsewhere.example"    # allowed by nobody
STATIC = "static-key-0001"
STATIC_DISABLED = "static-disabled-key-0002"
STATIC_CORS = "static-cors-key-0003"
CORS_ENDPOINTS = [{"methods": ["GET", "PATCH"], "paths": ["/api/stream/{id}"]}]


def new_key(tag: str = "rk") -> str:
    return f"{tag}-{secrets.token_urlsafe(18)}"


def key_service(cluster: str = CLUSTER, cache: dict | None = None, **over) -> dict:
    # The fake key server answers every poll at once (it never holds one), so polls are not
    # held here and a feed answer slower than timeout_ms is a failure, as the tests expect.
    ks = {"cluster": cluster, "authority": AUTHORITY, "path_prefix": PREFIX, "timeout_ms": 250,
          "changes_poll_ms": 1000, "changes_wait_ms": 0, "max_pending": 256,
          "cache": {"max_entries": 100000, "ttl_seconds": 60, "negative_ttl_seconds": 10,
                    "stale_if_error_seconds": 300, **(cache or {})}}
    ks.update(over)
    return ks


def base_config(**ks) -> dict:
    return {
        "keys": [
            {"id": "static-s", "sha256": sha256_hex(STATIC), "owner": "team-static"},
            {"id": "static-disabled", "sha256": sha256_hex(STATIC_DISABLED), "disabled": True},
            {"id": "static-cors", "sha256": sha256_hex(STATIC_CORS), "cors": {"allowed_origins": [STATIC_ORIGIN]}},
        ],
        "cors_endpoints": CORS_ENDPOINTS,
        "public_endpoints": [{"methods": ["GET"], "paths": ["/healthz"]}],
        "key_service": key_service(**ks),
    }


def start_remote(server: KeyServer | None, config: dict, concurrency: int = 2, **opts) -> Envoy:
    clusters = {CLUSTER: server.port} if server is not None else None
    e = Envoy(plugin_config=config, clusters=clusters, concurrency=concurrency, **opts).start()
    if server is not None:
        wait_feed_live(server, concurrency)
    return e


def wait_feed_live(server: KeyServer, concurrency: int, timeout: float = 5.0) -> None:
    """Until every VM (one per worker and one on the main thread) has learnt the feed's cursor
    and polled with it; fails after `timeout`. The VMs poll within a few ms of each other: the
    wait ends after the whole round is answered, so that tests start between two rounds."""
    vms = concurrency + 1
    deadline = time.monotonic() + timeout
    while True:
        with server._lock:
            polls = sum(1 for r in server.requests if r.kind == "changes" and "after=" in r.path)
        if polls >= vms:
            time.sleep(0.2)
            return
        assert time.monotonic() < deadline, f"{polls} feed polls with a cursor in {timeout} s, {vms} VMs poll"
        time.sleep(0.02)


def call(e: Envoy, key: str | None = None, path: str = "/api/x", origin: str | None = None, method: str = "GET",
         extra=()) -> Response:
    headers = ([bearer(key)] if key else []) + ([("origin", origin)] if origin else []) + list(extra)
    return http1(e.port, method, path, headers)


def many(e: Envoy, n: int, key: str | None = None, parallel: int = 10, **kw) -> list[Response]:
    """n requests, each on its own connection, `parallel` at a time."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: call(e, key, **kw), range(n)))


def together(fns: list) -> list:
    """Runs the callables at once (released by one barrier); their results or exceptions."""
    barrier = threading.Barrier(len(fns))

    def run(fn):
        barrier.wait()
        try:
            return fn()
        except Exception as ex:  # noqa: BLE001 - reported to the caller
            return ex

    with ThreadPoolExecutor(len(fns)) as pool:
        return list(pool.map(run, fns))


def worker_connections(e: Envoy) -> dict[str, int]:
    """Connections accepted so far on the api listener, per worker (`worker_0`, ...)."""
    pat = re.compile(rf"^listener\.[0-9.]+_{e.port}\.(worker_\d+)\.downstream_cx_total$")
    out = {}
    for name, value in e.stats(filter=r"downstream_cx_total").items():
        m = pat.match(name)
        if m:
            out[m.group(1)] = value
    return out


def on_every_worker(e: Envoy, send, max_requests: int = 500) -> list:
    """Calls send() (requests on one fresh connection) until every worker of `e` has accepted
    at least one of those connections; the results, in order."""
    before = worker_connections(e)
    results = []
    while len(results) < max_requests:
        results += [send() for _ in range(10)]
        now = worker_connections(e)
        if sum(1 for w, v in now.items() if v > before.get(w, 0)) >= e.concurrency:
            return results
    raise AssertionError(f"connections never reached {e.concurrency} workers: {before} -> {worker_connections(e)}")


def warm(e: Envoy, what, asked=None, rounds: int = 20) -> list:
    """`what` answered on every worker, so that every VM has decided it: a key (one request
    with it, see call()), or a function that sends requests on one fresh connection. With
    `asked` (a function: lookups the key service has had so far), again until a whole round
    on every worker asked nothing, so every VM keeps its answer: for tests where a cached
    answer is the precondition, not the subject (the filter does not keep an answer whose
    lookup overlapped a feed poll: test_an_answer_is_kept_when_the_feed_moves_on_...).
    Returns the last round's results."""
    send = what if callable(what) else (lambda: call(e, what))
    for _ in range(rounds):
        before = asked() if asked else None
        results = on_every_worker(e, send)
        if asked is None or asked() == before:
            return results
    raise AssertionError(f"the answers are never kept: lookups still going up after {rounds} rounds")


def assert_unavailable(r: Response, readable_by: str | None = None, origin_sent: bool = False) -> None:
    """The exact 503 contract."""
    assert (r.status, r.body) == (503, UNAVAILABLE), (r.status, r.body[:200])
    assert r.header("content-type") == "application/json"
    assert r.all("retry-after") == ["1"]
    assert r.upstream() is None
    if readable_by:
        assert r.cors_headers() == [("access-control-allow-origin", readable_by)]
    else:
        assert r.cors_headers() == []
    if origin_sent or readable_by:
        assert r.all("vary") == ["Origin"]


def assert_unauthorized(r: Response) -> None:
    assert (r.status, r.body) == (401, UNAUTHORIZED), (r.status, r.body[:200])
    assert r.header("content-type") == "application/json"
    assert r.upstream() is None


def assert_no_trap(e: Envoy, *secrets_never_logged: str) -> None:
    log = e.log()
    for sign in TRAP_SIGNS:
        assert sign not in log, f"{sign!r} in the Envoy log:\n" + "\n".join(
            line for line in log.splitlines() if sign in line)[-3000:]
    for s in secrets_never_logged:
        assert s not in log, "a key reached the Envoy log"
    assert e.proc.poll() is None, "Envoy exited"


def until(pred, timeout: float, interval: float = 0.02):
    """Polls pred() until it returns something truthy; (value, seconds taken) or (None, timeout)."""
    start = time.monotonic()
    while True:
        v = pred()
        if v:
            return v, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None, time.monotonic() - start
        time.sleep(interval)


def statuses(rs: list[Response]) -> list[int]:
    return [r.status for r in rs]


def preflight(e: Envoy, path: str, origin: str, method: str = "GET") -> Response:
    return http1(e.port, "OPTIONS", path, [("origin", origin), ("access-control-request-method", method)])
