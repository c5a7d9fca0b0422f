"""Churn: traffic through Envoy (two workers) while keys are created, rotated, disabled,
re-enabled and deleted in the real key service every second, and a checker that knows each
key's state at each moment.

Every answer is checked against the state its key had when the request was sent, except
within `SETTLE` seconds after that key changed (the feed's delay: `changes_poll_ms` plus a
round trip, with margin). Random unknown keys must always get 401. Nothing else is allowed:
no 5xx (no fault is injected here), no 200 for a key that was not valid, no 401 for one
that was. Used by test_churn.py (short) and `scripts/soak.sh --churn MINUTES` (long).
Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import http.client
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from support.harness import Envoy
from support.service import Service

ADMIN = "kg_churn_admin_token"
# Feed poll (1 s) + a lookup round trip + this process's own scheduling on a busy machine.
SETTLE = 2.5
# Answers of known keys sent more than SETTLE from any change of theirs are judged; with one
# change a second spread over the live keys, most are: a run must judge at least this share.
MIN_JUDGED = 0.5
# A leak of this many bytes per request must fail the run: the bound on Envoy's memory in use
# (Envoy.memory_in_use_kib) is the requests after warm-up times this (the test's 20 s after
# warm-up at ~800 requests/s: 16,000 x 20 B = 320,000 B = 312 KiB; 30 minutes: ~5,900,000 x
# 20 B = 118,000,000 B = 115,234 KiB).
LEAK_BYTES = 20
# A small cache, so that warm-up fills it (unknown keys fill the negative space) and the RSS
# check then sees leaks, not a cache growing to its bound.
CONFIG = {"keys": [], "key_service": {"cluster": "keygate-keys", "changes_poll_ms": 1000, "timeout_ms": 1000,
                                      "cache": {"max_entries": 1024, "ttl_seconds": 60, "negative_ttl_seconds": 10}}}


@dataclass
class Key:
    secret: str
    id: str
    # (time, valid) transitions, in order; valid until `expires` when set.
    history: list[tuple[float, bool]] = field(default_factory=list)
    expires: float | None = None

    def valid_at(self, t: float) -> bool | None:
        """Whether the key was valid at t, or None when t is too close to a change to say."""
        state = None
        for at, valid in self.history:
            if at > t:
                break
            state = valid
        changes = [at for at, _ in self.history] + ([self.expires] if self.expires else [])
        if state is None or any(abs(t - at) < SETTLE for at in changes):
            return None
        if self.expires is not None and t >= self.expires:
            return False
        return state


class Model:
    def __init__(self):
        self.lock = threading.Lock()
        self.keys: dict[str, Key] = {}  # by secret

    def add(self, k: Key):
        with self.lock:
            self.keys[k.secret] = k

    def pick(self) -> Key | None:
        with self.lock:
            return random.choice(list(self.keys.values())) if self.keys else None


def mutate(service: Service, model: Model, stop: threading.Event, log: Counter, errors: list):
    """One admin action a second: create, disable, enable, delete or rotate a random key."""
    by_id: dict[str, Key] = {}
    while not stop.wait(1.0):
        live = [k for k in by_id.values() if k.history and k.history[-1][1] is not None]
        action = random.choice(["create", "create"] + (["disable", "enable", "delete", "rotate"] if live else []))
        try:
            if action == "create" or not live:
                r = service.admin("POST", "/v1/keys", {"owner": "churn"})
                assert r.status == 201, r
                k = Key(r.json()["key"], r.json()["entry"]["id"])
                k.history.append((time.monotonic(), True))
                by_id[k.id] = k
                model.add(k)
                action = "create"
            else:
                k = random.choice(live)
                if action in ("disable", "enable"):
                    r = service.admin("PATCH", f"/v1/keys/{k.id}", {"disabled": action == "disable"})
                    assert r.status == 200, r
                    k.history.append((time.monotonic(), action == "enable"))
                elif action == "delete":
                    r = service.admin("DELETE", f"/v1/keys/{k.id}")
                    assert r.status == 204, r
                    k.history.append((time.monotonic(), False))
                    del by_id[k.id]
                else:
                    grace = random.choice([2, 5])
                    r = service.admin("POST", f"/v1/keys/{k.id}/rotate", {"grace_seconds": grace})
                    assert r.status == 201, r
                    now = time.monotonic()
                    # The service writes expires_at to the second: the margin covers it.
                    k.expires = now + grace
                    successor = Key(r.json()["key"], r.json()["entry"]["id"])
                    # The successor copies the old entry (disabled included).
                    successor.history.append((now, k.history[-1][1]))
                    del by_id[k.id]
                    by_id[successor.id] = successor
                    model.add(successor)
            log[action] += 1
        except Exception as e:  # noqa: BLE001 - reported, and the run fails
            errors.append(f"admin {action}: {e!r}")


def load(port: int, model: Model, deadline: float, stop: threading.Event, results: Counter,
         disagreements: list, errors: list):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < deadline and not stop.is_set():
        k = model.pick()
        unknown = k is None or random.random() < 0.1
        secret = "kg_unknown_" + secrets.token_urlsafe(16) if unknown else k.secret
        sent = time.monotonic()
        try:
            conn.request("GET", "/api/churn", headers={"Authorization": f"Bearer {secret}"})
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"request: {e!r}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            continue
        results[r.status] += 1
        expect = False if unknown else k.valid_at(sent)
        # Judged: every unknown key; a known key unless the request was sent near its change.
        results["judged unknown" if unknown else "known"] += 1
        if expect is not None and not unknown:
            results["judged known"] += 1
        if r.status >= 500 or expect is not None and (r.status == 200) != expect:
            disagreements.append((round(sent, 3), "unknown" if unknown else k.id, expect, r.status))
        if r.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()


def churn(seconds: float, connections: int = 4) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="keygate-churn-"))
    service = Service("sqlite:keygate.db", workdir, tokens=[ADMIN]).start()
    envoy = Envoy(plugin_config=CONFIG, clusters={"keygate-keys": service.filter_port}, concurrency=2).start()
    model, stop = Model(), threading.Event()
    results, actions, disagreements, errors = Counter(), Counter(), [], []
    try:
        # A few keys before traffic starts, so the first seconds are not all unknown keys.
        for _ in range(5):
            r = service.admin("POST", "/v1/keys", {"owner": "churn"})
            k = Key(r.json()["key"], r.json()["entry"]["id"], [(time.monotonic(), True)])
            model.add(k)
        warm = time.monotonic() + min(60.0, seconds / 3)
        deadline = time.monotonic() + seconds
        mutator = threading.Thread(target=mutate, args=(service, model, stop, actions, errors), daemon=True)
        loaders = [threading.Thread(target=load, args=(envoy.port, model, deadline, stop, results, disagreements,
                                                       errors), daemon=True) for _ in range(connections)]
        mutator.start()
        for t in loaders:
            t.start()
        while time.monotonic() < warm:
            time.sleep(0.1)
        rss_start = envoy.memory_in_use_kib()
        answered_at_start = sum(results[s] for s in results if isinstance(s, int))
        for t in loaders:
            t.join(timeout=seconds + 60)
        stop.set()
        mutator.join(timeout=10)
        rss_end = envoy.memory_in_use_kib()
        measured = sum(results[s] for s in results if isinstance(s, int)) - answered_at_start
        trapped = "Wasm VM failed" in envoy.log() or "Function: proxy_on" in envoy.log()
    finally:
        stop.set()
        envoy.stop()
        service.stop()
    statuses = {s: n for s, n in results.items() if isinstance(s, int)}
    return {"requests": sum(statuses.values()), "statuses": statuses, "actions": dict(actions),
            "known": results["known"], "judged_known": results["judged known"],
            "judged_unknown": results["judged unknown"],
            "disagreements": disagreements, "errors": errors, "trapped": trapped,
            "rss_growth_kib": rss_end - rss_start, "rss_bound_kib": measured * LEAK_BYTES // 1024,
            "requests_after_warmup": measured}


def passed(r: dict) -> bool:
    """Every judged answer agrees, most answers of known keys are judged (a run that judged
    none must fail), nothing failed or trapped, and RSS grew less than a 20 B/request leak."""
    return (not r["disagreements"] and not r["errors"] and not r["trapped"]
            and r["judged_known"] >= r["known"] * MIN_JUDGED and r["judged_known"] > 0
            and r["rss_growth_kib"] <= r["rss_bound_kib"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--connections", type=int, default=4)
    args = ap.parse_args()
    r = churn(args.minutes * 60, args.connections)
    print(f"requests {r['requests']:,}  statuses {r['statuses']}  admin actions {r['actions']}")
    print(f"judged {r['judged_known']:,} of {r['known']:,} answers of known keys, {r['judged_unknown']:,} unknown")
    print(f"disagreements {len(r['disagreements'])}  errors {len(r['errors'])}  trapped {r['trapped']}  "
          f"RSS growth {r['rss_growth_kib']:+d} KiB over {r['requests_after_warmup']:,} requests "
          f"(bound {r['rss_bound_kib']:,} KiB)")
    for d in r["disagreements"][:20]:
        print("  disagreement (sent, key, expected valid, status):", d)
    for e in r["errors"][:20]:
        print("  error:", e)
    ok = passed(r)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
