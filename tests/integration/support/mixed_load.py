"""Continuous mixed load through Envoy, with every answer checked against the expectation of
the moment it was sent in.

Several client threads, each with one keep-alive `http.client` connection to Envoy (loopback
only), send a weighted mix of request classes:

    cached     a valid key warmed on every worker before the load starts
    static     a key of the static table (never goes remote)
    uncached   a valid key the filter has never seen (each used once; `supply()` hands out fresh ones)
    unknown    a random key nobody holds (each used once)
    preflight  OPTIONS with Origin + Access-Control-Request-Method, the origin only a remote
               CORS key allows (its origin answer warmed on every worker)
    cors       a cached remote CORS key sent with its Origin
    tracked    keys whose expectation is a function of time (a revocation during a fault, ...)
    flood      random keys from extra flood threads (`flood(threads)`)

Every answer is classified into an outcome:

    ok    200 from the echo upstream carrying `x-api-key-id` of exactly the key sent (cors: and
          access-control-allow-origin of its origin), or, for a preflight, 204 allowing the origin
    401   exactly the documented 401 (body, content-type), not from the upstream
    503   exactly the documented 503 `remote.unavailable` (body, content-type, retry-after: 1;
          a preflight's without access-control-allow-origin), not from the upstream
    bad:* anything else: another status or body, a 200 for a key that was not valid or for the
          wrong key, a reset or a timeout

and checked against what the class may get at that moment: outside fault windows, valid
classes get `ok` and unknown keys `401`; a request whose [sent, answered] interval overlaps a
fault window (from `window()` until `settle` seconds after it ends) is checked against that
window's `allow` (defaults: DEFAULT_FAULT_ALLOW) or its `expect(cls, sent, answered, window)`
function (None: use `allow`).
`bad:*` is never allowed. Counts go per (phase, class, outcome) and per (class, status).

"No request reaches the upstream without a verified key" is checked twice: each answer that
came from the echo upstream must be `ok` for a valid key, and Envoy's own count of requests
sent to the echo cluster (`cluster.echo.upstream_rq_total`, read before the first request and
after the last) must equal the number of answers that came from the upstream: a request that
slipped through and was answered by anything else would show as a difference.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import secrets
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

UNAUTHORIZED = b'{"error": "Unauthorized", "message": "Invalid API key"}'
UNAVAILABLE = b'{"error": "Service Unavailable", "message": "API key could not be verified"}'

VALID = ("cached", "static", "uncached", "cors", "tracked")
HEALTHY = {"cached": {"ok"}, "static": {"ok"}, "uncached": {"ok"}, "cors": {"ok"}, "preflight": {"ok"},
           "unknown": {"401"}, "flood": {"401"}, "tracked": {"ok"}}
# While a fault of the key service is active (and `settle` seconds after): cached keys are
# served fresh or stale (stale_if_error), static keys never go remote; what must be looked up
# gets its answer or the documented 503, never a 401 for a valid key.
DEFAULT_FAULT_ALLOW = {"cached": {"ok"}, "static": {"ok"}, "cors": {"ok"}, "uncached": {"ok", "503"},
                       "unknown": {"401", "503"}, "flood": {"401", "503"}, "preflight": {"ok", "503"},
                       "tracked": {"ok"}}
DEFAULT_WEIGHTS = {"cached": 30, "static": 5, "uncached": 15, "unknown": 25, "preflight": 10, "cors": 10,
                   "tracked": 5}
PATH = "/api/stream/s1"  # a cors_endpoints path, so CORS keys and preflights are allowed on it


@dataclass(frozen=True)
class Key:
    secret: str
    id: str
    origin: str | None = None


@dataclass
class Window:
    name: str
    start: float
    allow: dict
    expect: Callable | None = None
    settle: float = 2.0
    end: float | None = None

    def overlaps(self, sent: float, answered: float) -> bool:
        end = float("inf") if self.end is None else self.end + self.settle
        return sent <= end and answered >= self.start


@dataclass
class Tracked:
    """A key whose allowed outcomes depend on time: expect(sent, answered) -> set of outcomes."""
    key: Key
    expect: Callable[[float, float], set]
    seen: list = field(default_factory=list)  # (sent, answered, outcome), bounded


@dataclass
class Summary:
    requests: int
    seconds: float
    counts: Counter              # (phase, class, outcome) -> n
    statuses: Counter            # (class, status) -> n
    violations: list             # the first MAX_VIOLATIONS, as dicts
    violation_count: int
    upstream_answers: int        # answers whose body came from the echo upstream
    upstream_requests: int       # Envoy's cluster.echo.upstream_rq_total over the run
    max_latency: dict            # class -> slowest answer (s)
    flood_requests: int = 0
    flood_seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def n(self, phase: str | None = None, cls: str | None = None, outcome: str | None = None) -> int:
        return sum(v for (p, c, o), v in self.counts.items()
                   if (phase is None or p == phase) and (cls is None or c == cls) and (outcome is None or o == outcome))

    def table(self) -> str:
        """Per class: requests and outcomes per phase, and statuses; for failure messages and reports."""
        lines = [f"{self.requests} requests in {self.seconds:.1f}s ({self.rate:.0f}/s); upstream saw "
                 f"{self.upstream_requests}, answers from it {self.upstream_answers}; "
                 f"violations {self.violation_count}"]
        for cls in sorted({c for _, c, _ in self.counts}):
            per = {p: {o: v for (pp, c, o), v in self.counts.items() if pp == p and c == cls}
                   for p in ("before", "fault", "after")}
            st = {s: v for (c, s), v in self.statuses.items() if c == cls}
            lines.append(f"  {cls:9} {sum(st.values()):6}  statuses {dict(sorted(st.items(), key=str))}  "
                         + "  ".join(f"{p}: {dict(sorted(o.items()))}" for p, o in per.items() if o)
                         + f"  max {self.max_latency.get(cls, 0):.2f}s")
        return "\n".join(lines)


def upstream_requests(admin_port: int) -> int:
    """Envoy's count of requests routed to the echo cluster (the only upstream of the api listener)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=^cluster%5C.echo%5C.upstream_rq_total$",
                                timeout=5) as r:
        text = r.read().decode()
    m = re.search(r"cluster\.echo\.upstream_rq_total: (\d+)", text)
    if m is None:
        raise KeyError(f"Envoy has no cluster.echo.upstream_rq_total: {text[:200]!r}")
    return int(m.group(1))


class MixedLoad:
    """Load generator and checker for one Envoy. `supply()` returns a fresh valid Key the filter
    has never seen, or None when none is ready (the request then goes to another class)."""

    MAX_VIOLATIONS = 200
    # Every answer of a tracked key is kept (a few MB at most): with a bound of 5,000, a key sent
    # 80 times a second filled it before its TTL ran out and its refusals went unrecorded.
    MAX_SEEN = 500_000

    def __init__(self, port: int, admin_port: int, *, cached: list[Key], static: list[Key] = (),
                 cors: list[Key] = (), supply: Callable[[], Key | None] | None = None,
                 threads: int = 4, weights: dict | None = None, timeout: float = 10.0):
        self.port, self.admin_port = port, admin_port
        self.cached, self.static, self.cors = list(cached), list(static), list(cors)
        self.origins = sorted({k.origin for k in self.cors if k.origin})
        self.supply = supply or (lambda: None)
        self.threads, self.timeout = threads, timeout
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.tracked: list[Tracked] = []
        self.windows: list[Window] = []
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.statuses: Counter = Counter()
        self.violations: list = []
        self.violation_count = 0
        self.upstream_answers = 0
        self.max_latency: dict = {}
        self.first_window: float | None = None
        self.last_settled: float | None = None
        self._stop = threading.Event()
        self._flood_stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._flooders: list[threading.Thread] = []
        self.flood_requests, self.flood_seconds = 0, 0.0
        self._upstream_before = upstream_requests(admin_port)
        self._started = time.monotonic()

    # -- fault windows --------------------------------------------------------------------------

    def answered(self) -> int:
        """Requests answered (or failed) so far, flood included."""
        with self.lock:
            return sum(self.statuses.values())

    def window(self, name: str, allow: dict | None = None, expect: Callable | None = None,
               settle: float = 2.0) -> Window:
        """A fault starts now: until `end(w)` + settle, answers are judged by allow / expect."""
        w = Window(name, time.monotonic(), {**DEFAULT_FAULT_ALLOW, **(allow or {})}, expect, settle)
        with self.lock:
            self.windows.append(w)
            if self.first_window is None:
                self.first_window = w.start
        return w

    def end(self, w: Window) -> None:
        w.end = time.monotonic()
        with self.lock:
            self.last_settled = max(self.last_settled or 0.0, w.end + w.settle)

    def track(self, key: Key, expect: Callable[[float, float], set]) -> Tracked:
        t = Tracked(key, expect)
        with self.lock:
            self.tracked.append(t)
        return t

    # -- classification -------------------------------------------------------------------------

    def expected(self, cls: str, sent: float, answered: float, tracked: Tracked | None) -> set:
        if tracked is not None:
            return tracked.expect(sent, answered)
        allowed: set | None = None
        for w in self.windows:
            if w.overlaps(sent, answered):
                got = w.expect(cls, sent, answered, w) if w.expect else None
                got = w.allow.get(cls, HEALTHY[cls]) if got is None else got
                allowed = set(got) if allowed is None else allowed | set(got)
        return HEALTHY[cls] if allowed is None else allowed

    def phase(self, sent: float, answered: float) -> str:
        if any(w.overlaps(sent, answered) for w in self.windows):
            return "fault"
        if self.first_window is None or answered < self.first_window:
            return "before"
        return "after"

    @staticmethod
    def outcome(cls: str, key: Key | None, origin: str | None, status: int, headers: list, body: bytes) -> str:
        h: dict[str, list[str]] = {}
        for k, v in headers:
            h.setdefault(k.lower(), []).append(v)
        ctype = h.get("content-type", [None])[0]
        acao = h.get("access-control-allow-origin", [])
        echo = from_upstream(body)
        if echo is not None and status != 200:
            return f"bad:{status}-from-upstream"
        if status == 503:
            if body != UNAVAILABLE:
                return "bad:503-other-body"
            if ctype != "application/json" or h.get("retry-after") != ["1"]:
                return "bad:503-headers"
            if cls == "preflight" and acao:
                return "bad:503-preflight-allows-origin"
            return "503"
        if status == 401:
            return "401" if body == UNAUTHORIZED and ctype == "application/json" else "bad:401-other-body"
        if cls == "preflight":
            return "ok" if status == 204 and acao == [origin] else f"bad:{status}-preflight"
        if status == 200:
            if echo is None:
                return "bad:200-not-from-upstream"
            ids = [v for k, v in echo if k == "x-api-key-id"]
            if cls not in VALID or key is None:
                return "bad:200-for-an-invalid-key"
            if ids != [key.id]:
                return "bad:200-for-the-wrong-key"
            if origin is not None and acao != [origin]:
                return "bad:200-cors-headers"
            return "ok"
        return f"bad:{status}"

    def record(self, cls: str, key: Key | None, origin: str | None, sent: float, answered: float,
               status: int, headers: list, body: bytes, tracked: Tracked | None = None,
               error: str | None = None) -> str:
        out = f"bad:{error}" if error else self.outcome(cls, key, origin, status, headers, body)
        with self.lock:
            try:
                allowed = self.expected(cls, sent, answered, tracked)
            except Exception as e:  # noqa: BLE001 - a broken expectation fails the run, not the thread
                allowed = {f"checker error {e!r}"}
            phase = self.phase(sent, answered)
            self.counts[(phase, cls, out)] += 1
            self.statuses[(cls, status if not error else "error")] += 1
            if not error and from_upstream(body) is not None:
                self.upstream_answers += 1
            lat = answered - sent
            if lat > self.max_latency.get(cls, 0.0):
                self.max_latency[cls] = lat
            if tracked is not None and len(tracked.seen) < self.MAX_SEEN:
                tracked.seen.append((sent, answered, out))
            if out not in allowed:
                self.violation_count += 1
                if len(self.violations) < self.MAX_VIOLATIONS:
                    self.violations.append({
                        "class": cls, "key_id": key.id if key else None, "outcome": out, "allowed": sorted(allowed),
                        "status": status, "body": body[:160], "phase": phase,
                        "sent": round(sent - self._started, 3), "answered": round(answered - self._started, 3),
                        "windows": [(w.name, round(w.start - self._started, 3),
                                     None if w.end is None else round(w.end - self._started, 3))
                                    for w in self.windows]})
        return out

    # -- requests -------------------------------------------------------------------------------

    def _request(self, cls: str, rng: random.Random):
        """(class, key, origin, method, path, headers, tracked) for one request of a class."""
        if cls == "uncached":
            k = self.supply()
            if k is None:
                cls = "cached"
            else:
                return cls, k, None, "GET", "/api/x", {"authorization": f"Bearer {k.secret}"}, None
        if cls == "tracked":
            with self.lock:
                t = rng.choice(self.tracked) if self.tracked else None
            if t is None:
                cls = "cached"
            else:
                return cls, t.key, None, "GET", "/api/x", {"authorization": f"Bearer {t.key.secret}"}, t
        if cls in ("unknown", "flood"):
            secret = "kg_unknown_" + secrets.token_urlsafe(24)
            return cls, None, None, "GET", "/api/x", {"authorization": f"Bearer {secret}"}, None
        if cls == "preflight" and self.origins:
            o = rng.choice(self.origins)
            return cls, None, o, "OPTIONS", PATH, {"origin": o, "access-control-request-method": "GET"}, None
        if cls == "cors" and self.cors:
            k = rng.choice(self.cors)
            return cls, k, k.origin, "GET", PATH, {"authorization": f"Bearer {k.secret}", "origin": k.origin}, None
        if cls == "static" and self.static:
            k = rng.choice(self.static)
            return cls, k, None, "GET", "/api/x", {"authorization": f"Bearer {k.secret}"}, None
        k = rng.choice(self.cached)
        return "cached", k, None, "GET", "/api/x", {"authorization": f"Bearer {k.secret}"}, None

    def send(self, conn: http.client.HTTPConnection | None, req) -> tuple[str, http.client.HTTPConnection | None]:
        """Sends one request (on `conn`, or a fresh connection closed afterwards), records it."""
        cls, key, origin, method, path, headers, tracked = req
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        sent = time.monotonic()
        try:
            conn.request(method, path, headers=headers)
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException) as e:
            answered = time.monotonic()
            out = self.record(cls, key, origin, sent, answered, 0, [], b"", tracked,
                              error=f"{type(e).__name__}")
            conn.close()
            return out, None
        answered = time.monotonic()
        out = self.record(cls, key, origin, sent, answered, r.status, r.getheaders(), body, tracked)
        if own or r.will_close:
            conn.close()
            conn = None
        return out, conn

    def request_for(self, cls: str, key: Key | None = None, origin: str | None = None):
        """The request tuple for one class, with this key (or this preflight origin)."""
        if cls == "preflight":
            return cls, None, origin, "OPTIONS", PATH, {"origin": origin, "access-control-request-method": "GET"}, None
        headers = {"authorization": f"Bearer {key.secret}"}
        if cls == "cors":
            return cls, key, key.origin, "GET", PATH, {**headers, "origin": key.origin}, None
        tracked = next((t for t in self.tracked if t.key == key), None) if cls == "tracked" else None
        return cls, key, None, "GET", "/api/x", headers, tracked

    def round(self, reqs: list) -> list[str]:
        """The requests one after another on one fresh keep-alive connection (so on one worker),
        each of them checked and answered `ok`; their outcomes."""
        conn, outs = None, []
        try:
            for req in reqs:
                out, conn = self.send(conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout),
                                      req)
                assert out == "ok", (out, req[:2])
                outs.append(out)
        finally:
            if conn is not None:
                conn.close()
        return outs

    def one(self, cls: str, key: Key | None = None, origin: str | None = None) -> str:
        """One checked request on a fresh connection (warm-ups and probes go through here, so that
        every request to the api listener is on the books); its outcome."""
        req = self.request_for(cls, key, origin) if key is not None or origin is not None \
            else self._request(cls, random.Random())
        return self.send(None, req)[0]

    def _worker(self, seed: int, classes: list[str], weights: list[int], stop: threading.Event,
                counter: list | None = None) -> None:
        rng = random.Random(seed)
        conn = None
        while not stop.is_set():
            cls = rng.choices(classes, weights)[0]
            try:
                _, conn = self.send(conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout),
                                    self._request(cls, rng))
            except Exception as e:  # noqa: BLE001 - the generator's own failure fails the run
                with self.lock:
                    self.violation_count += 1
                    self.violations.append({"class": cls, "outcome": f"generator error {e!r}"})
                conn = None
            if counter is not None:
                counter[0] += 1
        if conn is not None:
            conn.close()

    # -- running --------------------------------------------------------------------------------

    def start(self) -> MixedLoad:
        classes = [c for c, w in self.weights.items() if w > 0]
        weights = [self.weights[c] for c in classes]
        self._started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._worker, args=(i, classes, weights, self._stop), daemon=True,
                                 name=f"mixed-load-{i}")
            t.start()
            self._workers.append(t)
        return self

    def _flooder(self, stop: threading.Event, counter: list) -> None:
        """Random keys on one keep-alive raw socket: no http.client, so the GIL allows more of them.
        Every answer is still judged (status, headers and body) and recorded."""
        sock = None
        while not stop.is_set():
            secret = "kg_unknown_" + secrets.token_urlsafe(24)
            req = f"GET /api/x HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {secret}\r\n\r\n".encode()
            sent = time.monotonic()
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
                sock.sendall(req)
                data = b""
                while not _complete(data):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed mid-response")
                    data += chunk
            except OSError as e:
                self.record("flood", None, None, sent, time.monotonic(), 0, [], b"", error=type(e).__name__)
                if sock is not None:
                    sock.close()
                sock = None
                continue
            status, headers, body = _parse(data)
            self.record("flood", None, None, sent, time.monotonic(), status, headers, body)
            counter[0] += 1
            if any(k == "connection" and v.lower() == "close" for k, v in headers):
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def flood(self, threads: int) -> None:
        """Extra threads sending only random keys, as fast as they can, until `stop_flood()`."""
        self._flood_stop.clear()
        self._flood_counts = [[0] for _ in range(threads)]
        self._flood_started = time.monotonic()
        for i in range(threads):
            t = threading.Thread(target=self._flooder, args=(self._flood_stop, self._flood_counts[i]), daemon=True)
            t.start()
            self._flooders.append(t)

    def stop_flood(self) -> None:
        self._flood_stop.set()
        for t in self._flooders:
            t.join(self.timeout + 5)
        self._flooders = []
        self.flood_requests += sum(c[0] for c in self._flood_counts)
        self.flood_seconds += time.monotonic() - self._flood_started

    def stop(self) -> Summary:
        self._stop.set()
        self.stop_flood() if self._flooders else None
        for t in self._workers:
            t.join(self.timeout + 5)
        seconds = time.monotonic() - self._started
        upstream = upstream_requests(self.admin_port) - self._upstream_before
        with self.lock:
            return Summary(requests=sum(self.statuses.values()), seconds=seconds, counts=Counter(self.counts),
                           statuses=Counter(self.statuses), violations=list(self.violations),
                           violation_count=self.violation_count, upstream_answers=self.upstream_answers,
                           upstream_requests=upstream, max_latency=dict(self.max_latency),
                           flood_requests=self.flood_requests, flood_seconds=self.flood_seconds)


def from_upstream(body: bytes) -> list | None:
    """The request headers the echo upstream saw, or None if the body is not the echo's."""
    if not body.startswith(b'{"upstream": "echo"'):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return [(k, v) for k, v in doc.get("headers", [])]


def _complete(data: bytes) -> bool:
    """A whole answer to a GET (content-length framed, as Envoy's local replies and the echo are)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
    return m is not None and len(rest) >= int(m.group(1))


def _parse(data: bytes) -> tuple[int, list, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    length = int(next(v for k, v in headers if k == "content-length"))
    return int(lines[0].split()[1]), headers, rest[:length]
