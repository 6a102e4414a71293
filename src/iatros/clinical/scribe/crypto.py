"""Encryption at rest for the scribe's records: AES-256-GCM from ``cryptography``.

The key is derived from the server secret (``IATROS_SECRET_KEY``; see
``governance/secrets.py``) for this purpose only, so it is never the key of the audit
chain. Each sealed value records the id of the secret that keyed it: after a rotation
(the old secret in ``IATROS_SECRET_KEYS_OLD``) old records still open. The associated
data binds a value to its tenant, record and field, so a ciphertext copied into another
row, tenant or column fails to open instead of showing one patient's note as another's.
"""

from __future__ import annotations

import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iatros.governance.secrets import Keyring

PURPOSE = "scribe-at-rest"
VERSION = b"\x01"
NONCE = 12
KID = 16


class SealBroken(Exception):
    """A sealed value did not open: wrong key, another row's value, or tampering."""


class Sealer:
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def _key(self, kid: str) -> bytes:
        key = self.keyring.subkey(kid, PURPOSE)
        if key is None:
            raise SealBroken(f"the secret {kid} that sealed this value is not configured")
        return key

    def seal(self, data: bytes, aad: str) -> bytes:
        """``version | key id (16) | nonce (12) | ciphertext+tag``."""
        kid = self.keyring.current_id
        nonce = os.urandom(NONCE)
        sealed = AESGCM(self._key(kid)).encrypt(nonce, data, aad.encode())
        return VERSION + kid.encode().ljust(KID)[:KID] + nonce + sealed

    def open(self, blob: bytes, aad: str) -> bytes:
        if not blob or blob[:1] != VERSION:
            raise SealBroken("not a sealed value")
        kid = blob[1 : 1 + KID].decode().strip()
        nonce = blob[1 + KID : 1 + KID + NONCE]
        try:
            return AESGCM(self._key(kid)).decrypt(nonce, blob[1 + KID + NONCE :], aad.encode())
        except InvalidTag:
            raise SealBroken("the value does not open with its key and place") from None

    def seal_json(self, value: object, aad: str) -> bytes:
        return self.seal(orjson.dumps(value), aad)

    def open_json(self, blob: bytes, aad: str) -> object:
        return orjson.loads(self.open(blob, aad))
