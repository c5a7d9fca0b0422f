"""A bounded soak: mixed keep-alive traffic against one Envoy, then the books are checked.

Used by test_soak.py (short) and scripts/soak.sh (long). Loopback only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from support import cors_config as c
from support.harness import Envoy, Response, _complete, parse_http1

UNAUTHORIZED = b'{"error": "Unauthorized", "message": "Invalid API key"}'


@dataclass(frozen=True)
class Expect:
    """The one answer a request of the mix may get: its status and either keygate's own body
    (`body`) or the echo upstream's, with the `x-api-key-id` it saw (`key_id`, None: none);
    and the access-control-allow-origin it carries (None: none)."""

    status: int
    body: bytes | None = None
    key_id: str | None = None
    allow_origin: str | None = None


# One request of each kind (pre-encoded below) with its answer: valid, unknown, malformed,
# preflight, public, CORS, denied, missing.
MIX = [
    ("GET", "/api/x", [("authorization", f"Bearer {c.BACKEND}")], Expect(200, key_id="backend")),
    ("GET", "/api/x", [("authorization", "Bearer not-a-key")], Expect(401, UNAUTHORIZED)),
    ("GET", "/api/x", [("authorization", "Bearer  two-spaces")], Expect(401, UNAUTHORIZED)),
    ("OPTIONS", "/api/stream/stream-7f3a", [("origin", c.APP), ("access-control-request-method", "PATCH")],
     Expect(204, b"", allow_origin=c.APP)),
    ("GET", "/healthz", [("origin", "https://anyone.example")], Expect(200, allow_origin="https://anyone.example")),
    ("GET", "/api/stream/stream-7f3a", [("authorization", f"Bearer {c.WEB}"), ("origin", c.APP)],
     Expect(200, key_id="web-player", allow_origin=c.APP)),
    ("GET", "/api/stream/other", [("authorization", f"Bearer {c.WEB}"), ("origin", c.APP)],
     Expect(403, b'{"error": "Forbidden", "message": "Resource not allowed for this API key"}', allow_origin=c.APP)),
    ("GET", "/api/x", [], Expect(401, UNAUTHORIZED)),
]


def encode(method, path, headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: localhost"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


REQUESTS = [encode(method, path, headers) for method, path, headers, _ in MIX]


def judge(r: Response, want: Expect) -> str | None:
    """None when the answer is exactly `want`, else what differs."""
    got = []
    if r.status != want.status:
        got.append(f"status {r.status}")
    if want.body is not None:
        if r.body != want.body:
            got.append(f"body {r.body[:80]!r}")
    else:
        seen = r.upstream()
        if seen is None:
            got.append(f"not from the upstream: {r.body[:80]!r}")
        else:
            ids = [v for k, v in seen if k == "x-api-key-id"]
            if ids != ([want.key_id] if want.key_id else []):
                got.append(f"x-api-key-id {ids}")
    if r.all("access-control-allow-origin") != ([want.allow_origin] if want.allow_origin else []):
        got.append(f"access-control-allow-origin {r.all('access-control-allow-origin')}")
    return "; ".join(got) or None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Soak:
    def __init__(self, port: int, total: int, seconds: float, connections: int = 4):
        self.port, self.total, self.seconds, self.connections = port, total, seconds, connections
        self.statuses = Counter()
        self.answered = Counter()  # by index in MIX: answers judged
        self.wrong = 0  # answers that were not exactly their request's
        self.wrong_examples: list[tuple[int, str]] = []
        self.sent = 0
        self.errors = []
        self.lock = threading.Lock()

    def worker(self, deadline: float):
        sock, i = None, 0
        while time.monotonic() < deadline:
            with self.lock:
                if self.sent >= self.total:
                    break
                self.sent += 1
            try:
                if sock is None:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                kind = i % len(REQUESTS)
                i += 1
                sock.sendall(REQUESTS[kind])
                data = b""
                while not _complete(data, False):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed mid-response")
                    data += chunk
                r = parse_http1(data)
                if any(k == "connection" and v == "close" for k, v in r.headers):
                    sock.close()
                    sock = None
                wrong = judge(r, MIX[kind][3])
                with self.lock:
                    self.statuses[r.status] += 1
                    self.answered[kind] += 1
                    if wrong:
                        self.wrong += 1
                        if len(self.wrong_examples) < 20:
                            self.wrong_examples.append((kind, wrong))
            except OSError as e:
                with self.lock:
                    self.errors.append(repr(e))
                sock = None
        if sock:
            sock.close()

    def run(self):
        deadline = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self.worker, args=(deadline,)) for _ in range(self.connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


# A leak of this many bytes per request must fail the soak: the RSS bound is the requests after
# warm-up times this (the test's 19,200 requests: 19,200 x 20 B = 384,000 B = 375 KiB; the
# default long soak's 240,000: 4,800,000 B = 4,687 KiB). Measured: 0-4 KiB over 19,200.
LEAK_BYTES = 20


def soak(total: int, seconds: float, warmup_fraction: float = 0.2) -> dict:
    """Runs the soak on a fresh Envoy and returns the figures to judge it by."""
    e = Envoy(plugin_config=c.config()).start()
    try:
        warm = Soak(e.port, int(total * warmup_fraction), seconds)
        warm.run()
        rss_after_warmup = rss_kib(e.proc.pid)
        main = Soak(e.port, total - warm.sent, seconds)
        started = time.monotonic()
        main.run()
        elapsed = time.monotonic() - started
        rss_end = rss_kib(e.proc.pid)
        statuses = warm.statuses + main.statuses
        measured = sum(main.answered.values())
        return {
            "requests": sum(statuses.values()),
            "statuses": dict(statuses),
            "answered": {
                f"{MIX[k][0]} {MIX[k][1]} #{k}": n for k, n in sorted((warm.answered + main.answered).items())
            },
            "wrong": warm.wrong + main.wrong,
            "wrong_examples": warm.wrong_examples + main.wrong_examples,
            "errors": warm.errors + main.errors,
            "counted": sum(e.counters().values()),
            "rss_after_warmup_kib": rss_after_warmup,
            "rss_end_kib": rss_end,
            "rss_growth_kib": rss_end - rss_after_warmup,
            "rss_bound_kib": measured * LEAK_BYTES // 1024,
            "rate": main.sent / elapsed if elapsed else 0,
        }
    finally:
        e.stop()


def passed(r: dict, total: int) -> bool:
    """Every request answered exactly as its kind must be, each kind about as often, every
    answer counted, and RSS within the leak bound."""
    fair = total // len(MIX) * 9 // 10
    return (not r["errors"] and r["wrong"] == 0 and r["requests"] == total and r["counted"] == total
            and len(r["answered"]) == len(MIX) and min(r["answered"].values()) >= fair
            and r["rss_growth_kib"] <= r["rss_bound_kib"])


def main():
    p = argparse.ArgumentParser(description="keygate soak on loopback")
    p.add_argument("--requests", type=int, default=300_000)
    p.add_argument("--seconds", type=float, default=600)
    a = p.parse_args()
    r = soak(a.requests, a.seconds)
    for k, v in r.items():
        print(f"{k}: {v}")
    ok = passed(r, a.requests)
    print("soak:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
