"""Limits, measured (docs/limits.md, docs/performance.md): what the rate-limit path costs and
how exactly it counts.

    .venv/bin/python bench/bench_limits.py [--skip-instructions | --only-instructions]

- accuracy: two Envoys (two workers each) and two `keygate serve` replicas sharing one Redis;
  one key limited to L a second, hammered well over 5x L for 10 one-second windows. The
  allowed requests per window, against L, and each `x-ratelimit-remaining` value counted
  (an exact counter hands out each of L-1 ... 0 once per window).
- latency: one Envoy (one worker) and the service (counters in memory); a limited key (limit
  never reached) and an unlimited key, alternating on one keep-alive connection: the p50 and
  p99 each, and the difference.
- instructions: callgrind on Envoy, per request, for a limited key and an unlimited key, with
  the rate-limit filter as shipped (made by a composite filter only for requests that carry
  x-api-key-limits, a header the bootstrap registers inline), the same with the header not
  inline, with the filter bare in the chain, and without it (--chain picks others: CHAINS).
- throughput: the rate-limit service alone, pinned to CPU 1, asked by bench/rls-load pinned
  to CPU 0 (64 callers on one HTTP/2 connection), counters in memory and in Redis.
- memory: bytes per active counter after 100,000 keys were counted once, in memory (the
  service's RSS) and in Redis (`used_memory`).

Results: printed, and written to bench/results/<date>-limits.md. 127.0.0.1 only; about 3
minutes, plus about 10 for the instructions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from support.harness import Envoy, bearer
from support.redis import Redis
from support.service import Service, sha256_hex

ROOT = Path(__file__).resolve().parents[1]

RELEASE = ROOT / "target" / "release" / "keygate"
LOAD = ROOT / "target" / "release" / "rls-load"
LIMITED_KEY, FREE_KEY = "kg_bench_limited_key", "kg_bench_free_key"


def service(workdir: Path, db: str, redis: str | None = None, pin: str | None = None) -> Service:
    s = Service(db, workdir, args=["--redis", redis] if redis else [])
    base = s.command
    s.command = lambda: (["taskset", "-c", pin] if pin else []) + [str(RELEASE)] + base()[1:]
    return s.start()


def plugin_config(s: Service | None, static=()) -> dict:
    config = {"keys": list(static)}
    if s is not None:
        config["key_service"] = {"cluster": "keygate-keys", "changes_poll_ms": 200, "changes_wait_ms": 20_000}
    return config


# Accuracy --------------------------------------------------------------------------------------

def accuracy(workdir: Path, limit: int = 100, windows: int = 10) -> dict:
    redis = Redis().start()
    db = f"sqlite:{workdir / 'shared.db'}"
    replicas = [service(workdir, db, redis.url), service(workdir, db, redis.url)]
    r = replicas[0].admin("POST", "/v1/keys", {"id": "hammered", "limits": [{"requests": limit, "per": "second"}]})
    key = r.json()["key"]
    envoys = [Envoy(plugin_config=plugin_config(s), clusters={"keygate-keys": s.filter_port},
                    ratelimit_port=s.ratelimit_port, concurrency=2).start() for s in replicas]
    try:
        for e in envoys:
            deadline = time.monotonic() + 10
            while e.get("/x", [bearer(key)]).status not in (200, 429):
                assert time.monotonic() < deadline
        time.sleep(1.5 - time.time() % 1)  # start half a second into a window, then skip it
        start = int(time.time()) + 1
        end = start + windows
        answers: list[tuple[float, int, int | None]] = []
        lock = threading.Lock()

        def run(port):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            got = []
            while time.time() < end + 0.3:
                conn.request("GET", "/x", headers={"authorization": f"Bearer {key}"})
                resp = conn.getresponse()
                resp.read()
                remaining = resp.getheader("x-ratelimit-remaining")
                got.append((time.time(), resp.status, int(remaining) if remaining else None))
            conn.close()
            with lock:
                answers.extend(got)

        threads = [threading.Thread(target=run, args=(e.port,)) for e in envoys for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for e in envoys:
            e.stop()
        for s in replicas:
            s.stop()
        redis.stop()
    inside = [a for a in answers if start <= a[0] < end]
    per_window = [sum(1 for t, st, _ in inside if int(t) == w and st == 200) for w in range(start, end)]
    offered = [sum(1 for t, _, _ in inside if int(t) == w) for w in range(start, end)]
    allowed = [a for a in answers if a[1] == 200]
    by_remaining = {r: sum(1 for a in allowed if a[2] == r) for r in range(limit)}
    total = sum(per_window)
    return {"limit": limit, "windows": windows, "offered_per_window": offered, "allowed_per_window": per_window,
            "allowed_total": total, "expected_total": limit * windows,
            "error_pct": 100 * (total - limit * windows) / (limit * windows),
            "remaining_values_seen": sorted(set(by_remaining.values())),
            "statuses": sorted({a[1] for a in answers})}


# Latency ---------------------------------------------------------------------------------------

def latency(workdir: Path, count: int = 5000) -> dict:
    s = service(workdir, f"sqlite:{workdir / 'latency.db'}")
    static = [{"id": "limited", "sha256": sha256_hex(LIMITED_KEY), "limits": [{"requests": 10**12, "per": "day"}]},
              {"id": "free", "sha256": sha256_hex(FREE_KEY)}]
    e = Envoy(plugin_config=plugin_config(None, static), ratelimit_port=s.ratelimit_port, concurrency=1).start()
    times: dict[str, list[float]] = {"limited": [], "free": []}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=10)
        for i in range(count * 2 + 400):
            name, key = ("limited", LIMITED_KEY) if i % 2 else ("free", FREE_KEY)
            began = time.perf_counter()
            conn.request("GET", "/x", headers={"authorization": f"Bearer {key}"})
            resp = conn.getresponse()
            resp.read()
            took = time.perf_counter() - began
            assert resp.status == 200, resp.status
            if i >= 400:  # warm-up
                times[name].append(took * 1e6)
        conn.close()
    finally:
        e.stop()
        s.stop()

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * p))]

    out = {name: {"p50_us": round(q(xs, 0.5)), "p99_us": round(q(xs, 0.99))} for name, xs in times.items()}
    out["added_p50_us"] = out["limited"]["p50_us"] - out["free"]["p50_us"]
    out["added_p99_us"] = out["limited"]["p99_us"] - out["free"]["p99_us"]
    return out


# Instructions ----------------------------------------------------------------------------------

def envoy_binary() -> str:
    found = sorted(ROOT.glob(".venv/lib/python*/site-packages/envoy/_bin/envoy"))
    return os.environ.get("ENVOY_BIN") or str(found[0])


def limits_filter(config: dict) -> tuple[list, int]:
    """The api listener's HTTP filters and the index of keygate-limits among them."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters = hcm["http_filters"]
    return filters, next(i for i, f in enumerate(filters) if f["name"] == "keygate-limits")


def rewrite(e: Envoy, change) -> None:
    """Makes e render its bootstrap through change(bootstrap, keygate-limits filter), which edits
    the bootstrap and returns the filter to put in place of keygate-limits."""
    render = e.render

    def rewritten() -> dict:
        config = render()
        filters, i = limits_filter(config)
        filters[i] = change(config, filters[i])
        return config

    e.render = rewritten


def inner_ratelimit(f: dict) -> dict:
    """The rate-limit filter the composite filter's ExecuteFilterAction makes."""
    matcher = f["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]
    return matcher["on_match"]["action"]["typed_config"]["typed_config"]


def not_inline(config: dict, f: dict) -> dict:
    """x-api-key-limits as an ordinary header: the matcher's lookup searches the header map."""
    del config["inline_headers"]
    return f


def bare(config: dict, f: dict) -> dict:
    """The rate-limit filter straight in the chain, made for every request."""
    return inner_ratelimit(f)


def extension_with_matcher(config: dict, f: dict) -> dict:
    """The rate-limit filter wrapped by ExtensionWithMatcher itself, without the composite filter:
    SkipFilter when x-api-key-limits is absent. The filter (and its gRPC client) is still made for
    every request; the skip only keeps its callbacks from running."""
    predicate = f["typed_config"]["xds_matcher"]["matcher_list"]["matchers"][0]["predicate"]
    skip = f["typed_config"]["xds_matcher"]["on_no_match"]
    return {"name": "keygate-limits", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
        "extension_config": inner_ratelimit(f),
        "xds_matcher": {"matcher_list": {"matchers": [{"predicate": {"not_matcher": predicate}, "on_match": skip}]}}}}


# Each chain: (with the rate-limit filter and service, change or None). The first is the shipped
# construct (tests/integration/support/harness.py: ratelimit_filter() and INLINE_HEADERS).
CHAINS = {
    "rate-limit filter in the composite filter, x-api-key-limits inline (shipped)": (True, None),
    "rate-limit filter in the composite filter, x-api-key-limits not inline": (True, not_inline),
    "rate-limit filter under ExtensionWithMatcher, no composite filter": (True, extension_with_matcher),
    "rate-limit filter bare": (True, bare),
    "rate-limit filter off": (False, None),
}
DEFAULT_CHAINS = tuple(c for c in CHAINS if "ExtensionWithMatcher" not in c)


def instructions(workdir: Path, count: int = 2000, warmup: int = 2000, chains=DEFAULT_CHAINS) -> dict:
    s = service(workdir, f"sqlite:{workdir / 'instr.db'}")
    wrapper = workdir / "envoy-under-callgrind.sh"
    wrapper.write_text("#!/bin/sh\nexec valgrind --tool=callgrind --smc-check=all-non-file --collect-atstart=yes "
                       f"--callgrind-out-file={workdir}/callgrind.out.%p {envoy_binary()} \"$@\"\n")
    wrapper.chmod(0o755)
    static = [{"id": "limited", "sha256": sha256_hex(LIMITED_KEY), "limits": [{"requests": 10**12, "per": "day"}]},
              {"id": "free", "sha256": sha256_hex(FREE_KEY)}]
    results = {}
    old = os.environ.get("ENVOY_BIN")
    os.environ["ENVOY_BIN"] = str(wrapper)
    try:
        for chain in chains:
            with_service, change = CHAINS[chain]
            e = Envoy(plugin_config=plugin_config(None, static), concurrency=1,
                      ratelimit_port=s.ratelimit_port if with_service else None)
            if change is not None:
                rewrite(e, change)
            e.start(timeout=600)
            try:
                for name, key in (("limited", LIMITED_KEY), ("unlimited", FREE_KEY)):
                    conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=60)

                    def send(n, conn=conn, key=key):
                        for _ in range(n):
                            conn.request("GET", "/x", headers={"authorization": f"Bearer {key}"})
                            resp = conn.getresponse()
                            resp.read()
                            assert resp.status == 200, resp.status

                    send(warmup)
                    subprocess.run(["callgrind_control", "-z", str(e.proc.pid)], check=True, capture_output=True)
                    send(count)
                    subprocess.run(["callgrind_control", "-d", str(e.proc.pid)], check=True, capture_output=True)
                    conn.close()
                    dumps = sorted(workdir.glob("callgrind.out.*"), key=lambda f: f.stat().st_mtime)
                    total = next(int(line.split()[1]) for line in dumps[-1].read_text(errors="replace").splitlines()
                                 if line.startswith(("summary:", "totals:")))
                    label = f"{name} key, {chain}"
                    results[label] = round(total / count)
                    print(f"  {label}: {total / count:,.0f} instructions/request", flush=True)
            finally:
                e.stop()
    finally:
        if old is None:
            os.environ.pop("ENVOY_BIN", None)
        else:
            os.environ["ENVOY_BIN"] = old
        s.stop()
    return results


# Throughput and memory of the service ---------------------------------------------------------

def load(port: int, concurrency: int, seconds: int, keys: int, limits: str) -> dict:
    out = subprocess.run(["taskset", "-c", "0", str(LOAD), f"127.0.0.1:{port}", str(concurrency), str(seconds),
                          str(keys), limits], capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def redis_used(r: Redis) -> tuple[int, int]:
    info = subprocess.run(["redis-cli", "-p", str(r.port), "info", "memory"], capture_output=True, text=True).stdout
    used = next(int(line.split(":")[1]) for line in info.splitlines() if line.startswith("used_memory:"))
    keys = int(subprocess.run(["redis-cli", "-p", str(r.port), "dbsize"], capture_output=True, text=True).stdout)
    return used, keys


def service_alone(workdir: Path) -> dict:
    out = {}
    for mode in ("memory", "redis"):
        # Redis on CPU 0 beside the load generator: the service alone on CPU 1.
        redis = Redis(cpu="0").start() if mode == "redis" else None
        s = service(workdir, f"sqlite:{workdir / f'{mode}.db'}", redis.url if redis else None, pin="1")
        try:
            runs = [load(s.ratelimit_port, 64, 5, 1000, "1000000000/second") for _ in range(3)]
            out[f"{mode}: decisions/s (median of 3)"] = statistics.median(r["per_second"] for r in runs)
            out[f"{mode}: p99 us (median of 3)"] = statistics.median(r["p99_us"] for r in runs)
            assert all(r["errors"] == 0 for r in runs), runs
            # Memory: 100,000 counters counting, beside the 1,000 above.
            before = rss_kib(s.proc.pid), (redis_used(redis) if redis else None)
            filled = load(s.ratelimit_port, 64, 0, 100_000, "1000/hour")
            assert filled["errors"] == 0, filled
            after = rss_kib(s.proc.pid), (redis_used(redis) if redis else None)
            if redis:
                used = after[1][0] - before[1][0]
                out["redis: bytes per active counter (used_memory)"] = round(used / (after[1][1] - before[1][1]))
            else:
                out["memory: bytes per active counter (service RSS)"] = round((after[0] - before[0]) * 1024 / 99_000)
        finally:
            s.stop()
            if redis:
                redis.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-instructions", action="store_true")
    ap.add_argument("--only-instructions", action="store_true", help="only the callgrind counts (~10 minutes)")
    ap.add_argument("--chain", action="append", choices=list(CHAINS),
                    help="a chain to measure (repeatable; default: all but the ExtensionWithMatcher one)")
    args = ap.parse_args()
    for needed in (RELEASE, LOAD):
        if not needed.exists():
            sys.exit(f"{needed} is missing: cargo build --release -p keygate-tools, and "
                     "(cd bench/rls-load && cargo build --release --target-dir ../../target)")
    workdir = Path(tempfile.mkdtemp(prefix="keygate-bench-limits-"))
    results = {}
    if not args.only_instructions:
        results["service alone"] = service_alone(workdir)
        print(json.dumps(results, indent=1), flush=True)
        results["accuracy"] = accuracy(workdir)
        print(json.dumps(results["accuracy"], indent=1), flush=True)
        results["latency through Envoy"] = latency(workdir)
        print(json.dumps(results["latency through Envoy"], indent=1), flush=True)
    if not args.skip_instructions:
        results["instructions per request (callgrind, one worker)"] = instructions(
            workdir, chains=tuple(args.chain or DEFAULT_CHAINS))
    stamp = datetime.now(UTC)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    text = (f"# keygate limits {stamp:%Y-%m-%d %H:%M} UTC ({commit})\n\n"
            f"`.venv/bin/python bench/bench_limits.py{''.join(' ' + a for a in sys.argv[1:])}`, "
            f"on {os.cpu_count()} CPUs, 127.0.0.1 only.\n\n```json\n"
            + json.dumps(results, indent=1) + "\n```\n")
    out = ROOT / "bench" / "results" / f"{stamp:%Y-%m-%d-%H%M}-limits.md"
    out.write_text(text)
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
