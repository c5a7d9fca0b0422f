"""An invalid plugin configuration is refused by Envoy, with the JSON path and the reason."""

import pytest

from support.harness import bearer, sha256_hex

H = sha256_hex("k")

CASES = [
    ("bad hex", {"keys": [{"id": "a", "sha256": "z" * 64}]}, "keys[0].sha256: expected 64 hex characters"),
    (
        "short digest",
        {"keys": [{"id": "a", "sha256": H}, {"id": "b", "sha256": H[:63]}]},
        "keys[1].sha256: expected 64 hex characters",
    ),
    (
        "duplicate id",
        {"keys": [{"id": "a", "sha256": H}, {"id": "a", "sha256": sha256_hex("j")}]},
        "keys[1].id: duplicate id, already used by keys[0]",
    ),
    (
        "duplicate digest",
        {"keys": [{"id": "a", "sha256": H}, {"id": "b", "sha256": H.upper()}]},
        "keys[1].sha256: same digest as keys[0]",
    ),
    (
        "duplicate plaintext",
        {"keys": [{"id": "a", "key": "k"}, {"id": "b", "key": "k"}]},
        "keys[1].key: same key as keys[0]",
    ),
    (
        "sha256 and key",
        {"keys": [{"id": "a", "sha256": H, "key": "k"}]},
        "keys[0]: sha256 and key are mutually exclusive",
    ),
    ("neither", {"keys": [{"id": "a"}]}, "keys[0]: expected sha256 (or key, for local development only)"),
    ("bad id", {"keys": [{"id": "a b", "sha256": H}]}, "keys[0].id: expected 1-64 characters of A-Z a-z 0-9 . _ -"),
    ("long id", {"keys": [{"id": "a" * 65, "sha256": H}]}, "keys[0].id: expected 1-64 characters of A-Z a-z 0-9 . _ -"),
    (
        "bad time",
        {"keys": [{"id": "a", "sha256": H, "expires_at": "tomorrow"}]},
        "keys[0].expires_at: expected an RFC 3339 timestamp such as 2027-01-01T00:00:00Z",
    ),
    (
        "window inverted",
        {
            "keys": [
                {"id": "a", "sha256": H, "not_before": "2027-01-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}
            ]
        },
        "keys[0].expires_at: must be later than not_before",
    ),
    ("unknown top-level field", {"keys": [], "keyz": []}, "keyz: unknown field `keyz`"),
    (
        "unknown key field",
        {"keys": [{"id": "a", "sha256": H, "expires": "x"}]},
        "keys[0].expires: unknown field `expires`",
    ),
    ("missing keys", {"forward": {}}, "config: missing field `keys`"),
    ("wrong type", {"keys": [{"id": "a", "sha256": H, "disabled": "yes"}]}, "keys[0].disabled: invalid type: string"),
    (
        "bad forward header",
        {"keys": [], "forward": {"key_id_header": "X-Key"}},
        "forward.key_id_header: expected a lower-case header name",
    ),
    (
        "reserved forward header",
        {"keys": [], "forward": {"owner_header": "authorization"}},
        "forward.owner_header: this header carries the request itself and cannot hold the identity",
    ),
    ("bad mode", {"keys": [], "mode": "audit"}, "mode: unknown variant, expected `enforce` or `report`"),
    ("key pasted as an entry", {"keys": ["kg_pasted_here"]}, "keys[0]: invalid type: string, expected struct RawKey"),
    ("not json", "{keys: []}", "config: key must be a string"),
    ("empty", "", "config: empty configuration: expected a JSON object"),
    ("array", "[[]]", "config: expected a JSON object"),
]


@pytest.mark.parametrize("name,config,line", CASES, ids=[c[0] for c in CASES])
def test_envoy_refuses_to_start_and_logs_path_and_reason(envoy_factory, name, config, line):
    e = envoy_factory(config, expect_failure=True)
    log = e.log()
    assert e.proc.returncode != 0
    assert f"invalid configuration: {line}" in log, log[-3000:]
    assert "Unable to create Wasm plugin keygate" in log


def test_empty_key_table_is_valid_and_refuses_every_key(envoy_factory):
    e = envoy_factory({"keys": []})
    r = e.get("/x", [bearer("anything")])
    assert r.status == 401
    e.wait_counter("denied_unknown", 1)


def test_plaintext_key_works_and_warns_without_showing_the_key(envoy_factory):
    secret = "dev-only-secret-0xC0FFEE"
    e = envoy_factory({"keys": [{"id": "dev", "key": secret}]})
    assert e.get("/x", [bearer(secret)]).upstream_all("x-api-key-id") == ["dev"]
    log = e.log()
    assert "keys[0].key: plaintext key in the configuration; use sha256 outside local development" in log
    assert secret not in log
