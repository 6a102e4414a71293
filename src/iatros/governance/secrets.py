"""The server secret: keyed hashes of identifiers, and the keys of the audit chain.

Set ``IATROS_SECRET_KEY`` (shared by every instance). Without it, one is generated
once into ``$IATROS_DATA_DIR/secret.key`` (owner-only) so that ``make run`` works;
that is weaker, and says so in the log: whoever can read the data directory *and*
write the database can then rewrite the audit trail undetected.

The audit chain never uses the secret itself but keys derived from it (one per
purpose), so the patient references, the chain links and the anchors can never be
confused with each other. Each keyed record stores the *id* of the secret that
keyed it (a truncated hash of it, which says nothing usable about the secret), so
the secret can be rotated: the new one goes in ``IATROS_SECRET_KEY``, the previous
ones in ``IATROS_SECRET_KEYS_OLD`` (comma-separated), and records keyed with an
old secret still verify.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("iatros.governance.secrets")

SECRET_FILE = "secret.key"
MIN_SECRET_CHARS = 16


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured secret, or the one kept in (and generated into) the data directory."""
    if configured:
        return configured.encode()
    path = data_dir / SECRET_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "the secret key file is readable by others than its owner; chmod 600 it",
                extra={"path": str(path), "mode": oct(mode)},
            )
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process generated it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    log.warning(
        "no IATROS_SECRET_KEY set: generated one into the data directory; it keys the audit "
        "chain, so anyone who can read this file and write the database could rewrite the "
        "audit trail. Set IATROS_SECRET_KEY (the same on every instance) in production",
        extra={"path": str(path)},
    )
    return value


def keyed_ref(secret: bytes, value: str, kind: str) -> str:
    """A stable reference to an identifier that does not reveal it (HMAC-SHA256, truncated)."""
    digest = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}_{digest[:32]}"


def key_id(secret: bytes) -> str:
    """A short public name for a secret (a truncated hash: it cannot be used to find it)."""
    return "k" + hashlib.sha256(b"iatros key id\x00" + secret).hexdigest()[:12]


def split_old_keys(value: str | None) -> list[str]:
    """``IATROS_SECRET_KEYS_OLD``: comma-separated previous secrets (spaces around ignored)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@dataclass(frozen=True)
class Keyring:
    """The current secret (which keys new records) and the old ones (which only verify).

    ``generated`` is true when the current secret came from the data directory rather
    than from the configuration: verification says so, because such a secret protects
    only against an attacker who cannot read that directory.
    """

    current: bytes
    old: tuple[bytes, ...] = ()
    generated: bool = False
    _subkeys: dict[tuple[str, str], bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def load(cls, configured: str | None, old: str | None, data_dir: Path) -> Keyring:
        current = load_secret(configured, data_dir)
        return cls(current, tuple(k.encode() for k in split_old_keys(old)), not configured)

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def ids(self) -> list[str]:
        return [key_id(k) for k in (self.current, *self.old)]

    def _secret(self, kid: str) -> bytes | None:
        for candidate in (self.current, *self.old):
            if hmac.compare_digest(key_id(candidate), kid):
                return candidate
        return None

    def subkey(self, kid: str, purpose: str) -> bytes | None:
        """The key for one purpose ("audit-chain", "audit-anchor") derived from secret ``kid``."""
        cached = self._subkeys.get((kid, purpose))
        if cached is not None:
            return cached
        secret = self._secret(kid)
        if secret is None:
            return None
        derived = hmac.new(secret, f"iatros {purpose} v1".encode(), hashlib.sha256).digest()
        self._subkeys[(kid, purpose)] = derived
        return derived

    def mac(self, kid: str, purpose: str, message: bytes) -> str | None:
        """HMAC-SHA256 of ``message`` under secret ``kid`` for ``purpose`` (None: unknown key)."""
        key = self.subkey(kid, purpose)
        if key is None:
            return None
        return hmac.new(key, message, hashlib.sha256).hexdigest()
