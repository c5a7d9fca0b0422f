"""Hostile requests through a real Envoy, each with its exact expected answer.

Afterwards the same Envoy still serves a valid key (the VM never trapped), and keygate's
counters add up to exactly the requests that reached it. A few requests are refused by
Envoy's own codec before any filter runs (400, 431): those are expected as such and
excluded from the count.
"""

from dataclasses import dataclass, field

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, Envoy, bearer, forbidden
from support.path_tricks import TRICKS

ORIGIN = forbidden("Origin not allowed")
ENDPOINT = forbidden("Endpoint not allowed for this API key")
PREFLIGHT = forbidden("CORS preflight not allowed")
BACKEND = forbidden("API key does not allow CORS access")
CODEC = "codec"  # refused by Envoy before keygate


@dataclass
class Case:
    name: str
    path: str
    headers: list = field(default_factory=list)
    method: str = "GET"
    status: int | str = 401
    body: bytes | None = UNAUTHORIZED   # None: answered by the upstream
    outcome: str | None = "denied_malformed"
    # (status, body, outcome) over HTTP/2 where it differs: HTTP/2 values are not trimmed.
    h2: tuple | None = None


def cases() -> list[Case]:
    out = []
    good = c.BACKEND.encode()
    # Authorization values that are not exactly `Bearer <b64token>`.
    odd_values = {
        "nul in key": b"Bearer ab\x00cd",
        "nul after scheme": b"Bearer\x00" + good,
        "control char": b"Bearer ab\x01cd",
        "escape char": b"Bearer ab\x1bcd",
        "delete": b"Bearer ab\x7fcd",
        "vertical tab": b"Bearer\x0b" + good,
        "form feed": b"Bearer\x0c" + good,
        "latin-1 e-acute": b"Bearer caf\xe9",
        "utf8 e-acute": "Bearer café".encode(),
        "invalid utf8": b"Bearer \xc3\x28",
        "lone continuation": b"Bearer \x80abc",
        "utf8 bom": b"\xef\xbb\xbfBearer " + good,
        "fullwidth space": "Bearer\u3000".encode() + good,
        "nbsp": b"Bearer\xc2\xa0" + good,
        "two spaces": b"Bearer  " + good,
        "tab": b"Bearer\t" + good,
        "space tab": b"Bearer \t" + good,
        "inner space": b"Bearer " + good[:3] + b" " + good[3:],
        "colon": b"Bearer: " + good,
        "equals scheme": b"Bearer=" + good,
        "comma list": b"Bearer " + good + b", Bearer " + good,
        "quoted": b'Bearer "' + good + b'"',
        "padding first": b"Bearer =" + good,
        "padding middle": b"Bearer " + good[:3] + b"=" + good[3:],
        "padding only": b"Bearer ====",
        "bearer prefix word": b"Bearerx " + good,
        "bear": b"Bear " + good,
        "basic": b"Basic " + good,
        "digest": b"Digest " + good,
        "token": b"Token " + good,
        "apikey": b"ApiKey " + good,
        "empty": b"",
        "scheme only": b"Bearer",
        "lower no key": b"bearer ",
        "percent encoded": b"Bearer %61bc",
        "base64 plus slash ok but unknown": b"Bearer +/+/==",
    }
    # Envoy's codecs refuse control bytes in a header value themselves (HTTP/1: 400, HTTP/2: reset).
    codec_refused = {"nul in key", "nul after scheme", "control char", "escape char", "delete", "vertical tab",
                     "form feed"}
    for name, value in odd_values.items():
        outcome = "denied_unknown" if name.endswith("unknown") else "denied_malformed"
        if name in codec_refused:
            out.append(Case(f"auth {name}", "/api/x", [("authorization", value)], status=CODEC, outcome=None))
        else:
            out.append(Case(f"auth {name}", "/api/x", [("authorization", value)], outcome=outcome))
    # Odd cases and spacing of the scheme that ARE valid.
    for scheme in ["bearer", "BEARER", "BeArEr", "bEARER"]:
        out.append(Case(f"scheme {scheme}", "/api/x", [("authorization", scheme.encode() + b" " + good)],
                        status=200, body=None, outcome="allowed"))
    # Key lengths around the limit.
    for n, configured in [(1023, "unknown"), (1024, "unknown"), (1025, "malformed")]:
        out.append(Case(f"key of {n}", "/api/x", [bearer("k" * n)], outcome=f"denied_{configured}"))
    # Many Authorization headers, and values near Envoy's header size limit.
    for n in [2, 3, 10, 50]:
        out.append(Case(f"{n} authorization headers", "/api/x", [bearer(c.BACKEND)] * n))
    out.append(Case("50 KiB key", "/api/x", [bearer("k" * 50 * 1024)]))
    # Beyond Envoy's 60 KiB header limit the codec answers 431 (HTTP/2: resets) before keygate.
    out.append(Case("60 KiB header value", "/api/x", [("x-filler", "f" * 60 * 1024), bearer(c.BACKEND)],
                    status=CODEC, outcome=None))
    # Non-ASCII and binary bytes in other headers do not disturb a valid request.
    out.append(Case("other header control", "/api/x", [bearer(c.BACKEND), ("x-other", b"a\x01b")], status=CODEC,
                    outcome=None))
    for name, value in {"latin-1": b"caf\xe9", "invalid utf8": b"\xc3\x28\xff\xfe"}.items():
        out.append(Case(f"other header {name}", "/api/x", [bearer(c.BACKEND), ("x-other", value)],
                        status=200, body=None, outcome="allowed"))
    # Every path trick, against the public endpoint (needs a key) and the restricted key.
    for name, trick in TRICKS:
        out.append(Case(f"public path {name}", trick.format("healthz").replace("//healthz", "//healthz"),
                        outcome="denied_missing"))
        out.append(Case(f"restricted path {name}", trick.format("api/stream/stream-7f3a"), [bearer(c.WEB)],
                        status=403, body=ENDPOINT, outcome="denied_endpoint"))
    for path in ["/HEALTHZ", "/healthz.", "/healthz%20", "/healthz%2e", "/%68ealthz", "/healthz?/..", "/./healthz",
                 "/healthz/.", "/healthz%3b", "/healthz%23", "/api/../healthz"]:
        outcome = "public" if path == "/healthz?/.." else "denied_missing"
        status, body = (200, None) if outcome == "public" else (401, UNAUTHORIZED)
        out.append(Case(f"public near-miss {path}", path, status=status, body=body, outcome=outcome))
    # Origins that are near-misses of https://app.example.com, with the web key.
    for o in ["https://app.example.com.evil.com", "https://evilapp.example.com", "https://app.example.co",
              "https://app.example.com:443", "https://app.example.com:8443", "http://app.example.com",
              "https://app.example.com/", "https://APP.example.com", "HTTPS://app.example.com", "null", "NULL",
              "https://app.example.com,https://app.example.com", "*",
              "https://app.example.com%00", "https://app%2eexample.com", "app.example.com", "https://",
              "https://app.example.com\\@evil.com", "https://user@app.example.com", "file://"]:
        out.append(Case(f"origin {o!r}", "/api/stream/stream-7f3a", [bearer(c.WEB), ("origin", o)],
                        status=403, body=ORIGIN, outcome="denied_origin"))
    # Envoy trims spaces around header values: these ARE the allowed origin when keygate sees them.
    for o in ["https://app.example.com ", " https://app.example.com", "\thttps://app.example.com"]:
        out.append(Case(f"origin {o!r} (trimmed by Envoy)", "/api/stream/stream-7f3a", [bearer(c.WEB), ("origin", o)],
                        status=200, body=None, outcome="allowed", h2=(403, ORIGIN, "denied_origin")))
    out.append(Case("two origin headers", "/api/stream/stream-7f3a",
                    [bearer(c.WEB), ("origin", c.APP), ("origin", c.APP)], status=403, body=ORIGIN,
                    outcome="denied_origin"))
    out.append(Case("backend key from any origin", "/api/x", [bearer(c.BACKEND), ("origin", c.APP)], status=403,
                    body=BACKEND, outcome="denied_cors_backend_key"))
    # Preflights with odd methods and odd origins.
    out.append(Case("preflight method 'PATCH ' (trimmed by Envoy)", "/api/stream/stream-7f3a",
                    [("origin", c.APP), ("access-control-request-method", "PATCH ")], method="OPTIONS", status=204,
                    body=b"", outcome="preflight_allowed", h2=(403, PREFLIGHT, "preflight_denied")))
    out.append(Case("preflight method with control byte", "/api/stream/stream-7f3a",
                    [("origin", c.APP), ("access-control-request-method", "GET\x01")], method="OPTIONS",
                    status=CODEC, outcome=None))
    for m in ["patch", "Patch", "", "G E T", "GET,PATCH", "GET, PATCH", "TRACE", "CONNECT", "FOO", "G\xc3\xa9T", "*"]:
        out.append(Case(f"preflight method {m!r}", "/api/stream/stream-7f3a",
                        [("origin", c.APP), ("access-control-request-method", m)], method="OPTIONS", status=403,
                        body=PREFLIGHT, outcome="preflight_denied"))
    for o in ["null", "https://app.example.com.evil.com", "https://app.example.com/"]:
        out.append(Case(f"preflight origin {o!r}", "/api/stream/stream-7f3a",
                        [("origin", o), ("access-control-request-method", "GET")], method="OPTIONS", status=403,
                        body=PREFLIGHT, outcome="preflight_denied"))
    return out


CASES = cases()


@pytest.fixture(scope="module")
def envoy():
    # No "*" key, so every near-miss origin is refused rather than caught by a wildcard.
    config = c.config()
    config["keys"] = [k for k in config["keys"] if k["id"] != "anywhere"]
    e = Envoy(plugin_config=config).start()
    e.sent = 0
    yield e
    e.stop()


def send_or_refused(send, case):
    """The response, or status 0 when Envoy's codec reset the stream or connection."""
    try:
        return send(case.path, case.headers, method=case.method)
    except OSError:
        return None


def check(e, case, send, refused_statuses):
    r = send_or_refused(send, case)
    status = r.status if r is not None else 0
    if case.status == CODEC:
        assert status in refused_statuses, (case.name, status)
        return
    assert r is not None, case.name
    e.sent += 1
    assert r.status == case.status, (case.name, r.status, r.body[:120])
    if case.body is None:
        assert r.upstream() is not None, case.name
    else:
        assert r.body == case.body, (case.name, r.body[:120])
        assert r.upstream() is None


@pytest.mark.parametrize("case", CASES, ids=[k.name for k in CASES])
def test_http1(envoy, case):
    before = envoy.counter(case.outcome) if case.outcome else 0
    check(envoy, case, envoy.get, refused_statuses=(400, 431))
    if case.outcome:
        envoy.wait_counter(case.outcome, before + 1)


@pytest.mark.parametrize("case", CASES, ids=[k.name for k in CASES])
def test_http2(envoy, case):
    # HTTP/2 refuses the same bytes by resetting the stream or the connection.
    if case.h2:
        status, body, outcome = case.h2
        case = Case(case.name, case.path, case.headers, case.method, status, body, outcome)
    before = envoy.counter(case.outcome) if case.outcome else 0
    check(envoy, case, envoy.get2, refused_statuses=(0, 400, 431))
    if case.outcome:
        envoy.wait_counter(case.outcome, before + 1)


def test_zz_still_serving_and_counters_add_up(envoy):
    r = envoy.get("/api/x", [bearer(c.BACKEND)])
    assert r.status == 200 and r.upstream_all("x-api-key-id") == ["backend"]
    envoy.sent += 1
    assert 2 * len(CASES) >= 200
    assert sum(envoy.counters().values()) == envoy.sent  # counters(): once every answer is counted
