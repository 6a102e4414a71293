"""Feedback on answers (thumbs up or down, an optional comment), kept for experiments.

One row per (tenant, request, key): rating the same answer again replaces the rating.
The request's deployment and logical model are copied from its usage record, so that
feedback can be compared between deployments without joining on the usage table.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from iatros.store.db import Database
from iatros.store.models import Base, TenantScoped, UsageRecord


class Feedback(TenantScoped, Base):
    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", "key_id", name="uq_feedback_request_key"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_id: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str] = mapped_column(String(40), index=True)
    rating: Mapped[str] = mapped_column(String(8))
    comment: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(128), default="")
    deployment: Mapped[str] = mapped_column(String(128), default="")


def save_feedback(
    db: Database,
    *,
    tenant: str,
    key_id: str,
    request_id: str,
    rating: str,
    comment: str,
) -> dict[str, Any] | None:
    """Store (or replace) a rating; ``None`` when the tenant has no such request."""
    with db.session(tenant) as session:
        usage = session.execute(
            select(UsageRecord.model, UsageRecord.deployment).where(
                UsageRecord.request_id == request_id
            )
        ).first()
        if usage is None:
            return None
        row = session.scalars(
            select(Feedback).where(Feedback.request_id == request_id, Feedback.key_id == key_id)
        ).first()
        if row is None:
            row = Feedback(tenant_id=tenant, key_id=key_id, request_id=request_id)
            session.add(row)
        row.ts = datetime.now(UTC)
        row.rating = rating
        row.comment = comment
        row.model = usage.model
        row.deployment = usage.deployment
        session.flush()
        return {
            "id": row.id,
            "request_id": request_id,
            "rating": rating,
            "comment": comment,
            "model": row.model,
            "deployment": row.deployment,
            "created_at": row.ts.isoformat(),
        }


def feedback_list(
    db: Database,
    scope: str,
    *,
    rating: str | None = None,
    model: str | None = None,
    deployment: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Ratings, newest first, each with its request's route, cache and grounding outcome;
    and the counts of ``up`` and ``down`` under the same filters (without ``rating``)."""
    with db.session(scope) as session:
        query = select(
            Feedback,
            UsageRecord.route,
            UsageRecord.cache,
            UsageRecord.grounding,
            UsageRecord.status,
        ).outerjoin(UsageRecord, UsageRecord.request_id == Feedback.request_id)
        counting = select(Feedback.rating, func.count()).group_by(Feedback.rating)
        for column, value in ((Feedback.model, model), (Feedback.deployment, deployment)):
            if value is not None:
                query = query.where(column == value)
                counting = counting.where(column == value)
        if since is not None:
            query = query.where(Feedback.ts >= since)
            counting = counting.where(Feedback.ts >= since)
        if until is not None:
            query = query.where(Feedback.ts < until)
            counting = counting.where(Feedback.ts < until)
        if rating is not None:
            query = query.where(Feedback.rating == rating)
        rows = session.execute(query.order_by(Feedback.ts.desc()).limit(limit)).all()
        counts = {str(r): int(n) for r, n in session.execute(counting).all()}
        return [
            {
                "id": fb.id,
                "tenant": fb.tenant_id,
                "created_at": fb.ts.isoformat(),
                "key_id": fb.key_id,
                "request_id": fb.request_id,
                "rating": fb.rating,
                "comment": fb.comment,
                "model": fb.model,
                "deployment": fb.deployment,
                "route": route,
                "cache": cache,
                "grounding": grounding,
                "status": status,
            }
            for fb, route, cache, grounding, status in rows
        ], {"up": counts.get("up", 0), "down": counts.get("down", 0)}
