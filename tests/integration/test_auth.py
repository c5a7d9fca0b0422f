"""Static keys through a real Envoy: the strict Bearer contract, the key table, forwarding."""


import pytest

from support.harness import UNAUTHORIZED, bearer, module_envoy, sha256_hex

GOOD = "good-key_1.2~3+4/5=="
OWNERLESS = "ownerless-key"
DISABLED = "disabled-key"
EXPIRED = "expired-key"
FUTURE = "future-key"
LONGEST = "L" * 1024
UPPER_HEX = "upper-hex-key"

CONFIG = {
    "keys": [
        {"id": "good", "sha256": sha256_hex(GOOD), "owner": "user-42"},
        {"id": "ownerless", "sha256": sha256_hex(OWNERLESS)},
        {"id": "disabled", "sha256": sha256_hex(DISABLED), "disabled": True},
        {"id": "expired", "sha256": sha256_hex(EXPIRED), "expires_at": "2020-01-01T00:00:00Z"},
        {"id": "future", "sha256": sha256_hex(FUTURE), "not_before": "2999-01-01T00:00:00Z"},
        {"id": "longest", "sha256": sha256_hex(LONGEST)},
        {"id": "upper", "sha256": sha256_hex(UPPER_HEX).upper()},
    ],
    "public_endpoints": [{"methods": ["GET"], "paths": ["/healthz"]}],
}

INVALID_TOKEN = 'Bearer error="invalid_token"'


@pytest.fixture(scope="module")
def envoy():
    yield from module_envoy(CONFIG)


def assert_401(r, www=INVALID_TOKEN):
    assert r.status == 401, (r.status, r.body)
    assert r.body == UNAUTHORIZED
    assert r.header("content-type") == "application/json"
    assert r.all("www-authenticate") == [www]
    assert r.upstream() is None


MALFORMED = [
    ("colon after scheme", b"Bearer: " + GOOD.encode()),
    ("two spaces", b"Bearer  " + GOOD.encode()),
    ("tab after scheme", b"Bearer\t" + GOOD.encode()),
    ("tab inside key", b"Bearer good\tkey"),
    ("space inside key", b"Bearer good key"),
    ("scheme only", b"Bearer"),
    ("scheme and trailing space only", b"Bearer "),
    ("no space", b"Bearer" + GOOD.encode()),
    ("quote in key", b'Bearer ab"c'),
    ("comma in key", b"Bearer ab,c"),
    ("at sign in key", b"Bearer ab@c"),
    ("padding not at the end", b"Bearer ab=c"),
    ("padding only", b"Bearer =="),
    ("basic scheme", b"Basic dXNlcjpwYXNz"),
    ("token scheme", b"Token " + GOOD.encode()),
    ("empty value", b""),
    ("too long key", b"Bearer " + b"L" * 1025),
    ("non-utf8 key", b"Bearer ab\xffcd"),
    ("latin-1 nbsp separator", b"Bearer\xa0" + GOOD.encode()),
]


@pytest.mark.parametrize("name,value", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_headers_get_the_documented_401(envoy, name, value):
    before = envoy.counter("denied_malformed")
    assert_401(envoy.get("/api/x", [("authorization", value)]))
    envoy.wait_counter("denied_malformed", before + 1)


@pytest.mark.parametrize(
    "name,value", MALFORMED[:6] + MALFORMED[14:16], ids=[m[0] for m in MALFORMED[:6] + MALFORMED[14:16]]
)
def test_malformed_headers_over_http2(envoy, name, value):
    assert_401(envoy.get2("/api/x", [("authorization", value)]))


def test_trailing_whitespace_is_trimmed_by_envoy_before_keygate(envoy):
    # Envoy's HTTP/1 codec strips spaces and tabs around a header value, so this is the
    # same key as without the space: keygate never sees the trailing space.
    r = envoy.get("/api/x", [("authorization", f"Bearer {GOOD} \t")])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["good"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_scheme_is_case_insensitive(envoy, scheme):
    r = envoy.get("/api/x", [("authorization", f"{scheme} {GOOD}")])
    assert r.status == 200


def test_missing_header_is_401_with_plain_bearer_challenge(envoy):
    before = envoy.counter("denied_missing")
    assert_401(envoy.get("/api/x"), www="Bearer")
    assert_401(envoy.get2("/api/x"), www="Bearer")
    envoy.wait_counter("denied_missing", before + 2)


def test_two_authorization_headers_are_refused_even_when_both_are_valid(envoy):
    before = envoy.counter("denied_malformed")
    assert_401(envoy.get("/api/x", [bearer(GOOD), bearer(GOOD)]))
    assert_401(envoy.get2("/api/x", [bearer(GOOD), bearer(OWNERLESS)]))
    envoy.wait_counter("denied_malformed", before + 2)


def test_1024_character_key_is_accepted_and_1025_refused(envoy):
    assert envoy.get("/api/x", [bearer(LONGEST)]).status == 200
    assert_401(envoy.get("/api/x", [bearer(LONGEST + "L")]))


@pytest.mark.parametrize("key,outcome", [
    ("never-configured", "denied_unknown"),
    (DISABLED, "denied_disabled"),
    (EXPIRED, "denied_expired"),
    (FUTURE, "denied_not_yet_valid"),
])
def test_refused_keys_are_401_and_counted(envoy, key, outcome):
    before = envoy.counters()
    assert_401(envoy.get("/api/x", [bearer(key)]))
    after = envoy.wait_counters({outcome: before[outcome] + 1})
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {outcome}


def test_valid_key_is_forwarded_with_identity_and_counted(envoy):
    before = envoy.counter("allowed")
    r = envoy.get("/api/x?q=1", [bearer(GOOD)])
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == ["good"]
    assert r.upstream_all("x-api-key-owner") == ["user-42"]
    assert r.upstream_all("authorization") == [f"Bearer {GOOD}"]
    envoy.wait_counter("allowed", before + 1)


def test_upper_case_digest_in_config_matches(envoy):
    assert envoy.get("/api/x", [bearer(UPPER_HEX)]).upstream_all("x-api-key-id") == ["upper"]


def test_client_identity_headers_never_reach_the_upstream(envoy):
    forged = [("x-api-key-id", "admin"), ("x-api-key-owner", "root"), ("x-keygate-would-deny", "nothing")]
    # Authenticated key without an owner: the forged owner must be removed, not kept.
    r = envoy.get("/api/x", [bearer(OWNERLESS)] + forged)
    assert r.upstream_all("x-api-key-id") == ["ownerless"]
    assert r.upstream_all("x-api-key-owner") == []
    assert r.upstream_all("x-keygate-would-deny") == []
    # Public endpoint without a key: no identity at all.
    r = envoy.get("/healthz", forged)
    assert r.status == 200
    assert r.upstream_all("x-api-key-id") == []
    assert r.upstream_all("x-api-key-owner") == []
    # Over HTTP/2 too, with repeated forged headers.
    r = envoy.get2("/api/x", [bearer(GOOD)] + forged + forged)
    assert r.upstream_all("x-api-key-id") == ["good"]
    assert r.upstream_all("x-api-key-owner") == ["user-42"]


def test_non_utf8_bytes_do_not_trap_the_vm(envoy):
    assert_401(envoy.get("/api/x", [("authorization", b"Bearer \xc3\x28\xff")]))
    r = envoy.get("/api/x", [bearer(GOOD), ("x-other", b"\xfe\xff\x80 binary")])
    assert r.status == 200
    r = envoy.get("/api/\xff\xfe", [bearer(GOOD)])
    assert r.status in (200, 400)  # Envoy's codec may refuse raw high bytes in a path
    assert envoy.get("/api/x", [bearer(GOOD)]).status == 200


def test_counters_are_exported_to_prometheus(envoy):
    before = envoy.counter("allowed")
    envoy.get("/api/x", [bearer(GOOD)])
    envoy.wait_counter("allowed", before + 1)
    text = envoy.admin("/stats/prometheus")
    # Envoy strips the `wasmcustom.` prefix and turns dots into underscores.
    lines = [ln for ln in text.splitlines() if ln.startswith("keygate_allowed")]
    assert lines and int(lines[0].split()[-1]) == before + 1
