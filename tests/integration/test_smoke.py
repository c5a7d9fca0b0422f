import pytest

from support.harness import UNAUTHORIZED, bearer, module_envoy, sha256_hex

KEY = "smoke-key-1"


@pytest.fixture(scope="module")
def envoy():
    yield from module_envoy({"keys": [{"id": "smoke", "sha256": sha256_hex(KEY)}]})


def test_valid_key_reaches_upstream_with_its_id(envoy):
    r = envoy.get("/x", [bearer(KEY)])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["smoke"]


def test_missing_key_is_the_documented_401(envoy):
    r = envoy.get("/x")
    assert (r.status, r.body, r.header("content-type"), r.header("www-authenticate")) == (
        401, UNAUTHORIZED, "application/json", "Bearer")


def test_http2_is_served_too(envoy):
    assert envoy.get2("/x", [bearer(KEY)]).status == 200
    assert envoy.get2("/x", [bearer("nope")]).body == UNAUTHORIZED
