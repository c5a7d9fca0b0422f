"""Through a real Envoy: CORS keys, rules, resources, public endpoints, CORS headers."""

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, bearer, forbidden, module_envoy

BACKEND_FROM_BROWSER = forbidden("API key does not allow CORS access")
ORIGIN_NOT_ALLOWED = forbidden("Origin not allowed")
ENDPOINT_NOT_ALLOWED = forbidden("Endpoint not allowed for this API key")
RESOURCE_NOT_ALLOWED = forbidden("Resource not allowed for this API key")


@pytest.fixture(scope="module")
def envoy():
    yield from module_envoy(c.config())


def origin(o):
    return ("origin", o)


def assert_reply(r, status, body, readable_by=None):
    """A keygate reply: status, exact body, JSON, and CORS headers exactly as allowed."""
    assert (r.status, r.body) == (status, body)
    assert r.header("content-type") == "application/json"
    assert r.upstream() is None
    if readable_by:
        assert r.cors_headers() == [("access-control-allow-origin", readable_by)]
    else:
        assert r.cors_headers() == []


# (key, method, path, origin, status, body-or-None-for-upstream, readable, counter)
CASES = [
    # Backend keys may not be used from a browser, whatever the endpoint.
    (c.BACKEND, "GET", "/api/stream/x", c.APP, 403, BACKEND_FROM_BROWSER, False, "denied_cors_backend_key"),
    (c.PARTNER, "GET", "/api/asset/a", c.APP, 403, BACKEND_FROM_BROWSER, False, "denied_cors_backend_key"),
    # A CORS key only from its origins, compared exactly as browsers send them.
    (c.WEB, "GET", "/api/stream/stream-7f3a", "https://evil.example", 403, ORIGIN_NOT_ALLOWED, False, "denied_origin"),
    (
        c.WEB,
        "GET",
        "/api/stream/stream-7f3a",
        "http://app.example.com",
        403,
        ORIGIN_NOT_ALLOWED,
        False,
        "denied_origin",
    ),
    (
        c.WEB,
        "GET",
        "/api/stream/stream-7f3a",
        "https://app.example.com:8443",
        403,
        ORIGIN_NOT_ALLOWED,
        False,
        "denied_origin",
    ),
    (c.WEB, "GET", "/api/stream/stream-7f3a", "null", 403, ORIGIN_NOT_ALLOWED, False, "denied_origin"),
    (c.ANYWHERE, "GET", "/api/stream/s", "null", 403, ORIGIN_NOT_ALLOWED, False, "denied_origin"),
    # Endpoint allowlist (cors_endpoints) and resources.
    (c.WEB, "GET", "/api/stream/stream-7f3a", c.APP, 200, None, True, "allowed"),
    (c.WEB, "PATCH", "/api/asset/asset-19bc", c.LOCAL, 200, None, True, "allowed"),
    (c.WEB, "GET", "/api/stream/stream-7f3a/sessions", c.APP, 200, None, True, "allowed"),
    (c.WEB, "POST", "/api/stream", c.APP, 200, None, True, "allowed"),  # no parameter: allowed
    (c.WEB, "GET", "/api/stream/other", c.APP, 403, RESOURCE_NOT_ALLOWED, True, "denied_resource"),
    (c.WEB, "GET", "/data/views/other/total", c.APP, 403, RESOURCE_NOT_ALLOWED, True, "denied_resource"),
    (c.WEB, "DELETE", "/api/stream/stream-7f3a", c.APP, 403, ENDPOINT_NOT_ALLOWED, True, "denied_endpoint"),
    (c.WEB, "GET", "/api/admin", c.APP, 403, ENDPOINT_NOT_ALLOWED, True, "denied_endpoint"),
    (c.WEB, "GET", "/api/stream", c.APP, 403, ENDPOINT_NOT_ALLOWED, True, "denied_endpoint"),
    (c.WEB, "GET", "/API/stream/stream-7f3a", c.APP, 403, ENDPOINT_NOT_ALLOWED, True, "denied_endpoint"),
    # The same restrictions without Origin (curl): no CORS headers, same answers.
    (c.WEB, "GET", "/api/stream/stream-7f3a", None, 200, None, False, "allowed"),
    (c.WEB, "GET", "/api/stream/other", None, 403, RESOURCE_NOT_ALLOWED, False, "denied_resource"),
    (c.WEB, "DELETE", "/api/stream/stream-7f3a", None, 403, ENDPOINT_NOT_ALLOWED, False, "denied_endpoint"),
    # A key's own rules apply to any key, with or without Origin.
    (c.PARTNER, "GET", "/api/asset/anything", None, 200, None, False, "allowed"),
    (c.PARTNER, "GET", "/data/views/v1/total", None, 200, None, False, "allowed"),
    (c.PARTNER, "PATCH", "/api/asset/anything", None, 403, ENDPOINT_NOT_ALLOWED, False, "denied_endpoint"),
    (c.PARTNER, "GET", "/api/stream/1", None, 403, ENDPOINT_NOT_ALLOWED, False, "denied_endpoint"),
    # "*" origins, full access, default-port and case normalisation.
    (c.ANYWHERE, "GET", "/api/task/t1", "https://any.example", 200, None, True, "allowed"),
    (c.ANYWHERE, "DELETE", "/api/task/t1", "https://any.example", 403, ENDPOINT_NOT_ALLOWED, True, "denied_endpoint"),
    (c.FULL, "DELETE", "/anything/at/all", c.FULL_ORIGIN, 200, None, True, "allowed"),
    (c.FULL, "GET", "/x", c.APP, 403, ORIGIN_NOT_ALLOWED, False, "denied_origin"),
    (c.NORMALISED, "GET", "/api/task/t", "https://norm.example.com", 200, None, True, "allowed"),
    (c.NORMALISED, "GET", "/api/task/t", "http://norm.example.com", 200, None, True, "allowed"),
    (
        c.NORMALISED,
        "GET",
        "/api/task/t",
        "https://norm.example.com:443",
        403,
        ORIGIN_NOT_ALLOWED,
        False,
        "denied_origin",
    ),
    # Backend key without Origin keeps full access.
    (c.BACKEND, "DELETE", "/api/anything", None, 200, None, False, "allowed"),
]


@pytest.mark.parametrize("key,method,path,orig,status,body,readable,counter", CASES)
def test_browser_and_rule_decisions(envoy, key, method, path, orig, status, body, readable, counter):
    headers = [bearer(key)] + ([origin(orig)] if orig else [])
    before = envoy.counter(counter)
    r = envoy.get(path, headers, method=method)
    envoy.wait_counter(counter, before + 1)
    if body is None:
        assert r.status == 200
        assert r.upstream() is not None
        assert r.header("access-control-allow-origin") == (orig if readable else None)
    else:
        assert_reply(r, status, body, readable_by=orig if readable else None)
    assert r.all("vary") == (["Origin"] if orig else [])


def test_upstream_vary_is_kept_and_origin_appended(envoy):
    r = envoy.get("/api/stream/stream-7f3a", [bearer(c.WEB), origin(c.APP), ("x-echo-vary", "Accept-Encoding")])
    assert r.status == 200
    assert r.all("vary") == ["Accept-Encoding, Origin"]
    r = envoy.get("/api/stream/stream-7f3a", [bearer(c.WEB), origin(c.APP), ("x-echo-vary", "origin")])
    assert r.all("vary") == ["origin"]
    # Without Origin, keygate leaves the upstream's vary alone.
    r = envoy.get("/api/stream/stream-7f3a", [bearer(c.WEB), ("x-echo-vary", "Accept-Encoding")])
    assert r.all("vary") == ["Accept-Encoding"]


@pytest.mark.parametrize("orig,readable", [
    (c.APP, True),                    # allowed by an active CORS key
    ("https://random.example", True),  # allowed by the active "*" key
    (c.DEAD_ORIGIN, True),             # only by disabled/expired keys... but "*" is active
    ("null", False),
])
def test_own_401_is_readable_when_an_active_cors_key_allows_the_origin(envoy, orig, readable):
    r = envoy.get("/api/stream/x", [bearer("unknown-key"), origin(orig)])
    assert_reply(r, 401, UNAUTHORIZED, readable_by=orig if readable else None)
    assert r.all("vary") == ["Origin"]


def test_public_endpoint(envoy):
    before = envoy.counter("public")
    r = envoy.get("/healthz", [origin("https://anyone.example"), ("x-api-key-id", "forged")])
    assert r.status == 200
    envoy.wait_counter("public", before + 1)
    assert r.header("access-control-allow-origin") == "https://anyone.example"
    assert r.upstream_all("x-api-key-id") == []
    # A wrong key on a public endpoint is still a 401, readable (public allows every origin).
    r = envoy.get("/healthz", [bearer("wrong"), origin("https://anyone.example")])
    assert_reply(r, 401, UNAUTHORIZED, readable_by="https://anyone.example")
    # A valid key: identity forwarded, its origin and endpoint rules not applied.
    r = envoy.get("/healthz", [bearer(c.WEB), origin("https://not-its-origin.example")])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["web-player"]
    r = envoy.get("/healthz", [bearer(c.BACKEND), origin(c.APP)])
    assert r.upstream_all("x-api-key-id") == ["backend"]
    # Another method on the public path is not public.
    assert envoy.get("/healthz", method="POST").status == 401


def test_upstream_cors_headers_are_replaced_not_duplicated(envoy):
    r = envoy.get("/api/stream/stream-7f3a", [bearer(c.WEB), origin(c.APP)])
    assert r.all("access-control-allow-origin") == [c.APP]
