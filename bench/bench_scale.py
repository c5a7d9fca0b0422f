"""The remote key source at a million keys: `keygate serve`
holding N keys (default 1,000,000) in SQLite and/or PostgreSQL, and a real Envoy whose keygate
filter looks keys up in it. Loopback only; every step is bounded in time.

    cargo build --release -p keygate-tools && ./wasm-build.sh     # the binaries measured
    .venv/bin/python bench/bench_scale.py --keys 20000 --db sqlite       # a quick check (~2 minutes)
    .venv/bin/python bench/bench_scale.py --keys 1000000 --db both       # the run (~30 minutes)
    .venv/bin/python bench/bench_scale.py ... --instructions 2000        # also run bench.py's callgrind rows
    .venv/bin/python bench/bench_scale.py ... --instructions-from bench/results/<...>-instructions.md

Per database, one after the other (the PostgreSQL is a throwaway cluster, tests/integration/
support/service.py's `Postgres`):

- **seeded in**: wall-clock time from starting `target/release/keygate serve --import FILE` to its
  listening line. FILE is a plugin configuration written to a temporary folder: key i has the id
  `scale-{i:07d}`, the digest sha256("kg_scale_{i}") (so this script can present the key itself),
  owner `owner-{i % 1000}`, and every tenth key a CORS origin `https://app{i % 100}.example`.
  The service imports it one transaction per 1,000 keys.
- **Envoy RSS before / after, per cached key**: Envoy 1.40 with `--concurrency 1` (one worker VM,
  plus the main thread's VM, which serves no requests), keygate with an empty static table and
  a `key_service` (cache `max_entries` at least 100,000 and above everything this run caches,
  `ttl_seconds` a day, feed polled every 10 minutes: no entry expires or is dropped during the
  run). RSS (`soak.rss_kib`) is read after a few primer keys were cached and asked again over as
  many connections as the warm pass uses, then after `--warm` (100,000) distinct keys, drawn at
  random from the N, have each been sent once. The growth is the worker VM's cache plus whatever Envoy and the allocator
  keep; divided by the entries it added (the `remote.cache_entries` gauge) it is "bytes per
  cached key".
- **warm**: the time those `--warm` distinct keys took through Envoy, each a miss (one lookup to
  the service), sent by wrk (one thread, `--connections` keep-alive connections, default 8), in
  keys/s; then the same keys again (every one a cache hit), for scale: that pass is Envoy's own
  ceiling beside wrk on this machine, without the service. CORS keys are sent with their origin,
  and the configuration's `cors_endpoints` allows them `GET /bench`.
- **cold / cached latency**: `--samples` (3,000) other random keys, one connection, sequential:
  each key once (not cached: the filter asks the service) and at once again (cached). p50 and
  p99 of the wall-clock request latency of each, and of the difference within each pair (what
  a miss adds).
- **instructions per request** (optional): `bench/bench.py --instructions N --only 'keygate 10
  keys|keygate remote cached'` under callgrind, a cached remote key against the same key in a
  static table. A cache hit does not depend on how many keys the service holds, so this is
  measured once (with bench.py's in-process key service), not per database.

The load average is sampled every 5 s during each database's run and reported with the figures:
on this shared 2-core machine the wall-clock figures are orders of magnitude, not percentages.
Results are printed and written to bench/results/<UTC date-time>-scale.md. With `--db both`
PostgreSQL runs first; `--save-json FILE` keeps each database's figures as soon as it is done,
and `--add-json FILE` adds an earlier run's to the report.
"""

from __future__ import annotations

import argparse
import hashlib
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

from bench_remote import key_service, pct

from support import service as service_module
from support.harness import WASM, Envoy
from support.service import Postgres, Service, sha256_hex
from support.soak import rss_kib

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "target" / "release" / "keygate"


def secret(i: int) -> str:
    return f"kg_scale_{i}"


def write_seed(n: int, path: Path) -> float:
    """The plugin configuration `keygate serve --import` reads; returns the seconds it took."""
    start = time.monotonic()
    with path.open("w") as out:
        out.write('{"keys": [\n')
        for i in range(n):
            entry = {"id": f"scale-{i:07d}", "sha256": sha256_hex(secret(i)), "owner": f"owner-{i % 1000}"}
            if i % 10 == 0:
                entry["cors"] = {"allowed_origins": [f"https://app{i % 100}.example"]}
            out.write(("," if i else "") + json.dumps(entry) + "\n")
        out.write("]}\n")
    return time.monotonic() - start


class LoadSampler:
    """The 1-minute load average every `every` seconds, in a thread."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        s = self.samples
        return {"start": s[0], "end": s[-1], "min": min(s), "max": max(s), "mean": sum(s) / len(s)}


def envoy_pid(e: Envoy) -> int:
    """Envoy's own pid, also when the harness started it through a launcher (func-e)."""
    pid = e.proc.pid
    for _ in range(3):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "envoy":
            return pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            break
        pid = int(children[0])
    raise RuntimeError("cannot find the Envoy process")


def headers(i: int) -> dict[str, str]:
    """Key i's request headers: every tenth key is a CORS key, sent with its origin (as a
    browser would; without it the filter answers 403)."""
    h = {"Authorization": f"Bearer {secret(i)}"}
    if i % 10 == 0:
        h["Origin"] = f"https://app{i % 100}.example"
    return h


def timed(conn: http.client.HTTPConnection, i: int) -> tuple[int, float]:
    start = time.perf_counter()
    conn.request("GET", "/bench", headers=headers(i))
    r = conn.getresponse()
    r.read()
    return r.status, time.perf_counter() - start


WRK_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } kg_timespec;
int clock_gettime(int clock, kg_timespec *tp);
]]
local ts = ffi.new("kg_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = tonumber(line) end
local want, sent, answered, bad, started = %(want)d, 0, 0, 0, nil
request = function()
  started = started or now()
  sent = sent + 1
  local id = ids[sent] or ids[#ids]
  local h = {["Authorization"] = "Bearer kg_scale_" .. id}
  if id %% 10 == 0 then h["Origin"] = "https://app" .. (id %% 100) .. ".example" end
  return wrk.format("GET", "/bench", h)
end
response = function(status, headers, body)
  answered = answered + 1
  if status ~= 200 then bad = bad + 1 end
  if answered == want then
    local f = io.open("%(done)s.tmp", "w")
    f:write(string.format("%%d %%d %%.6f\\n", answered, bad, now() - started))
    f:close()
    os.rename("%(done)s.tmp", "%(done)s")
    wrk.thread:stop()
  end
end
"""


def wrk_pass(port: int, ids: list[int], want: int, connections: int, workdir: Path, timeout: float) -> dict:
    """`want` answers to requests for the keys `ids` in order, over `connections` keep-alive
    connections (wrk, one thread). `ids` holds a few more keys than `want`: the connections
    still in flight when the `want`-th answer arrives ask for those. The script times itself
    from its first request to the `want`-th answer and writes the figures to a file (wrk's own
    run lasts its whole -d, whenever the thread stops)."""
    (workdir / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    done = workdir / "wrk.done"
    done.unlink(missing_ok=True)
    script = workdir / "warm.lua"
    script.write_text(WRK_SCRIPT % {"ids": workdir / "ids.txt", "want": want, "done": done})
    proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{int(timeout) + 5}s", "--timeout", "10s",
                             "-s", str(script), f"http://127.0.0.1:{port}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not done.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    if not done.exists():
        raise RuntimeError(f"wrk did not get {want} answers within {timeout} s: {out[-2000:]}")
    answered, bad, seconds = done.read_text().split()
    return {"requests": int(answered), "non_2xx": int(bad), "seconds": float(seconds)}


def db_size(kind: str, workdir: Path, pg: Postgres | None) -> int | None:
    if kind == "sqlite":
        return sum(p.stat().st_size for p in workdir.glob("keys.db*"))
    out = pg._as_postgres(str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "kg", "-d", "scale",
                          "-Atc", "select pg_database_size('scale')", check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


def snapshot(path: Path, into: Path) -> tuple[Path, str]:
    """A private copy of a binary (the checkout's may be rebuilt during a run) and a line
    naming what was measured."""
    copy = into / path.name
    shutil.copy2(path, copy)
    built = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    digest = hashlib.sha256(copy.read_bytes()).hexdigest()[:12]
    return copy, (f"`{path.relative_to(ROOT)}` {copy.stat().st_size:,} bytes, built {built:%Y-%m-%d %H:%M} UTC, "
                  f"sha256 {digest}")


def run(kind: str, seed: Path, args, rng: random.Random) -> dict:
    r: dict = {"db": kind, "keys": args.keys}
    load = LoadSampler()
    pg = None
    workdir = Path(tempfile.mkdtemp(prefix="keygate-scale-"))
    svc = e = None
    try:
        if kind == "sqlite":
            db = f"sqlite:{workdir / 'keys.db'}"
        else:
            pg = Postgres().start()
            db = pg.createdb("scale")
        svc = Service(db, workdir, tokens=["kg_scale_admin"], args=["--import", str(seed)])
        start = time.monotonic()
        try:
            svc.start(timeout=args.seed_timeout)
        except RuntimeError:
            time.sleep(1)  # the stderr reader's last lines
            pg_log = (pg.dir / "log").read_text(errors="replace")[-3000:] if pg else ""
            raise RuntimeError(
                f"keygate serve exited with {svc.proc.returncode} after {time.monotonic() - start:.0f} s: "
                f"{svc.output()[-3000:]}\n{pg_log}"
            ) from None
        r["seed_s"] = time.monotonic() - start
        imported = re.search(r"imported (\d+) keys", svc.output())
        if not imported or int(imported.group(1)) != args.keys:
            raise RuntimeError(f"the import did not add {args.keys} keys: {svc.output()[-2000:]}")
        r["db_bytes"] = db_size(kind, workdir, pg)
        print(f"[{kind}] seeded {args.keys:,} keys in {r['seed_s']:.1f} s", flush=True)

        # Disjoint random samples: the warm set (and spares for the requests in flight at its
        # end), the latency set, the primers (cached before the RSS is first read).
        spare = args.connections * 2
        picked = rng.sample(range(args.keys), args.warm + spare + args.samples + args.connections)
        warm, cold = picked[:args.warm + spare], picked[args.warm + spare:args.warm + spare + args.samples]
        primers = picked[args.warm + spare + args.samples:]
        max_entries = max(100_000, len(picked) + 1000)
        r["max_entries"] = max_entries
        config = key_service(600_000, ttl=86_400, max_entries=max_entries)
        config["cors_endpoints"] = [{"methods": ["GET"], "paths": ["/bench"]}]  # what the CORS keys may call
        e = Envoy(plugin_config=config, clusters={"keygate-keys": svc.filter_port}, concurrency=1,
                  wasm=args.wasm).start()
        pid = envoy_pid(e)
        # The primers: cached, then asked again over the same number of connections as the warm
        # pass, so Envoy's connection and stream allocations are in the "before" figure.
        primed = wrk_pass(e.port, primers * 50, len(primers) * 50, args.connections, workdir, 120)
        assert primed["non_2xx"] == 0, primed
        time.sleep(2)
        entries_before = e.stats("keygate.remote").get("wasmcustom.keygate.remote.cache_entries", 0)
        r["rss_before_kib"] = rss_kib(pid)
        r["warm"] = wrk_pass(e.port, warm, args.warm, args.connections, workdir, args.warm_timeout)
        time.sleep(2)
        r["rss_after_kib"] = rss_kib(pid)
        r["after_warm"] = e.stats("keygate.remote")
        r["cached"] = r["after_warm"].get("wasmcustom.keygate.remote.cache_entries", 0) - entries_before
        print(f"[{kind}] warmed {args.warm:,} keys: {r['warm']}, {r['cached']:,} entries cached", flush=True)
        r["hits"] = wrk_pass(e.port, warm, args.warm, args.connections, workdir, args.warm_timeout)
        print(f"[{kind}] the same keys again: {r['hits']}", flush=True)

        conn = http.client.HTTPConnection("127.0.0.1", e.port, timeout=30)
        timed(conn, primers[0])  # connected; a cached key
        misses, hits, added, bad = [], [], [], 0
        for k in cold:
            s1, t_miss = timed(conn, k)
            s2, t_hit = timed(conn, k)
            if (s1, s2) != (200, 200):
                bad += 1
                continue
            misses.append(t_miss * 1e3)
            hits.append(t_hit * 1e3)
            added.append((t_miss - t_hit) * 1e3)
        conn.close()
        r["latency"] = {name: (pct(v, 50), pct(v, 99)) for name, v in
                        (("miss", misses), ("hit", hits), ("added", added))}
        r["latency_bad_pairs"] = bad
        r["stats"] = e.stats("keygate.remote")
        print(f"[{kind}] latency over {len(added):,} pairs: {r['latency']}", flush=True)
    finally:
        if e:
            e.stop()
        if svc:
            svc.stop()
        if pg:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        r["load"] = load.stop()
    return r


def instructions_rows(text: str) -> dict[str, float]:
    rows = {}
    for name in ("keygate 10 keys", "keygate remote cached"):
        m = re.search(rf"^\| {re.escape(name)} \| valid \| ([\d,]+) \|", text, re.M)
        if m:
            rows[name] = float(m.group(1).replace(",", ""))
    return rows


def run_instructions(count: int) -> Path:
    before = set((ROOT / "bench" / "results").glob("*-instructions.md"))
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--instructions", str(count),
                    "--only", "keygate 10 keys|keygate remote cached"], cwd=ROOT, check=True, timeout=3 * 3600)
    new = sorted(set((ROOT / "bench" / "results").glob("*-instructions.md")) - before)
    if not new:
        raise RuntimeError("bench.py --instructions wrote no results file")
    return new[-1]


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def report(results: list[dict], args, seed_s: float, seed_bytes: int, instructions: Path | None,
           load_all: dict, binaries: list[str]) -> str:
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    lines = [
        f"# keygate at {args.keys:,} keys {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {sha}",
        "",
        f"`bench/bench_scale.py --keys {args.keys} --db {args.db} --warm {args.warm} --samples {args.samples} "
        f"--connections {args.connections}`: `target/release/keygate serve` holding the keys, Envoy "
        f"(`--concurrency 1`) with `dist/keygate.wasm`, an empty static table and a `key_service` pointed at it; "
        f"loopback, "
        f"{os.cpu_count()} CPUs, nothing pinned. The seed file ({seed_bytes / 2**20:,.0f} MiB, written in "
        f"{seed_s:.0f} s) has 10 % CORS keys.",
        "",
        "Measured: " + "; ".join(binaries) + " (copies taken at the start of the run; the checkout at "
        f"the start: {args.checkout}).",
        "",
        "| | " + " | ".join(name[r["db"]] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]

    def row(label, fmt):
        lines.append(f"| {label} | " + " | ".join(fmt(r) for r in results) + " |")

    row("keys in the service", lambda r: f"{r['keys']:,}")
    row("seeded in (`serve --import`)", lambda r: f"{r['seed_s']:,.0f} s ({r['keys'] / r['seed_s']:,.0f} keys/s)")
    row("database size", lambda r: f"{r['db_bytes'] / 2**20:,.0f} MiB" if r.get("db_bytes") else "?")
    row("Envoy RSS before warming", lambda r: f"{mib(r['rss_before_kib'])} MiB")
    row(f"Envoy RSS after {args.warm:,} keys cached", lambda r: f"{mib(r['rss_after_kib'])} MiB")
    row("growth (the worker VM's cache)", lambda r: f"**{mib(r['rss_after_kib'] - r['rss_before_kib'])} MiB**")
    row("keys cached by the warm pass (`cache_entries` gauge)", lambda r: f"{r['cached']:,}")
    row("bytes per cached key", lambda r: f"**{(r['rss_after_kib'] - r['rss_before_kib']) * 1024 / r['cached']:,.0f}**")
    row(f"warm {args.warm:,} distinct keys (wrk, {args.connections} connections, each key a lookup)",
        lambda r: f"**{r['warm']['seconds']:,.1f} s ({r['warm']['requests'] / r['warm']['seconds']:,.0f} keys/s)**")
    row("the same keys again, all cached (Envoy with wrk beside it)",
        lambda r: f"{r['hits']['seconds']:,.1f} s ({r['hits']['requests'] / r['hits']['seconds']:,.0f} req/s)")
    row(f"cold key (a lookup), p50 / p99 ({args.samples:,} sequential)",
        lambda r: f"**{r['latency']['miss'][0]:.2f} / {r['latency']['miss'][1]:.2f} ms**")
    row("cached key, p50 / p99", lambda r: f"{r['latency']['hit'][0]:.2f} / {r['latency']['hit'][1]:.2f} ms")
    row("added by the miss, p50 / p99", lambda r: f"{r['latency']['added'][0]:.2f} / {r['latency']['added'][1]:.2f} ms")
    row("non-200 answers (warm / all-cached / latency pairs)", lambda r: (
        f"{r['warm']['non_2xx']} / {r['hits']['non_2xx']} / {r['latency_bad_pairs']}"))
    row("load average (1 min) start / mean / max / end", lambda r: (
        f"{r['load']['start']:.2f} / {r['load']['mean']:.2f} / {r['load']['max']:.2f} / {r['load']['end']:.2f}"))

    lines += ["", "Filter counters at the end (`wasmcustom.keygate.remote.*`, Envoy's sum over its VMs):", ""]
    for r in results:
        s = {k.rsplit(".", 1)[-1]: v for k, v in r["stats"].items()}
        w = {k.rsplit(".", 1)[-1]: v for k, v in r["after_warm"].items()}
        lines.append(
            f"- {name[r['db']]}: after the warm pass lookups {w.get('lookups')}, "
            f"cache_hits {w.get('cache_hits')}, cache_entries {w.get('cache_entries')}; at the end "
            f"lookups {s.get('lookups')}, cache_entries {s.get('cache_entries')}, evictions "
            f"{s.get('evictions', 0)}, errors {s.get('errors', 0)}, unavailable {s.get('unavailable', 0)}, "
            f"feed_errors {s.get('feed_errors', 0)}, invalidations {s.get('invalidations', 0)} (the first feed poll "
            f"drops what was cached before it: the primers) (cache max_entries {r['max_entries']:,})."
        )
    lines += ["", f"Load average over the whole run: start {load_all['start']:.2f}, mean {load_all['mean']:.2f}, "
                  f"max {load_all['max']:.2f}, end {load_all['end']:.2f} (2 CPUs: above 2 means runnable work "
                  "waited for a core). Other work on the machine (another engineer's tests) ran beside this "
                  "one when the load is well above what this run alone makes; the wall-clock figures are "
                  "orders of magnitude.", ""]
    lines += [
        "How to read it: the RSS growth is the process's, so it holds the cache of the one worker VM plus "
        "allocator slack; the main thread's VM serves no requests and caches nothing. The warm pass is "
        "bounded by the one Envoy worker, the service (and PostgreSQL) and wrk sharing two cores; the "
        "all-cached pass, the same keys without a lookup, is Envoy's own ceiling beside wrk here. Cold and cached "
        "latencies are wall-clock, "
        'one request at a time; "added by the miss" is the difference within each pair (same key, '
        "first and second request).",
        "",
    ]
    if instructions:
        rows = instructions_rows(instructions.read_text())
        static, cached = rows.get("keygate 10 keys"), rows.get("keygate remote cached")
        lines += ["## Instructions per request: a cached remote key against a static one", ""]
        if static and cached:
            lines += [
                f"From [{instructions.name}]({instructions.name}) (`bench/bench.py --instructions`, callgrind, "
                "one worker; bench.py's in-process key service holding the 10 bench keys). A cache hit is a "
                "SipHash of the key and a hash-map probe in the VM's cache: it does not depend on how many "
                "keys the service holds, so this is measured once and applies to the "
                f"{args.keys:,}-key databases above.",
                "",
                "| valid key | instructions per request |",
                "|---|---:|",
                f"| static table (10 keys) | {static:,.0f} |",
                f"| cached remote key (`key_service`, empty static table) | {cached:,.0f} |",
                f"| ratio remote / static | **{cached / static:.4f}** ({(cached / static - 1) * 100:+.2f} %) |",
                "",
            ]
        else:
            lines += [f"{instructions.name} holds no 'keygate 10 keys' / 'keygate remote cached' valid rows.", ""]
    else:
        lines += ["Instructions per request were not run (`--instructions N` or `--instructions-from FILE`).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--warm", type=int, default=100_000, help="distinct keys warmed (default 100,000)")
    ap.add_argument("--samples", type=int, default=3_000, help="cold/cached latency pairs (default 3,000)")
    ap.add_argument("--connections", type=int, default=8, help="client connections while warming (default 8)")
    ap.add_argument("--warm-timeout", type=float, default=1800, help="seconds the warm pass may take (default 1800)")
    ap.add_argument("--seed-timeout", type=float, default=3600, help="seconds the import may take (default 3600)")
    ap.add_argument(
        "--save-json", type=Path, metavar="FILE", help="write each database's figures here as soon as it is done"
    )
    ap.add_argument("--add-json", type=Path, nargs="*", metavar="FILE",
                    help="add the figures of an earlier run's --save-json to the report")
    ap.add_argument("--instructions", type=int, default=0, metavar="N",
                    help="afterwards, run bench.py --instructions N for the two callgrind rows")
    ap.add_argument("--instructions-from", type=Path, metavar="FILE",
                    help="take the two callgrind rows from an earlier bench.py --instructions results file")
    args = ap.parse_args()
    for path, how in ((RELEASE, "cargo build --release -p keygate-tools"), (WASM, "./wasm-build.sh")):
        if not path.exists():
            sys.exit(f"{path} is missing: {how}")
    if args.warm + args.samples + args.connections * 3 > args.keys:
        sys.exit("--keys must exceed --warm + --samples + --connections")
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "tools", "Cargo.toml", "Cargo.lock"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split("\n")
    dirty = [line[3:] for line in dirty if line.strip()]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    args.checkout = f"commit {head}" + (
        f", uncommitted changes in {', '.join(dirty)}" if dirty else ", Rust sources clean"
    )
    load_all = LoadSampler(every=15)
    rng = random.Random(15)
    results = []
    with tempfile.TemporaryDirectory(prefix="keygate-scale-seed-") as tmp:
        service_module.KEYGATE, keygate_line = snapshot(RELEASE, Path(tmp))
        args.wasm, wasm_line = snapshot(WASM, Path(tmp))
        seed = Path(tmp) / "seed.json"
        seed_s = write_seed(args.keys, seed)
        seed_bytes = seed.stat().st_size
        print(f"seed file: {args.keys:,} keys, {seed_bytes / 2**20:,.1f} MiB in {seed_s:.1f} s", flush=True)
        for kind in (("postgres", "sqlite") if args.db == "both" else (args.db,)):
            results.append(run(kind, seed, args, random.Random(f"{rng.random()}-{kind}")))
            if args.save_json:
                args.save_json.write_text(json.dumps(results, indent=1))
    for path in args.add_json or ():
        results += json.loads(path.read_text())
    results.sort(key=lambda r: r["db"] != "sqlite")
    instructions = args.instructions_from
    if args.instructions:
        instructions = run_instructions(args.instructions)
    text = report(results, args, seed_s, seed_bytes, instructions, load_all.stop(), [keygate_line, wasm_line])
    print("\n" + text)
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-scale.md"
    out.write_text(text + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
