"""ORM models. Tables that hold tenant data mix in :class:`TenantScoped`.

Every query on a :class:`TenantScoped` model is filtered by the session's tenant
in one place (:mod:`iatros.store.db`), never by each handler.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TenantScoped:
    """Marker: rows belong to one tenant (``tenant_id``)."""

    tenant_id: Mapped[str] = mapped_column(String(64), index=True)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    budget_eur: Mapped[float | None] = mapped_column(Float)


class ApiKey(TenantScoped, Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the key, shown in listings (never the key)."""
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    budget_eur: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rotated_from: Mapped[str | None] = mapped_column(String(32))
    capabilities: Mapped[str] = mapped_column(String(256), default="")
    """Comma-separated capabilities beside the role (``reviewer``)."""


class UsageRecord(TenantScoped, Base):
    __tablename__ = "usage"
    __table_args__ = (Index("ix_usage_tenant_ts", "tenant_id", "ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(40), unique=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    endpoint: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    deployment: Mapped[str] = mapped_column(String(128))
    route: Mapped[str] = mapped_column(String(512))
    cache: Mapped[str] = mapped_column(String(16))
    status: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost_eur: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    grounding: Mapped[str] = mapped_column(String(16), default="")
    """The safety outcome of a grounded answer (see ``RequestContext.grounding``)."""
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Time to first token of a stream (migration 0012); NULL for complete answers."""
    unit: Mapped[str | None] = mapped_column(String(32), nullable=True)
    """A request in an experiment: salted hash of its assignment unit (per-unit analysis)."""


class AuditRecord(TenantScoped, Base):
    """One link of the audit chain: ``hash`` keys the fields and ``prev_hash`` together."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(16))
    """The secret that keyed ``hash`` (HMAC); NULL for records of the unkeyed first version."""


class AuditHead(Base):
    """The last link, kept apart so that truncating the chain is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    last_hash: Mapped[str] = mapped_column(String(64))
