"""Usage counts are exact under faults: two Envoys (two workers each) in front of two key service
replicas on one PostgreSQL, a steady load on a set of keys, and the counts the usage API gives
per key, once the last flush is due, equal what the clients saw, exactly, when a replica is
killed and restarted mid-run, when the service is down for 30 s (batches held and delivered
later), and when a batch's answer is lost after it was written (sent again, counted once).

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's PostgreSQL.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from support.harness import Envoy, bearer
from support.service import KEYGATE, Service, free_port

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")

KEYS = 12
FLUSH_MS = 1000
UNAVAILABLE = b'{"error": "Service Unavailable", "message": "API key could not be verified"}'


class LosingProxy:
    """Forwards the filter's calls to a key service; the first usage batch after `lose()` is
    forwarded and written, and then its answer is dropped (the connection closed)."""

    def __init__(self, target_port: int):
        self.target_port, self.port = target_port, free_port()
        self.lost, self._lose = 0, threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=40)
                try:
                    conn.request(self.command, self.path, body=body or None,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                    r = conn.getresponse()
                    answer = r.read()
                except OSError:
                    self.close_connection = True
                    return
                finally:
                    conn.close()
                if self.path.endswith("/usage") and proxy._lose.is_set():
                    proxy._lose.clear()
                    proxy.lost += 1
                    self.close_connection = True  # written by the service; the filter never hears
                    return
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def lose(self):
        self._lose.set()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def plugin_config() -> dict:
    return {"keys": [],
            "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 500, "timeout_ms": 2000,
                            "cache": {"ttl_seconds": 3600, "stale_if_error_seconds": 3600}},
            "usage": {"flush_ms": FLUSH_MS, "upstream_status": True}}


class Load:
    """Threads calling both Envoys with every key, recording what each client saw."""

    def __init__(self, envoys: list[Envoy], keys: dict[str, str]):
        self.envoys, self.keys = envoys, keys
        self.seen: dict[str, Counter] = {k: Counter() for k in keys}
        # A 503 for a key no VM had cached is counted without a key (the filter never learnt it).
        self.unavailable = 0
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def _run(self, i: int):
        n = 0
        statuses = ["200", "200", "200", "404", "503", "302", "429"]
        ids = sorted(self.keys)
        while self.running.is_set():
            n += 1
            key_id = ids[(i * 7 + n) % len(ids)]
            e = self.envoys[(i + n) % len(self.envoys)]
            status = statuses[(i + n) % len(statuses)]
            try:
                r = e.get("/api/x", [bearer(self.keys[key_id]), ("x-echo-status", status)])
            except OSError:
                continue
            seen = Counter()
            if r.status == 503 and r.body == UNAVAILABLE:
                with self.lock:
                    self.unavailable += 1
                continue
            if b'"upstream": "echo"' in r.body:
                cls = "429" if r.status == 429 else f"{r.status // 100}xx"
                seen.update({"allowed": 1, f"upstream_{cls}": 1})
            else:
                raise AssertionError(f"unexpected answer {r.status} {r.body[:100]!r}")
            with self.lock:
                self.seen[key_id].update(seen)
            time.sleep(0.01)

    def start(self):
        self.running.set()
        for t in self.threads:
            t.start()

    def stop(self):
        self.running.clear()
        for t in self.threads:
            t.join(timeout=30)


def usage_of(s: Service, key_id: str, since: str) -> Counter:
    r = s.admin("GET", f"/v1/keys/{key_id}/usage?step=minute&from={since}")
    assert r.status == 200, r
    totals = Counter()
    for p in r.json()["points"]:
        totals.update(p["counts"])
    return totals


def test_counts_are_exact_across_a_replica_restart_an_outage_and_a_lost_answer(pg, tmp_path):
    db = pg.createdb("usage_exact")
    replicas = [Service(db, tmp_path).start(), Service(db, tmp_path).start()]
    proxies = [LosingProxy(r.filter_port) for r in replicas]
    envoys = [Envoy(plugin_config=plugin_config(), clusters={"keygate-keys": p.port}, concurrency=2).start()
              for p in proxies]
    load = None
    try:
        a = replicas[0]
        keys = {}
        for i in range(KEYS):
            r = a.admin("POST", "/v1/keys", {"id": f"u{i:02d}", "owner": f"o{i % 3}"})
            assert r.status == 201, r
            keys[f"u{i:02d}"] = r.json()["key"]
        since = time.strftime("%Y-%m-%dT%H:%M:00Z", time.gmtime(time.time() - 60))
        load = Load(envoys, keys)
        load.start()
        # Each phase lasts a few of the 1 s flushes of every VM.
        time.sleep(2.5)
        # A replica killed and restarted: its Envoy's batches fail, are held, and go later.
        replicas[1].proc.kill()
        replicas[1].proc.wait()
        time.sleep(2.5)
        replicas[1].start()
        time.sleep(2.5)
        # A batch written, its answer lost: sent again, counted once.
        for p in proxies:
            p.lose()
        time.sleep(2.5)
        assert [p.lost for p in proxies] == [1, 1], "no answer was lost"
        # The whole service down for 30 s: cached keys go on, counts are held.
        for r in replicas:
            r.stop()
        time.sleep(30)
        for r in replicas:
            r.start()
        time.sleep(2.5)
        load.stop()
        expected = {k: Counter({n: c for n, c in v.items() if c}) for k, v in load.seen.items()}
        assert sum(sum(v.values()) for v in expected.values()) > 1000, "too little load to judge"
        deadline = time.monotonic() + 30
        while True:
            got = {k: usage_of(a, k, since) for k in keys}
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert got == expected, json.dumps({k: (dict(got[k]), dict(expected[k])) for k in keys
                                             if got[k] != expected[k]})
        time.sleep(2 * FLUSH_MS / 1000 + 1)
        assert {k: usage_of(replicas[1], k, since) for k in keys} == expected, "counted twice, later"
        totals = a.admin("GET", f"/v1/usage?step=minute&from={since}").json()
        assert totals["counts"].get("unavailable", 0) == load.unavailable
        assert sum(e.counter("usage.batches_failed") for e in envoys) > 0, "no batch ever failed"
        assert sum(e.counter("usage.dropped") for e in envoys) == 0
        # Each start moved what batches had added to the recent table into the key-ordered one,
        # while the other replica took batches: the totals above span both tables.
        assert int(pg.scalar("usage_exact", "SELECT COUNT(*) FROM usage_minutes")) > 0
    finally:
        if load is not None:
            load.stop()
        for e in envoys:
            e.stop()
        for p in proxies:
            p.stop()
        for r in replicas:
            r.stop()
