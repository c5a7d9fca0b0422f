"""Where the identity goes upstream, and the key never in a log line or a response."""

from support.harness import UNAUTHORIZED, bearer, sha256_hex


def test_custom_identity_headers_and_stripped_authorization(envoy_factory):
    key = "strip-me-key"
    e = envoy_factory({
        "keys": [{"id": "svc", "sha256": sha256_hex(key), "owner": "team-a"}],
        "forward": {"key_id_header": "x-caller", "owner_header": "x-caller-team", "strip_authorization": True},
    })
    r = e.get("/x", [bearer(key), ("x-caller", "forged"), ("x-caller-team", "forged"),
                     ("x-api-key-id", "not-ours")])
    assert r.status == 200
    assert r.upstream_all("x-caller") == ["svc"]
    assert r.upstream_all("x-caller-team") == ["team-a"]
    assert r.upstream_all("authorization") == []
    # Only the configured names are keygate's: other headers pass untouched.
    assert r.upstream_all("x-api-key-id") == ["not-ours"]


def test_the_key_never_appears_in_the_debug_log_or_a_response(envoy_factory):
    # keygate's own lines at debug level. (Envoy's `http` component at debug prints every
    # request header, Authorization included: that is Envoy's, and the README warns of it.)
    valid, other = "Sup3rSecretValidKey", "Sup3rSecretUnknownKey"
    e = envoy_factory({"keys": [{"id": "svc", "sha256": sha256_hex(valid)}]},
                      component_log_level="wasm:debug")
    assert e.get("/x", [bearer(valid)]).status == 200
    for value in [f"Bearer {other}", f"Bearer  {other}", f"Basic {other}", f"Bearer {other}\"x"]:
        r = e.get("/x", [("authorization", value)])
        assert (r.status, r.body) == (401, UNAUTHORIZED)
        assert other.encode() not in r.body and all(other not in v for _, v in r.headers)
    r = e.get2("/x", [bearer(other)])
    assert r.status == 401
    log = e.log()
    assert "denied_unknown key=-" in log and "denied_malformed key=-" in log
    assert valid not in log and other not in log


def test_filter_state_is_opt_in(envoy_factory):
    key = "filter-state-key"
    keys = [{"id": "svc", "sha256": sha256_hex(key), "owner": "team-a"}]
    default = envoy_factory({"keys": keys})
    r = default.get("/x?probe=filter-state-default", [bearer(key)])
    assert r.upstream_all("x-api-key-id") == ["svc"] and r.upstream_all("x-api-key-owner") == ["team-a"]
    line = "/x?probe=filter-state-default 200 key_id=- owner=-\n"
    assert line in default.wait_access_log(line)

    opted_in = envoy_factory({"keys": keys, "forward": {"filter_state": True}})
    assert opted_in.get("/x?probe=filter-state-on", [bearer(key)]).status == 200
    line = "/x?probe=filter-state-on 200 key_id=svc owner=team-a\n"
    assert line in opted_in.wait_access_log(line)
