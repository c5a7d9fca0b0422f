"""The key service's change feed (`GET /v1/filter/changes`), run as the filter uses it: paging
with `more` and `behind`, and polls held open with `wait_ms` (woken by this replica's writes,
by another replica's on one PostgreSQL and by another process's on one SQLite file).

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's postgresql package.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest

from support.service import KEYGATE, Postgres, Service, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")


@pytest.fixture(scope="module")
def pg():
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture
def services(tmp_path):
    """start(db=None, **opts): a service on tmp_path/keys.db unless db is given."""
    started = []

    def start(db=None, **opts):
        s = Service(db or f"sqlite:{tmp_path / 'keys.db'}", tmp_path, **opts)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


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
