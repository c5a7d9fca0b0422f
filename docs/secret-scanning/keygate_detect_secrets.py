"""A detect-secrets plugin for keygate API keys.

    detect-secrets scan --plugin keygate_detect_secrets.py

A keygate key is `kg_`, 43 base62 characters and 6 base62 characters of the CRC32 of the 46
before them. The regex finds candidates; the checksum is then checked, so text that only looks
like a key (a broken copy, an example, a hash) is not reported.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Generator

from detect_secrets.plugins.base import RegexBasedDetector

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Word boundaries as in the README: a key is not part of a longer base62 run.
KEY = re.compile(r"(?<![0-9A-Za-z_])(kg_[0-9A-Za-z]{43}[0-9A-Za-z]{6})(?![0-9A-Za-z_])")


def checksum(signed: str) -> str:
    """The 6 base62 digits of CRC32(signed), most significant first, zero-padded."""
    n, digits = zlib.crc32(signed.encode()), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        digits = BASE62[digit] + digits
    return digits


def is_keygate_key(candidate: str) -> bool:
    return bool(KEY.fullmatch(candidate)) and checksum(candidate[:46]) == candidate[46:]


class KeygateKeyDetector(RegexBasedDetector):
    """keygate API key (checksummed)"""

    secret_type = "keygate API key"
    denylist = (KEY,)

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for candidate in super().analyze_string(string):
            if is_keygate_key(candidate):
                yield candidate
