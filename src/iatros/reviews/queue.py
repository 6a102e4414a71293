"""The human review queue: where escalations and approvals wait for a person.

Every escalation creates an item (see :data:`iatros.reviews.models.REASONS`); reviewers
(admins, and keys given the ``reviewer`` capability) list, claim and answer them; the
answer goes back to the asker (their conversation polls :meth:`ReviewQueue.for_asker`),
to a webhook when one is configured, and optionally into the knowledge base so that the
next asker gets it. The agents' approval steps use the same items with ``kind="approval"``
and :meth:`ReviewQueue.decide`.

Every read and change runs in a tenant-scoped session (another tenant's item does not
exist: 404), every change is audited, and a change to a closed item is a 409: a second
answer never silently replaces the first.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from iatros.auth import Principal
from iatros.errors import Conflict, InvalidRequest, NotFound
from iatros.governance.service import Governance
from iatros.reviews.models import DECISIONS, OPEN_STATUSES, ReviewItem
from iatros.reviews.webhooks import Webhooks
from iatros.store.db import PLATFORM, Database

T = TypeVar("T")

EXCERPT_TURNS = 6
"""How many of the last conversation turns an item keeps for the reviewer."""
EXCERPT_CHARS = 2000


@dataclass(slots=True)
class NewReview:
    """What an escalation (or approval) knows when it is raised."""

    tenant: str
    asker_key_id: str
    reason: str
    question: str
    route: str = ""
    kind: str = "escalation"
    messages: Sequence[dict[str, Any]] = ()
    sources: list[dict[str, Any]] = field(default_factory=list)
    draft: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    request_id: str | None = None


def excerpt(messages: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The last turns as role/text pairs (system prompts left out: they hold the sources)."""
    out: list[dict[str, str]] = []
    for message in messages:
        role = str(message.get("role", ""))
        if role not in ("user", "assistant"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        out.append({"role": role, "content": str(content or "")[:EXCERPT_CHARS]})
    return out[-EXCERPT_TURNS:]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def item_payload(item: ReviewItem, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
    due = item.due_at.replace(tzinfo=UTC) if item.due_at and not item.due_at.tzinfo else item.due_at
    return {
        "object": "review",
        "id": item.id,
        "tenant": item.tenant_id,
        "kind": item.kind,
        "reason": item.reason,
        "status": item.status,
        "asker": item.asker_key_id,
        "conversation_id": item.conversation_id,
        "request_id": item.request_id,
        "route": item.route,
        "question": item.question,
        "excerpt": item.excerpt,
        "sources": item.sources,
        "draft": item.draft,
        "details": item.details,
        "created_at": _iso(item.created_at),
        "updated_at": _iso(item.updated_at),
        "due_at": _iso(item.due_at),
        "age_s": round((now - created).total_seconds(), 1),
        "overdue": bool(due and item.status in OPEN_STATUSES and now > due),
        "claimed_by": item.claimed_by,
        "claimed_at": _iso(item.claimed_at),
        "answered_by": item.answered_by,
        "reviewer_name": item.reviewer_name,
        "answered_at": _iso(item.answered_at),
        "answer": item.answer,
        "decision": item.decision,
        "document_id": item.document_id,
    }


@dataclass(slots=True)
class ReviewFilter:
    status: str | None = None
    kind: str | None = None
    reason: str | None = None
    asker: str | None = None
    conversation_id: str | None = None
    since: datetime | None = None
    """Items changed after this time (what an asker's conversation polls for)."""
    limit: int = 50


class ReviewQueue:
    def __init__(
        self,
        db: Database,
        governance: Governance,
        webhooks: Webhooks,
        *,
        sla_hours: float = 24.0,
    ) -> None:
        self.db = db
        self.governance = governance
        self.webhooks = webhooks
        self.sla = timedelta(hours=sla_hours)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    @staticmethod
    def scope(principal: Principal) -> str:
        """The tenant a principal reviews: its own, or every one for a platform admin."""
        return PLATFORM if principal.platform else principal.tenant

    # -- raising ------------------------------------------------------------------------

    async def open(self, new: NewReview) -> dict[str, Any]:
        """Create an item; audited, and announced to the webhook (``review.created``)."""
        now = datetime.now(UTC)
        item = ReviewItem(
            id="rev_" + secrets.token_hex(12),
            tenant_id=new.tenant,
            kind=new.kind,
            reason=new.reason,
            status="open",
            asker_key_id=new.asker_key_id[:32],
            conversation_id=(new.conversation_id or None) and new.conversation_id[:64],
            request_id=new.request_id,
            route=new.route[:128],
            question=new.question,
            excerpt=excerpt(new.messages),
            sources=new.sources,
            draft=new.draft,
            details=new.details,
            created_at=now,
            updated_at=now,
            due_at=now + self.sla,
        )

        def write() -> dict[str, Any]:
            with self.db.session(new.tenant) as session:
                session.add(item)
                session.flush()
                return item_payload(item, now)

        payload = await self._run(write)
        self._audit(item, new.asker_key_id, "review.created")
        await self.webhooks.announce(new.tenant, "review.created", payload)
        return payload

    # -- reading ------------------------------------------------------------------------

    async def list(self, scope: str, flt: ReviewFilter) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            with self.db.session(scope) as session:
                query = select(ReviewItem)
                if flt.status == "pending":
                    query = query.where(ReviewItem.status.in_(OPEN_STATUSES))
                elif flt.status:
                    query = query.where(ReviewItem.status == flt.status)
                if flt.kind:
                    query = query.where(ReviewItem.kind == flt.kind)
                if flt.reason:
                    query = query.where(ReviewItem.reason == flt.reason)
                if flt.asker:
                    query = query.where(ReviewItem.asker_key_id == flt.asker)
                if flt.conversation_id:
                    query = query.where(ReviewItem.conversation_id == flt.conversation_id)
                if flt.since is not None:
                    query = query.where(ReviewItem.updated_at > flt.since)
                query = query.order_by(ReviewItem.created_at.desc()).limit(flt.limit)
                now = datetime.now(UTC)
                return [item_payload(i, now) for i in session.scalars(query)]

        return await self._run(read)

    async def counts(self, scope: str) -> dict[str, int]:
        """Items per status (the header's badge shows ``open`` + ``claimed``)."""

        def read() -> dict[str, int]:
            with self.db.session(scope) as session:
                rows = session.execute(
                    select(ReviewItem.status, func.count()).group_by(ReviewItem.status)
                ).all()
                return {str(status): int(n) for status, n in rows}

        return await self._run(read)

    async def get(self, scope: str, item_id: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            with self.db.session(scope) as session:
                return item_payload(self._item(session, item_id))

        return await self._run(read)

    @staticmethod
    def _item(session: Session, item_id: str) -> ReviewItem:
        item = session.scalars(select(ReviewItem).where(ReviewItem.id == item_id)).first()
        if item is None:
            raise NotFound(f"No review {item_id!r}.", param="id", code="review_not_found")
        return item

    # -- acting -------------------------------------------------------------------------

    async def claim(self, scope: str, item_id: str, reviewer: Principal) -> dict[str, Any]:
        """Take an item (so that two reviewers do not answer the same one)."""

        def change(item: ReviewItem, now: datetime) -> None:
            if item.claimed_by not in (None, reviewer.key_id) and item.status == "claimed":
                raise Conflict(
                    f"Review {item.id} is claimed by {item.claimed_by}.", code="review_claimed"
                )
            item.status = "claimed"
            item.claimed_by = reviewer.key_id
            item.claimed_at = now

        return await self._change(scope, item_id, reviewer, "review.claimed", change)

    async def answer(
        self,
        scope: str,
        item_id: str,
        reviewer: Principal,
        text: str,
        reviewer_name: str,
    ) -> dict[str, Any]:
        """Answer an escalation; 409 if it is already closed (answered or dismissed)."""

        def change(item: ReviewItem, now: datetime) -> None:
            if item.kind != "escalation":
                raise InvalidRequest(
                    f"Review {item.id} is an {item.kind}: approve or reject it.",
                    param="decision",
                    code="wrong_review_kind",
                )
            item.status = "answered"
            item.answer = text
            item.answered_by = reviewer.key_id
            item.reviewer_name = reviewer_name or reviewer.key_id
            item.answered_at = now

        return await self._change(scope, item_id, reviewer, "review.answered", change)

    async def dismiss(
        self, scope: str, item_id: str, reviewer: Principal, note: str
    ) -> dict[str, Any]:
        def change(item: ReviewItem, now: datetime) -> None:
            item.status = "dismissed"
            item.answer = note or None
            item.answered_by = reviewer.key_id
            item.answered_at = now

        return await self._change(scope, item_id, reviewer, "review.dismissed", change)

    async def decide(
        self,
        scope: str,
        item_id: str,
        reviewer: Principal,
        decision: str,
        comment: str,
        reviewer_name: str = "",
    ) -> dict[str, Any]:
        """Approve or reject an approval item (what a waiting workflow run resumes on)."""
        if decision not in DECISIONS:
            raise InvalidRequest(
                f"decision must be one of {', '.join(DECISIONS)}", param="decision"
            )

        def change(item: ReviewItem, now: datetime) -> None:
            if item.kind != "approval":
                raise InvalidRequest(
                    f"Review {item.id} is an escalation: answer it.",
                    param="decision",
                    code="wrong_review_kind",
                )
            item.status = "answered"
            item.decision = decision
            item.answer = comment or None
            item.answered_by = reviewer.key_id
            item.reviewer_name = reviewer_name or reviewer.key_id
            item.answered_at = now

        return await self._change(scope, item_id, reviewer, f"review.{decision}", change)

    async def link_document(self, tenant: str, item_id: str, document_id: str) -> None:
        """Record the knowledge document an answer was saved as."""

        def write() -> None:
            with self.db.session(tenant) as session:
                self._item(session, item_id).document_id = document_id

        await self._run(write)

    async def _change(
        self,
        scope: str,
        item_id: str,
        actor: Principal,
        action: str,
        change: Callable[[ReviewItem, datetime], None],
    ) -> dict[str, Any]:
        def write() -> tuple[ReviewItem, dict[str, Any]]:
            with self.db.session(scope) as session:
                # FOR UPDATE on PostgreSQL: two reviewers answering at once are serialised
                # (SQLite's BEGIN IMMEDIATE already is).
                item = session.scalars(
                    select(ReviewItem).where(ReviewItem.id == item_id).with_for_update()
                ).first()
                if item is None:
                    raise NotFound(f"No review {item_id!r}.", param="id", code="review_not_found")
                if item.status not in OPEN_STATUSES:
                    raise Conflict(
                        f"Review {item.id} is already {item.status}.", code="review_closed"
                    )
                now = datetime.now(UTC)
                change(item, now)
                item.updated_at = now
                session.flush()
                return item, item_payload(item, now)

        try:
            item, payload = await self._run(write)
        except (NotFound, Conflict):
            self.governance.audit(
                tenant=actor.tenant,
                actor=actor.key_id,
                action=action,
                target=item_id,
                outcome="refused",
            )
            raise
        self._audit(item, actor.key_id, action)
        if action != "review.claimed":
            await self.webhooks.announce(item.tenant_id, action, payload)
        return payload

    def _audit(self, item: ReviewItem, actor: str, action: str) -> None:
        self.governance.audit(
            tenant=item.tenant_id,
            actor=actor,
            action=action,
            target=item.id,
            outcome=item.status,
            details={"kind": item.kind, "reason": item.reason},
        )
