"""A small fault-injecting key service that speaks keygate's remote-key protocol.

    GET {prefix}/keys/{sha256}        -> 200 {"sha256": sha256, "key": {...}} | 404
    GET {prefix}/origins/{origin}     -> 200 {"keys": [{...}, ...]}
    GET {prefix}/changes[?after=c]    -> 200 {"cursor": c, "keys": [...], "origins": [...]}
                                         | {"cursor": c, "reset": true}

Keys live in memory; add/update/remove/set_disabled append the digest (and the key's CORS
origins) to the change feed. `add` of a digest the server neither holds nor was ever asked about
skips the feed by default: no VM can hold an answer for it, so listing it would change nothing
for the filter, and a poll landing just after a test warmed the key would drop it from the cache
and make lookup counts flaky. Pass feed=True to list it anyway.

Faults are injected per endpoint ("keys", "origins", "changes") with `fault(...)` (see `Fault`)
and cleared with `clear_faults()`; `kill()` closes the listener and every connection, and
`restart()` comes back on the same port. Every request is counted per endpoint and per path,
and the server checks what the filter sends (GET, :authority, lower-case digests, the origin as
one percent-encoded segment): anything else lands in `violations`.

Loopback only and bounded: at most `max_connections` connections, 16 KiB request heads,
socket timeouts everywhere, and any hold or delay is capped at 30 s.

Run on its own for a manual look: `.venv/bin/python -m support.keyserver` (serves one key, "demo").
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import secrets
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

KINDS = ("keys", "origins", "changes")
MAX_HOLD = 30.0
HUGE = 10 * 1024 * 1024


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def normalise_origin(origin: str) -> str:
    """scheme://host[:port] in lower case, without the scheme's default port (as keygate compares them)."""
    if origin == "*" or "://" not in origin:
        return origin
    scheme, _, rest = origin.partition("://")
    scheme, rest = scheme.lower(), rest.lower()
    for s, port in (("https", ":443"), ("http", ":80")):
        if scheme == s and rest.endswith(port):
            rest = rest[: -len(port)]
    return f"{scheme}://{rest}"


@dataclass
class Fault:
    """What an endpoint does instead of (or before) answering normally.

    kind:
      "reset"          close the connection without answering
      "slow"           answer normally after `delay` seconds
      "status"         answer `status` with a small JSON body
      "truncated_json" 200 application/json whose body is valid JSON cut in half (framing intact)
      "truncated_body" 200 whose content-length promises more than is sent, then close
      "huge"           200 application/json, a 10 MiB body (JSON padded with spaces)
      "padded"         the normal answer padded with spaces to exactly `size` bytes
      "wrong_type"     the normal answer with content-type `content_type` (default text/plain)
      "body"           200 application/json with the raw `body` given (`@SHA256@` in it becomes
                       the digest asked for)
      "other_key"      /keys only: 200 with the answer for `key` (another key: its digest and entry)
                       whatever digest was asked
      "backwards"      /changes only: the normal lists with the feed's first cursor (older than asked)
      "hold"           wait until `release()` (or 30 s), then answer normally; with snapshot=True the
                       answer is the one computed when the request arrived (an answer delayed in
                       the network while the key changes in the service)
    `delay` applies before any kind; `remaining` limits the fault to that many requests.
    """

    kind: str
    delay: float = 0.0
    status: int = 500
    size: int = 0
    content_type: str = "text/plain"
    body: bytes = b""
    key: str | None = None
    remaining: int | None = None
    snapshot: bool = False


@dataclass
class Request:
    kind: str
    path: str
    host: str
    at: float
    headers: dict = field(default_factory=dict)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    thread: threading.Thread | None = None


class KeyServer:
    def __init__(self, prefix: str = "/v1/filter", authority: str | None = None, max_connections: int = 256,
                 cursor_prefix: str = ""):
        self.prefix = prefix.rstrip("/")
        # Cursors are opaque to the filter: a prefix such as "a/b?c=d&e+f%" checks that it sends
        # them back percent-encoded, byte for byte (`unknown_cursors` counts those it did not).
        self.cursor_prefix = cursor_prefix
        self.unknown_cursors = 0
        # `behind` for every feed answer after the first, when set: what a service reports of
        # the changes still to come (the filter's remote.feed_lag gauge).
        self.behind: int | None = None
        self.authority = authority  # when set, a request with another Host is a violation
        self.max_connections = max_connections
        self.port = 0
        self._lock = threading.RLock()
        self._entries: dict[str, dict] = {}          # digest -> entry (without sha256/key)
        self._asked: set[str] = set()                # digests asked for on /keys
        self._epoch = secrets.token_hex(4)
        self._epochs = {self._epoch}  # every epoch handed out (a forgotten one is no encoding error)
        self._seq = 0
        self._feed: collections.deque = collections.deque(maxlen=100_000)  # (seq, "keys"|"origins", value)
        self._first_cursor = self._cursor()
        self._forced_resets = 0
        self._faults: dict[str, Fault] = {}
        self._release = threading.Event()
        self.counts: collections.Counter = collections.Counter()       # kind -> requests
        self.path_counts: collections.Counter = collections.Counter()  # path without query -> requests
        self.requests: collections.deque = collections.deque(maxlen=20_000)
        self.inflight: collections.Counter = collections.Counter()
        self.max_inflight: collections.Counter = collections.Counter()
        self.violations: list[str] = []
        self.usage_batches: list[str] = []  # the usage batches filters posted, as sent
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[_Conn] = set()
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KeyServer:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.port = s.getsockname()[1]
        self._listener = s
        self._running = True
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                                               name=f"keyserver-{self.port}")
        self._accept_thread.start()
        return self

    def kill(self) -> None:
        """The service goes away: the listener and every open connection are closed at once."""
        self._running = False
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._accept_thread is not None:
            self._accept_thread.join(5)
            self._accept_thread = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _close(c.sock)
        self._release.set()  # let held handlers finish (on a closed socket)

    stop = kill

    def restart(self) -> KeyServer:
        """Back on the same port (the keys and the feed are kept)."""
        if self._listener is not None:
            return self
        self._release.clear()
        deadline = time.monotonic() + 5
        while True:
            try:
                return self.start()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self._listener is not None

    def __enter__(self) -> KeyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    # -- keys and the feed -------------------------------------------------------------------

    def add(self, key: str, entry: dict, feed: bool | None = None) -> str:
        return self.add_digest(digest(key), entry, feed=feed)

    def add_digest(self, sha: str, entry: dict, feed: bool | None = None) -> str:
        with self._lock:
            old = self._entries.get(sha)
            self._entries[sha] = json.loads(json.dumps(entry))
            if feed is None:
                feed = old is not None or sha in self._asked or _cors(entry)
            if feed:
                self._changed(sha, old, entry)
        return sha

    update = add

    def remove(self, key: str, feed: bool = True) -> None:
        sha = digest(key)
        with self._lock:
            old = self._entries.pop(sha, None)
            if feed:
                self._changed(sha, old, None)

    def set_disabled(self, key: str, disabled: bool = True, feed: bool = True) -> None:
        sha = digest(key)
        with self._lock:
            old = self._entries[sha]
            new = {**old, "disabled": disabled}
            self._entries[sha] = new
            if feed:
                self._changed(sha, old, new)

    def entry(self, key: str) -> dict | None:
        with self._lock:
            e = self._entries.get(digest(key))
            return None if e is None else dict(e)

    def feed_key(self, key: str) -> None:
        with self._lock:
            self._append("keys", digest(key))

    def feed_origin(self, origin: str) -> None:
        with self._lock:
            self._append("origins", origin)

    def reset_feed(self) -> None:
        """Forget every cursor handed out: the filter's next poll is answered with reset."""
        with self._lock:
            self._epoch = secrets.token_hex(4)
            self._epochs.add(self._epoch)
            self._seq = 0
            self._feed.clear()
            self._first_cursor = self._cursor()

    def force_reset(self, times: int = 1) -> None:
        """The next `times` change polls are answered {"cursor": ..., "reset": true}."""
        with self._lock:
            self._forced_resets += times

    @property
    def cursor(self) -> str:
        with self._lock:
            return self._cursor()

    def _cursor(self) -> str:
        return f"{self.cursor_prefix}{self._epoch}.{self._seq}"

    def _append(self, kind: str, value: str) -> None:
        self._seq += 1
        self._feed.append((self._seq, kind, value))

    def _changed(self, sha: str, old: dict | None, new: dict | None) -> None:
        self._append("keys", sha)
        origins = set()
        for e in (old, new):
            if e and isinstance(e.get("cors"), dict):
                origins.update(e["cors"].get("allowed_origins", []))
        for o in sorted(origins):
            self._append("origins", o)

    # -- faults and observation --------------------------------------------------------------

    def fault(self, kind: str, on: str | tuple = ("keys", "origins"), **params) -> None:
        ons = (on,) if isinstance(on, str) else on
        with self._lock:
            for o in ons:
                assert o in KINDS, o
                self._faults[o] = Fault(kind, **params)
            if kind == "hold":
                self._release.clear()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._forced_resets = 0
        self._release.set()

    def release(self) -> None:
        self._release.set()

    def count(self, kind: str) -> int:
        with self._lock:
            return self.counts[kind]

    def lookups(self, key: str) -> int:
        """How often /keys/{sha256(key)} was asked."""
        with self._lock:
            return self.path_counts[f"{self.prefix}/keys/{digest(key)}"]

    def origin_lookups(self, origin: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.kind == "origins" and
                       urllib.parse.unquote(r.path.rsplit("/", 1)[1]) == origin)

    def wait_for(self, kind: str, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count(kind) >= n:
                return True
            time.sleep(0.005)
        return False

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.path_counts.clear()
            self.requests.clear()
            self.max_inflight.clear()

    # -- the protocol ------------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._running:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if len(self._conns) >= self.max_connections:
                    _close(sock)
                    continue
                conn = _Conn(sock)
                self._conns.add(conn)
            sock.settimeout(30)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if len(buf) > 16384:
                        return
                    chunk = conn.sock.recv(16384)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = (lines[0].split(" ") + ["", "", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0") or 0)
                while len(buf) < length:
                    chunk = conn.sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                keep = self._handle(conn.sock, method, target, headers, body)
                if not keep:
                    return
        except OSError:
            return
        finally:
            _close(conn.sock)
            with self._lock:
                self._conns.discard(conn)

    def _violation(self, what: str) -> None:
        with self._lock:
            if len(self.violations) < 1000:
                self.violations.append(what)

    def _handle(self, sock: socket.socket, method: str, target: str, headers: dict, body: bytes = b"") -> bool:
        path, _, query = target.partition("?")
        host = headers.get("host", "")
        kind, arg = self._route(path)
        if method != ("POST" if kind == "usage" else "GET"):
            self._violation(f"{method} {target}")
        if kind == "usage":
            arg = body.decode("utf-8", "replace")
        if self.authority is not None and host != self.authority:
            self._violation(f"host {host!r} for {target}")
        with self._lock:
            self.counts[kind] += 1
            self.path_counts[path] += 1
            self.requests.append(Request(kind, target, host, time.monotonic(), headers))
            self.inflight[kind] += 1
            self.max_inflight[kind] = max(self.max_inflight[kind], self.inflight[kind])
            f = self._faults.get(kind)
            if f is not None and f.remaining is not None:
                f.remaining -= 1
                if f.remaining <= 0:
                    del self._faults[kind]
        try:
            early = None
            if f is not None and f.kind == "hold" and f.snapshot and kind != "bad":
                early = self._answer(kind, arg, query, None)
            if f is not None and f.delay:
                time.sleep(min(f.delay, MAX_HOLD))
            if f is not None and f.kind == "hold":
                self._release.wait(MAX_HOLD)
                if early is not None:
                    return _send(sock, *early)
            if f is not None and f.kind == "slow" and not f.delay:
                time.sleep(1.0)
            if kind == "bad":
                self._violation(f"bad request {target}")
                return _send(sock, 400, b'{"error": "bad request"}')
            if f is not None:
                if f.kind == "reset":
                    return False
                if f.kind == "status":
                    return _send(sock, f.status, b'{"error": "injected"}')
                if f.kind == "huge":
                    return _send_huge(sock)
                if f.kind == "body":
                    return _send(sock, 200, f.body.replace(b"@SHA256@", arg.encode()))
                if f.kind == "other_key" and kind == "keys":
                    with self._lock:
                        other = self._entries.get(digest(f.key))
                    return _send(sock, 200, json.dumps({"sha256": digest(f.key), "key": other}).encode())
            status, body = self._answer(kind, arg, query, f)
            if f is not None:
                if f.kind == "truncated_json":
                    return _send(sock, 200, body[: max(1, len(body) // 2)])
                if f.kind == "truncated_body":
                    _send(sock, 200, body, declared=len(body) + 100, close=True)
                    return False
                if f.kind == "padded":
                    return _send(sock, status, body + b" " * max(0, f.size - len(body)))
                if f.kind == "wrong_type":
                    return _send(sock, status, body, content_type=f.content_type)
            return _send(sock, status, body)
        finally:
            with self._lock:
                self.inflight[kind] -= 1

    def _route(self, path: str) -> tuple[str, str]:
        if not path.startswith(self.prefix + "/"):
            return "bad", path
        rest = path[len(self.prefix) + 1:]
        if rest == "changes":
            return "changes", ""
        if rest == "usage":
            return "usage", ""
        if rest.startswith("keys/"):
            sha = rest[5:]
            if len(sha) == 64 and all(ch in "0123456789abcdef" for ch in sha):
                return "keys", sha
            return "bad", path
        if rest.startswith("origins/"):
            seg = rest[8:]
            if seg and "/" not in seg:
                return "origins", urllib.parse.unquote(seg)
            return "bad", path
        return "bad", path

    def _answer(self, kind: str, arg: str, query: str, f: Fault | None) -> tuple[int, bytes]:
        with self._lock:
            if kind == "usage":
                self.usage_batches.append(arg)
                return 200, b'{"counted": true}'
            if kind == "keys":
                if len(self._asked) < 1_000_000:
                    self._asked.add(arg)
                e = self._entries.get(arg)
                if e is None:
                    return 404, b'{"error": "not found"}'
                return 200, json.dumps({"sha256": arg, "key": e}).encode()
            if kind == "origins":
                # The asked origin as sent (browsers send it normalised; keygate compares it
                # exactly), the keys' allowed origins normalised as keygate compiles them.
                want = arg
                found = []
                for e in self._entries.values():
                    cors = e.get("cors")
                    if not isinstance(cors, dict) or e.get("disabled"):
                        continue
                    allowed = [normalise_origin(o) for o in cors.get("allowed_origins", [])]
                    if want in allowed or "*" in allowed:
                        found.append(e)
                return 200, json.dumps({"keys": found}).encode()
            # changes
            params = urllib.parse.parse_qs(query, keep_blank_values=True)
            after = params.get("after", [None])[0]
            if self._forced_resets > 0:
                self._forced_resets -= 1
                return 200, json.dumps({"cursor": self._cursor(), "reset": True}).encode()
            if after is None:
                return 200, json.dumps({"cursor": self._cursor(), "keys": [], "origins": []}).encode()
            if not after.startswith(self.cursor_prefix):
                self.unknown_cursors += 1
                return 200, json.dumps({"cursor": self._cursor(), "reset": True}).encode()
            epoch, _, seq = after[len(self.cursor_prefix):].partition(".")
            floor = self._feed[0][0] - 1 if self._feed else self._seq
            if epoch != self._epoch or not seq.isdigit() or int(seq) > self._seq or int(seq) < floor:
                if epoch not in self._epochs:
                    self.unknown_cursors += 1
                return 200, json.dumps({"cursor": self._cursor(), "reset": True}).encode()
            keys, origins = [], []
            for s, k, v in self._feed:
                if s > int(seq):
                    target = keys if k == "keys" else origins
                    if v not in target:
                        target.append(v)
            cursor = self._first_cursor if f is not None and f.kind == "backwards" else self._cursor()
            answer = {"cursor": cursor, "keys": keys, "origins": origins}
            if self.behind is not None:
                answer["behind"] = self.behind
            return 200, json.dumps(answer).encode()


REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 400: "Bad Request", 403: "Forbidden",
           404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
           503: "Service Unavailable"}


def _send(sock: socket.socket, status: int, body: bytes, content_type: str = "application/json",
          declared: int | None = None, close: bool = False) -> bool:
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
    if status not in (204, 304):
        head += f"content-type: {content_type}\r\ncontent-length: {len(body) if declared is None else declared}\r\n"
    else:
        body = b""
    if close:
        head += "connection: close\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    return not close


def _send_huge(sock: socket.socket) -> bool:
    start, end = b'{"key": {"id": "huge"', b"}}"
    pad = HUGE - len(start) - len(end)
    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % HUGE + start)
    chunk = b" " * 65536
    while pad > 0:
        n = min(pad, len(chunk))
        sock.sendall(chunk[:n])
        pad -= n
    sock.sendall(end)
    return True


def _cors(entry: dict | None) -> bool:
    return bool(entry) and isinstance(entry.get("cors"), dict)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


if __name__ == "__main__":
    srv = KeyServer().start()
    srv.add("demo", {"id": "demo", "owner": "team-demo"})
    print(f"key server on 127.0.0.1:{srv.port}, /v1/filter/keys/{digest('demo')}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.kill()
