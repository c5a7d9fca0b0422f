"""A short churn soak in the test suite (`scripts/soak.sh --churn MINUTES` runs the long one):
keys created, rotated, disabled, enabled and deleted every second in the real key service
while traffic flows through Envoy with two workers; every answer agrees with the key's state."""

from support.churn import churn


def test_short_churn_every_answer_agrees_with_the_keys_state():
    r = churn(60)
    assert r["errors"] == []
    assert r["disagreements"] == [], r["disagreements"][:20]
    assert not r["trapped"]
    assert sum(r["actions"].values()) >= 40, r["actions"]
    assert r["requests"] >= 5_000, r
    assert set(r["statuses"]) <= {200, 401}, r["statuses"]
    assert r["rss_growth"] < 0.02, r
