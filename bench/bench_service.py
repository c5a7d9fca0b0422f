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

The service runs on CPU 1 (taskset), wrk on CPU 0 with 4 connections (random known digests,
so every lookup reads the database); PostgreSQL is not pinned and shares both cores. Keys
are created by 8 client threads on keep-alive connections. Loopback only; bounded in time.
Needs wrk and taskset (bench/run.sh installs them) and, for PostgreSQL, Debian's postgresql.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from support.service import Postgres, Service, sha256_hex

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


def wrk(port: int, digests: list[str], seconds: int, workdir: Path) -> dict:
    paths = workdir / "paths.lua"
    paths.write_text("paths = {\n" + ",\n".join(f'"/v1/filter/keys/{d}"' for d in digests) + "}\n" + """
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
""")
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c4", f"-d{seconds}s", "--latency",
                          "-s", str(paths), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"lookups_per_s": rate, "p50": latency.get("50"), "p99": latency.get("99"),
            "non_2xx": int(errors.group(1)) if errors else 0}


def run(kind: str, db: str, workdir: Path, args) -> dict:
    seed, digests = (import_file(args.keys, workdir) if args.seed == "import" else (None, []))
    svc = Service(db, workdir, args=["--import", str(seed)] if seed else [])
    svc.command = lambda: ["taskset", "-c", "1", str(RELEASE), "serve", "--db", db,
                           "--admin-listen", f"127.0.0.1:{svc.admin_port}",
                           "--filter-listen", f"127.0.0.1:{svc.filter_port}", *svc.args]
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
    print("| db | keys | seeded by | seeded in | keys/s | lookups/s (1 core) | p50 | p99 | non-2xx |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['db']} | {r['keys']:,} | {r['seed']} | {r['create_seconds']} s | {r['creates_per_s']:,} | "
              f"{r['lookups_per_s']:,.0f} | {r['p50']} | {r['p99']} | {r['non_2xx']} |")


if __name__ == "__main__":
    main()
