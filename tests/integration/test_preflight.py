"""Preflights answered at the edge, and the configurable CORS response headers."""

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, bearer, forbidden, module_envoy

PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
DENIED = forbidden("CORS preflight not allowed")


def without_star_key(config: dict) -> dict:
    config["keys"] = [k for k in config["keys"] if k["id"] != "anywhere"]
    return config


@pytest.fixture(scope="module")
def envoy():
    yield from module_envoy(c.config())


@pytest.fixture(scope="module")
def strict():
    """No "*" key, and CORS settings that are not the defaults."""
    yield from module_envoy(without_star_key(c.config(
        allow_headers=["authorization", "content-type", "x-request-id"], expose_headers=["x-trace", "etag"],
        max_age_seconds=86400, allow_credentials=True)))


def preflight(e, path, orig, method, extra=()):
    return e.get(path, [("origin", orig), ("access-control-request-method", method)] + list(extra), method="OPTIONS")


def assert_allowed(r, orig, method, allow_headers="authorization, content-type", max_age="600", credentials=False):
    assert r.status == 204 and r.body == b""
    expected = [
        ("access-control-allow-origin", orig),
        ("access-control-allow-methods", method),
        ("access-control-allow-headers", allow_headers),
        ("access-control-max-age", max_age),
    ] + ([("access-control-allow-credentials", "true")] if credentials else [])
    assert sorted(r.cors_headers()) == sorted(expected)
    assert r.all("vary") == [PREFLIGHT_VARY]
    assert r.upstream() is None


def assert_denied(r):
    assert (r.status, r.body) == (403, DENIED)
    assert r.header("content-type") == "application/json"
    assert r.cors_headers() == []
    assert r.all("vary") == ["Origin"]
    assert r.upstream() is None


@pytest.mark.parametrize("path,orig,method", [
    ("/api/stream/stream-7f3a", c.APP, "PATCH"),
    ("/api/stream/any-id-at-all", c.LOCAL, "GET"),   # resources are checked on the request, not here
    ("/api/stream", c.APP, "POST"),
    ("/api/task/t1", "https://elsewhere.example", "GET"),   # the "*" key
    ("/whatever/x", c.FULL_ORIGIN, "DELETE"),               # full access key
    ("/api/task/t1?x=1", "https://norm.example.com", "GET"),
    ("/healthz", "https://anyone.example", "GET"),          # public endpoint
])
def test_allowed_preflights(envoy, path, orig, method):
    before = envoy.counter("preflight_allowed")
    assert_allowed(preflight(envoy, path, orig, method), orig, method)
    envoy.wait_counter("preflight_allowed", before + 1)


@pytest.mark.parametrize("path,orig,method", [
    ("/api/stream/stream-7f3a", c.APP, "DELETE"),       # method not in the allowlist
    ("/api/admin", c.APP, "GET"),                       # endpoint not in the allowlist
    ("/api/stream/stream-7f3a", c.APP, "patch"),        # methods are case-sensitive
    ("/api/stream/stream-7f3a", "null", "GET"),
    ("/whatever/x", c.APP, "DELETE"),                   # full access belongs to another origin
    ("/healthz", "https://anyone.example", "POST"),
    ("/api/stream/stream-7f3a/", c.APP, "GET"),         # trailing slash matches no rule
    ("/api/stream/..", c.APP, "GET"),
])
def test_denied_preflights(envoy, path, orig, method):
    before = envoy.counter("preflight_denied")
    assert_denied(preflight(envoy, path, orig, method))
    envoy.wait_counter("preflight_denied", before + 1)


def test_two_origin_headers_are_never_allowed(envoy):
    r = envoy.get("/api/task/t1", [("origin", c.APP), ("origin", c.APP), ("access-control-request-method", "GET")],
                  method="OPTIONS")
    assert_denied(r)


def test_options_without_preflight_headers_is_authenticated(envoy):
    assert envoy.get("/api/stream/stream-7f3a", [("origin", c.APP)], method="OPTIONS").status == 401
    r = envoy.get("/api/stream/stream-7f3a", [("access-control-request-method", "GET")], method="OPTIONS")
    assert (r.status, r.body) == (401, UNAUTHORIZED)
    r = envoy.get("/anything", [bearer(c.BACKEND), ("access-control-request-method", "GET")], method="OPTIONS")
    assert r.status == 200 and r.upstream_all(":method") == ["OPTIONS"]


def test_preflight_needs_no_key_and_ignores_a_bad_one(envoy):
    r = preflight(envoy, "/api/stream/stream-7f3a", c.APP, "PATCH", [bearer("garbage key with spaces")])
    assert_allowed(r, c.APP, "PATCH")


def test_disabled_and_expired_keys_grant_nothing(strict):
    assert_denied(preflight(strict, "/anything", c.DEAD_ORIGIN, "GET"))
    r = strict.get("/api/stream/x", [bearer("unknown"), ("origin", c.DEAD_ORIGIN)])
    assert (r.status, r.body, r.cors_headers()) == (401, UNAUTHORIZED, [])
    r = strict.get("/anything", [bearer(c.EXPIRED_CORS), ("origin", c.DEAD_ORIGIN)])
    assert (r.status, r.body, r.cors_headers()) == (401, UNAUTHORIZED, [])
    strict.wait_counter("denied_expired", 1)


def test_configured_cors_headers(strict):
    r = preflight(
        strict, "/api/stream/stream-7f3a", c.APP, "PATCH", [("access-control-request-headers", "x-request-id")]
    )
    assert_allowed(r, c.APP, "PATCH", allow_headers="authorization, content-type, x-request-id", max_age="86400",
                   credentials=True)
    browser = [("access-control-allow-origin", c.APP), ("access-control-expose-headers", "x-trace, etag"),
               ("access-control-allow-credentials", "true")]
    r = strict.get("/api/stream/stream-7f3a", [bearer(c.WEB), ("origin", c.APP)])
    assert r.status == 200 and sorted(r.cors_headers()) == sorted(browser)
    r = strict.get("/api/stream/other", [bearer(c.WEB), ("origin", c.APP)])
    assert r.status == 403 and sorted(r.cors_headers()) == sorted(browser)
    r = strict.get("/api/stream/other", [bearer("unknown"), ("origin", c.APP)])
    assert r.status == 401 and sorted(r.cors_headers()) == sorted(browser)
    # An origin nobody allows gets no access-control-* header at all.
    r = strict.get("/api/stream/other", [bearer("unknown"), ("origin", "https://random.example")])
    assert r.status == 401 and r.cors_headers() == []


def test_preflights_over_http2(envoy):
    r = envoy.get2("/api/stream/stream-7f3a", [("origin", c.APP), ("access-control-request-method", "PATCH")],
                   method="OPTIONS")
    assert r.status == 204 and r.header("access-control-allow-methods") == "PATCH"
