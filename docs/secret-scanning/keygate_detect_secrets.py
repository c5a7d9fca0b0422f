"""A detect-secrets plugin for keygate API keys.

    detect-secrets scan --plugin keygate_detect_secrets.py [--disable-plugin ...] [PATH ...]
    detect-secrets scan --plugin keygate_detect_secrets.py --string 'kg_...'

A keygate key is `kg_`, 43 base62 characters and 6 base62 characters of the CRC32 of the 46
before them. The regex finds candidates; the checksum is then checked, so text that only looks
like a key (a mistyped copy, a made-up example, a placeholder) is not reported. Nothing is
needed but detect-secrets itself.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator

from detect_secrets.plugins.base import RegexBasedDetector

# The base62 digits in order: 0-9 are 0-9, A-Z are 10-35, a-z are 36-61.
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# \bkg_[0-9A-Za-z]{43}[0-9A-Za-z]{6}\b with the word boundaries spelled out in ASCII: a key is
# never part of a longer [0-9A-Za-z_] run.
KEY = re.compile(r"(?<![0-9A-Za-z_])(kg_[0-9A-Za-z]{43}[0-9A-Za-z]{6})(?![0-9A-Za-z_])")


def base62_decode(digits: str) -> int:
    """The number `digits` writes in base62, most significant digit first."""
    n = 0
    for d in digits:
        n = n * 62 + BASE62.index(d)
    return n


def checksum(signed: str) -> str:
    """The 6 check characters for `signed` (`kg_` and the 43): CRC32 (zlib's) in base62, most
    significant digit first, left-padded with '0'."""
    n, digits = zlib.crc32(signed.encode()), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        digits = BASE62[digit] + digits
    return digits


def is_keygate_key(candidate: str) -> bool:
    """Whether `candidate` is a whole keygate key whose checksum is right."""
    return bool(KEY.fullmatch(candidate)) and base62_decode(candidate[46:]) == zlib.crc32(candidate[:46].encode())


class KeygateKeyDetector(RegexBasedDetector):
    """keygate API key (checksummed)"""

    secret_type = "keygate API key"
    denylist = (KEY,)

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for candidate in super().analyze_string(string):
            if is_keygate_key(candidate):
                yield candidate
