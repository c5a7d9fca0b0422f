"""A shortened soak in the test suite (scripts/soak.sh runs the long one)."""

from support.soak import soak

REQUESTS = 24_000


def test_short_soak_has_no_5xx_no_leak_and_counts_every_request():
    r = soak(REQUESTS, seconds=120)
    assert r["errors"] == []
    assert r["requests"] == REQUESTS
    assert not any(status >= 500 for status in r["statuses"]), r["statuses"]
    assert set(r["statuses"]) == {200, 204, 401, 403}
    assert r["counted"] == REQUESTS
    assert r["rss_growth"] < 0.02, r
