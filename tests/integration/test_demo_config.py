"""envoy/envoy.yaml, the config users run, and the demo keys the README lists: the filter
with its static table, and beside it the real key service (as scripts/demo.sh runs them),
end to end: a key created in the service works at once, stops within the feed's delay,
and rotates without downtime."""

import json
import subprocess
import time

import pytest
import yaml

from support.demo import DEMO, demo_envoy, on_free_ports
from support.harness import ROOT, UNAUTHORIZED, Envoy, bearer, envoy_command, forbidden
from support.remote import on_every_worker
from support.service import Service, run_keygate

DEMO_SERVICE_KEYS = ROOT / "envoy" / "demo-service-keys.json"
ADMIN = "kg_demo_admin_0c5e2f7a91"


def test_envoy_validates_the_shipped_config():
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(DEMO)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = Service("sqlite:keygate.db", tmp_path_factory.mktemp("demo-service"), tokens=[ADMIN],
                args=["--import", str(DEMO_SERVICE_KEYS)]).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def demo(service):
    """The demo Envoy with two workers (each its own VM and cache), its key service the real one."""
    e = demo_envoy(service.filter_port, service.ratelimit_port)
    yield e
    e.stop()


def agreed_within(demo, key: str, expect: int, within: float) -> float:
    """Seconds until a round of requests with the key, on fresh connections reaching every
    worker (each its own VM and cache), all get `expect`; fails after `within` seconds."""
    start = time.monotonic()
    while True:
        statuses = [r.status for r in on_every_worker(demo, lambda: demo.get("/api/stream/1", [bearer(key)]))]
        if all(s == expect for s in statuses):
            return time.monotonic() - start
        assert time.monotonic() - start < within, f"still {statuses} after {within} s"
        time.sleep(0.05)


def cli(service, *args) -> dict:
    r = run_keygate("keys", *args, "--server", f"http://127.0.0.1:{service.admin_port}", "--json",
                    env={"KEYGATE_ADMIN_TOKEN": ADMIN})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout) if r.stdout.strip() else {}


def test_the_service_seeded_key_works_through_the_demo(demo):
    r = demo.get("/api/stream/1", [bearer("kg_demo_remote_5d2a8c1e4b")])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["demo-remote"]
    assert r.upstream_all("x-api-key-owner") == ["team-remote"]


def test_created_works_at_once_and_revoked_is_refused_within_two_seconds(demo, service):
    created = cli(service, "create", "--owner", "acme")
    key, key_id = created["key"], created["entry"]["id"]
    r = demo.get("/api/stream/1", [bearer(key)])
    assert r.status == 200 and r.upstream_all("x-api-key-id") == [key_id]
    agreed_within(demo, key, 200, within=2)
    assert service.admin("PATCH", f"/v1/keys/{key_id}", {"disabled": True}).status == 200
    assert agreed_within(demo, key, 401, within=2) < 2
    assert service.admin("PATCH", f"/v1/keys/{key_id}", {"disabled": False}).status == 200
    agreed_within(demo, key, 200, within=2)
    cli(service, "revoke", key_id)
    assert agreed_within(demo, key, 401, within=2) < 2
    assert demo.get("/api/stream/1", [bearer(key)]).body == UNAUTHORIZED


def test_a_key_refused_before_it_existed_works_once_created(demo, service):
    # The service answers 404 and the filter caches that; creating the key lists its digest
    # in the feed, which drops the negative answer on every worker.
    created = cli(service, "create")
    key = created["key"]
    cli(service, "revoke", created["entry"]["id"])
    agreed_within(demo, key, 401, within=2)
    # A new key with a new secret: only its own digest was ever refused.
    fresh = cli(service, "create")
    agreed_within(demo, fresh["key"], 200, within=2)


def test_rotation_keeps_both_keys_during_the_grace_period_then_only_the_new(demo, service):
    old = cli(service, "create", "--owner", "rotating")
    old_key, old_id = old["key"], old["entry"]["id"]
    agreed_within(demo, old_key, 200, within=2)
    rotated = service.admin("POST", f"/v1/keys/{old_id}/rotate", {"grace_seconds": 3})
    assert rotated.status == 201, rotated
    new_key, new_id = rotated.json()["key"], rotated.json()["entry"]["id"]
    assert new_id != old_id
    assert demo.get("/api/stream/1", [bearer(new_key)]).upstream_all("x-api-key-id") == [new_id]
    agreed_within(demo, old_key, 200, within=2)
    agreed_within(demo, new_key, 200, within=2)
    # After the grace period the old key is expired: refused, and the new one still works.
    agreed_within(demo, old_key, 401, within=6)
    agreed_within(demo, new_key, 200, within=1)


def test_demo_backend_key(demo):
    r = demo.get("/api/stream/1", [bearer("kg_demo_backend_4f9a1c2e7b")])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["demo-backend"]
    assert r.upstream_all("x-api-key-owner") == ["team-backend"]


def test_demo_limited_key_gives_five_a_second_then_429(demo):
    # As the README's loop: ten requests in one second, the first five pass. Started just after
    # a second begins, so that all ten fall in one window.
    time.sleep(1.02 - time.time() % 1)
    began = time.time()
    answers = [demo.get("/api/x", [bearer("kg_demo_limited_9c41e7d2")]) for _ in range(10)]
    assert int(time.time()) == int(began), "the ten requests spanned two windows: the machine is too slow"
    assert [a.status for a in answers] == [200] * 5 + [429] * 5
    assert answers[0].upstream_all("x-api-key-id") == ["demo-limited"]
    assert answers[4].header("x-ratelimit-remaining") == "0"
    assert answers[5].body == b'{"error": "Too Many Requests", "message": "Rate limit exceeded"}'
    assert answers[5].header("retry-after") == "1"
    # The other demo keys have no limits: never counted, never refused for it.
    assert [demo.get("/api/x", [bearer("kg_demo_backend_4f9a1c2e7b")]).status for _ in range(10)] == [200] * 10


def test_demo_revoked_key_and_no_key(demo):
    assert (demo.get("/api/stream/1", [bearer("kg_demo_revoked_6a1f3d8b2e")]).body) == UNAUTHORIZED
    assert demo.get("/api/stream/1").status == 401
    assert demo.get("/healthz").status == 200


def test_demo_web_player_key(demo):
    key = bearer("kg_demo_web_8d3e5f1a6c")
    origin = ("origin", "http://localhost:8080")
    r = demo.get("/api/stream/stream-7f3a", [key, origin])
    assert r.status == 200
    assert r.header("access-control-allow-origin") == "http://localhost:8080"
    r = demo.get("/api/stream/other", [key, origin])
    assert (r.status, r.body) == (403, forbidden("Resource not allowed for this API key"))
    r = demo.get("/api/stream/stream-7f3a", [key, ("origin", "https://evil.example")])
    assert (r.status, r.body) == (403, forbidden("Origin not allowed"))


def test_demo_partner_rules(demo):
    key = bearer("kg_demo_partner_2b7c9e4d1f")
    assert demo.get("/api/asset/a1", [key]).status == 200
    r = demo.get("/api/stream/1", [key])
    assert (r.status, r.body) == (403, forbidden("Endpoint not allowed for this API key"))


def test_demo_normalises_paths_before_keygate(demo):
    # Envoy's own layer: `..` resolved, so keygate and the upstream both see /healthz.
    r = demo.get("/api/../healthz")
    assert r.status == 200
    assert ("/healthz" in [v for k, v in r.upstream() if k == ":path"])
    # Escaped slashes are refused by Envoy before keygate runs.
    assert demo.get("/api%2Fstream/1").status == 400


def test_demo_access_log_names_the_key(demo):
    demo.get("/api/stream/1", [bearer("kg_demo_backend_4f9a1c2e7b")])
    # The demo logs to stdout, which each worker flushes on its own (every 100 ms here).
    deadline = time.monotonic() + 5
    while "key_id=demo-backend owner=team-backend" not in demo.log():
        assert time.monotonic() < deadline, "no access log line names the key"
        time.sleep(0.1)


def test_ecds_variant_validates_and_serves_the_demo_table():
    ecds = ROOT / "envoy" / "envoy-ecds.yaml"
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(ecds)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc, api, admin = on_free_ports(yaml.safe_load(ecds.read_text()))
    e = Envoy(bootstrap=doc, port=api, admin_port=admin).start()
    try:
        assert e.get("/x", [bearer("kg_demo_backend_4f9a1c2e7b")]).upstream_all("x-api-key-id") == ["demo-backend"]
        assert e.get("/x", [bearer("kg_demo_revoked_6a1f3d8b2e")]).status == 401
        assert e.stats_all()["extension_config_discovery.http_filter.keygate.update_success"] == 1
    finally:
        e.stop()


def test_per_key_rate_limit_with_envoys_local_rate_limit_filter():
    path = ROOT / "envoy" / "envoy-ratelimit.yaml"
    doc, api, admin = on_free_ports(yaml.safe_load(path.read_text()))
    e = Envoy(bootstrap=doc, port=api, admin_port=admin).start()
    try:
        partner, backend = bearer("kg_demo_partner_2b7c9e4d1f"), bearer("kg_demo_backend_4f9a1c2e7b")
        statuses = [e.get("/api/asset/a1", [partner]).status for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        # Another key is not limited, and a forged x-api-key-id cannot spend the partner's
        # tokens nor escape its own: keygate replaced it before the rate limiter ran.
        assert [e.get("/api/asset/a1", [backend, ("x-api-key-id", "demo-partner")]).status
                for _ in range(10)] == [200] * 10
    finally:
        e.stop()
