"""The server secret used for keyed hashes (patient references in audit and cache tags).

Set ``IATROS_SECRET_KEY`` (shared by every instance); otherwise one is generated
once and kept in ``$IATROS_DATA_DIR/secret.key`` with owner-only permissions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_secret(configured: str | None, data_dir: Path) -> bytes:
    if configured:
        return configured.encode()
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_bytes().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return value


def keyed_ref(secret: bytes, value: str, kind: str) -> str:
    """A stable reference to an identifier that does not reveal it (HMAC-SHA256, truncated)."""
    digest = hmac.new(secret, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}_{digest[:32]}"
