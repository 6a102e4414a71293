"""The review queue's tables: review items and webhook deliveries (migration 0004).

One item model serves every kind of human decision (:data:`KINDS`): an ``escalation``
(the assistant could not answer, or its answer failed the faithfulness check, or the
asker wants a human) is *answered*; an ``approval`` (a workflow step waiting for a human,
see the agents issue) is *approved* or *rejected*. Both go open → claimed → closed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from iatros.store.models import Base, TenantScoped

KINDS = ("escalation", "approval")
REASONS = (
    "no_source",  # no passage above knowledge.min_score
    "unsupported_detail",  # the faithfulness check withheld the answer
    "model_failure",  # the model failed on a knowledge route
    "user_request",  # the asker clicked "ask a human"
    "feedback",  # a thumbs-down turned into a review
    "approval",  # a workflow step waiting for a human decision
)
STATUSES = ("open", "claimed", "answered", "dismissed")
OPEN_STATUSES = ("open", "claimed")
DECISIONS = ("approved", "rejected")


class ReviewItem(TenantScoped, Base):
    __tablename__ = "review_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    asker_key_id: Mapped[str] = mapped_column(String(32))
    conversation_id: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(40))
    route: Mapped[str] = mapped_column(String(128))
    question: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """The last turns of the conversation (role and text), for the reviewer's context."""
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    draft: Mapped[str | None] = mapped_column(Text)
    """The model's answer when there was one (withheld answers, thumbs-down)."""
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Reason-specific facts: the collection, the verification outcome, the run step…"""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    answered_by: Mapped[str | None] = mapped_column(String(32))
    reviewer_name: Mapped[str | None] = mapped_column(String(128))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    answer: Mapped[str | None] = mapped_column(Text)
    decision: Mapped[str | None] = mapped_column(String(16))
    document_id: Mapped[str | None] = mapped_column(String(64))
    """The knowledge document the answer was saved as, if it was."""


class WebhookDelivery(TenantScoped, Base):
    """One event for one webhook target, and how its delivery went (the delivery log)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    event: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(1024))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    """``pending`` (to be tried at ``next_attempt_at``), ``delivered`` or ``failed``."""
    attempts: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(512))
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
