"""The key service (`keygate serve`): the real binary against a real SQLite file and a real
PostgreSQL started here; every endpoint's success and error paths, bad input of every kind,
restarts, two replicas on one PostgreSQL, concurrent writers and an exact change feed.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and Debian's postgresql package
(scripts/setup.sh installs it); without PostgreSQL the tests that need it fail, never skip.
"""

from __future__ import annotations

import calendar
import contextlib
import http.client
import json
import re
import threading
import time
import urllib.parse

import pytest

from support.service import KEYGATE, UNAUTHORIZED, Postgres, Service, free_port, request, run_keygate, sha256_hex

SECRET = re.compile(r"kg_[0-9A-Za-z]{43}[0-9A-Za-z]{6}")
GENERATED_ID = re.compile(r"key_[0-9a-f]{16}")


def require_keygate_binary():
    if not KEYGATE.exists():
        raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")


require_keygate_binary()


_databases = iter(range(1, 10_000))


@pytest.fixture
def svc(services):
    return services()


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request, tmp_path, pg):
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'keys.db'}"
    return pg.createdb(f"kg{next(_databases)}")


def seconds(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def error(r, status: int, message=None, path=None):
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json", r.headers
    body = r.json()
    assert body["error"] == {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                             409: "Conflict", 413: "Payload Too Large",
                             415: "Unsupported Media Type"}[status]
    if message is not None:
        assert body["message"] == message, body
    if path is not None:
        assert body.get("path") == path, body
    return body


# Start-up --------------------------------------------------------------------------------

def test_start_refuses_without_admin_digests(tmp_path):
    for env in [{}, {"KEYGATE_ADMIN_TOKEN_SHA256": ""},
                {"KEYGATE_ADMIN_TOKEN_SHA256": "abc"},
                {"KEYGATE_ADMIN_TOKEN_SHA256": "a" * 64 + ",zz"}]:
        p = run_keygate("serve", "--db", f"sqlite:{tmp_path}/k.db", env=env, cwd=tmp_path)
        assert p.returncode != 0
        assert p.stdout == ""
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and "KEYGATE_ADMIN_TOKEN_SHA256" in lines[0], p.stderr
    assert not (tmp_path / "k.db").exists(), "refused before touching the database"


def test_start_fails_with_one_line_when_the_database_cannot_be_opened(tmp_path, pg):
    env = {"KEYGATE_ADMIN_TOKEN_SHA256": sha256_hex("kg_x")}
    dead = f"postgres://kg@127.0.0.1:{free_port()}/kg"
    for db in [f"sqlite:{tmp_path}/missing/dir/k.db", dead, pg.url("no_such_db"), "mysql://x",
               f"sqlite:{tmp_path}"]:
        p = run_keygate("serve", "--db", db, "--admin-listen", "127.0.0.1:0",
                        "--filter-listen", "127.0.0.1:0", "--ratelimit-listen", "127.0.0.1:0", env=env, cwd=tmp_path)
        assert p.returncode != 0, db
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("keygate: serve: "), p.stderr
        if db == dead:
            assert "Connection refused" in lines[0], lines
        if "no_such_db" in db:
            assert 'database "no_such_db" does not exist' in lines[0], lines


def test_the_default_database_is_a_sqlite_file_in_the_working_directory(tmp_path):
    s = Service("sqlite:keygate.db", tmp_path)
    s.command = lambda: [str(KEYGATE), "serve", "--admin-listen", f"127.0.0.1:{s.admin_port}",
                         "--filter-listen", f"127.0.0.1:{s.filter_port}",
                         "--ratelimit-listen", f"127.0.0.1:{s.ratelimit_port}"]
    s.start()
    try:
        assert s.lines[0] == (f"keygate serve: admin http://127.0.0.1:{s.admin_port}, "
                              f"filter http://127.0.0.1:{s.filter_port}, "
                              f"rate limits grpc://127.0.0.1:{s.ratelimit_port} (counters in memory), "
                              "db sqlite:keygate.db\n")
        assert (tmp_path / "keygate.db").exists()
    finally:
        s.stop()


# Admin authentication --------------------------------------------------------------------

def admin_calls(s) -> list[tuple[str, str]]:
    """Every call the service's OpenAPI document says needs the admin token, with "a" for
    each path parameter."""
    document = s.admin("GET", "/v1/openapi.json", token="").json()
    admin = document["components"]["securitySchemes"]["admin_token"]["scheme"]
    calls = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation.get("security") == [{"admin_token": []}]:
                calls.append((method.upper(), re.sub(r"\{[^}]+\}", "a", path)))
    assert admin == "bearer"
    assert {("POST", "/v1/keys"), ("PUT", "/v1/owners/a"), ("GET", "/v1/usage"), ("POST", "/v1/leaks"),
            ("GET", "/v1/export")} <= set(calls), calls
    return calls


def test_every_admin_call_needs_a_listed_token(services):
    s = services(tokens=["kg_admin_token_one", "kg_admin_token_two"])
    for method, path in admin_calls(s):
        body = {"id": "a"} if method in ("POST", "PATCH", "PUT") else None
        for headers in [{}, {"authorization": "Bearer kg_wrong"}, {"authorization": "Basic a2c6eA=="},
                        {"authorization": "Bearer"}, {"authorization": f"Bearer {sha256_hex(s.token)}"}]:
            r = s.admin(method, path, body, token="", headers=headers)
            assert (r.status, r.body) == (401, UNAUTHORIZED), (method, path, headers, r)
            assert r.headers["content-type"] == "application/json"
            # A right token clears the address's failures, so none of these waits out the
            # growing delay wrong tokens earn (tested on its own).
            assert s.admin("GET", "/v1/audit").status == 200
    assert s.admin("GET", "/v1/keys").status == 200
    assert s.admin("GET", "/v1/keys", token="kg_admin_token_two").status == 200
    # Unauthorized calls are refused before their body is read.
    r = s.admin("POST", "/v1/keys", b"not json", token="kg_nope", headers={"content-type": "text/plain"})
    assert (r.status, r.body) == (401, UNAUTHORIZED)
    # The audit names each admin by their token's digest's first 8 hex characters.
    s.create({"id": "by-one"})
    s.admin("DELETE", "/v1/keys/by-one", token="kg_admin_token_two")
    audit = s.admin("GET", "/v1/audit").json()["entries"]
    assert [(e["action"], e["key_id"], e["admin"]) for e in audit] == [
        ("delete", "by-one", sha256_hex("kg_admin_token_two")[:8]),
        ("create", "by-one", sha256_hex("kg_admin_token_one")[:8])]


# Create -----------------------------------------------------------------------------------

def test_create_answers_the_secret_once_and_stores_only_its_digest(svc, tmp_path):
    r = svc.admin("POST", "/v1/keys", {"name": "Web player (staging)", "owner": "acme",
                                       "cors": {"allowed_origins": ["https://app.example"]}})
    assert r.status == 201 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["key", "entry"]
    assert SECRET.fullmatch(body["key"])
    entry = body["entry"]
    assert GENERATED_ID.fullmatch(entry["id"])
    assert entry == {"id": entry["id"], "name": "Web player (staging)", "owner": "acme",
                     "cors": {"allowed_origins": ["https://app.example"]}}
    # The filter finds it by the secret's digest, without the name.
    found = svc.filter(f"/v1/filter/keys/{sha256_hex(body['key'])}")
    assert found.status == 200 and found.headers["content-type"] == "application/json"
    assert found.json() == {"sha256": sha256_hex(body["key"]), "key": {k: v for k, v in entry.items() if k != "name"}}
    # The database holds the digest, never the secret.
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("keys.db*"))
    assert body["key"].encode() not in raw and sha256_hex(body["key"]).encode() in raw
    # Ids given are kept; two creates make two different secrets.
    k2, e2 = svc.create({"id": "backend", "rules": [{"methods": ["GET"], "paths": ["/v1/{id}"]}]})
    assert e2["id"] == "backend" and k2 != body["key"]


def test_create_refuses_bad_input_of_every_kind(svc):
    post = lambda body, **kw: svc.admin("POST", "/v1/keys", body, **kw)  # noqa: E731
    big = json.dumps({"id": "big", "owner": "x" * (1 << 20)}).encode()
    error(post(big, headers={"content-type": "application/json"}), 413, "request body over 1 MiB")
    # Without a content-length (chunked), the limit holds all the same.
    conn = http.client.HTTPConnection("127.0.0.1", svc.admin_port, timeout=30)
    # The service answers once the limit is passed and closes; the last chunk can then meet a
    # closed socket. Its answer is already here to read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        conn.request("POST", "/v1/keys", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                     headers={"authorization": f"Bearer {svc.token}", "content-type": "application/json"},
                     encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["message"] == "request body over 1 MiB"
    conn.close()
    error(post(b'{"id": "a"}', headers={"content-type": "text/plain"}), 415,
          "expected content-type: application/json")
    error(post(b'{"id": "a"}'), 415)
    error(post(b'{"id": "a",', headers={"content-type": "application/json"}), 400)
    assert post(b'{"id": "a"', headers={"content-type": "application/json"}).json()["message"].startswith(
        "malformed JSON")
    error(post({"id": "a", "colour": "red"}), 400, path="colour")
    error(post({"id": "a", "cors": {"allowed_origins": ["https://a.example", "https://b.example/x"]}}),
          400, "expected an origin scheme://host[:port] with scheme http or https, and no path",
          "cors.allowed_origins[1]")
    error(post({"id": "a", "cors": {"allowed_origins": ["null"]}}), 400, path="cors.allowed_origins[0]")
    error(post({"id": "a b"}), 400, "expected 1-64 characters of A-Z a-z 0-9 . _ -", "id")
    error(post({"id": "a", "sha256": "0" * 64}), 400,
          "not part of a stored entry: the key service keeps the digest itself", "sha256")
    error(post({"id": "a", "key": "kg_x"}), 400, path="key")
    error(post({"id": "a", "expires_at": "tomorrow"}), 400, path="expires_at")
    error(post({"id": "a", "cors": {"allowed_origins": ["*"], "full_access": True},
                "rules": [{"methods": ["GET"], "paths": ["/x"]}]}), 400, path="rules")
    error(post({"id": "a", "rules": [{"methods": ["GET"], "paths": ["no-slash"]}]}), 400)
    error(post({"id": "a", "disabled": "yes"}), 400, path="disabled")
    error(post({"id": "a", "name": ""}), 400, "expected a string of 1-200 characters", "name")
    error(post({"id": "a", "name": "n" * 201}), 400, path="name")
    error(post({"id": "a", "name": 7}), 400, path="name")
    error(post(["id", "a"]), 400, "expected a JSON object", "entry")
    assert svc.admin("GET", "/v1/keys").json() == {"entries": [], "leaked": [], "next": None}
    assert svc.admin("GET", "/v1/audit").json() == {"entries": [], "next": None}
    # A name of exactly 200 characters is fine; the same id twice is a conflict.
    svc.create({"id": "a", "name": "n" * 200})
    error(post({"id": "a"}), 409, 'a key with id "a" already exists')
    assert len(svc.admin("GET", "/v1/keys").json()["entries"]) == 1


# Read -------------------------------------------------------------------------------------

def test_get_and_list_with_owner_and_paging(svc):
    for i in range(5):
        svc.create({"id": f"k{i}", "name": f"key {i}", "owner": "acme" if i % 2 else "zed"})
    r = svc.admin("GET", "/v1/keys/k3")
    shown = {"id": "k3", "name": "key 3", "owner": "acme", "last_used_at": None}
    assert r.status == 200 and r.json() == {"entry": shown}
    error(svc.admin("GET", "/v1/keys/nope"), 404, 'no key with id "nope"')
    page = svc.admin("GET", "/v1/keys?limit=2").json()
    assert [e["id"] for e in page["entries"]] == ["k0", "k1"] and page["next"] == "k1"
    page = svc.admin("GET", "/v1/keys?limit=2&after=k1").json()
    assert [e["id"] for e in page["entries"]] == ["k2", "k3"] and page["next"] == "k3"
    page = svc.admin("GET", "/v1/keys?limit=2&after=k3").json()
    assert [e["id"] for e in page["entries"]] == ["k4"] and page["next"] is None
    page = svc.admin("GET", "/v1/keys?owner=acme").json()
    assert [e["id"] for e in page["entries"]] == ["k1", "k3"] and page["next"] is None
    # Empty parameters, as a form sends them, are absent ones.
    assert len(svc.admin("GET", "/v1/keys?owner=&limit=&after=").json()["entries"]) == 5
    assert len(svc.admin("GET", "/v1/audit?after=&limit=").json()["entries"]) == 5
    for query in ["limit=0", "limit=1001", "limit=x", "colour=red"]:
        error(svc.admin("GET", f"/v1/keys?{query}"), 400)
    # Never a secret or a digest in a listing.
    assert "sha256" not in svc.admin("GET", "/v1/keys").body.decode()
    error(svc.admin("GET", "/v1/nothing"), 404)
    error(svc.admin("PUT", "/v1/keys"), 405)


# Update -----------------------------------------------------------------------------------

def test_patch_is_a_merge_patch_validated_like_a_create(svc):
    key, e = svc.create({"id": "web", "name": "Web", "owner": "acme",
                         "cors": {"allowed_origins": ["https://a.example"], "full_access": False}})
    digest = sha256_hex(key)
    cursor = svc.cursor()
    r = svc.admin("PATCH", "/v1/keys/web", {"disabled": True, "name": None,
                                            "cors": {"allowed_origins": ["https://B.example"]}},
                  headers={"content-type": "application/merge-patch+json"})
    assert r.status == 200, r
    assert r.json() == {"entry": {"id": "web", "owner": "acme", "disabled": True,
                                  "cors": {"allowed_origins": ["https://B.example"], "full_access": False}}}
    # A disabled key still answers (the filter then refuses it as disabled).
    assert svc.filter(f"/v1/filter/keys/{digest}").json()["key"]["disabled"] is True
    # The feed names the digest and the origins before and after.
    feed = svc.changes(cursor)
    assert feed["keys"] == [digest]
    assert sorted(feed["origins"]) == ["https://a.example", "https://b.example"]
    # Errors: the id cannot change, entries are validated, unknown ids, bad bodies.
    error(svc.admin("PATCH", "/v1/keys/web", {"id": "other"}), 400, path="id")
    error(svc.admin("PATCH", "/v1/keys/web", {"id": None}), 400, path="id")
    error(svc.admin("PATCH", "/v1/keys/web", {"cors": {"allowed_origins": ["ftp://x"]}}), 400,
          path="cors.allowed_origins[0]")
    error(svc.admin("PATCH", "/v1/keys/web", {"colour": 1}), 400, path="colour")
    error(svc.admin("PATCH", "/v1/keys/web", {"name": ""}), 400, path="name")
    error(svc.admin("PATCH", "/v1/keys/web", ["x"]), 400, path="entry")
    error(svc.admin("PATCH", "/v1/keys/nope", {"disabled": True}), 404)
    error(svc.admin("PATCH", "/v1/keys/web", b"{}", headers={"content-type": "text/json"}), 415)
    error(svc.admin("PATCH", "/v1/keys/web", b"{", headers={"content-type": "application/json"}), 400)
    # Nothing refused was stored.
    assert svc.admin("GET", "/v1/keys/web").json()["entry"]["cors"]["allowed_origins"] == ["https://B.example"]
    # Re-enable and rename.
    r = svc.admin("PATCH", "/v1/keys/web", {"disabled": None, "name": "Web again"})
    assert r.json()["entry"] == {"id": "web", "name": "Web again", "owner": "acme",
                                 "cors": {"allowed_origins": ["https://B.example"], "full_access": False}}


# Delete -----------------------------------------------------------------------------------

def test_delete_removes_the_key_from_the_filter_protocol(svc):
    key, _ = svc.create({"id": "gone", "cors": {"allowed_origins": ["https://a.example"]}})
    cursor = svc.cursor()
    r = svc.admin("DELETE", "/v1/keys/gone")
    assert (r.status, r.body) == (204, b"")
    error(svc.filter(f"/v1/filter/keys/{sha256_hex(key)}"), 404)
    assert svc.filter("/v1/filter/origins/https%3A%2F%2Fa.example").json() == {"keys": []}
    assert svc.changes(cursor)["keys"] == [sha256_hex(key)]
    assert svc.changes(cursor)["origins"] == ["https://a.example"]
    error(svc.admin("DELETE", "/v1/keys/gone"), 404)
    error(svc.admin("GET", "/v1/keys/gone"), 404)


# Rotate -----------------------------------------------------------------------------------

def test_rotate_makes_a_successor_and_gives_the_old_key_a_grace_period(svc):
    old_key, old = svc.create({"id": "partner", "name": "Partner", "owner": "p1",
                               "cors": {"allowed_origins": ["https://p.example"]}})
    cursor = svc.cursor()
    before = time.time()
    r = svc.admin("POST", "/v1/keys/partner/rotate", {"grace_seconds": 3600})
    after = time.time()
    assert r.status == 201, r
    body = r.json()
    assert SECRET.fullmatch(body["key"]) and body["key"] != old_key
    new = body["entry"]
    assert GENERATED_ID.fullmatch(new["id"])
    assert new == {"id": new["id"], "name": "Partner", "owner": "p1",
                   "cors": {"allowed_origins": ["https://p.example"]}}
    ending = svc.admin("GET", "/v1/keys/partner").json()["entry"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ending["expires_at"])
    assert int(before) + 3600 <= seconds(ending["expires_at"]) <= after + 3600
    # Both work during the grace period; both are in the same change.
    for k in (old_key, body["key"]):
        assert svc.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
    feed = svc.changes(cursor)
    assert sorted(feed["keys"]) == sorted([sha256_hex(old_key), sha256_hex(body["key"])])
    assert int(feed["cursor"].rsplit(".", 1)[1]) == int(cursor.rsplit(".", 1)[1]) + 1
    origins = svc.filter("/v1/filter/origins/https%3A%2F%2Fp.example").json()["keys"]
    assert sorted(k["id"] for k in origins) == sorted(["partner", new["id"]])
    # A grace period never lengthens a key's life; zero ends it now.
    r = svc.admin("POST", "/v1/keys/partner/rotate", {"grace_seconds": 7200, "id": "partner-3"})
    assert r.status == 201 and r.json()["entry"]["id"] == "partner-3"
    assert svc.admin("GET", "/v1/keys/partner").json()["entry"]["expires_at"] == ending["expires_at"]
    # ... and the successor of an ending key carries its end: it is the same settings.
    assert r.json()["entry"]["expires_at"] == ending["expires_at"]
    r = svc.admin("POST", f"/v1/keys/{new['id']}/rotate", {"grace_seconds": 0})
    assert seconds(svc.admin("GET", f"/v1/keys/{new['id']}").json()["entry"]["expires_at"]) <= time.time() + 1
    # The expired one no longer answers for its origin.
    ids = [k["id"] for k in svc.filter("/v1/filter/origins/https%3A%2F%2Fp.example").json()["keys"]]
    assert new["id"] not in ids
    # Errors.
    for bad in [{}, {"grace_seconds": -1}, {"grace_seconds": "60"}, {"grace_seconds": 1.5},
                {"grace_seconds": 315360001}]:
        error(svc.admin("POST", "/v1/keys/partner/rotate", bad), 400, path="grace_seconds")
    error(svc.admin("POST", "/v1/keys/partner/rotate", {"grace_seconds": 1, "colour": 1}), 400, path="colour")
    error(svc.admin("POST", "/v1/keys/partner/rotate", {"grace_seconds": 1, "id": "partner-3"}), 409)
    error(svc.admin("POST", "/v1/keys/partner/rotate", {"grace_seconds": 1, "id": "a b"}), 400, path="id")
    error(svc.admin("POST", "/v1/keys/nope/rotate", {"grace_seconds": 1}), 404)
    error(svc.admin("POST", "/v1/keys/partner/rotate", b"x", headers={"content-type": "application/json"}), 400)
    error(svc.admin("POST", "/v1/keys/partner/rotate", b"{}", headers={"content-type": "text/plain"}), 415)
    audit = [(e["action"], e["key_id"], e.get("successor")) for e in svc.admin("GET", "/v1/audit").json()["entries"]]
    assert audit[:3] == [("rotate", new["id"], audit[0][2]), ("rotate", "partner", "partner-3"),
                         ("rotate", "partner", new["id"])]


# Audit ------------------------------------------------------------------------------------

def test_audit_pages_newest_first(svc):
    for i in range(5):
        svc.create({"id": f"a{i}"})
    svc.admin("PATCH", "/v1/keys/a1", {"owner": "x"})
    svc.admin("DELETE", "/v1/keys/a2")
    page = svc.admin("GET", "/v1/audit?limit=3").json()
    assert [(e["action"], e["key_id"]) for e in page["entries"]] == [
        ("delete", "a2"), ("update", "a1"), ("create", "a4")]
    assert set(page["entries"][0]) == {"seq", "time", "admin", "action", "key_id"}
    rest = svc.admin("GET", f"/v1/audit?after={page['next']}").json()
    assert [e["key_id"] for e in rest["entries"]] == ["a3", "a2", "a1", "a0"] and rest["next"] is None
    for query in ["after=x", "limit=0", "who=me"]:
        error(svc.admin("GET", f"/v1/audit?{query}"), 400)


# The filter protocol ----------------------------------------------------------------------

def test_origins_lists_live_cors_keys_for_the_normalised_origin(svc):
    svc.create({"id": "listed", "cors": {"allowed_origins": ["HTTPS://App.Example:443", "http://localhost:8080"]}})
    svc.create({"id": "star", "cors": {"allowed_origins": ["*"], "full_access": True}})
    svc.create({"id": "off", "disabled": True, "cors": {"allowed_origins": ["https://app.example"]}})
    svc.create({"id": "old", "expires_at": "2020-01-01T00:00:00Z", "cors": {"allowed_origins": ["https://app.example"]}})
    svc.create({"id": "later", "not_before": "2999-01-01T00:00:00Z", "cors": {"allowed_origins": ["https://app.example"]}})
    svc.create({"id": "other", "cors": {"allowed_origins": ["https://other.example"]}})
    svc.create({"id": "server"})

    def ids(origin):
        r = svc.filter("/v1/filter/origins/" + urllib.parse.quote(origin, safe=""))
        assert r.status == 200 and r.headers["content-type"] == "application/json", r
        return [k["id"] for k in r.json()["keys"]]

    assert ids("https://app.example") == ["later", "listed", "star"]
    assert ids("http://localhost:8080") == ["listed", "star"]
    assert ids("https://nobody.example") == ["star"]
    assert ids("null") == [] and ids("*") == [] and ids("https://a.example/path") == []
    entry = svc.filter("/v1/filter/origins/https%3A%2F%2Fapp.example").json()["keys"][1]
    assert entry == {"id": "listed", "cors": {"allowed_origins": ["HTTPS://App.Example:443", "http://localhost:8080"]}}


def test_filter_protocol_errors_are_json(svc):
    for path in [f"/v1/filter/keys/{'0' * 64}", "/v1/filter/keys/xyz", f"/v1/filter/keys/{'g' * 64}",
                 "/v1/filter/nothing", "/v1/keys"]:
        error(svc.filter(path), 404)
    error(request(svc.filter_port, "POST", "/v1/filter/changes", {}), 405)
    error(svc.filter("/v1/filter/changes?after=x&colour=1"), 400)
    # The filter listener has no admin API, and the admin listener no filter protocol.
    error(svc.admin("GET", f"/v1/filter/keys/{'0' * 64}"), 404)
    key, _ = svc.create({"id": "upper"})
    assert svc.filter(f"/v1/filter/keys/{sha256_hex(key).upper()}").status == 200


def test_feed_cursors_and_resets(services, tmp_path):
    a = services()
    start = a.cursor()
    assert a.changes(start) == {"cursor": start, "keys": [], "origins": []}
    k1, _ = a.create({"id": "one", "cors": {"allowed_origins": ["https://one.example"]}})
    k2, _ = a.create({"id": "two"})
    feed = a.changes(start)
    assert feed["keys"] == [sha256_hex(k1), sha256_hex(k2)] and feed["origins"] == ["https://one.example"]
    assert a.changes(feed["cursor"]) == {"cursor": feed["cursor"], "keys": [], "origins": []}
    # Another database's cursor, garbage, and a number this database has not reached: reset.
    other = services(db=f"sqlite:{tmp_path / 'other.db'}")
    db_id = feed["cursor"].rsplit(".", 1)[0]
    for cursor in [other.cursor(), "x", "", f"{db_id}.999", f"{db_id}.-1", f"{db_id}.1.2"]:
        assert a.changes(urllib.parse.quote(cursor)) == {"cursor": feed["cursor"], "reset": True}, cursor
    assert other.cursor().rsplit(".", 1)[0] != db_id


# Secrets ----------------------------------------------------------------------------------

def test_no_secret_anywhere_but_the_one_201(svc):
    answers = []
    r = svc.admin("POST", "/v1/keys", {"id": "s", "owner": "o", "cors": {"allowed_origins": ["https://s.example"]}})
    secret = r.json()["key"]
    r2 = svc.admin("POST", "/v1/keys/s/rotate", {"grace_seconds": 60, "id": "s2"})
    secret2 = r2.json()["key"]
    digests = [sha256_hex(secret), sha256_hex(secret2)]
    answers += [svc.admin("GET", "/v1/keys"), svc.admin("GET", "/v1/keys/s"), svc.admin("GET", "/v1/audit"),
                svc.admin("PATCH", "/v1/keys/s", {"owner": "p"}),
                svc.admin("POST", "/v1/keys", {"id": "s", "key": secret}),
                svc.admin("POST", "/v1/keys", {"id": "t", "disabled": secret}),
                svc.admin("POST", "/v1/keys", {"id": "t", "owner": secret + "\n"}),
                svc.filter(f"/v1/filter/keys/{digests[0]}"), svc.filter("/v1/filter/origins/https%3A%2F%2Fs.example")]
    export = svc.admin("GET", "/v1/export")
    svc.admin("DELETE", "/v1/keys/s")
    svc.stop()
    for a in answers + [export]:
        for s in (secret, secret2):
            assert s.encode() not in a.body, a
    for a in answers[:7]:
        for d in digests:
            assert d.encode() not in a.body, a
    assert all(d.encode() in export.body for d in digests)
    log = svc.output()
    assert secret not in log and secret2 not in log and digests[0] not in log
    assert "create s by admin" in log


# Export and the ECDS file -----------------------------------------------------------------

def test_export_is_a_configuration_keygate_check_accepts(svc, tmp_path):
    k, _ = svc.create({"id": "web", "name": "Web", "cors": {"allowed_origins": ["https://a.example"]},
                       "resources": ["r1"]})
    svc.create({"id": "backend", "owner": "team"})
    svc.create({"id": "partner", "disabled": True, "rules": [{"methods": ["GET"], "paths": ["/x/{id}"]}]})
    r = svc.admin("GET", "/v1/export")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    config = r.json()
    assert [e["id"] for e in config["keys"]] == ["backend", "partner", "web"]
    assert config["keys"][2] == {"id": "web", "sha256": sha256_hex(k),
                                 "cors": {"allowed_origins": ["https://a.example"]}, "resources": ["r1"]}
    path = tmp_path / "export.json"
    path.write_bytes(r.body)
    p = run_keygate("check", str(path))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{path}: valid: 3 keys (1 CORS-enabled), mode enforce\n"


def test_ecds_file_follows_every_change(services, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"public_endpoints": [{"methods": ["GET"], "paths": ["/healthz"]}],
                                "mode": "report"}))
    ecds = tmp_path / "ecds" / "keygate.yaml"
    ecds.parent.mkdir()
    s = services(args=["--ecds-file", str(ecds), "--ecds-base", str(base)])

    def wait_for(predicate):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if ecds.exists() and predicate(ecds.read_text()):
                return ecds.read_text()
            time.sleep(0.05)
        raise AssertionError(ecds.read_text() if ecds.exists() else "no file")

    wait_for(lambda t: '"keys":[]' in t)
    k, _ = s.create({"id": "web", "cors": {"allowed_origins": ["https://a.example"]}})
    text = wait_for(lambda t: sha256_hex(k) in t)
    assert "dist/keygate.wasm" in text and "version_info" in text
    p = run_keygate("check", str(ecds))
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{ecds}: wasm filter keygate: valid: 1 keys (1 CORS-enabled), mode report\n"
    s.admin("DELETE", "/v1/keys/web")
    wait_for(lambda t: sha256_hex(k) not in t)
    assert [f.name for f in ecds.parent.iterdir()] == ["keygate.yaml"], "no temporary file left"
    # A base that is not a plugin configuration, or that holds keys, is refused at start.
    for bad in ['{"mode": "loud"}', '{"keys": []}', "[]"]:
        base.write_text(bad)
        p = run_keygate("serve", "--ecds-file", str(ecds), "--ecds-base", str(base),
                        env={"KEYGATE_ADMIN_TOKEN_SHA256": sha256_hex("kg_x")}, cwd=tmp_path)
        assert p.returncode != 0 and len(p.stderr.splitlines()) == 1 and "--ecds-base" in p.stderr


# Restarts and replicas --------------------------------------------------------------------

def test_restarts_keep_keys_and_cursors(services, any_db):
    s = services(db=any_db)
    k, _ = s.create({"id": "kept", "name": "Kept", "cors": {"allowed_origins": ["https://k.example"]}})
    cursor = s.cursor()
    s.restart()
    assert s.admin("GET", "/v1/keys/kept").json()["entry"]["name"] == "Kept"
    assert s.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
    assert s.cursor() == cursor
    s.admin("PATCH", "/v1/keys/kept", {"disabled": True})
    assert s.changes(cursor)["keys"] == [sha256_hex(k)]
    s.restart()
    assert s.changes(cursor)["keys"] == [sha256_hex(k)]
    assert [e["action"] for e in s.admin("GET", "/v1/audit").json()["entries"]] == ["update", "create"]


def test_two_replicas_share_one_postgresql(services, pg):
    db = pg.createdb(f"kg{next(_databases)}")
    a, b = services(db=db), services(db=db)
    cursor = b.cursor()
    assert a.cursor() == cursor
    k, _ = a.create({"id": "via-a", "cors": {"allowed_origins": ["https://a.example"]}})
    assert b.changes(cursor) == {"cursor": a.cursor(), "keys": [sha256_hex(k)], "origins": ["https://a.example"]}
    assert b.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
    error(b.admin("POST", "/v1/keys", {"id": "via-a"}), 409)
    b.admin("DELETE", "/v1/keys/via-a")
    error(a.filter(f"/v1/filter/keys/{sha256_hex(k)}"), 404)
    assert a.changes(b.changes(cursor)["cursor"])["keys"] == []
    # A rotation through B: both keys in A's feed, in one change.
    k2, _ = b.create({"id": "r"})
    before = a.cursor()
    rotated = b.admin("POST", "/v1/keys/r/rotate", {"grace_seconds": 5}).json()
    assert sorted(a.changes(before)["keys"]) == sorted([sha256_hex(k2), sha256_hex(rotated["key"])])
    # Another database on the same server: its cursors answer reset here.
    other = services(db=pg.createdb(f"kg{next(_databases)}"))
    assert a.changes(other.cursor()) == {"cursor": a.cursor(), "reset": True}


def test_a_postgresql_restart_costs_no_lookup_and_no_write(services):
    """The filter's lookups keep connections of their own (no pool pings): those die with a
    restart, and the lookup that finds one dead is retried once on a new connection."""
    server = Postgres().start()
    try:
        s = services(db=server.createdb("restart"))
        k, _ = s.create({"id": "before"})
        for _ in range(4):
            assert s.filter(f"/v1/filter/keys/{sha256_hex(k)}").status == 200
        pg_ctl = (str(server.bin / "pg_ctl"), "-D", str(server.data))
        server._as_postgres(*pg_ctl, "-m", "fast", "-w", "stop")
        server._as_postgres(*pg_ctl, "-l", str(server.dir / "log"), "-w", "start", "-o",
                            f"-p {server.port} -k {server.dir} -c listen_addresses=127.0.0.1")
        assert [s.filter(f"/v1/filter/keys/{sha256_hex(k)}").status for _ in range(4)] == [200] * 4
        error(s.filter(f"/v1/filter/keys/{sha256_hex('kg_never_made')}"), 404)
        k2, _ = s.create({"id": "after"})
        assert s.filter(f"/v1/filter/keys/{sha256_hex(k2)}").status == 200
    finally:
        server.stop()


def test_concurrent_writers_and_an_exact_feed(services, any_db):
    """8 threads x 25 writes (creates and patches) across two replicas on one database, while
    a reader polls the feed: every answer (a, b] lists exactly the keys changes a+1..b touched."""
    replicas = [services(db=any_db), services(db=any_db)]
    reader = replicas[-1]
    digest_of: dict[str, str] = {}
    lock = threading.Lock()
    failures = []
    stop = threading.Event()
    answers = []

    # Taken before any writer starts: a first write committed ahead of it would fall before
    # the reader's first cursor, and so outside what it reads.
    start = reader.cursor()
    assert start.endswith(".0"), start

    def poll():
        try:
            cursor = start
            while True:
                done = stop.is_set()
                r = reader.changes(cursor)
                assert "reset" not in r, r
                answers.append((cursor, r))
                cursor = r["cursor"]
                if done and not r["keys"]:
                    return
        except Exception as e:  # noqa: BLE001
            failures.append(e)

    def write(t):
        try:
            s = replicas[t % len(replicas)]
            mine = []
            for i in range(25):
                if i % 3 == 2:
                    r = s.admin("PATCH", f"/v1/keys/{mine[-1]}", {"owner": f"o{i}",
                                "cors": {"allowed_origins": [f"https://t{t}-{i}.example"]}})
                    assert r.status == 200, r
                else:
                    key, e = s.create({"id": f"t{t}-{i}", "cors": {"allowed_origins": [f"https://t{t}.example"]}})
                    with lock:
                        digest_of[e["id"]] = sha256_hex(key)
                    mine.append(e["id"])
        except Exception as e:  # noqa: BLE001
            failures.append(e)

    reader_thread = threading.Thread(target=poll)
    reader_thread.start()
    writers = [threading.Thread(target=write, args=(t,)) for t in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader_thread.join(timeout=60)
    assert failures == [] and not reader_thread.is_alive(), failures
    page = reader.admin("GET", "/v1/audit?limit=1000").json()
    audit = page["entries"]
    assert len(audit) == 200 and page["next"] is None
    touched = {e["seq"]: e["key_id"] for e in audit}
    assert sorted(touched) == list(range(1, 201)), "numbers are dense"
    number = lambda c: int(c.rsplit(".", 1)[1])  # noqa: E731
    seen = []
    for cursor, r in answers:
        expected = [digest_of[touched[n]] for n in range(number(cursor) + 1, number(r["cursor"]) + 1)]
        assert r["keys"] == list(dict.fromkeys(expected)), (cursor, r["cursor"])
        seen += r["keys"]
    assert number(answers[-1][1]["cursor"]) == 200
    busy = sum(1 for _, r in answers if r["keys"])
    assert busy >= 2, "the reader polled while the writers wrote"
    print(f"{len(answers)} answers, {busy} with changes")
    assert set(seen) == set(digest_of.values()) and len(digest_of) == 8 * 17


# The command line -------------------------------------------------------------------------

def test_the_cli_is_a_client_of_the_admin_api(svc, tmp_path):
    env = {"KEYGATE_ADMIN_TOKEN": svc.token}
    server = f"http://127.0.0.1:{svc.admin_port}"
    cli = lambda *a, **kw: run_keygate(*a, "--server", server, env=kw.pop("env", env), **kw)  # noqa: E731

    p = cli("keys", "create", "--id", "web", "--name", "Web", "--owner", "acme",
            "--cors-origin", "https://a.example")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    secret = lines[0].removeprefix("key (shown once, store it now): ")
    assert SECRET.fullmatch(secret), p.stdout
    assert lines[1] == 'created web  "Web"  owner acme  cors https://a.example'
    assert svc.filter(f"/v1/filter/keys/{sha256_hex(secret)}").status == 200

    p = cli("keys", "create", "--json", "--entry", '{"rules": [{"methods": ["GET"], "paths": ["/x"]}]}')
    assert p.returncode == 0, p.stderr
    made = json.loads(p.stdout)
    assert list(made) == ["key", "entry"] and made["entry"]["rules"] == [{"methods": ["GET"], "paths": ["/x"]}]

    p = cli("keys", "list")
    assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith("web  ") and secret not in p.stdout
    p = cli("keys", "list", "--json", "--limit", "1")
    assert json.loads(p.stdout)["next"] == made["entry"]["id"]
    p = cli("keys", "show", "web", "--json")
    assert json.loads(p.stdout) == svc.admin("GET", "/v1/keys/web").json()

    p = cli("keys", "update", "web", "--disable", "--name", "Web (off)")
    assert (
        p.returncode == 0
        and p.stdout.splitlines()[0] == 'updated web  "Web (off)"  owner acme  cors https://a.example  DISABLED'
    )
    p = cli("keys", "update", "web", "--json", "--patch", '{"disabled": null}')
    assert "disabled" not in json.loads(p.stdout)["entry"]

    p = cli("keys", "rotate", "web", "--grace-seconds", "600", "--new-id", "web-2")
    assert p.returncode == 0, p.stderr
    new_secret = p.stdout.splitlines()[0].removeprefix("key (shown once, store it now): ")
    assert SECRET.fullmatch(new_secret) and new_secret != secret
    assert "web keeps working for 600 s" in p.stdout

    p = cli("keys", "revoke", "web")
    assert (p.returncode, p.stdout) == (0, "revoked web\n")
    error(svc.filter(f"/v1/filter/keys/{sha256_hex(secret)}"), 404)

    p = cli("export")
    assert p.returncode == 0
    (tmp_path / "exported.json").write_text(p.stdout)
    assert run_keygate("check", str(tmp_path / "exported.json")).returncode == 0
    assert [k["id"] for k in json.loads(p.stdout)["keys"]] == sorted([made["entry"]["id"], "web-2"])

    # The token from standard input; refused without one, with a wrong one, and API errors.
    p = cli("keys", "show", "web-2", "--token-stdin", env={}, input=svc.token + "\n")
    assert p.returncode == 0, p.stderr
    for args in [("keys", "list"), ("keys", "create"), ("export",)]:
        p = cli(*args, env={})
        assert p.returncode != 0 and p.stdout == ""
        assert p.stderr == "keygate: no admin token: set KEYGATE_ADMIN_TOKEN or pass --token-stdin\n"
    p = cli("keys", "list", env={"KEYGATE_ADMIN_TOKEN": "kg_wrong"})
    assert (p.returncode, p.stderr) == (1, "keygate: 401 Unauthorized: Invalid API key\n")
    p = cli("keys", "create", "--cors-origin", "ftp://x")
    assert p.returncode == 1
    assert p.stderr == ("keygate: 400 Bad Request: expected an origin scheme://host[:port] with scheme "
                        "http or https, and no path (at cors.allowed_origins[0])\n")
    p = cli("keys", "show", "nope")
    assert (p.returncode, p.stderr) == (1, 'keygate: 404 Not Found: no key with id "nope"\n')
    p = run_keygate("keys", "list", "--server", "http://127.0.0.1:1", env=env)
    assert p.returncode == 1 and len(p.stderr.splitlines()) == 1


# What the database says ---------------------------------------------------------------------

def test_a_cursor_below_the_kept_changes_answers_reset(services, tmp_path):
    import sqlite3
    s = services()
    start = s.cursor()
    for i in range(3):
        s.create({"id": f"p{i}"})
    one = start.rsplit(".", 1)[0] + ".1"
    assert len(s.changes(one)["keys"]) == 2
    # As if changes up to 2 had been pruned.
    with sqlite3.connect(tmp_path / "keys.db") as db:
        db.execute("UPDATE feed SET floor = 2")
    current = s.cursor()
    assert s.changes(one) == {"cursor": current, "reset": True}
    assert s.changes(start) == {"cursor": current, "reset": True}
    assert len(s.changes(start.rsplit(".", 1)[0] + ".2")["keys"]) == 1


def test_start_fails_with_one_line_when_a_migration_was_changed(services, tmp_path):
    import sqlite3
    s = services()
    s.stop()
    with sqlite3.connect(tmp_path / "keys.db") as db:
        db.execute("UPDATE _sqlx_migrations SET checksum = X'00'")
    p = run_keygate("serve", "--db", f"sqlite:{tmp_path / 'keys.db'}", "--admin-listen", "127.0.0.1:0",
                    "--filter-listen", "127.0.0.1:0", "--ratelimit-listen", "127.0.0.1:0",
                    env={"KEYGATE_ADMIN_TOKEN_SHA256": sha256_hex("kg_x")})
    assert p.returncode != 0
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("keygate: serve: cannot migrate database sqlite:"), p.stderr
