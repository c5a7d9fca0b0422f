"""envoy/envoy.yaml, the config users run, and the demo keys the README lists."""

import subprocess

import pytest
import yaml

from harness import ROOT, UNAUTHORIZED, Envoy, bearer, envoy_command, forbidden, free_port

DEMO = ROOT / "envoy" / "envoy.yaml"


def test_envoy_validates_the_shipped_config():
    r = subprocess.run(envoy_command() + ["--mode", "validate", "-c", str(DEMO)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK" in r.stdout + r.stderr


def on_free_ports(doc: dict) -> tuple[dict, int, int]:
    """The demo bootstrap with its fixed ports replaced, so it can run beside anything."""
    api, admin, echo = free_port(), free_port(), free_port()
    text = yaml.safe_dump(doc)
    for old, new in ((10000, api), (9901, admin), (10001, echo)):
        text = text.replace(f"port_value: {old}", f"port_value: {new}")
    return yaml.safe_load(text), api, admin


@pytest.fixture(scope="module")
def demo():
    doc, api, admin = on_free_ports(yaml.safe_load(DEMO.read_text()))
    e = Envoy(bootstrap=doc, port=api, admin_port=admin).start()
    yield e
    e.stop()


def test_demo_backend_key(demo):
    r = demo.get("/api/stream/1", [bearer("kg_demo_backend_4f9a1c2e7b")])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["demo-backend"]
    assert r.upstream_all("x-api-key-owner") == ["team-backend"]


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
    assert "key_id=demo-backend owner=team-backend" in demo.log()


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
