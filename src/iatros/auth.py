"""Who is calling: the seam between a bearer key and a :class:`Principal`.

Today one authenticator knows the bootstrap admin key (``IATROS_ADMIN_KEY``);
the key store plugs in behind the same ``Authenticator`` protocol.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Protocol

from iatros.errors import AuthenticationFailed


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    role: str
    platform: bool = False
    """A platform administrator (the bootstrap key) may act on every tenant."""
    rpm: int | None = None
    tpm: int | None = None
    budget_eur: float | None = None
    tenant_rpm: int | None = None
    tenant_tpm: int | None = None
    tenant_budget_eur: float | None = None
    capabilities: tuple[str, ...] = ()
    """Permissions beside the role's (``reviewer``), see :mod:`iatros.governance.roles`."""


ANONYMOUS = Principal(tenant="default", key_id="anonymous", role="admin")


class Authenticator(Protocol):
    async def authenticate(self, token: str | None) -> Principal:
        """Return the caller or raise :class:`AuthenticationFailed`."""
        ...


class AdminKeyAuthenticator:
    """Accepts the bootstrap admin key; with none configured, optionally anyone on loopback."""

    def __init__(self, admin_key: str | None, *, allow_anonymous: bool) -> None:
        self._admin_key = admin_key.encode() if admin_key else None
        self._allow_anonymous = allow_anonymous and admin_key is None
        self._admin = Principal(tenant="default", key_id="admin", role="admin", platform=True)

    async def authenticate(self, token: str | None) -> Principal:
        if self._allow_anonymous:
            return ANONYMOUS
        if not token:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if self._admin_key is not None and hmac.compare_digest(token.encode(), self._admin_key):
            return self._admin
        raise AuthenticationFailed("Incorrect API key provided.")
