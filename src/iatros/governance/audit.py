"""The tamper-evident audit trail: an append-only hash chain of security events.

Each record's ``hash`` is SHA-256 over the previous record's hash and the
record's own canonical fields (its sequence number included), so editing,
deleting or reordering any record breaks the chain at that point, and
``audit_head`` (updated in the same transaction) reveals a truncated tail.
Records carry references, never prompt text or patient identifiers in clear.

Links are added by one writer at a time: ``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL, so several workers and instances share one chain.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from iatros.store.db import PLATFORM, Database
from iatros.store.models import AuditHead, AuditRecord

GENESIS = "0" * 64


def event(
    *,
    tenant: str,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new audit event, ready for the journal (its place in the chain comes later)."""
    return {
        "event_id": "evt_" + uuid.uuid4().hex,
        "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
        "tenant_id": tenant,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": details or {},
    }


def _canon_ts(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def link_hash(prev_hash: str, seq: int, fields: dict[str, Any]) -> str:
    body = orjson.dumps(
        {
            "seq": seq,
            "event_id": fields["event_id"],
            "ts": fields["ts"],
            "tenant_id": fields["tenant_id"],
            "actor": fields["actor"],
            "action": fields["action"],
            "target": fields["target"],
            "outcome": fields["outcome"],
            "details": fields["details"],
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def _lock(session: Session) -> None:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7312002)"))


def append_events(db: Database, events: list[dict[str, Any]]) -> int:
    """Add events to the chain (skipping any already stored). Returns how many were added."""
    if not events:
        return 0
    with db.session(PLATFORM) as session:
        _lock(session)
        ids = [e["event_id"] for e in events]
        known = set(
            session.scalars(select(AuditRecord.event_id).where(AuditRecord.event_id.in_(ids)))
        )
        head = session.get(AuditHead, 1, with_for_update=True)
        last_id = head.last_id if head else 0
        prev = head.last_hash if head else GENESIS
        added = 0
        for fields in events:
            if fields["event_id"] in known:
                continue
            known.add(fields["event_id"])
            seq = last_id + 1
            digest = link_hash(prev, seq, fields)
            session.add(
                AuditRecord(
                    id=seq,
                    event_id=fields["event_id"],
                    ts=datetime.fromisoformat(fields["ts"]),
                    tenant_id=fields["tenant_id"],
                    actor=fields["actor"],
                    action=fields["action"],
                    target=fields["target"],
                    outcome=fields["outcome"],
                    details=fields["details"],
                    prev_hash=prev,
                    hash=digest,
                )
            )
            last_id, prev = seq, digest
            added += 1
        if added:
            if head is None:
                session.add(AuditHead(id=1, last_id=last_id, last_hash=prev))
            else:
                head.last_id, head.last_hash = last_id, prev
    return added


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str = ""


def verify(db: Database) -> Verification:
    """Recompute the chain from the first record; name the first one that does not hold."""
    prev = GENESIS
    expected_id = 1
    checked = 0
    with db.session(PLATFORM) as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.id)).scalars()
        for record in rows:
            if record.id != expected_id:
                return Verification(
                    False,
                    checked,
                    record.id,
                    f"record {record.id}: expected record {expected_id} before it "
                    "(records deleted or renumbered)",
                )
            if record.prev_hash != prev:
                return Verification(
                    False,
                    checked,
                    record.id,
                    f"record {record.id}: its link to the previous record is broken "
                    "(a record before it was deleted, reordered or edited)",
                )
            fields = {
                "event_id": record.event_id,
                "ts": _canon_ts(record.ts),
                "tenant_id": record.tenant_id,
                "actor": record.actor,
                "action": record.action,
                "target": record.target,
                "outcome": record.outcome,
                "details": record.details,
            }
            if link_hash(prev, record.id, fields) != record.hash:
                return Verification(
                    False, checked, record.id, f"record {record.id}: its content was changed"
                )
            prev = record.hash
            expected_id += 1
            checked += 1
        head = session.get(AuditHead, 1)
        if head is not None and (head.last_id != expected_id - 1 or head.last_hash != prev):
            return Verification(
                False,
                checked,
                head.last_id,
                f"the chain ends at record {expected_id - 1} but its head says record "
                f"{head.last_id}: records were removed from the end",
            )
        if head is None and checked:
            return Verification(False, checked, None, "the chain head is missing")
    return Verification(True, checked)
