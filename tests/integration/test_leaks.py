"""Leaked keys, through real Envoy (two workers) and the real key service: a report disables the
key (or ends it soon) and every worker refuses it within 2 s; unknown and repeated reports;
GitHub's signed partner reports (good, bad and missing signatures, unknown signing keys, a
replayed body); `keygate keys leaked` reading the key from standard input; and the signed
webhooks, delivered across a receiver outage and a service restart.

Needs `cargo build -p keygate-tools` (target/debug/keygate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.github_signing import GithubSigner
from support.harness import UNAUTHORIZED, Envoy, bearer
from support.service import KEYGATE, Service, free_port, request, run_keygate, sha256_hex

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")

SOURCE = "https://github.com/acme/app/blob/4f1c2e/config.js"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


def start_envoy(service: Service) -> Envoy:
    config = {
        "keys": [],
        "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 200, "changes_wait_ms": 20_000,
                        "timeout_ms": 1000},
    }
    return Envoy(plugin_config=config, clusters={"keygate-keys": service.filter_port}, concurrency=2).start()


def until(predicate, timeout: float, what: str, step: float = 0.02) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout} s"
        time.sleep(step)
    return time.monotonic() - began


def all_answer(e: Envoy, key: str, status: int) -> bool:
    """Six requests on fresh connections (they reach both workers) all answer `status`."""
    return all(e.get("/api/x", [bearer(key)]).status == status for _ in range(6))


def create(s: Service, entry: dict) -> str:
    r = s.admin("POST", "/v1/keys", entry)
    assert r.status == 201, r
    return r.json()["key"]


def admin_id(s: Service) -> str:
    """How the audit log names this service's admin: their token's digest, 8 characters."""
    return sha256_hex(s.token)[:8]


def audit_leaks(s: Service) -> list[dict]:
    return [r for r in s.admin("GET", "/v1/audit").json()["entries"] if r["action"] == "leak"]


# Reports from an admin --------------------------------------------------------------------------

def test_a_reported_key_is_disabled_and_refused_on_both_workers_within_two_seconds(services):
    s = services()
    e = start_envoy(s)
    try:
        key = create(s, {"id": "web-app", "owner": "acme"})
        until(lambda: all_answer(e, key, 200), 5, "the key works")
        r = s.admin("POST", "/v1/leaks", {"key": key, "source": SOURCE})
        assert (r.status, r.json()) == (200, {"key_id": "web-app", "action": "disabled"})
        took = until(lambda: all_answer(e, key, 401), 2.0, "the leaked key refused everywhere")
        assert e.get("/api/x", [bearer(key)]).body == UNAUTHORIZED
        print(f"refused on both workers {took:.2f} s after the report")
        shown = s.admin("GET", "/v1/keys/web-app").json()
        assert shown["entry"]["disabled"] is True
        [leak] = shown["leaks"]
        assert (leak["source"], leak["action"], leak["reporter"]) == (SOURCE, "disabled", admin_id(s))
        assert s.admin("GET", "/v1/keys").json()["leaked"] == ["web-app"]
        [record] = audit_leaks(s)
        assert (record["key_id"], record["source"], record["admin"]) == ("web-app", SOURCE, admin_id(s))
        assert key not in s.output(), "the key was logged"
    finally:
        e.stop()


def test_an_unknown_key_is_a_404_audited_and_a_repeated_report_changes_nothing(services):
    s = services()
    r = s.admin("POST", "/v1/leaks", {"key": "kg_not_a_key_held_here", "source": "pastebin"})
    assert (r.status, r.json()["message"]) == (404, "no key held here matches the reported key")
    [record] = audit_leaks(s)
    assert (record["key_id"], record["source"]) == ("", "pastebin")
    key = create(s, {"id": "twice"})
    first = s.admin("POST", "/v1/leaks", {"key": key, "source": "one"})
    again = s.admin("POST", "/v1/leaks", {"key": key, "source": "two"})
    assert (first.status, first.json()["action"]) == (200, "disabled")
    assert (again.status, again.json()) == (200, {"key_id": "twice", "action": "none"})
    leaks = s.admin("GET", "/v1/keys/twice").json()["leaks"]
    assert [(x["source"], x["action"]) for x in leaks] == [("one", "disabled"), ("two", "none")]
    assert len(audit_leaks(s)) == 3
    assert "kg_not_a_key_held_here" not in s.output() and key not in s.output()


@pytest.mark.parametrize("body, path", [
    ({"source": "x"}, "key"),
    ({"key": "k"}, "source"),
    ({"key": "", "source": "x"}, "key"),
    ({"key": "k", "source": "s" * 2049}, "source"),
    ({"key": 7, "source": "x"}, "key"),
])
def test_a_malformed_report_is_a_400_naming_the_field(services, body, path):
    s = services()
    r = s.admin("POST", "/v1/leaks", body)
    assert (r.status, r.json().get("path")) == (400, path), r
    assert audit_leaks(s) == []


def test_an_unknown_field_is_refused_without_echoing_it(services):
    s = services()
    r = s.admin("POST", "/v1/leaks", {"key": "k", "source": "x", "kg_pasted_secret_here": 1})
    assert r.status == 400 and "kg_pasted" not in r.body.decode()


def test_a_report_needs_the_admin_token(services):
    s = services()
    key = create(s, {"id": "kept"})
    r = s.admin("POST", "/v1/leaks", {"key": key, "source": "x"}, token="kg_wrong_token")
    assert r.status == 401
    assert "disabled" not in s.admin("GET", "/v1/keys/kept").json()["entry"]


def test_expire_in_ends_the_key_a_day_later_and_it_keeps_working(services):
    s = services(args=["--on-leak", "expire-in=24h"])
    e = start_envoy(s)
    try:
        key = create(s, {"id": "suspected"})
        r = s.admin("POST", "/v1/leaks", {"key": key, "source": "a suspicion"})
        assert r.status == 200 and r.json()["action"] == "expires"
        end = time.mktime(time.strptime(r.json()["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert abs(end - (time.time() + 86_400)) < 10
        assert s.admin("GET", "/v1/keys/suspected").json()["entry"]["expires_at"] == r.json()["expires_at"]
        until(lambda: all_answer(e, key, 200), 5, "the key still works")
        # A key ending sooner keeps its end.
        soon = create(s, {"id": "ends-soon", "expires_at": "2099-01-01T00:00:00Z"})
        later = s.admin("POST", "/v1/leaks", {"key": soon, "source": "x"}).json()
        assert later["action"] == "expires"
        again = s.admin("POST", "/v1/leaks", {"key": soon, "source": "y"}).json()
        assert (again["action"], again["expires_at"]) == ("none", later["expires_at"])
    finally:
        e.stop()


def test_the_cli_reads_the_key_from_standard_input(services):
    s = services()
    key = create(s, {"id": "from-cli"})
    env = {"KEYGATE_ADMIN_TOKEN": s.token}
    server = f"http://127.0.0.1:{s.admin_port}"
    p = run_keygate("keys", "leaked", "--server", server, "--source", SOURCE, env=env, input=key + "\n")
    assert (p.returncode, p.stdout) == (0, "from-cli disabled\n"), p.stderr
    p = run_keygate("keys", "list", "--server", server, env=env)
    assert p.stdout == "from-cli  DISABLED  LEAKED\n"
    p = run_keygate("keys", "leaked", "--server", server, "--source", SOURCE, env=env, input="")
    assert p.returncode == 1 and "standard input" in p.stderr
    p = run_keygate("keys", "leaked", "--server", server, "--source", "x", env=env, input="kg_unknown_one\n")
    assert p.returncode == 1 and "no key held here matches" in p.stderr


# GitHub's secret scanning partner reports --------------------------------------------------------

@pytest.fixture
def github(services, tmp_path):
    signer = GithubSigner("c0ffee0123456789")
    keys_file = tmp_path / "github-keys.json"
    signer.write_keys_file(keys_file)
    s = services(args=["--github-keys", str(keys_file)])
    return s, signer


def post_github(s: Service, body: bytes, headers: dict):
    return request(s.admin_port, "POST", "/v1/leaks/github", body,
                   {"content-type": "application/json", **headers})


def test_a_signed_github_report_disables_known_keys_and_labels_each(github):
    s, signer = github
    key = create(s, {"id": "pushed"})
    reports = [{"token": key, "type": "keygate_api_key", "url": SOURCE, "source": "content"},
               {"token": "kg_not_ours_0001", "type": "keygate_api_key", "url": "https://x/y", "source": "commit"}]
    body = json.dumps(reports).encode()
    r = post_github(s, body, signer.headers(body))
    assert r.status == 200, r
    assert r.json() == [
        {"token_hash": hashlib.sha256(key.encode()).hexdigest(), "token_type": "keygate_api_key",
         "label": "true_positive"},
        {"token_hash": hashlib.sha256(b"kg_not_ours_0001").hexdigest(), "token_type": "keygate_api_key",
         "label": "false_positive"},
    ]
    shown = s.admin("GET", "/v1/keys/pushed").json()
    assert shown["entry"]["disabled"] is True
    assert [(x["reporter"], x["source"]) for x in shown["leaks"]] == [("github", f"{SOURCE} (content)")]
    assert [(x["admin"], x["key_id"]) for x in audit_leaks(s)] == [("github", ""), ("github", "pushed")]
    # The same body again (a replay, or GitHub's retry): the same labels, nothing more changed.
    before = s.admin("GET", "/v1/keys/pushed").json()["entry"]
    again = post_github(s, body, signer.headers(body))
    assert (again.status, again.json()) == (200, r.json())
    assert s.admin("GET", "/v1/keys/pushed").json()["entry"] == before
    assert [x["action"] for x in s.admin("GET", "/v1/keys/pushed").json()["leaks"]] == ["disabled", "none"]


def test_bad_or_missing_github_signatures_are_401_and_change_nothing(github):
    s, signer = github
    key = create(s, {"id": "kept"})
    body = json.dumps([{"token": key, "type": "t", "url": "u", "source": "s"}]).encode()
    good = signer.headers(body)
    other = GithubSigner("another0000000001")
    cases = {
        "body changed": (body.replace(b'"t"', b'"T"'), good),
        "another key's signature": (body, {**good, "Github-Public-Key-Signature": other.sign(body)}),
        "unknown key identifier": (body, other.headers(body)),
        "no signature": (body, {"Github-Public-Key-Identifier": good["Github-Public-Key-Identifier"]}),
        "no identifier": (body, {"Github-Public-Key-Signature": good["Github-Public-Key-Signature"]}),
        "garbage signature": (body, {**good, "Github-Public-Key-Signature": "bm90IGEgc2lnbmF0dXJl"}),
    }
    for what, (sent, headers) in cases.items():
        r = post_github(s, sent, headers)
        assert r.status == 401, (what, r)
        assert r.json()["error"] == "Unauthorized", what
    assert "disabled" not in s.admin("GET", "/v1/keys/kept").json()["entry"]
    assert audit_leaks(s) == []


def test_github_reports_are_refused_when_no_keys_file_is_given(services):
    s = services()
    r = post_github(s, b"[]", {})
    assert r.status == 503 and "--github-keys" in r.json()["message"]


# Webhooks -----------------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on a fixed port that can go down and come back."""

    def __init__(self, port: int):
        self.port, self.events, self.server = port, [], None
        self.lock = threading.Lock()

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.events.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self):
        self.server.shutdown()
        self.server.server_close()

    def bodies(self) -> list[dict]:
        with self.lock:
            return [json.loads(body) for _, body in self.events]

    def of(self, kind: str) -> list[dict]:
        return [b for b in self.bodies() if b["type"] == kind]


def webhook_service(services, port: int) -> Service:
    return services(args=["--webhook", f"http://127.0.0.1:{port}/hook"],
                    env={"KEYGATE_WEBHOOK_SECRET": WEBHOOK_SECRET})


def test_key_events_are_signed_and_say_what_happened(services):
    receiver = Receiver(free_port()).up()
    try:
        s = webhook_service(services, receiver.port)
        key = create(s, {"id": "evented", "owner": "acme"})
        rotation = {"grace_seconds": 8 * 86_400, "id": "evented-2"}
        assert s.admin("POST", "/v1/keys/evented/rotate", rotation).status == 201
        assert s.admin("POST", "/v1/leaks", {"key": key, "source": SOURCE}).status == 200
        assert s.admin("DELETE", "/v1/keys/evented-2").status == 204
        # A refused change (a taken id) rolls back and sends nothing.
        assert s.admin("POST", "/v1/keys", {"id": "evented"}).status == 409
        until(lambda: len(receiver.events) == 4, 10, "four events")
        time.sleep(1)
        kinds = [b["type"] for b in receiver.bodies()]
        assert sorted(kinds) == ["key.created", "key.leaked", "key.revoked", "key.rotated"], kinds
        for headers, body in receiver.events:
            lower = {k.lower(): v for k, v in headers.items()}
            expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert lower["keygate-signature-256"] == expected
            assert lower["keygate-event"] == json.loads(body)["type"]
            assert lower["keygate-delivery"] == json.loads(body)["id"]
            assert lower["content-type"] == "application/json"
        [created] = receiver.of("key.created")
        assert created["data"] == {"key_id": "evented", "owner": "acme", "expires_at": None}
        [rotated] = receiver.of("key.rotated")
        assert (rotated["data"]["key_id"], rotated["data"]["successor_id"]) == ("evented", "evented-2")
        [leaked] = receiver.of("key.leaked")
        assert (leaked["data"]["key_id"], leaked["data"]["source"], leaked["data"]["action"]) == \
            ("evented", SOURCE, "disabled")
        [revoked] = receiver.of("key.revoked")
        assert (revoked["data"]["key_id"], revoked["data"]["how"]) == ("evented-2", "deleted")
        assert key not in json.dumps(receiver.bodies())
    finally:
        receiver.down()


def test_expiring_notices_come_a_week_and_a_day_ahead_once_each(services):
    receiver = Receiver(free_port()).up()
    try:
        s = webhook_service(services, receiver.port)
        in_three_days = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86_400))
        in_a_month = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86_400))
        create(s, {"id": "week", "expires_at": in_three_days})
        create(s, {"id": "month", "expires_at": in_a_month})
        create(s, {"id": "off", "expires_at": in_three_days, "disabled": True})
        until(lambda: len(receiver.of("key.expiring")) == 1, 10, "a week's notice")
        time.sleep(6)  # another scan of the keys: no second notice
        [notice] = receiver.of("key.expiring")
        assert notice["data"] == {"key_id": "week", "owner": None, "expires_at": in_three_days, "ahead": "7d"}
        s.restart()
        time.sleep(6)
        assert len(receiver.of("key.expiring")) == 1
    finally:
        receiver.down()


def test_events_survive_a_receiver_outage_and_a_service_restart(services):
    port = free_port()
    receiver = Receiver(port).up()
    s = webhook_service(services, port)
    create(s, {"id": "before-outage"})
    until(lambda: len(receiver.of("key.created")) == 1, 10, "the first event")
    receiver.down()
    create(s, {"id": "during-outage"})
    time.sleep(2)  # attempts fail (connection refused) and are retried
    s.restart()  # the undelivered event is in the database, not in memory
    create(s, {"id": "after-restart"})
    time.sleep(1)
    receiver = Receiver(port).up()
    try:
        until(lambda: len(receiver.of("key.created")) == 2, 20, "the events held during the outage")
        ids = sorted(b["data"]["key_id"] for b in receiver.of("key.created"))
        assert ids == ["after-restart", "during-outage"]
        time.sleep(2)
        assert len(receiver.events) == 2, "an event was sent twice"
    finally:
        receiver.down()


def test_webhooks_need_a_secret(services):
    with pytest.raises(RuntimeError, match="KEYGATE_WEBHOOK_SECRET"):
        services(args=["--webhook", "http://127.0.0.1:9/hook"])


def test_a_database_from_before_leaks_and_events_gets_each_keys_end(services, tmp_path):
    """The database as the previous schema left it: the migration reads each key's end from its
    entry, so a key ending within a week gets its notice."""
    import sqlite3

    in_two_days = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 2 * 86_400))
    s = services()
    create(s, {"id": "old-key", "expires_at": in_two_days})
    s.stop()
    with sqlite3.connect(tmp_path / "keys.db") as db:
        for statement in ["DROP TABLE leaks", "DROP TABLE outbox", "DROP TABLE expiry_notices",
                          "DROP INDEX keys_expires", "ALTER TABLE keys DROP COLUMN expires_ms",
                          "ALTER TABLE audit DROP COLUMN source",
                          "DELETE FROM _sqlx_migrations WHERE version = 4"]:
            db.execute(statement)
    receiver = Receiver(free_port()).up()
    try:
        migrated = Service(s.db, tmp_path, args=["--webhook", f"http://127.0.0.1:{receiver.port}/hook"],
                           env={"KEYGATE_WEBHOOK_SECRET": WEBHOOK_SECRET}).start()
        try:
            until(lambda: len(receiver.of("key.expiring")) == 1, 10, "the migrated key's notice")
            [notice] = receiver.of("key.expiring")
            expected = in_two_days.replace("+00:00", "Z")
            assert (notice["data"]["key_id"], notice["data"]["expires_at"], notice["data"]["ahead"]) == \
                ("old-key", expected, "7d")
        finally:
            migrated.stop()
    finally:
        receiver.down()
