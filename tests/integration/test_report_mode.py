"""Safe rollout: report mode refuses nothing and says what enforce mode would have done."""

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, bearer, forbidden, module_envoy


@pytest.fixture(scope="module")
def report():
    yield from module_envoy({**c.config(), "mode": "report"})


@pytest.fixture(scope="module")
def enforce():
    # Filter state is opt-in; the access-log test below reads it.
    yield from module_envoy({**c.config(), "mode": "enforce", "forward": {"filter_state": True}})


# (headers, path, method, outcome enforce mode gives, its status and body)
DENIALS = [
    ([], "/api/x", "GET", "denied_missing", 401, UNAUTHORIZED),
    ([("authorization", "Bearer  two-spaces")], "/api/x", "GET", "denied_malformed", 401, UNAUTHORIZED),
    ([bearer("unknown")], "/api/x", "GET", "denied_unknown", 401, UNAUTHORIZED),
    ([bearer(c.EXPIRED_CORS)], "/api/x", "GET", "denied_expired", 401, UNAUTHORIZED),
    ([bearer(c.BACKEND), ("origin", c.APP)], "/api/x", "GET", "denied_cors_backend_key", 403,
     forbidden("API key does not allow CORS access")),
    ([bearer(c.WEB), ("origin", "https://evil.example")], "/api/stream/stream-7f3a", "GET", "denied_origin", 403,
     forbidden("Origin not allowed")),
    ([bearer(c.WEB)], "/api/admin", "GET", "denied_endpoint", 403, forbidden("Endpoint not allowed for this API key")),
    ([bearer(c.WEB)], "/api/stream/other", "GET", "denied_resource", 403,
     forbidden("Resource not allowed for this API key")),
]


@pytest.mark.parametrize("headers,path,method,outcome,status,body", DENIALS, ids=[d[3] for d in DENIALS])
def test_report_mode_forwards_what_enforce_refuses(report, enforce, headers, path, method, outcome, status, body):
    before_report, before_done = report.counter(f"report.{outcome}"), report.counter(outcome)
    r = report.get(path, headers + [("x-keygate-would-deny", "forged")], method=method)
    assert r.status == 200
    assert r.upstream_all("x-keygate-would-deny") == [outcome]
    assert r.upstream_all("x-api-key-id") == []  # no identity for a request enforce would refuse
    report.wait_counter(f"report.{outcome}", before_report + 1)
    assert report.counter(outcome) == before_done  # counted as reported, not as done
    # The same request in enforce mode gets that outcome's refusal, from keygate.
    r = enforce.get(path, headers, method=method)
    assert (r.status, r.body) == (status, body)
    assert r.upstream() is None


def test_allowed_requests_are_unchanged_in_report_mode(report):
    r = report.get("/api/stream/stream-7f3a", [bearer(c.WEB), ("x-keygate-would-deny", "forged"),
                                                ("origin", c.APP)])
    assert r.status == 200
    assert r.upstream_all("x-keygate-would-deny") == []
    assert r.upstream_all("x-api-key-id") == ["web-player"]
    assert r.header("access-control-allow-origin") == c.APP


def test_preflights_are_still_answered_in_report_mode(report):
    r = report.get("/api/admin", [("origin", c.APP), ("access-control-request-method", "GET")], method="OPTIONS")
    assert r.status == 403 and r.upstream() is None
    report.wait_counter("preflight_denied", 1, at_least=True)
    assert "wasmcustom.keygate.report.preflight_denied" not in report.stats()


def test_enforce_mode_removes_a_client_sent_would_deny_header(enforce):
    r = enforce.get("/healthz", [("x-keygate-would-deny", "forged")])
    assert r.status == 200 and r.upstream_all("x-keygate-would-deny") == []
    assert enforce.get("/api/x", [bearer("unknown")]).body == UNAUTHORIZED


def test_identity_is_in_the_access_log(enforce):
    enforce.get("/api/stream/stream-7f3a?probe=access-log", [bearer(c.WEB)])
    enforce.get("/api/x?probe=access-log-denied", [bearer("unknown")])
    allowed = "/api/stream/stream-7f3a?probe=access-log 200 key_id=web-player owner=-\n"
    denied = "/api/x?probe=access-log-denied 401 key_id=- owner=-\n"
    log = enforce.wait_access_log(allowed, denied)
    assert allowed in log and denied in log
