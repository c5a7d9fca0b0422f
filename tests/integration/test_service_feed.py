"""The key service's change feed (`GET /v1/filter/changes`), run as the filter uses it: paging
with `more` and `behind`, polls held open with `wait_ms` (woken by this replica's writes, by
another replica's on one PostgreSQL and by another process's on one SQLite file), and cursors
that answer `reset` when the database was restored from a backup and written past them.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's postgresql package.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import urllib.parse

from support.harness import Envoy, bearer
from support.service import KEYGATE, Service, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")


def poll(s: Service, cursor: str, wait_ms: int) -> tuple[dict, float]:
    """One held poll: its answer and how long it took, in seconds."""
    began = time.monotonic()
    r = s.filter(f"/v1/filter/changes?after={urllib.parse.quote(cursor)}&wait_ms={wait_ms}")
    assert r.status == 200, r
    return r.json(), time.monotonic() - began


class HeldPoll:
    """A poll held in a thread, answered at `done` (monotonic seconds)."""

    def __init__(self, s: Service, cursor: str, wait_ms: int):
        self.answer, self.done, self.error = None, None, None
        self.thread = threading.Thread(target=self._run, args=(s, cursor, wait_ms), daemon=True)
        self.thread.start()

    def _run(self, s, cursor, wait_ms):
        try:
            self.answer, _ = poll(s, cursor, wait_ms)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.done = time.monotonic()

    def join(self, timeout=20):
        self.thread.join(timeout)
        assert self.error is None, self.error
        assert self.done is not None, "the held poll never answered"
        return self.answer


def wake_latency(poller: Service, writer: Service) -> tuple[str, dict, float]:
    """Holds a poll on `poller`, creates a key through `writer`'s admin API after 0.6 s, and
    returns the key, the poll's answer and seconds from the create's answer to the poll's."""
    cursor = poller.cursor()
    held = HeldPoll(poller, cursor, 20_000)
    time.sleep(0.6)
    assert held.done is None, f"answered before any change: {held.answer}"
    key, _ = writer.create({"id": f"k{time.monotonic_ns()}"})
    created = time.monotonic()
    answer = held.join()
    return key, answer, held.done - created


# Paging ---------------------------------------------------------------------------------------

def test_paging_through_1000_changes_says_more_and_exactly_how_far_behind(services, tmp_path):
    s = services()
    start = s.cursor()
    s.stop()
    # 1,000 keys imported: one change each, numbers 1-1000.
    secrets = [f"kg_page_{i:04d}" for i in range(1000)]
    table = {"keys": [{"id": f"p{i:04d}", "sha256": sha256_hex(k)} for i, k in enumerate(secrets)]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    s = services(args=["--import", str(tmp_path / "table.json")])
    assert s.cursor().rsplit(".", 1)[1] == "1000"
    cursor, seen, pages = start, [], []
    while True:
        page = s.changes(urllib.parse.quote(cursor))
        assert "reset" not in page, page
        pages.append((len(page["keys"]), page.get("more"), page.get("behind")))
        seen += page["keys"]
        cursor = page["cursor"]
        if not page.get("more"):
            break
    assert pages == [(256, True, 744), (256, True, 488), (256, True, 232), (232, None, None)]
    assert seen == [sha256_hex(k) for k in secrets]
    # From the middle: the same arithmetic, and from the end: nothing more, nothing behind.
    middle = s.changes(urllib.parse.quote(start))["cursor"]
    assert s.changes(urllib.parse.quote(middle))["behind"] == 488
    assert s.changes(urllib.parse.quote(cursor)) == {"cursor": cursor, "keys": [], "origins": []}


# Held polls -----------------------------------------------------------------------------------

def test_a_held_poll_answers_within_200_ms_of_a_create_on_the_same_replica(services):
    s = services()
    key, answer, latency = wake_latency(s, s)
    assert answer["keys"] == [sha256_hex(key)]
    assert latency < 0.2, f"answered {latency * 1000:.0f} ms after the create"


def test_a_held_poll_answers_within_200_ms_of_a_create_on_another_replica(services, pg):
    db = pg.createdb("held")
    a, b = services(db=db), services(db=db)
    key, answer, latency = wake_latency(b, a)
    assert answer["keys"] == [sha256_hex(key)]
    assert latency < 0.25, f"answered {latency * 1000:.0f} ms after the create"


def test_a_held_poll_wakes_for_another_process_on_the_same_sqlite_file(services):
    a, b = services(), services()
    key, answer, latency = wake_latency(b, a)
    assert answer["keys"] == [sha256_hex(key)]
    assert latency < 0.25, f"answered {latency * 1000:.0f} ms after the create"


def test_an_idle_held_poll_answers_empty_when_its_time_is_up(services):
    s = services()
    cursor = s.cursor()
    answer, took = poll(s, cursor, 700)
    assert answer == {"cursor": cursor, "keys": [], "origins": []}
    assert 0.7 <= took < 1.2, took
    # Changes already there: answered at once, however long it may wait.
    key, _ = s.create({"id": "there"})
    answer, took = poll(s, cursor, 30_000)
    assert answer["keys"] == [sha256_hex(key)] and took < 0.5, took
    # wait_ms=0, and wait_ms without after (the first poll): at once.
    assert poll(s, answer["cursor"], 0)[1] < 0.5
    began = time.monotonic()
    assert s.filter("/v1/filter/changes?wait_ms=30000").json()["cursor"] == answer["cursor"]
    assert time.monotonic() - began < 0.5
    # A cursor that answers reset is not held either.
    assert poll(s, "not-a-cursor", 30_000)[0]["reset"] is True


def test_wait_ms_outside_0_to_30000_is_a_400(services):
    s = services()
    cursor = urllib.parse.quote(s.cursor())
    for bad in ["30001", "-1", "1.5", "abc", "", "1e3", "99999999999999999999"]:
        r = s.filter(f"/v1/filter/changes?after={cursor}&wait_ms={bad}")
        assert r.status == 400 and r.headers["content-type"] == "application/json", (bad, r)
        assert r.json()["error"] == "Bad Request" and "wait_ms" in r.json()["message"], r


def test_a_filter_whose_polls_are_held_sees_a_revocation_at_once(services):
    """The real filter in Envoy, polling every 5 s with `changes_wait_ms`: its poll waits in the
    service, so a key revoked through the admin API is refused at once, not at the next poll
    (about 5 s later from a service that answers every poll at once)."""
    s = services()
    key, _ = s.create({"id": "held-by-envoy"})
    config = {"keys": [], "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 5000,
                                          "changes_wait_ms": 20_000}}
    e = Envoy(plugin_config=config, clusters={"keygate-keys": s.filter_port}).start()
    try:
        deadline = time.monotonic() + 10
        while e.get("/api/x", [bearer(key)]).status != 200:
            assert time.monotonic() < deadline, "the key never worked"
            time.sleep(0.05)
        # The first polls (one per VM: the worker's and the main thread's) only learn the
        # cursor; the next ones, changes_poll_ms later, wait in the service: active requests.
        deadline = time.monotonic() + 15
        while e.stats("cluster.keygate-keys.upstream_rq_active").get("cluster.keygate-keys.upstream_rq_active") != 2:
            assert time.monotonic() < deadline, "the feed polls were never held"
            time.sleep(0.1)
        assert e.get("/api/x", [bearer(key)]).status == 200
        assert s.admin("DELETE", "/v1/keys/held-by-envoy").status == 204
        revoked = time.monotonic()
        while e.get("/api/x", [bearer(key)]).status != 401:
            assert time.monotonic() - revoked < 1.0, "still accepted a second after the revocation"
            time.sleep(0.02)
    finally:
        e.stop()


# A restored database --------------------------------------------------------------------------

def test_a_restored_database_written_past_a_cursor_answers_it_reset(services, tmp_path):
    """The backup is an online copy of the SQLite file (sqlite3's backup API) while the service
    runs; after more changes the service stops, the copy is put back, and other changes take
    the numbers the filter's cursor had already passed."""
    s = services()
    s.create({"id": "before-backup"})
    with sqlite3.connect(tmp_path / "keys.db") as live, sqlite3.connect(tmp_path / "backup.db") as copy:
        live.backup(copy)
    s.create({"id": "after-backup-1"})
    s.create({"id": "after-backup-2"})
    held = s.cursor()                               # the filter's cursor: change 3
    s.stop()
    for suffix in ["", "-wal", "-shm"]:
        (tmp_path / f"keys.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", tmp_path / "keys.db")
    s.start()
    restored = s.cursor().split(".")
    assert restored[0] == held.split(".")[0] and restored[2] == "1"
    for i in range(3):                              # changes 2-4: past the cursor's 3
        s.create({"id": f"restored-{i}"})
    current = s.cursor()
    assert current.split(".")[2] == "4"
    assert s.changes(urllib.parse.quote(held)) == {"cursor": current, "reset": True}
    # A cursor of the restored database itself pages on as usual.
    one = s.changes(urllib.parse.quote(s.cursor()))["cursor"]
    assert s.changes(urllib.parse.quote(one)) == {"cursor": current, "keys": [], "origins": []}
    # The older cursor form, without the mark: reset too.
    db_id, _mark, number = current.split(".")
    assert s.changes(f"{db_id}.{number}") == {"cursor": current, "reset": True}
    assert s.changes(f"{db_id}.1") == {"cursor": current, "reset": True}


def test_a_database_restored_under_the_running_service_answers_old_cursors_reset(services, tmp_path):
    """The copy is written back into the live file with sqlite3's backup API while the service
    runs: no restart draws a new epoch, but the first write finds the database behind a
    number the service saw committed, and draws one."""
    s = services()
    s.create({"id": "before-backup"})
    with sqlite3.connect(tmp_path / "keys.db") as live, sqlite3.connect(tmp_path / "backup.db") as copy:
        live.backup(copy)
    s.create({"id": "after-backup-1"})
    s.create({"id": "after-backup-2"})
    held = s.cursor()
    with sqlite3.connect(tmp_path / "backup.db") as copy, sqlite3.connect(tmp_path / "keys.db") as live:
        copy.backup(live)
    assert s.cursor().rsplit(".", 1)[1] == "1"
    for i in range(3):
        s.create({"id": f"restored-{i}"})
    current = s.cursor()
    assert current.rsplit(".", 1)[1] == "4"
    assert s.changes(urllib.parse.quote(held)) == {"cursor": current, "reset": True}
    assert "a new epoch from change 2 on" in s.output()


def test_cursors_carry_a_mark_that_survives_restarts(services):
    s = services()
    s.create({"id": "a"})
    cursor = s.cursor()
    db_id, mark, number = cursor.split(".")
    assert len(db_id) == 32 and number == "1" and len(mark) == 8 and int(mark, 16) >= 0
    s.restart()
    assert s.cursor() == cursor
    k, _ = s.create({"id": "b"})
    assert s.changes(urllib.parse.quote(cursor))["keys"] == [sha256_hex(k)]
    # Another mark on the same number is another history: reset.
    other = f"{db_id}.{'0' * 8 if mark != '0' * 8 else '1' * 8}.{number}"
    assert s.changes(other)["reset"] is True


def test_a_database_from_before_cursor_marks_is_migrated_and_its_old_cursors_reset(services, tmp_path):
    """The database as the previous schema left it (no marks, no epoch): the migration gives
    its changes marks, new cursors page as usual, and a cursor of the older form resets."""
    s = services()
    for i in range(3):
        s.create({"id": f"m{i}"})
    db_id = s.cursor().split(".")[0]
    s.stop()
    with sqlite3.connect(tmp_path / "keys.db") as db:
        db.execute("DROP TABLE marks")
        db.execute("DELETE FROM meta WHERE name = 'epoch'")
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 2")
    s.start()
    assert s.changes(f"{db_id}.1") == {"cursor": s.cursor(), "reset": True}
    start = s.filter("/v1/filter/changes").json()["cursor"]
    assert start.startswith(db_id + ".") and start.endswith(".3")
    k, _ = s.create({"id": "after-migration"})
    assert s.changes(urllib.parse.quote(start))["keys"] == [sha256_hex(k)]
    one = s.changes("x")["cursor"]
    assert s.changes(urllib.parse.quote(one))["keys"] == []
