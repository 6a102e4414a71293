"""API keys: created once (only a hash is kept), listed by prefix, revoked, rotated.

A key is ``iat_`` followed by 43 URL-safe characters (256 random bits), so a
plain SHA-256 is a safe way to store it: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from iatros.governance.audit import AuditChain, event
from iatros.governance.keycache import notify
from iatros.governance.roles import check_capabilities, check_role
from iatros.store.db import PLATFORM, Database
from iatros.store.models import ApiKey, Tenant

KEY_PREFIX = "iat_"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")


def check_tenant(tenant: str) -> str:
    if not _TENANT.match(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'"
        )
    return tenant


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What may be shown about a key (never the key itself)."""

    id: str
    tenant: str
    role: str
    name: str
    prefix: str
    rpm: int | None
    tpm: int | None
    budget_eur: float | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    capabilities: tuple[str, ...] = ()

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        def iso(value: datetime | None) -> str | None:
            if value is None:
                return None
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()

        return cls(
            key.id,
            key.tenant_id,
            key.role,
            key.name,
            key.prefix,
            key.rpm,
            key.tpm,
            key.budget_eur,
            iso(key.created_at) or "",
            iso(key.expires_at),
            iso(key.revoked_at),
            key_capabilities(key),
        )


def key_capabilities(key: ApiKey) -> tuple[str, ...]:
    """The key's capabilities as a tuple (stored comma-separated)."""
    return tuple(c for c in (key.capabilities or "").split(",") if c)


@dataclass(frozen=True, slots=True)
class KeyMatch:
    key: ApiKey
    tenant: Tenant


class KeyStore:
    """Keys in the database; every change is audited and announced to ``on_change``.

    ``on_change`` lets the servers' key caches forget what they know the moment a
    key is created, revoked or rotated, or a tenant's limits change (see
    :mod:`iatros.governance.keycache`), including when the change is made by the CLI.
    """

    def __init__(
        self,
        db: Database,
        chain: AuditChain,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.chain = chain
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def create(
        self,
        *,
        tenant: str,
        role: str,
        actor: str,
        name: str = "",
        rpm: int | None = None,
        tpm: int | None = None,
        budget_eur: float | None = None,
        expires_at: datetime | None = None,
        scope: str = PLATFORM,
        rotated_from: str | None = None,
        capabilities: Sequence[str] = (),
    ) -> tuple[str, KeyInfo]:
        """Create a key; the plaintext is returned once and never stored."""
        check_tenant(tenant)
        check_role(role)
        granted = check_capabilities(capabilities)
        _positive("rpm", rpm)
        _positive("tpm", tpm)
        _positive("budget", budget_eur)
        now = datetime.now(UTC)
        if expires_at is not None:
            if expires_at.tzinfo is None:
                expires_at = expires_at.replace(tzinfo=UTC)
            if expires_at <= now:
                raise ValueError("the expiry date must be in the future")
        if scope not in (PLATFORM, tenant):
            raise PermissionError(f"cannot create a key for tenant {tenant!r}")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(8),
            tenant_id=tenant,
            role=role,
            name=name,
            prefix=token[:12],
            hash=hash_key(token),
            rpm=rpm,
            tpm=tpm,
            budget_eur=budget_eur,
            created_at=now,
            expires_at=expires_at,
            rotated_from=rotated_from,
            capabilities=",".join(granted),
        )
        with self.db.session(PLATFORM) as session:
            if session.get(Tenant, tenant) is None:
                session.add(Tenant(id=tenant, created_at=now))
                session.flush()
            session.add(key)
            notify(session)
        info = KeyInfo.of(key)
        self._changed()
        self.chain.append(
            [
                event(
                    tenant=tenant,
                    actor=actor,
                    action="key.created",
                    target=key.id,
                    details={"role": role, "prefix": key.prefix, "capabilities": list(granted)},
                )
            ],
        )
        return token, info

    def list(self, scope: str, tenant: str | None = None) -> list[KeyInfo]:
        with self.db.session(scope) as session:
            query = select(ApiKey).order_by(ApiKey.created_at)
            if tenant is not None:
                query = query.where(ApiKey.tenant_id == tenant)
            return [KeyInfo.of(k) for k in session.scalars(query)]

    def revoke(self, key_id: str, *, scope: str, actor: str) -> KeyInfo:
        with self.db.session(scope) as session:
            key = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).first()
            if key is None:
                raise LookupError(f"no key {key_id!r}")
            if key.revoked_at is None:
                key.revoked_at = datetime.now(UTC)
                notify(session)
            info = KeyInfo.of(key)
        self._changed()
        self.chain.append(
            [event(tenant=info.tenant, actor=actor, action="key.revoked", target=key_id)],
        )
        return info

    def rotate(self, key_id: str, *, scope: str, actor: str) -> tuple[str, KeyInfo]:
        """A new key with the same tenant, role and limits; the old one is revoked."""
        with self.db.session(scope) as session:
            old = session.scalars(select(ApiKey).where(ApiKey.id == key_id)).first()
            if old is None:
                raise LookupError(f"no key {key_id!r}")
            if old.revoked_at is not None:
                raise ValueError(f"key {key_id!r} is revoked; create a new one")
            template = KeyInfo.of(old)
            expires = old.expires_at
        token, info = self.create(
            tenant=template.tenant,
            role=template.role,
            actor=actor,
            name=template.name,
            rpm=template.rpm,
            tpm=template.tpm,
            budget_eur=template.budget_eur,
            expires_at=expires if expires is None or _aware(expires) > datetime.now(UTC) else None,
            scope=scope,
            rotated_from=key_id,
            capabilities=template.capabilities,
        )
        self.revoke(key_id, scope=scope, actor=actor)
        return token, info

    def lookup(self, token: str) -> KeyMatch | None:
        with self.db.session(PLATFORM) as session:
            key = session.scalars(select(ApiKey).where(ApiKey.hash == hash_key(token))).first()
            if key is None:
                return None
            tenant = session.get(Tenant, key.tenant_id)
            assert tenant is not None
            return KeyMatch(key, tenant)

    def any_keys(self) -> bool:
        with self.db.session(PLATFORM) as session:
            return session.scalars(select(ApiKey.id).limit(1)).first() is not None

    def set_tenant_limits(
        self, tenant: str, *, rpm: int | None, tpm: int | None, budget_eur: float | None, actor: str
    ) -> None:
        check_tenant(tenant)
        _positive("rpm", rpm)
        _positive("tpm", tpm)
        _positive("budget", budget_eur)
        with self.db.session(PLATFORM) as session:
            row = session.get(Tenant, tenant)
            if row is None:
                row = Tenant(id=tenant, created_at=datetime.now(UTC))
                session.add(row)
            row.rpm, row.tpm, row.budget_eur = rpm, tpm, budget_eur
            notify(session)
        self._changed()
        self.chain.append(
            [
                event(
                    tenant=tenant,
                    actor=actor,
                    action="tenant.limits_set",
                    target=tenant,
                    details={"rpm": rpm, "tpm": tpm, "budget_eur": budget_eur},
                )
            ],
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
