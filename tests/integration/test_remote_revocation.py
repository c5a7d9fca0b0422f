"""A revocation the filter has seen is never undone by a lookup that started before it, and
the feed's lag is reported: through real Envoy against the fault-injecting key server."""
from __future__ import annotations

import threading

from support.keyserver import KeyServer
from support.remote import AUTHORITY, PREFIX, assert_unauthorized, base_config, call, new_key, start_remote, until


def test_a_request_after_a_revocation_is_not_decided_by_the_lookup_from_before_it():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(timeout_ms=3000, changes_poll_ms=200), concurrency=1)
        try:
            key = new_key()
            server.add(key, {"id": "r-revoked"})
            # The lookup is held, and will answer the key as it was when the lookup arrived.
            server.fault("hold", on="keys", snapshot=True)
            answers: dict[str, object] = {}
            first = threading.Thread(target=lambda: answers.__setitem__("first", call(e, key)))
            first.start()
            assert until(lambda: server.lookups(key) >= 1, 3.0)[0], "the lookup never arrived"
            polls = server.count("changes")
            server.set_disabled(key)
            # The filter has polled twice since: it has seen the revocation.
            assert until(lambda: server.count("changes") >= polls + 2, 3.0)[0]
            # Lookups from now on are answered, from the key's state then, after half a second:
            # the held one will answer first.
            server.fault("slow", on="keys", delay=0.5)
            second = threading.Thread(target=lambda: answers.__setitem__("second", call(e, key)))
            second.start()
            # The second request does not join the lookup from before the revocation: it asks
            # afresh, so both wait in Envoy now.
            assert until(lambda: server.lookups(key) == 2, 3.0)[0], "the second request joined the old lookup"
            assert e.stat("http.api.downstream_rq_active") == 2
            server.release()
            first.join(10)
            second.join(10)
            # The first request arrived before the filter knew of the revocation and gets the
            # answer it waited for; the second is decided by its own, fresh one.
            assert answers["first"].status == 200, answers["first"].body
            assert answers["first"].upstream_all("x-api-key-id") == ["r-revoked"]
            assert_unauthorized(answers["second"])
            assert e.wait_counters({"allowed": 1, "denied_disabled": 1})
            # And the old answer was not kept: the key stays refused.
            assert_unauthorized(call(e, key))
            assert server.lookups(key) == 2
        finally:
            server.clear_faults()
            e.stop()


def test_the_feed_lag_the_service_reports_is_the_remote_feed_lag_gauge():
    with KeyServer(prefix=PREFIX, authority=AUTHORITY) as server:
        e = start_remote(server, base_config(changes_poll_ms=200), concurrency=2)
        try:
            assert e.stat("wasmcustom.keygate.remote.feed_lag") == 0
            server.behind = 4744
            assert until(lambda: e.stat("wasmcustom.keygate.remote.feed_lag") == 4744, 3.0)[0]
            server.behind = 0
            assert until(lambda: e.stat("wasmcustom.keygate.remote.feed_lag") == 0, 3.0)[0]
        finally:
            e.stop()
