"""The states of an encounter whose recording a background job transcribes.

``transcribing`` (progress in the sealed transcript's ``job``: chunks done and in all)
until the job stores the transcript and the draft note together (``draft``), or fails
(``failed``, with its error) or is cancelled. Every change is conditional on the state
it expects, so a late write of a cancelled job changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update

from iatros.clinical.scribe.records import Encounter, EncounterStore, NoteVersion, utc_now
from iatros.errors import Conflict
from iatros.store.db import PLATFORM


class PendingEncounters:
    def __init__(self, store: EncounterStore) -> None:
        self.store = store

    def _pending(self, session: Any, encounter_id: str) -> tuple[Encounter, NoteVersion]:
        row = self.store.row(session, encounter_id)
        return row, self.store.current(session, row)

    def _transcript(self, row: Encounter) -> dict[str, Any]:
        aad = self.store.aad(row.tenant_id, row.id, "transcript")
        return cast(dict[str, Any], self.store.sealer.open_json(row.transcript, aad))

    def _set_transcript(self, row: Encounter, transcript: dict[str, Any]) -> None:
        aad = self.store.aad(row.tenant_id, row.id, "transcript")
        row.transcript = self.store.sealer.seal_json(transcript, aad)

    def _set_state(self, row: Encounter, current: NoteVersion, status: str) -> None:
        row.status = current.status = status
        row.updated_at = current.updated_at = utc_now()

    def job_update(self, tenant: str, encounter_id: str, **job: Any) -> str:
        """Merge ``job`` into the transcript's job record; returns the encounter's state.

        Written only while the encounter is ``transcribing`` (a cancelled one is left as
        it is, and the job sees the state it returns and stops).
        """
        with self.store.db.session(tenant) as session:
            row, current = self._pending(session, encounter_id)
            if current.status == "transcribing":
                transcript = self._transcript(row)
                transcript["job"] = {**(transcript.get("job") or {}), **job}
                self._set_transcript(row, transcript)
                row.updated_at = utc_now()
            return current.status

    def restart(self, tenant: str, encounter_id: str) -> str:
        """A failed transcription run again (its dead job retried): back to transcribing."""
        with self.store.db.session(tenant) as session:
            row, current = self._pending(session, encounter_id)
            if current.status == "failed":
                transcript = self._transcript(row)
                transcript["job"] = {**(transcript.get("job") or {}), "error": None,
                                     "chunks_done": 0}  # fmt: skip
                self._set_transcript(row, transcript)
                self._set_state(row, current, "transcribing")
            return current.status

    def complete(
        self,
        tenant: str,
        encounter_id: str,
        transcript: dict[str, Any],
        note: dict[str, Any],
        language: str,
    ) -> bool:
        """The transcript and the draft note in one step; False if no longer transcribing."""
        with self.store.db.session(tenant) as session:
            row, current = self._pending(session, encounter_id)
            if current.status != "transcribing":
                return False
            job = self._transcript(row).get("job") or {}
            total = job.get("chunks_total", 0)
            self._set_transcript(row, {**transcript, "job": {**job, "chunks_done": total}})
            current.content = self.store.sealer.seal_json(
                note, self.store.aad(row.tenant_id, row.id, f"note:{current.version}")
            )
            row.language = language[:8]
            self._set_state(row, current, "draft")
            return True

    def fail(self, tenant: str, encounter_id: str, message: str, code: str | None) -> bool:
        """The job failed: the encounter says why (no half transcript is kept)."""
        with self.store.db.session(tenant) as session:
            row, current = self._pending(session, encounter_id)
            if current.status != "transcribing":
                return False
            transcript = self._transcript(row)
            transcript["job"] = {**(transcript.get("job") or {}),
                                 "error": {"message": message, "code": code}}  # fmt: skip
            self._set_transcript(row, transcript)
            self._set_state(row, current, "failed")
            return True

    def cancel(self, tenant: str, encounter_id: str) -> str | None:
        """Stop waiting for the transcript; returns the job id to cancel (409 if not running)."""
        with self.store.db.session(tenant) as session:
            row, current = self._pending(session, encounter_id)
            if current.status != "transcribing":
                raise Conflict(
                    f"The encounter is {current.status}, not transcribing: nothing to cancel.",
                    code="not_transcribing",
                )
            self._set_state(row, current, "cancelled")
            job = self._transcript(row).get("job") or {}
            return cast(str | None, job.get("id"))

    def stale(self, before: datetime) -> list[tuple[str, str, datetime, dict[str, Any]]]:
        """Encounters of every tenant still ``transcribing`` and not updated since
        ``before``: (tenant, id, last update, transcript's job and resume data)."""
        with self.store.db.session(PLATFORM) as session:
            rows = session.scalars(
                select(Encounter).where(
                    Encounter.status == "transcribing", Encounter.updated_at < before
                )
            ).all()
            out = []
            for row in rows:
                transcript = self._transcript(row)
                found = {"job": transcript.get("job") or {}, "resume": transcript.get("resume")}
                out.append((row.tenant_id, row.id, row.updated_at, found))
            return out

    def claim(self, tenant: str, encounter_id: str, seen: datetime) -> bool:
        """Take a stale encounter for recovery: a compare-and-set on its last update, so
        that of two instances sweeping at once only one queues it again."""
        with self.store.db.session(tenant) as session:
            result = session.execute(
                update(Encounter)
                .where(
                    Encounter.id == encounter_id,
                    Encounter.tenant_id == tenant,
                    Encounter.status == "transcribing",
                    Encounter.updated_at == seen,
                )
                .values(updated_at=utc_now())
            )
            return bool(getattr(result, "rowcount", 0) == 1)
