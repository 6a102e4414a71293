"""Encounters and note versions in the store, sealed at rest, scoped to a tenant.

Tables ``scribe_encounters`` and ``scribe_note_versions`` (migration 0005). Everything
that identifies or describes a patient — the transcript, the audio, the patient and
clinician details, the note itself — is sealed (:mod:`.crypto`); in clear are only ids,
states, timestamps, the template and a keyed hash of the patient id (for the audit).

A note has versions. A draft version is edited in place; signing freezes it (its content
hash is recorded) and the store refuses to change a signed version again. An amendment
is a new draft version copied from the signed one.

An encounter made from a long recording starts ``transcribing`` (its version 1 too, with
an empty note) while a background job transcribes it; the job's progress lives in the
sealed transcript (``job``: chunks done and in all), then the encounter becomes a
``draft`` with its note, or ``failed`` (with the job's error) or ``cancelled``. Only a
draft can be edited or signed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from iatros.clinical.scribe.crypto import Sealer
from iatros.errors import Conflict, NotFound
from iatros.store.db import Database
from iatros.store.models import Base, TenantScoped

PENDING = ("transcribing", "failed", "cancelled")
"""States of an encounter whose note does not exist yet."""


class Encounter(TenantScoped, Base):
    __tablename__ = "scribe_encounters"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(32))
    patient_ref: Mapped[str | None] = mapped_column(String(80))
    template: Mapped[str] = mapped_column(String(32))
    language: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    transcript: Mapped[bytes] = mapped_column(LargeBinary)
    details: Mapped[bytes] = mapped_column(LargeBinary)
    audio: Mapped[bytes | None] = mapped_column(LargeBinary)
    audio_type: Mapped[str | None] = mapped_column(String(16))
    audio_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class NoteVersion(TenantScoped, Base):
    __tablename__ = "scribe_note_versions"
    __table_args__ = (UniqueConstraint("encounter_id", "version", name="uq_scribe_note_version"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    encounter_id: Mapped[str] = mapped_column(ForeignKey("scribe_encounters.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    signed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signed_by: Mapped[str | None] = mapped_column(String(32))
    content_sha256: Mapped[str | None] = mapped_column(String(64))


@dataclass(slots=True)
class EncounterView:
    """An encounter opened (unsealed) for its tenant."""

    id: str
    tenant: str
    created_at: datetime
    updated_at: datetime
    template: str
    language: str
    source: str
    status: str
    version: int
    transcript: dict[str, Any]
    details: dict[str, Any]
    note: dict[str, Any]
    versions: list[dict[str, Any]]
    has_audio: bool
    audio_deleted_at: datetime | None

    @property
    def progress(self) -> float:
        """Chunks transcribed / chunks in all (1.0 once the transcript is there)."""
        job = self.transcript.get("job") or {}
        if self.status not in PENDING or not job.get("chunks_total"):
            return 1.0 if self.status not in PENDING else 0.0
        return round(float(job.get("chunks_done", 0)) / float(job["chunks_total"]), 4)

    def as_dict(self) -> dict[str, Any]:
        transcript = {k: v for k, v in self.transcript.items() if k not in ("job", "resume")}
        return {
            "id": self.id,
            "object": "scribe.encounter",
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "template": self.template,
            "language": self.language,
            "source": self.source,
            "status": self.status,
            "version": self.version,
            "patient": self.details.get("patient", {}),
            "clinician": self.details.get("clinician", {}),
            "transcript": transcript,
            "progress": self.progress,
            "job": self.transcript.get("job"),
            "note": self.note,
            "versions": self.versions,
            "audio": {
                "kept": self.has_audio,
                "deleted_at": self.audio_deleted_at.isoformat() if self.audio_deleted_at else None,
            },
        }


def utc_now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite gives back naive datetimes; every one stored here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return _aware(value).isoformat() if value is not None else None


def _digest(content: dict[str, Any]) -> str:
    import orjson

    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


class EncounterStore:
    def __init__(self, db: Database, sealer: Sealer) -> None:
        self.db = db
        self.sealer = sealer

    def aad(self, tenant: str, encounter_id: str, field: str) -> str:
        return f"{tenant}|{encounter_id}|{field}"

    def create(
        self,
        *,
        tenant: str,
        actor: str,
        patient_ref: str | None,
        template: str,
        language: str,
        source: str,
        transcript: dict[str, Any],
        details: dict[str, Any],
        note: dict[str, Any],
        audio: bytes | None,
        audio_type: str | None,
        status: str = "draft",
    ) -> str:
        """A new encounter (``status``: ``draft``, or ``transcribing`` for a queued job)."""
        eid = "enc_" + secrets.token_hex(12)
        now = utc_now()
        seal = self.sealer.seal_json
        with self.db.session(tenant) as session:
            session.add(
                Encounter(
                    id=eid,
                    tenant_id=tenant,
                    created_at=now,
                    updated_at=now,
                    created_by=actor[:32],
                    patient_ref=patient_ref,
                    template=template,
                    language=language,
                    source=source,
                    status=status,
                    version=1,
                    transcript=seal(transcript, self.aad(tenant, eid, "transcript")),
                    details=seal(details, self.aad(tenant, eid, "details")),
                    audio=(
                        self.sealer.seal(audio, self.aad(tenant, eid, "audio")) if audio else None
                    ),
                    audio_type=audio_type,
                )
            )
            session.flush()
            session.add(
                NoteVersion(
                    tenant_id=tenant,
                    encounter_id=eid,
                    version=1,
                    status=status,
                    content=seal(note, self.aad(tenant, eid, "note:1")),
                    created_at=now,
                    created_by=actor[:32],
                    updated_at=now,
                )
            )
        return eid

    def row(self, session: Any, encounter_id: str) -> Encounter:
        row = session.get(Encounter, encounter_id)
        tenant = session.info["tenant"]
        # session.get reads the identity map first: check the tenant here as well.
        if row is None or (tenant != "*" and row.tenant_id != tenant):
            raise NotFound(
                f"No encounter {encounter_id!r}.", param="id", code="encounter_not_found"
            )
        return cast(Encounter, row)

    def _versions(self, session: Any, encounter_id: str) -> list[NoteVersion]:
        return list(
            session.scalars(
                select(NoteVersion)
                .where(NoteVersion.encounter_id == encounter_id)
                .order_by(NoteVersion.version)
            )
        )

    def get(self, tenant: str, encounter_id: str, version: int | None = None) -> EncounterView:
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            versions = self._versions(session, encounter_id)
            wanted = version or row.version
            current = next((v for v in versions if v.version == wanted), None)
            if current is None:
                raise NotFound(f"No version {wanted} of this note.", param="version")
            t = row.tenant_id
            return EncounterView(
                id=row.id,
                tenant=t,
                created_at=_aware(row.created_at),
                updated_at=_aware(row.updated_at),
                template=row.template,
                language=row.language,
                source=row.source,
                status=current.status,
                version=current.version,
                transcript=cast(
                    dict[str, Any],
                    self.sealer.open_json(row.transcript, self.aad(t, row.id, "transcript")),
                ),
                details=cast(
                    dict[str, Any],
                    self.sealer.open_json(row.details, self.aad(t, row.id, "details")),
                ),
                note=cast(
                    dict[str, Any],
                    self.sealer.open_json(
                        current.content, self.aad(t, row.id, f"note:{current.version}")
                    ),
                ),
                versions=[
                    {
                        "version": v.version,
                        "status": v.status,
                        "created_at": _iso(v.created_at),
                        "signed_at": _iso(v.signed_at),
                        "signed_by": v.signed_by,
                        "content_sha256": v.content_sha256,
                    }
                    for v in versions
                ],
                has_audio=row.audio is not None,
                audio_deleted_at=_aware(row.audio_deleted_at) if row.audio_deleted_at else None,
            )

    def list(self, tenant: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.db.session(tenant) as session:
            rows = session.scalars(
                select(Encounter).order_by(Encounter.created_at.desc()).limit(limit)
            )
            return [
                {
                    "id": r.id,
                    "object": "scribe.encounter",
                    "created_at": _iso(r.created_at),
                    "template": r.template,
                    "language": r.language,
                    "status": r.status,
                    "version": r.version,
                }
                for r in rows
            ]

    def current(self, session: Any, row: Encounter) -> NoteVersion:
        found = session.scalars(
            select(NoteVersion).where(
                NoteVersion.encounter_id == row.id, NoteVersion.version == row.version
            )
        ).first()
        assert found is not None
        return cast(NoteVersion, found)

    def save_draft(
        self, tenant: str, encounter_id: str, note: dict[str, Any], base_version: int | None
    ) -> int:
        """Replace the current draft's content; a signed note cannot be edited (409)."""
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            if base_version is not None and base_version != row.version:
                raise Conflict(
                    f"The note is at version {row.version}, not {base_version}; reload it.",
                    param="version",
                    code="version_mismatch",
                )
            current = self.current(session, row)
            if current.status == "signed":
                raise Conflict(
                    "The note is signed and cannot be edited; amend it to make a new version.",
                    code="note_signed",
                )
            ready(current.status)
            current.content = self.sealer.seal_json(
                note, self.aad(row.tenant_id, row.id, f"note:{current.version}")
            )
            current.updated_at = row.updated_at = utc_now()
            return current.version

    def sign(self, tenant: str, encounter_id: str, actor: str, signer: dict[str, Any]) -> int:
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            current = self.current(session, row)
            if current.status == "signed":
                raise Conflict(
                    f"Version {current.version} of this note is already signed.",
                    code="already_signed",
                )
            ready(current.status)
            aad = self.aad(row.tenant_id, row.id, f"note:{current.version}")
            note = cast(dict[str, Any], self.sealer.open_json(current.content, aad))
            now = utc_now()
            note["signature"] = {**signer, "signed_at": now.isoformat(), "key_id": actor}
            current.content = self.sealer.seal_json(note, aad)
            current.status = "signed"
            current.signed_at = now
            current.signed_by = actor[:32]
            current.content_sha256 = _digest(note)
            current.updated_at = row.updated_at = now
            row.status = "signed"
            return current.version

    def amend(self, tenant: str, encounter_id: str, actor: str) -> int:
        """A new draft version, copied from the signed one (which stays as it was)."""
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            current = self.current(session, row)
            ready(current.status)
            if current.status != "signed":
                raise Conflict(
                    f"Version {current.version} is still a draft: edit it instead.",
                    code="note_not_signed",
                )
            aad = self.aad(row.tenant_id, row.id, f"note:{current.version}")
            note = cast(dict[str, Any], self.sealer.open_json(current.content, aad))
            note.pop("signature", None)
            note["amends"] = current.version
            now = utc_now()
            version = current.version + 1
            session.add(
                NoteVersion(
                    tenant_id=row.tenant_id,
                    encounter_id=row.id,
                    version=version,
                    status="draft",
                    content=self.sealer.seal_json(
                        note, self.aad(row.tenant_id, row.id, f"note:{version}")
                    ),
                    created_at=now,
                    created_by=actor[:32],
                    updated_at=now,
                )
            )
            row.version = version
            row.status = "draft"
            row.updated_at = now
            return version

    def audio(self, tenant: str, encounter_id: str) -> tuple[bytes, str] | None:
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            if row.audio is None:
                return None
            aad = self.aad(row.tenant_id, row.id, "audio")
            return self.sealer.open(row.audio, aad), row.audio_type or "audio"

    def drop_audio(self, tenant: str, encounter_id: str) -> bool:
        """Delete the recording (retention); the transcript and note stay."""
        with self.db.session(tenant) as session:
            row = self.row(session, encounter_id)
            if row.audio is None:
                return False
            row.audio = None
            row.audio_deleted_at = utc_now()
            return True


def ready(status: str) -> None:
    """A note that does not exist yet (transcription pending, failed, cancelled): 409."""
    if status in PENDING:
        what = {
            "transcribing": "the recording is still being transcribed; wait for the draft",
            "failed": "the transcription failed; see the encounter's job error",
            "cancelled": "the transcription was cancelled",
        }[status]
        raise Conflict(f"There is no note yet: {what}.", code="note_not_ready")
