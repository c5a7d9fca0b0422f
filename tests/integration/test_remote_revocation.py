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
            second = threading.Thread(target=lambda: answers.__setitem__("second", call(e, key)))
            second.start()
            # The second request does not join the lookup from before the revocation: it asks
            # afresh (held too, so both wait in Envoy now).
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
