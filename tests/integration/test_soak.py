"""A shortened soak in the test suite (scripts/soak.sh runs the long one): every answer of the
mix is exactly the one its request must get, every request is counted once, and Envoy's RSS
grows less than a leak of 20 bytes per request would make it (support/soak.py)."""

from support.soak import MIX, passed, soak

REQUESTS = 24_000


def test_short_soak_answers_every_request_exactly_counts_it_and_does_not_leak():
    r = soak(REQUESTS, seconds=120)
    assert r["errors"] == []
    assert r["wrong"] == 0, r["wrong_examples"]
    assert r["requests"] == REQUESTS
    assert len(r["answered"]) == len(MIX) and min(r["answered"].values()) >= REQUESTS // len(MIX) * 9 // 10, r
    assert r["counted"] == REQUESTS
    assert r["rss_growth_kib"] <= r["rss_bound_kib"], r
    assert passed(r, REQUESTS)
