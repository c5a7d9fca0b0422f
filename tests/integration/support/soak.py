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
from pathlib import Path

from support import cors_config as c
from support.harness import Envoy, _complete, parse_http1

# One request of each kind, pre-encoded: valid, unknown, malformed, preflight, public, CORS, denied.
MIX = [
    ("GET", "/api/x", [("authorization", f"Bearer {c.BACKEND}")]),
    ("GET", "/api/x", [("authorization", "Bearer not-a-key")]),
    ("GET", "/api/x", [("authorization", "Bearer  two-spaces")]),
    ("OPTIONS", "/api/stream/stream-7f3a", [("origin", c.APP), ("access-control-request-method", "PATCH")]),
    ("GET", "/healthz", [("origin", "https://anyone.example")]),
    ("GET", "/api/stream/stream-7f3a", [("authorization", f"Bearer {c.WEB}"), ("origin", c.APP)]),
    ("GET", "/api/stream/other", [("authorization", f"Bearer {c.WEB}"), ("origin", c.APP)]),
    ("GET", "/api/x", []),
]


def encode(method, path, headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: localhost"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


REQUESTS = [encode(*m) for m in MIX]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Soak:
    def __init__(self, port: int, total: int, seconds: float, connections: int = 4):
        self.port, self.total, self.seconds, self.connections = port, total, seconds, connections
        self.statuses = Counter()
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
                req = REQUESTS[i % len(REQUESTS)]
                i += 1
                sock.sendall(req)
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
                with self.lock:
                    self.statuses[r.status] += 1
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
        return {
            "requests": sum(statuses.values()),
            "statuses": dict(statuses),
            "errors": warm.errors + main.errors,
            "counted": sum(e.counters().values()),
            "rss_after_warmup_kib": rss_after_warmup,
            "rss_end_kib": rss_end,
            "rss_growth": (rss_end - rss_after_warmup) / rss_after_warmup,
            "rate": main.sent / elapsed if elapsed else 0,
        }
    finally:
        e.stop()


def main():
    p = argparse.ArgumentParser(description="keygate soak on loopback")
    p.add_argument("--requests", type=int, default=300_000)
    p.add_argument("--seconds", type=float, default=600)
    a = p.parse_args()
    r = soak(a.requests, a.seconds)
    for k, v in r.items():
        print(f"{k}: {v}")
    ok = (not r["errors"] and not any(s >= 500 for s in r["statuses"]) and r["counted"] == r["requests"]
          and r["rss_growth"] < 0.02 and r["requests"] == a.requests)
    print("soak:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
