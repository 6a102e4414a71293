"""The tamper-evident audit trail: an append-only, keyed hash chain of security events.

Each record's ``hash`` is an HMAC-SHA256, under a key derived from the server
secret (:mod:`iatros.governance.secrets`), over the previous record's hash and the
record's own canonical fields (its sequence number and key id included). Editing,
deleting or reordering a record breaks the chain at that point, and, unlike a
plain hash, the chain cannot be recomputed by someone who can write the database
but does not hold the secret. ``audit_head`` (updated in the same transaction)
reveals a truncated tail; signed anchors kept outside the database
(:mod:`iatros.governance.anchors`) reveal a truncation that also moved the head.

Records written before the chain was keyed have no ``key_id`` and a plain SHA-256
link (:func:`link_hash`); they still verify, and verification counts them. No
unkeyed record may follow a keyed one, nor come after an anchored record: that
would be a rewrite that dropped the key.

Records carry references, never prompt text or patient identifiers in clear.
Links are added by one writer at a time: ``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL, so several workers and instances share one chain.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from iatros.governance.anchors import Anchor, AnchorLog
from iatros.governance.secrets import Keyring
from iatros.store.db import PLATFORM, Database
from iatros.store.models import AuditHead, AuditRecord

if TYPE_CHECKING:
    from iatros.config import Settings

GENESIS = "0" * 64
PURPOSE = "audit-chain"


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


def _body(seq: int, fields: dict[str, Any], key_id: str | None) -> bytes:
    body = {
        "seq": seq,
        "event_id": fields["event_id"],
        "ts": fields["ts"],
        "tenant_id": fields["tenant_id"],
        "actor": fields["actor"],
        "action": fields["action"],
        "target": fields["target"],
        "outcome": fields["outcome"],
        "details": fields["details"],
    }
    if key_id is not None:
        body["key_id"] = key_id
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def link_hash(prev_hash: str, seq: int, fields: dict[str, Any]) -> str:
    """The unkeyed link of records written before the chain was keyed (anyone can compute it)."""
    return hashlib.sha256(prev_hash.encode() + _body(seq, fields, None)).hexdigest()


def keyed_link(
    keyring: Keyring, key_id: str, prev_hash: str, seq: int, fields: dict[str, Any]
) -> str | None:
    """The keyed link (None if ``key_id`` is not a secret of the keyring)."""
    return keyring.mac(key_id, PURPOSE, prev_hash.encode() + _body(seq, fields, key_id))


def _lock(session: Session) -> None:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7312002)"))


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    checked: int
    broken_id: int | None = None
    reason: str = ""
    unkeyed: int = 0
    """Records linked with the plain hash of the chain's first version (before keying)."""
    keys: dict[str, int] = field(default_factory=dict)
    """Keyed records per key id."""
    anchors: int = 0
    """Anchors whose record was found with the anchored hash."""
    newest_anchor: int | None = None


class AuditChain:
    """Appends keyed links to the chain and verifies it, with anchors outside the database."""

    def __init__(self, db: Database, keyring: Keyring, anchors: AnchorLog | None = None) -> None:
        self.db = db
        self.keyring = keyring
        self.anchors = anchors

    def append(self, events: list[dict[str, Any]]) -> int:
        """Add events to the chain (skipping any already stored). Returns how many were added."""
        if not events:
            return 0
        kid = self.keyring.current_id
        with self.db.session(PLATFORM) as session:
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
                digest = keyed_link(self.keyring, kid, prev, seq, fields)
                assert digest is not None  # the current key is always in the keyring
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
                        key_id=kid,
                    )
                )
                last_id, prev = seq, digest
                added += 1
            if added:
                if head is None:
                    session.add(AuditHead(id=1, last_id=last_id, last_hash=prev))
                else:
                    head.last_id, head.last_hash = last_id, prev
        if added and self.anchors is not None:
            self.anchors.note(last_id, prev)
        return added

    def newest_key_unknown(self) -> str | None:
        """The secret that keyed the newest record, if the keyring lacks it (checked at start).

        Rotating ``IATROS_SECRET_KEY`` without listing the old one in
        ``IATROS_SECRET_KEYS_OLD`` would otherwise go unnoticed until the next
        ``iatros audit verify`` fails. One indexed row, so start-up stays fast.
        """
        with self.db.session(PLATFORM) as session:
            kid = session.scalars(
                select(AuditRecord.key_id).order_by(AuditRecord.id.desc()).limit(1)
            ).first()
        return kid if kid is not None and kid not in self.keyring.ids() else None

    def anchor_due(self) -> bool:
        """Whether :meth:`tick` would write an anchor now (no I/O: cheap to ask often)."""
        return self.anchors is not None and self.anchors.due()

    def tick(self) -> None:
        """Write a pending anchor once its interval has passed."""
        if self.anchors is not None:
            self.anchors.tick()

    def close(self) -> None:
        """Anchor the newest head now (on shutdown)."""
        if self.anchors is not None:
            self.anchors.flush()

    def verify(self, anchors: list[Anchor] | None = None) -> Verification:
        return verify(self.db, self.keyring, anchors or [])


def anchor_path(settings: Settings) -> Path:
    return settings.audit.anchor_file or settings.data_dir / "audit-anchors.jsonl"


def keyring_from(settings: Settings) -> Keyring:
    return Keyring.load(
        settings.secret_key.get_secret_value() if settings.secret_key else None,
        settings.secret_keys_old.get_secret_value() if settings.secret_keys_old else None,
        settings.data_dir,
    )


def open_chain(settings: Settings, db: Database) -> AuditChain:
    """The chain as configured: keyed with the server secret, anchored to the anchor file."""
    keyring = keyring_from(settings)
    anchors = AnchorLog(
        keyring,
        anchor_path(settings),
        interval_s=settings.audit.anchor_interval_s,
        url=settings.audit.anchor_url,
    )
    return AuditChain(db, keyring, anchors)


def _fail(checked: int, broken: int | None, reason: str, **counts: Any) -> Verification:
    return Verification(False, checked, broken, reason, **counts)


def verify(db: Database, keyring: Keyring, anchors: list[Anchor]) -> Verification:
    """Recompute the chain from the first record; name the first one that does not hold.

    Then check the head, and that every anchor is signed with a known key and matches
    its record (a chain that ends before an anchored record was truncated).
    """
    anchored: dict[int, list[Anchor]] = {}
    for anchor in anchors:
        valid = anchor.valid(keyring)
        if valid is None:
            return _fail(
                0,
                None,
                f"anchor on line {anchor.line} was signed with secret {anchor.key_id}, which is "
                "not configured (IATROS_SECRET_KEY, IATROS_SECRET_KEYS_OLD)",
            )
        if not valid:
            return _fail(
                0, None, f"anchor on line {anchor.line}: its signature does not hold (edited)"
            )
        anchored.setdefault(anchor.seq, []).append(anchor)
    first_anchor = min(anchored) if anchored else None
    prev = GENESIS
    expected_id = 1
    checked = 0
    matched = 0
    keys: Counter[str] = Counter()
    unkeyed = 0
    with db.session(PLATFORM) as session:
        rows = session.execute(select(AuditRecord).order_by(AuditRecord.id)).scalars()
        for record in rows:
            counts = {"unkeyed": unkeyed, "keys": dict(keys), "anchors": matched}
            if record.id != expected_id:
                return _fail(
                    checked,
                    record.id,
                    f"record {record.id}: expected record {expected_id} before it "
                    "(records deleted or renumbered)",
                    **counts,
                )
            if record.prev_hash != prev:
                return _fail(
                    checked,
                    record.id,
                    f"record {record.id}: its link to the previous record is broken "
                    "(a record before it was deleted, reordered or edited)",
                    **counts,
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
            if record.key_id is None:
                if keys:
                    return _fail(
                        checked,
                        record.id,
                        f"record {record.id}: not keyed, but records before it are "
                        "(the chain was rewritten without the key)",
                        **counts,
                    )
                if first_anchor is not None and record.id > first_anchor:
                    return _fail(
                        checked,
                        record.id,
                        f"record {record.id}: not keyed, but it comes after anchored record "
                        f"{first_anchor} (the chain was rewritten without the key)",
                        **counts,
                    )
                expected = link_hash(prev, record.id, fields)
            else:
                linked = keyed_link(keyring, record.key_id, prev, record.id, fields)
                if linked is None:
                    return _fail(
                        checked,
                        record.id,
                        f"record {record.id}: keyed with secret {record.key_id}, which is not "
                        "configured (IATROS_SECRET_KEY, IATROS_SECRET_KEYS_OLD)",
                        **counts,
                    )
                expected = linked
            if not hmac.compare_digest(expected, record.hash):
                return _fail(
                    checked,
                    record.id,
                    f"record {record.id}: its content was changed "
                    "(or the chain was recomputed without the key)",
                    **counts,
                )
            for anchor in anchored.get(record.id, ()):
                if anchor.hash != record.hash:
                    return _fail(
                        checked,
                        record.id,
                        f"record {record.id}: differs from the anchor of {anchor.ts} "
                        "(history was rewritten)",
                        **counts,
                    )
                matched += 1
            if record.key_id is None:
                unkeyed += 1
            else:
                keys[record.key_id] += 1
            prev = record.hash
            expected_id += 1
            checked += 1
        counts = {"unkeyed": unkeyed, "keys": dict(keys), "anchors": matched}
        last = expected_id - 1
        head = session.get(AuditHead, 1)
        if head is not None and (head.last_id != last or head.last_hash != prev):
            return _fail(
                checked,
                head.last_id,
                f"the chain ends at record {last} but its head says record "
                f"{head.last_id}: records were removed from the end",
                **counts,
            )
        if head is None and checked:
            return _fail(checked, None, "the chain head is missing", **counts)
    if anchored and max(anchored) > last:
        newest = max(anchored)
        return _fail(
            checked,
            newest,
            f"the chain ends at record {last} but an anchor of {anchored[newest][0].ts} "
            f"vouches for record {newest}: records were removed from the end",
            **counts,
        )
    return Verification(
        True,
        checked,
        unkeyed=unkeyed,
        keys=dict(keys),
        anchors=matched,
        newest_anchor=max(anchored) if anchored else None,
    )
