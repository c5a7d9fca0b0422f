"""A short churn soak in the test suite (`scripts/soak.sh --churn MINUTES` runs the long one):
keys created, rotated, disabled, enabled and deleted every second in the real key service
while traffic flows through Envoy with two workers; every judged answer agrees with its key's
state, most answers are judged, and Envoy's RSS grows less than a 20 B/request leak would."""

from support.churn import MIN_JUDGED, churn, passed

SECONDS = 20


def test_short_churn_every_answer_agrees_with_the_keys_state():
    r = churn(SECONDS)
    assert r["errors"] == []
    assert r["disagreements"] == [], r["disagreements"][:20]
    assert not r["trapped"]
    # One admin action a second is attempted; at least two thirds of them are made.
    assert sum(r["actions"].values()) >= SECONDS * 2 // 3, r["actions"]
    assert r["requests"] >= 5_000, r
    assert set(r["statuses"]) <= {200, 401}, r["statuses"]
    # Unknown keys are always judged; known keys unless sent within SETTLE of their change.
    assert r["judged_unknown"] >= r["requests"] // 20, r
    assert r["judged_known"] >= r["known"] * MIN_JUDGED, r
    assert r["rss_growth_kib"] <= r["rss_bound_kib"], r
    assert passed(r)
