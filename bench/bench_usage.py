"""What taking usage batches costs the key service, and what the counts take on disk.

    cargo build --release -p keygate-tools
    .venv/bin/python bench/bench_usage.py [--keys 10000] [--seconds 20]

For SQLite (a file on disk) and PostgreSQL (a throwaway cluster), `keygate serve` runs pinned
to CPU 1 and four clients on CPU 0 post batches as filters send them: 1,000 keys each, two
results per key (`allowed`, `upstream_2xx`), every batch a new id, each minute's keys once.
Printed and written to bench/results/: key-counts taken per second (one key's counts in one
batch, one row of the minute table: a key and minute, a column per result), counts per second
(two a key-count here), the rows of usage_recent the service has not moved into usage_minutes
yet when the round ends (their move is not in the figure), and the bytes one row takes in the
minute tables (its share of the tables and their indexes), from which a key's bytes per day
follow.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from support.service import Postgres, Service  # noqa: E402

RELEASE = ROOT / "target" / "release" / "keygate"

KEYS_PER_BATCH = 1000


def batches(keys: int, minutes: int, start_minute: int):
    """Every minute, every key once, in batches of KEYS_PER_BATCH."""
    n = 0
    for m in range(minutes):
        minute = start_minute + m * 60_000
        for first in range(0, keys, KEYS_PER_BATCH):
            n += 1
            entries = [{"id": f"k{i:07d}", "owner": f"owner-{i % 100}",
                        "counts": {"allowed": 3, "upstream_2xx": 3}}
                       for i in range(first, min(keys, first + KEYS_PER_BATCH))]
            yield json.dumps({"batch": f"bench-{start_minute}-{n}", "minute": minute, "keys": entries}).encode()


def post_all(port: int, bodies: list[bytes], threads: int = 4) -> float:
    """Posts every body (split among `threads` keep-alive connections); the seconds it took."""
    chunks = [bodies[i::threads] for i in range(threads)]
    errors = []

    def run(chunk):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for body in chunk:
            conn.request("POST", "/v1/filter/usage", body=body, headers={"content-type": "application/json"})
            r = conn.getresponse()
            answer = r.read()
            if r.status != 200 or b'"counted": true' not in answer:
                errors.append((r.status, answer[:200]))
        conn.close()

    workers = [threading.Thread(target=run, args=(c,)) for c in chunks]
    began = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    took = time.monotonic() - began
    assert not errors, errors[:3]
    return took


def import_file(keys: int, workdir: Path) -> Path:
    entries = [{"id": f"k{i:07d}", "sha256": hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                "owner": f"owner-{i % 100}"} for i in range(keys)]
    path = workdir / "keys.json"
    path.write_text(json.dumps({"keys": entries}))
    return path


def sql_value(db: str, pg: Postgres | None, query: str) -> int:
    """One number the service's database answers."""
    if pg is None:
        import sqlite3

        with sqlite3.connect(db.removeprefix("sqlite:")) as c:
            return c.execute(query).fetchone()[0] or 0
    return int(pg.scalar(db.rsplit("/", 1)[1], query) or 0)


def table_bytes(db: str, pg: Postgres | None) -> int:
    """The minute tables' bytes (recent and key-ordered) with their indexes."""
    if pg is None:
        return sql_value(db, pg, "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                         "('usage_recent', 'usage_minutes') OR name LIKE 'sqlite_autoindex_usage_minutes%'")
    return sql_value(db, pg, "SELECT pg_total_relation_size('usage_minutes') + pg_total_relation_size('usage_recent')")


def move_seconds(s: Service) -> list[float]:
    """How many moves of usage_recent the service made, and their mean and longest seconds."""
    text = s.admin("GET", "/metrics").body.decode()
    series = {}
    for line in text.splitlines():
        m = re.match(r'keygate_db_seconds_(sum|count|bucket)\{op="usage_move"(?:,le="([^"]+)")?\} (\S+)', line)
        if m:
            series[(m[1], m[2])] = float(m[3])
    count = series[("count", None)]
    # The longest lies in the first bucket that holds every move.
    longest = min(float(le) for (kind, le), n in series.items() if kind == "bucket" and n == count)
    return [count, series[("sum", None)] / count, longest]


def run(name: str, db: str, pg: Postgres | None, keys: int, seconds: float, workdir: Path) -> dict:
    s = Service(db, workdir, args=["--import", str(import_file(keys, workdir))])
    unpinned = s.command
    s.command = lambda: ["taskset", "-c", "1", str(RELEASE), *unpinned()[1:]]
    s.start(timeout=120)
    try:
        now_minute = int(time.time() // 60 * 60_000) - 3_600_000
        # Warm-up: one minute of every key.
        post_all(s.filter_port, list(batches(keys, 1, now_minute - 600_000)))
        before = table_bytes(db, pg)
        # Doubled until one round lasts `seconds`; the last round is the figure.
        minutes, start, written = 1, now_minute, 0  # rows: one per key and minute
        while True:
            bodies = list(batches(keys, minutes, start))
            took = post_all(s.filter_port, bodies)
            written += keys * minutes
            start += minutes * 60_000
            if took >= seconds or minutes >= 256:
                break
            minutes *= 2
        after = table_bytes(db, pg)
        waiting = sql_value(db, pg, "SELECT COUNT(*) FROM usage_recent")
        moves = move_seconds(s)
        return {"db": name, "key_counts_per_s": keys * minutes / took, "counts_per_s": keys * minutes * 2 / took,
                "waiting": waiting, "moves": moves, "batches": len(bodies), "seconds": took,
                "bytes_per_row": (after - before) / written}
    finally:
        s.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    if not RELEASE.exists():
        sys.exit(f"{RELEASE} is missing: cargo build --release -p keygate-tools")
    os.sched_setaffinity(0, {0})
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-usage-"))
    results = [run("SQLite", f"sqlite:{work / 'usage.db'}", None, args.keys, args.seconds, work)]
    pg = Postgres().start()
    try:
        results.append(run("PostgreSQL", pg.createdb("usage_bench"), pg, args.keys, args.seconds, work))
    finally:
        pg.stop()
    lines = [f"# keygate usage ingest {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "",
             f"`.venv/bin/python bench/bench_usage.py --keys {args.keys} --seconds {args.seconds:g}` (release build): "
             "`keygate serve` pinned to CPU 1, four clients on CPU 0 posting batches of 1,000 keys, two results "
             "each, every key once a minute. A key-count is one key's counts in one batch. Batches add to "
             "usage_recent; the service moves its rows into usage_minutes whenever it holds 200,000, and that "
             "time is in the figure, except for the rows still waiting at the end.", "",
             "| database | key-counts/s | counts/s | batches | seconds | rows still in usage_recent at the end "
             "| moves of usage_recent (all run): count, mean, longest at most "
             "| bytes per minute row (table and indexes) "
             "| a key used every minute with two results, per day: at minute resolution / in hours (rows of the "
             "same shape) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        day_minutes = r["bytes_per_row"] * 1440
        day_hours = r["bytes_per_row"] * 24
        lines.append(f"| {r['db']} | {r['key_counts_per_s']:,.0f} | {r['counts_per_s']:,.0f} | {r['batches']:,} | "
                     f"{r['seconds']:.1f} | {r['waiting']:,} | {r['moves'][0]:.0f}, {r['moves'][1] * 1000:.0f} ms, "
                     f"{r['moves'][2] * 1000:.0f} ms | {r['bytes_per_row']:.0f} | {day_minutes / 1e6:.2f} MB / "
                     f"{day_hours / 1e3:.1f} kB |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-usage.md"
    out.write_text(text)
    print(text + f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
