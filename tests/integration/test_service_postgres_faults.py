"""The key service on a PostgreSQL that misbehaves: a writer frozen while it holds the write
lock, a database whose default isolation is not READ COMMITTED, and passwords in the URL
that must stay out of the log.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's postgresql package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from support.service import KEYGATE, Postgres, free_port, run_keygate, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")

# The advisory lock every write holds (tools/src/serve/db.rs: "keygate" in ASCII).
WRITE_LOCK = 0x006B657967617465


_databases = iter(range(1, 10_000))


@pytest.fixture
def db(pg):
    return pg.createdb(f"faults{next(_databases)}")


def psql(pg: Postgres, db: str, sql: str) -> str:
    name = db.rsplit("/", 1)[1]
    p = subprocess.run([str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "kg", "-d", name,
                        "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=30, check=True)
    return p.stdout.strip()


class FrozenWriter:
    """A `psql` session that takes the service's write lock in an open transaction and is then
    stopped with SIGSTOP: to the other replicas, exactly a replica frozen inside a write (its
    session idle in a transaction, holding the lock). A real replica cannot be made to stop
    deterministically inside its few-millisecond write."""

    def __init__(self, pg: Postgres, db: str):
        name = db.rsplit("/", 1)[1]
        self.proc = subprocess.Popen(
            [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "kg", "-d", name, "-q"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.proc.stdin.write(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK});\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 10
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        while psql(pg, db, held) != "1":
            assert time.monotonic() < deadline, "psql never took the lock"
            time.sleep(0.05)
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def unavailable(r, message_part: str):
    assert r.status == 503, r
    assert r.headers["content-type"] == "application/json", r.headers
    assert r.headers.get("retry-after") == "1", r.headers
    body = r.json()
    assert body["error"] == "Service Unavailable" and message_part in body["message"], body
    assert set(body) == {"error", "message"}, body


def timed(call):
    began = time.monotonic()
    r = call()
    return r, time.monotonic() - began


def test_a_frozen_writer_makes_writes_503_after_the_lock_timeout_until_it_is_gone(services, pg, db):
    a = services(db, args=["--db-lock-timeout-ms", "1000"])
    b = services(db)
    k, _ = b.create({"id": "before"})
    frozen = FrozenWriter(pg, db)
    try:
        r, took = timed(lambda: a.admin("POST", "/v1/keys", {"id": "during"}))
        unavailable(r, "write lock is held elsewhere")
        assert 1.0 <= took < 3.0, took
        r, took = timed(lambda: a.admin("DELETE", "/v1/keys/before"))
        unavailable(r, "write lock is held elsewhere")
        # Reads never take the write lock: lookups, lists and the feed still answer.
        assert a.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
        assert a.admin("GET", "/v1/keys/before").status == 200
        assert a.filter("/v1/filter/changes").status == 200
    finally:
        frozen.kill()
    # The frozen session is gone with its process, and its lock with it.
    deadline = time.monotonic() + 10
    while (r := a.admin("POST", "/v1/keys", {"id": "after"})).status != 201:
        unavailable(r, "")
        assert time.monotonic() < deadline, r
    assert b.admin("DELETE", "/v1/keys/before").status == 204
    assert "database busy" in a.output()


def test_an_admin_call_that_outlasts_its_timeout_is_a_503(services, pg, db):
    """With no lock timeout at all, the admin call's own timeout still answers."""
    a = services(db, args=["--db-lock-timeout-ms", "0", "--admin-timeout-ms", "1500"])
    frozen = FrozenWriter(pg, db)
    try:
        r, took = timed(lambda: a.admin("POST", "/v1/keys", {"id": "during"}))
        unavailable(r, "no answer within 1500 ms")
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store", r.headers
        assert 1.5 <= took < 3.5, took
    finally:
        frozen.kill()
    deadline = time.monotonic() + 10
    while (r := a.admin("POST", "/v1/keys", {"id": "after"})).status != 201:
        assert time.monotonic() < deadline, r
        time.sleep(0.1)


def test_the_default_limits_reach_every_connection(services, pg, db):
    """A lookup waits for a table lock at most the lock timeout: the filter's own connections
    carry the limits too, not just the pool's."""
    a = services(db, args=["--db-lock-timeout-ms", "800"])
    k, _ = a.create({"id": "looked-up"})
    assert a.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
    name = db.rsplit("/", 1)[1]
    locker = subprocess.Popen(
        [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "kg", "-d", name, "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        locker.stdin.write("BEGIN; LOCK TABLE keys IN ACCESS EXCLUSIVE MODE;\n")
        locker.stdin.flush()
        deadline = time.monotonic() + 10
        while psql(pg, db, "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
                           "AND relation = 'keys'::regclass AND granted") != "1":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r, took = timed(lambda: a.filter(f"/v1/filter/keys/{sha256_hex(k)}"))
        assert r.status == 503 and took < 3.0, (r, took)
        r, took = timed(lambda: a.admin("GET", "/v1/keys"))
        unavailable(r, "write lock is held elsewhere")
        assert took < 3.0, took
    finally:
        locker.kill()
        locker.wait(timeout=10)
    assert a.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200


def test_writes_stay_read_committed_whatever_the_database_default(services, pg, db):
    """Under REPEATABLE READ a write's snapshot would predate the previous writer's commit, and
    its `UPDATE feed` would fail to serialize: the service pins READ COMMITTED."""
    psql(pg, db, f"ALTER DATABASE {db.rsplit('/', 1)[1]} SET default_transaction_isolation = 'repeatable read'")
    replicas = [services(db), services(db)]
    statuses, lock = [], threading.Lock()

    def writer(n):
        s = replicas[n % 2]
        for i in range(10):
            r = s.admin("POST", "/v1/keys", {"id": f"w{n}-{i}"})
            with lock:
                statuses.append(r.status)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [201] * 60, sorted(set(statuses))
    assert replicas[0].cursor().rsplit(".", 1)[1] == "60"


def test_a_password_in_the_database_url_stays_out_of_the_log(services, pg, db):
    secret, other = "pw-in-userinfo-7f3a", "pw-in-query-19bc"
    url = db.replace("postgres://kg@", f"postgres://kg:{secret}@") + f"?password={other}"
    s = services(url)
    line = next(line for line in s.lines if line.startswith("keygate serve: admin"))
    assert line.rstrip().endswith(f"db {db.replace('kg@', 'kg:***@')}?password=***"), line
    assert secret not in s.output() and other not in s.output()
    # A database that cannot be reached: the one-line error names the URL without them.
    port = free_port()
    for bad in [f"postgres://kg:{secret}@127.0.0.1:{port}/x", f"postgres://kg@127.0.0.1:{port}/x?password={other}"]:
        p = run_keygate("serve", "--db", bad, "--admin-listen", "127.0.0.1:0", "--filter-listen", "127.0.0.1:0",
                        "--ratelimit-listen", "127.0.0.1:0", env={"KEYGATE_ADMIN_TOKEN_SHA256": sha256_hex("kg_x")})
        assert p.returncode != 0 and "cannot open database postgres://kg" in p.stderr, p.stderr
        assert secret not in p.stderr + p.stdout and other not in p.stderr + p.stdout, p.stderr
