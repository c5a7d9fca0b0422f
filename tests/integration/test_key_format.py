"""keygate's checksummed key format through real Envoy (two workers): with `key_format`
"checksummed", a flood of well-formed `kg_` keys with wrong checksums is refused with the
documented 401 and never reaches the key service; valid-looking keys and keys of other formats
are looked up as before; with "checksummed_only", keys of other formats are refused too.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from support.harness import UNAUTHORIZED
from support.keyserver import KeyServer
from support.remote import base_config, call, start_remote

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def crc32_base62(text: str) -> str:
    import zlib

    n, out = zlib.crc32(text.encode()), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        out = ALPHABET[digit] + out
    return out


def well_formed(checksum_ok: bool) -> str:
    signed = "kg_" + "".join(secrets.choice(ALPHABET) for _ in range(43))
    check = crc32_base62(signed)
    if not checksum_ok:
        check = check[:-1] + ("a" if check[-1] != "a" else "b")
    return signed + check


def lookups(server: KeyServer) -> int:
    return server.counts["keys"]


def test_a_flood_of_well_formed_keys_with_wrong_checksums_causes_no_lookup():
    with KeyServer() as server:
        e = start_remote(server, {**base_config(), "key_format": "checksummed"})
        try:
            before, counted = lookups(server), e.counter("denied_checksum")
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: call(e, well_formed(False)), range(2000)))
            assert {a.status for a in answers} == {401}
            assert {a.body for a in answers} == {UNAUTHORIZED}
            e.wait_counter("denied_checksum", counted + 2000)
            assert lookups(server) == before, "a wrong checksum reached the key service"
            # A key with a right checksum, and a key of another format, are still looked up.
            assert call(e, well_formed(True)).status == 401
            assert call(e, "another-format-key-0001").status == 401
            assert lookups(server) == before + 2
            # And a real one works.
            real = well_formed(True)
            server.add(real, {"id": "real"})
            assert call(e, real).status == 200
        finally:
            e.stop()


def test_checksummed_only_refuses_every_other_format_without_a_lookup():
    with KeyServer() as server:
        e = start_remote(server, {**base_config(), "key_format": "checksummed_only"})
        try:
            before = lookups(server)
            other = "another-format-key-0002"
            server.add(other, {"id": "legacy"})
            assert [call(e, other).status for _ in range(5)] == [401] * 5
            assert lookups(server) == before
            real = well_formed(True)
            server.add(real, {"id": "real"})
            assert call(e, real).status == 200 and lookups(server) == before + 1
        finally:
            e.stop()
