"""Paths a server could read differently from keygate match no rule: public or restricted.

Envoy here runs with its path normalisation off (its default), so every trick reaches
keygate unchanged and keygate's own check is what is tested. test_demo_config.py covers
the shipped config, where Envoy's normalisation acts first.
"""

import pytest

from support import cors_config as c
from support.harness import UNAUTHORIZED, bearer, forbidden, module_envoy
from support.path_tricks import TRICKS

HEALTHZ = "healthz"
STREAM = "api/stream/stream-7f3a"


def apply(trick: str, target: str) -> str:
    path = trick.format(target)
    return path if path.startswith("/") else "/" + path


@pytest.fixture(scope="module")
def envoy():
    yield from module_envoy(c.config())


def test_the_clean_paths_work(envoy):
    assert envoy.get("/healthz").status == 200
    assert envoy.get("/" + STREAM, [bearer(c.WEB)]).status == 200


@pytest.mark.parametrize("name,trick", TRICKS, ids=[t[0] for t in TRICKS])
def test_tricks_do_not_reach_a_public_endpoint_without_a_key(envoy, name, trick):
    path = apply(trick, HEALTHZ)
    before = envoy.counter("denied_missing")
    r = envoy.get(path)
    if r.status == 400:
        # Envoy's HTTP/1 codec itself refuses a few raw characters; then keygate never ran.
        assert envoy.counter("denied_missing") == before
        return
    assert (r.status, r.body) == (401, UNAUTHORIZED), path
    envoy.wait_counter("denied_missing", before + 1)


@pytest.mark.parametrize("name,trick", TRICKS, ids=[t[0] for t in TRICKS])
def test_tricks_do_not_reach_a_restricted_endpoint(envoy, name, trick):
    path = apply(trick, STREAM)
    r = envoy.get(path, [bearer(c.WEB)])
    if r.status == 400:
        return
    assert (r.status, r.body) == (403, forbidden("Endpoint not allowed for this API key")), path


def test_fragment_and_encoded_nul_never_match(envoy):
    # Envoy's HTTP/1 codec refuses a raw `#` in the request target itself.
    assert envoy.get("/healthz#frag").status == 400
    assert envoy.get("/he%00althz").status == 401


def test_full_access_keys_still_reach_odd_paths(envoy):
    # Path safety narrows rules; a full-access key is not bound by rules at all.
    r = envoy.get("/x/../api/admin", [bearer(c.BACKEND)])
    assert r.status == 200 and r.upstream_all(":path") == ["/x/../api/admin"]


def test_envoy_normalisation_layer(envoy_factory):
    e = envoy_factory(c.config(), normalize=True)
    # Envoy resolves the dot segment first: keygate and the upstream both see /healthz.
    r = e.get("/api/../healthz")
    assert r.status == 200 and r.upstream_all(":path") == ["/healthz"]
    # Envoy decodes %2E (unreserved) and then resolves it the same way.
    assert e.get("/api/%2E%2E/healthz").upstream_all(":path") == ["/healthz"]
    # Escaped slashes are refused by Envoy before keygate (path_with_escaped_slashes_action).
    assert e.get("/api%2Fhealthz").status == 400
    # Envoy refuses an encoded NUL once normalising; what it leaves alone, keygate refuses.
    assert e.get("/healthz%00").status == 400
    assert (e.get("/healthz;x").status, e.get("/healthz%252e").status) == (401, 401)
