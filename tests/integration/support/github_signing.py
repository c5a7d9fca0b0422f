"""Signs leak reports the way GitHub's secret scanning partner program does: an ECDSA P-256 key
pair made here, its public key in a file shaped like GitHub's published keys, and the base64 DER
signature of the raw body in `Github-Public-Key-Signature`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


class GithubSigner:
    def __init__(self, identifier: str):
        self.identifier = identifier
        self.key = ec.generate_private_key(ec.SECP256R1())

    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def write_keys_file(self, path: Path, *others: GithubSigner):
        keys = [
            {"key_identifier": s.identifier, "key": s.public_pem(), "is_current": s is self} for s in (self, *others)
        ]
        Path(path).write_text(json.dumps({"public_keys": keys}))

    def sign(self, body: bytes) -> str:
        return base64.b64encode(self.key.sign(body, ec.ECDSA(hashes.SHA256()))).decode()

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Github-Public-Key-Identifier": self.identifier, "Github-Public-Key-Signature": self.sign(body)}
