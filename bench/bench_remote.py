"""The remote key source, measured: what a cache miss adds, how fast a
revocation reaches every worker, and what the cache costs in memory. Loopback only.

    .venv/bin/python bench/bench_remote.py --miss 2000          # added latency of a miss, p50/p99
    .venv/bin/python bench/bench_remote.py --miss 2000 --real-service   # ... against `keygate serve`
    .venv/bin/python bench/bench_remote.py --revocations 200    # revocation latency on both workers
    .venv/bin/python bench/bench_remote.py --memory 100000      # VM memory and bytes per cached key
    .venv/bin/python bench/bench_remote.py --burst 5000 --rounds 10   # a revocation right after a burst of changes
    .venv/bin/python bench/bench_remote.py --revocations-real 200 --wait-ms 25000   # held polls vs polling
    .venv/bin/python bench/bench_remote.py --idle 30            # feed calls per second of an idle fleet

--burst, --revocations-real and --idle run against `keygate serve` (release build, SQLite): they
measure the feed's paging, `more` and held polls, which the in-process key server does not have.

The key service is tests/integration/support/keyserver.py, in this process, so the figures price the
filter and Envoy, not a database; `--real-service` runs the miss against `keygate serve`. Results are printed and
written to
bench/results/<date>-remote.md.
Latencies are wall-clock on a shared 2-core machine: read them as orders of magnitude.
"""

from __future__ import annotations

import argparse
import http.client
import time
from datetime import UTC, datetime
from pathlib import Path

from support.harness import Envoy
from support.keyserver import KeyServer
from support.soak import rss_kib

ROOT = Path(__file__).resolve().parents[1]


class BalancedEnvoy(Envoy):
    """Envoy whose listener spreads connections evenly over the workers (exact_balance), so
    that N keep-alive connections opened in a row land one per worker."""

    def render(self) -> dict:
        cfg = super().render()
        cfg["static_resources"]["listeners"][0]["connection_balance_config"] = {"exact_balance": {}}
        return cfg


def key_service(poll_ms: int, ttl: int = 3600, max_entries: int = 100_000, wait_ms: int = 0) -> dict:
    return {"keys": [], "key_service": {"cluster": "keygate-keys", "changes_poll_ms": poll_ms, "timeout_ms": 1000,
                                        "changes_wait_ms": wait_ms,
                                        "cache": {"ttl_seconds": ttl, "max_entries": max_entries}}}


def real_service():
    """`keygate serve` from the release build, on SQLite in a temporary folder."""
    import tempfile

    from support.service import Service

    server = Service("sqlite:keygate.db", Path(tempfile.mkdtemp(prefix="keygate-bench-svc-")),
                     env={}, tokens=["kg_bench_admin"])
    server.command = lambda: [str(ROOT / "target" / "release" / "keygate"), "serve", "--db", server.db,
                              "--admin-listen", f"127.0.0.1:{server.admin_port}",
                              "--filter-listen", f"127.0.0.1:{server.filter_port}",
                              "--ratelimit-listen", f"127.0.0.1:{server.ratelimit_port}"]
    return server.start()


def two_workers(server, poll_ms: int = 1000, wait_ms: int = 0):
    """Envoy with two workers against `server`, and one keep-alive connection per worker."""
    e = BalancedEnvoy(plugin_config=key_service(poll_ms, wait_ms=wait_ms),
                      clusters={"keygate-keys": server.filter_port}, concurrency=2).start()
    conns = [http.client.HTTPConnection("127.0.0.1", e.port, timeout=10) for _ in range(2)]
    for c in conns:
        c.connect()
    return e, conns


def cached_on_both(conns, key: str) -> None:
    """Both workers hold `key`'s answer, cached after the feed listed its creation (which
    would drop an answer cached before it, and the revocation would then be a fresh lookup's
    404 instead of the feed's work)."""
    time.sleep(1.5)  # a poll (changes_poll_ms 1000) and its round trip since the creation
    deadline = time.monotonic() + 10
    while not all(request(c, key)[0] == 200 for c in conns):
        if time.monotonic() > deadline:
            raise RuntimeError("the key never answered 200 on both workers")
        time.sleep(0.01)


def refused_on_both(conns, key: str, limit: float = 30) -> float:
    """Seconds from now until both workers answer 401 for `key` (the later of the two)."""
    t0, seen = time.perf_counter(), [None, None]
    while None in seen and time.perf_counter() - t0 < limit:
        for w, c in enumerate(conns):
            if seen[w] is None and request(c, key)[0] == 401:
                seen[w] = time.perf_counter() - t0
        time.sleep(0.002)
    if None in seen:
        raise RuntimeError(f"not refused on both workers within {limit} s: {seen}")
    return max(seen)


def burst(changes: int, rounds: int, wait_ms: int) -> list[str]:
    """A key cached on both workers, then `changes` creates through the admin API from 16
    clients, then the key revoked: how long until both workers refuse it."""
    from concurrent.futures import ThreadPoolExecutor

    server = real_service()
    e, conns = two_workers(server, wait_ms=wait_ms)
    latencies, rates, lags = [], [], []
    try:
        for _ in range(rounds):
            secret, entry = server.create({"owner": "bench-watched"})
            cached_on_both(conns, secret)
            start = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda _: server.create({"owner": "bench-burst"}), range(changes)))
            rates.append(changes / (time.perf_counter() - start))
            lags.append(e.stat("wasmcustom.keygate.remote.feed_lag"))
            assert server.admin("DELETE", f"/v1/keys/{entry['id']}").status == 204
            latencies.append(refused_on_both(conns, secret) * 1e3)
    finally:
        e.stop()
        server.stop()
    return [f"## Revocation right after a burst: {rounds} rounds of {changes:,} creates, then the revocation",
            "", f"`keygate serve` (SQLite, release), Envoy --concurrency 2, changes_poll_ms 1000, "
            f"changes_wait_ms {wait_ms}; creates from 16 clients at {min(rates):,.0f}-{max(rates):,.0f}/s; "
            f"remote.feed_lag when the burst ended: {min(lags)}-{max(lags)}.", "",
            "| p50 ms | p99 ms | max ms | bound |", "|---:|---:|---:|---|",
            f"| {pct(latencies, 50):.0f} | {pct(latencies, 99):.0f} | {max(latencies):.0f} | p99 under 2000 |", ""]


def revocations_real(count: int, wait_ms: int) -> list[str]:
    """Like `revocations`, against `keygate serve`: each revocation through its admin API."""
    server = real_service()
    e, conns = two_workers(server, wait_ms=wait_ms)
    latencies = []
    try:
        for i in range(count):
            secret, entry = server.create({"owner": "bench"})
            cached_on_both(conns, secret)
            time.sleep(0.1 * (i % 10))  # spread revocations over the poll phase
            assert server.admin("DELETE", f"/v1/keys/{entry['id']}").status == 204
            latencies.append(refused_on_both(conns, secret) * 1e3)
    finally:
        e.stop()
        server.stop()
    how = f"polls held up to {wait_ms} ms" if wait_ms else "a poll every 1000 ms"
    return [f"## Revocation on every worker, `keygate serve`, {how}: {count} revocations", "",
            "| p50 ms | p99 ms | max ms |", "|---:|---:|---:|",
            f"| {pct(latencies, 50):.0f} | {pct(latencies, 99):.0f} | {max(latencies):.0f} |", ""]


def idle(seconds: int) -> list[str]:
    """Feed calls per second from an idle Envoy (two workers and its main thread: three VMs
    that poll), polling every second and with held polls, counted by Envoy's cluster stats."""
    server = real_service()
    rows = []
    try:
        for wait_ms in (0, 25_000):
            e, _ = two_workers(server, wait_ms=wait_ms)
            try:
                time.sleep(2)
                before = e.stat("cluster.keygate-keys.upstream_rq_total")
                time.sleep(seconds)
                calls = e.stat("cluster.keygate-keys.upstream_rq_total") - before
            finally:
                e.stop()
            per_vm = calls / seconds / 3
            how = f"held up to {wait_ms} ms" if wait_ms else "a poll every 1000 ms"
            rows.append(f"| {how} | {calls / seconds:.2f} | {per_vm * 1000:,.0f} |")
    finally:
        server.stop()
    return [f"## An idle fleet's feed calls, {seconds} s each", "",
            "| feed | calls/s, one Envoy (3 VMs) | calls/s per 1,000 VMs |", "|---|---:|---:|", *rows, ""]


def request(conn: http.client.HTTPConnection, key: str) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request("GET", "/bench", headers={"Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    r.read()
    return r.status, time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def miss(n: int, real: bool = False) -> list[str]:
    """Each of `n` new keys once (a miss: one lookup), each followed by the same key again (a
    hit); the added latency is the difference within each pair. `real`: the shipped key
    service (`target/release/keygate serve`, SQLite) instead of the in-process fake."""
    if real:
        server = real_service()
        keys = [server.create({"owner": "bench"})[0] for _ in range(n)]
        port, where = server.filter_port, "the shipped key service, SQLite, release build"
    else:
        server = KeyServer(authority="keygate-keys").start()
        keys = [f"bench-miss-{i:06d}" for i in range(n)]
        for i, k in enumerate(keys):
            server.add(k, {"id": f"m{i}"}, feed=False)
        port, where = server.port, "fake key service in the benchmark process"
    e = Envoy(plugin_config=key_service(600_000), clusters={"keygate-keys": port}).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        request(conn, keys[0])  # connection and VM warm
        added, misses, hits = [], [], []
        for k in keys[1:]:
            s1, t_miss = request(conn, k)
            s2, t_hit = request(conn, k)
            assert (s1, s2) == (200, 200), (s1, s2)
            misses.append(t_miss * 1e3)
            hits.append(t_hit * 1e3)
            added.append((t_miss - t_hit) * 1e3)
    finally:
        e.stop()
        server.stop() if real else server.kill()
    return [f"## A cache miss, {n - 1} keys (one worker, {where})", "",
            "| | p50 ms | p99 ms |", "|---|---:|---:|",
            f"| miss (lookup + decision) | {pct(misses, 50):.3f} | {pct(misses, 99):.3f} |",
            f"| hit (same key again) | {pct(hits, 50):.3f} | {pct(hits, 99):.3f} |",
            f"| added by the miss | {pct(added, 50):.3f} | {pct(added, 99):.3f} |", ""]


def revocations(count: int, poll_ms: int = 1000) -> list[str]:
    """Envoy with two workers; for each revocation, a key cached on both workers is removed
    and both keep-alive connections (one per worker) poll until they get 401."""
    server = KeyServer(authority="keygate-keys").start()
    e = BalancedEnvoy(plugin_config=key_service(poll_ms), clusters={"keygate-keys": server.port}, concurrency=2).start()
    latencies = []
    try:
        conns = [http.client.HTTPConnection("127.0.0.1", e.port, timeout=10) for _ in range(2)]
        for c in conns:
            c.connect()
        for i in range(count):
            key = f"bench-revoke-{i:05d}"
            server.add(key, {"id": f"r{i}"})
            deadline = time.monotonic() + 10
            # Cached on both workers: both connections see 200 (a feed listing the creation
            # may drop the first answer; ask until both are cached and stay so).
            while not all(request(c, key)[0] == 200 for c in conns) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(poll_ms / 1000 * (i % 10) / 10)  # spread revocations over the poll phase
            server.remove(key)
            latencies.append(refused_on_both(conns, key, limit=10) * 1e3)
    finally:
        e.stop()
        server.kill()
    return [f"## Revocation on every worker: {count} revocations, Envoy --concurrency 2, changes_poll_ms {poll_ms}", "",
            "Time from the service's change to a 401 on both workers' connections (the later of the two).", "",
            "| p50 ms | p99 ms | max ms | bound |", "|---:|---:|---:|---|",
            f"| {pct(latencies, 50):.0f} | {pct(latencies, 99):.0f} | {max(latencies):.0f} | p99 under 2000 |", ""]


def memory(n: int) -> list[str]:
    """One worker; Envoy's RSS before and after `n` distinct keys are cached. The growth also
    holds Envoy's own per-connection and allocator noise, so it overstates the cache a little."""
    server = KeyServer(authority="keygate-keys").start()
    keys = [f"bench-mem-{i:07d}" for i in range(n)]
    for i, k in enumerate(keys):
        server.add(k, {"id": f"k{i}", "owner": "bench-owner"}, feed=False)
    e = Envoy(
        plugin_config=key_service(600_000, ttl=86_400, max_entries=max(n, 1)), clusters={"keygate-keys": server.port}
    ).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        request(conn, keys[0])
        time.sleep(1)
        before = rss_kib(e.proc.pid)
        start = time.perf_counter()
        for k in keys:
            status, _ = request(conn, k)
            assert status == 200, status
        warm = time.perf_counter() - start
        time.sleep(1)
        after = rss_kib(e.proc.pid)
        stats = e.stats("keygate.remote")
    finally:
        e.stop()
        server.kill()
    per_key = (after - before) * 1024 / n
    return [
        f"## Memory: {n:,} cached remote keys in one VM",
        "",
        "| RSS before | RSS after | growth | bytes per cached key | time to warm |",
        "|---:|---:|---:|---:|---:|",
        f"| {before / 1024:.1f} MiB | {after / 1024:.1f} MiB | {(after - before) / 1024:.1f} MiB | {per_key:,.0f} "
        f"| {warm:.1f} s |",
        "",
        f"Counters: lookups {stats.get('wasmcustom.keygate.remote.lookups')}, "
        f"cache_entries {stats.get('wasmcustom.keygate.remote.cache_entries')}, "
        f"evictions {stats.get('wasmcustom.keygate.remote.evictions')}.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miss", type=int, default=0, metavar="N")
    ap.add_argument("--real-service", action="store_true",
                    help="--miss against the shipped key service (cargo build --release -p keygate-tools)")
    ap.add_argument("--revocations", type=int, default=0, metavar="N")
    ap.add_argument("--memory", type=int, default=0, metavar="N")
    ap.add_argument("--burst", type=int, default=0, metavar="N", help="creates in each burst")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--revocations-real", type=int, default=0, metavar="N")
    ap.add_argument("--wait-ms", type=int, default=0, help="key_service.changes_wait_ms")
    ap.add_argument("--idle", type=int, default=0, metavar="SECONDS")
    args = ap.parse_args()
    lines = [f"# keygate remote keys {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", ""]
    if args.miss:
        lines += miss(args.miss, real=args.real_service)
    if args.revocations:
        lines += revocations(args.revocations)
    if args.memory:
        lines += memory(args.memory)
    if args.burst:
        lines += burst(args.burst, args.rounds, args.wait_ms)
    if args.revocations_real:
        lines += revocations_real(args.revocations_real, args.wait_ms)
    if args.idle:
        lines += idle(args.idle)
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-remote.md"
    out.write_text(text + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
