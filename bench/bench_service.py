"""The key service's lookup rate: `GET /v1/filter/keys/{sha256}` answered per second by one
`keygate serve` pinned to one core, with N keys in SQLite and/or PostgreSQL, plus the time to
create those keys through the admin API and the lookup latency p50/p99. Optional: not part
of the tests.

    cargo build --release -p keygate-tools
    .venv/bin/python bench/bench_service.py --keys 100000 [--db sqlite|postgres|both] [--seconds 10]
    .venv/bin/python bench/bench_service.py --keys 1000000 --seed import   # lookups at a million keys

`--dir /dev/shm` puts the SQLite file (and the seed) in memory: this VM drops the page cache
within seconds, so on disk many lookups wait for a read; in tmpfs they measure the service.
`--seed api` (the default) creates the keys through the admin API and reports that time;
`--seed import` writes them to a plugin configuration and starts the service with
`--import FILE` (one transaction per 1,000 keys), much faster, for the lookup figures.

The service runs on CPU 1 (taskset), wrk on CPU 0 with 4 connections, one per wrk thread (random known digests,
so every lookup reads the database); PostgreSQL is not pinned and shares both cores. Keys
are created by 8 client threads on keep-alive connections. Loopback only; bounded in time.
Needs wrk and taskset (bench/run.sh installs them) and, for PostgreSQL, Debian's postgresql.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from support.service import Postgres, Service, sha256_hex

ROOT = Path(__file__).resolve().parents[1]

RELEASE = ROOT / "target" / "release" / "keygate"
SAMPLE = 20_000  # digests wrk picks from


def create_keys(svc: Service, n: int, threads: int = 8) -> tuple[float, list[str]]:
    """Creates n keys through the admin API; returns the seconds it took and some digests."""
    digests: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    failures = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", svc.admin_port, timeout=60)
        headers = {"authorization": f"Bearer {svc.token}", "content-type": "application/json"}
        mine = []
        try:
            for i in counter:
                body = {"id": f"bench-{i:07d}", "owner": f"owner-{i % 1000}"}
                if i % 10 == 0:
                    body["cors"] = {"allowed_origins": [f"https://app{i % 100}.example"]}
                conn.request("POST", "/v1/keys", json.dumps(body), headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 201:
                    raise RuntimeError(f"{r.status} {data[:200]!r}")
                if len(mine) < SAMPLE:
                    mine.append(sha256_hex(json.loads(data)["key"]))
        except Exception as e:  # noqa: BLE001
            failures.append(e)
        finally:
            conn.close()
            with lock:
                digests.extend(mine)

    start = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if failures:
        raise failures[0]
    return time.monotonic() - start, random.sample(digests, min(SAMPLE, len(digests)))


def import_file(n: int, workdir: Path) -> tuple[Path, list[str]]:
    """A plugin configuration of n keys shaped like create_keys' (digests of reproducible
    secrets), and a sample of their digests."""
    path = workdir / "seed.json"
    digests = []
    with path.open("w") as out:
        out.write('{"keys": [')
        for i in range(n):
            entry = {"id": f"bench-{i:07d}", "sha256": sha256_hex(f"kg_bench_{i}"), "owner": f"owner-{i % 1000}"}
            if i % 10 == 0:
                entry["cors"] = {"allowed_origins": [f"https://app{i % 100}.example"]}
            out.write(("," if i else "") + json.dumps(entry))
            if len(digests) < SAMPLE * 5:
                digests.append(entry["sha256"])
        out.write("]}")
    return path, random.sample(digests, min(SAMPLE, len(digests)))


# wrk's own percentiles are not the service's latencies: after the run, wrk 4 "corrects" its
# histogram for coordinated omission (stats_correct in wrk.c), assuming requests were due every
# runtime / (requests / connections), about 100 us here. Each answer slower than twice that
# interval is back-filled with synthetic samples one interval apart down to it, so one 360 ms
# stall adds ~3,600 samples between 0.1 and 360 ms. A few stalls (a checkpoint, the scheduler)
# among 500,000 answers then make the "p99" hundreds of milliseconds and the mean several ms,
# which 4 connections cannot have waited (mean latency x requests = 9.44 ms x 577,793 = 5,454
# connection-seconds in a 15 s run of 4 connections). The done() hook sees the same corrected
# histogram. So the script times each request itself: one connection per wrk thread, its
# request() stamps the time, its response() records the answer's latency in a per-thread
# histogram of whole microseconds, and done() merges them and prints the real percentiles
# (and wrk's corrected p99, for comparison).
WRK_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } kg_timespec;
int clock_gettime(int clock, kg_timespec *tp);
]]
local ts = ffi.new("kg_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

paths = {%(paths)s}
hist, sent_at = {}, nil

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function request()
  sent_at = now_us()
  return wrk.format("GET", paths[math.random(#paths)])
end

function response(status, headers, body)
  local us = math.floor(now_us() - sent_at)
  hist[us] = (hist[us] or 0) + 1
end

function done(summary, latency, requests)
  local merged, count, sum = {}, 0, 0
  for _, t in ipairs(threads) do
    for us, n in pairs(t:get("hist")) do
      merged[us] = (merged[us] or 0) + n
      count = count + n
      sum = sum + us * n
    end
  end
  local keys = {}
  for us in pairs(merged) do keys[#keys + 1] = us end
  table.sort(keys)
  local function pct(p)
    local want, seen = math.ceil(count * p / 100), 0
    for _, us in ipairs(keys) do
      seen = seen + merged[us]
      if seen >= want then return us end
    end
    return keys[#keys] or 0
  end
  io.write(string.format("MEASURED count=%%d mean_us=%%.1f p50_us=%%d p99_us=%%d p999_us=%%d max_us=%%d\\n",
                         count, count > 0 and sum / count or 0, pct(50), pct(99), pct(99.9), keys[#keys] or 0))
  io.write(string.format("WRK_CORRECTED p50_us=%%d p99_us=%%d mean_us=%%.1f\\n",
                         latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def wrk(port: int, digests: list[str], seconds: int, workdir: Path, connections: int = 4) -> dict:
    """Lookups for random known digests from `connections` connections, one per wrk thread, all
    on CPU 0 for `seconds`: the rate, and the latency percentiles the script measured (see
    WRK_LUA; wrk's own corrected p99 is kept beside them as `wrk_corrected_p99`)."""
    script = workdir / "lookups.lua"
    script.write_text(WRK_LUA % {"paths": ",\n".join(f'"/v1/filter/keys/{d}"' for d in digests)})
    out = subprocess.run(["taskset", "-c", "0", "wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds}s",
                          "-s", str(script), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    measured = dict(re.findall(r"(\w+)=([\d.]+)", re.search(r"^MEASURED .*$", out, re.M).group(0)))
    corrected = dict(re.findall(r"(\w+)=([\d.]+)", re.search(r"^WRK_CORRECTED .*$", out, re.M).group(0)))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    mean_us = float(measured["mean_us"])
    return {"lookups_per_s": rate, "p50": f"{int(measured['p50_us'])} us", "p99": f"{int(measured['p99_us'])} us",
            "p99.9": f"{int(measured['p999_us'])} us", "max": f"{int(measured['max_us']) / 1000:.1f} ms",
            "mean_us": round(mean_us, 1),
            # Little's law: connections always busy, so the mean must be about connections / rate.
            "mean_from_rate_us": round(connections / rate * 1e6, 1),
            "wrk_corrected_p99": f"{int(corrected['p99_us']) / 1000:.1f} ms",
            "non_2xx": int(errors.group(1)) if errors else 0}


def run(kind: str, db: str, workdir: Path, args) -> dict:
    seed, digests = (import_file(args.keys, workdir) if args.seed == "import" else (None, []))
    svc = Service(db, workdir, args=["--import", str(seed)] if seed else [])
    svc.command = lambda: ["taskset", "-c", "1", str(RELEASE), "serve", "--db", db,
                           "--admin-listen", f"127.0.0.1:{svc.admin_port}",
                           "--filter-listen", f"127.0.0.1:{svc.filter_port}",
                           "--ratelimit-listen", f"127.0.0.1:{svc.ratelimit_port}", *svc.args]
    start = time.monotonic()
    svc.start(timeout=3600)
    try:
        if seed:
            took = time.monotonic() - start
        else:
            took, digests = create_keys(svc, args.keys)
        result = {"db": kind, "keys": args.keys, "seed": args.seed, "create_seconds": round(took, 1),
                  "creates_per_s": round(args.keys / took)}
        if kind == "sqlite":
            # Read the file once, as a serving host would have it in its page cache (this VM
            # drops page cache within seconds, so some reads still go to disk).
            for part in workdir.glob("keys.db*"):
                with part.open("rb") as f:
                    while f.read(1 << 20):
                        pass
        result.update(wrk(svc.filter_port, digests, args.seconds, workdir))
        return result
    finally:
        svc.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--dir", default=None, help="where the SQLite file goes (default: a temporary folder)")
    p.add_argument("--seed", choices=["api", "import"], default="api",
                   help="create the keys through the admin API (timed) or import them at start")
    args = p.parse_args()
    if not RELEASE.exists():
        sys.exit(f"{RELEASE} is missing: cargo build --release -p keygate-tools")
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (bench/run.sh installs it)")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    results = []
    with tempfile.TemporaryDirectory(prefix="keygate-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        if args.db in ("sqlite", "both"):
            results.append(run("sqlite", f"sqlite:{workdir / 'keys.db'}", workdir, args))
            print(json.dumps(results[-1]), flush=True)
        if args.db in ("postgres", "both"):
            pg = Postgres().start()
            try:
                results.append(run("postgres", pg.createdb("bench"), workdir, args))
                print(json.dumps(results[-1]), flush=True)
            finally:
                pg.stop()
    lines = [
        f"# keygate service lookups {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
        f"`.venv/bin/python bench/bench_service.py {' '.join(sys.argv[1:])}`; load average before: {load}; "
        f"the SQLite file in {args.dir or 'a temporary folder'}. Percentiles are of each request's own time; "
        "wrk's corrected p99 (its coordinated-omission estimate) is shown beside them.", "",
        "| db | keys | seeded by | seeded in | keys/s | lookups/s (1 core) | p50 | p99 | p99.9 | max | mean "
        "(from the rate) | wrk's corrected p99 | non-2xx |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(f"| {r['db']} | {r['keys']:,} | {r['seed']} | {r['create_seconds']} s | {r['creates_per_s']:,} | "
                     f"{r['lookups_per_s']:,.0f} | {r['p50']} | {r['p99']} | {r['p99.9']} | {r['max']} | "
                     f"{r['mean_us']} us ({r['mean_from_rate_us']} us) | {r['wrk_corrected_p99']} | {r['non_2xx']} |")
    print("\n".join(lines))
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-service.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
