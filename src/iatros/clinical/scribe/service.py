"""The scribe service: encounters from audio or text, drafts, edits, sign-off, amendments.

Transport-free like the chat service: the HTTP router (``api/scribe.py``) and the CLI
(``iatros scribe``) both call it. It transcribes through the :class:`Transcriber`, drafts
through the :class:`ChatService`, and keeps everything sealed in the store; every access
is audited with the patient id as a keyed hash, never in clear.

A long recording (``scribe.background_after_s``) is transcribed in chunks by the job
``scribe.transcribe`` (:mod:`iatros.jobs`: in process, or any ``iatros worker`` on the
shared Redis queue): the encounter is ``transcribing`` with its progress until the job
has the transcript and the draft note, or has failed with the chunk that failed and why.

Why this module is long: it is the one facade of every encounter operation (create from
audio or text, the background job, edit, sign, amend, export, send), each a few lines of
orchestration over the modules that do the work (drafting, linking, extraction, pending,
recovery, export); split, the audit and tenant checks every operation shares would scatter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from iatros.auth import Principal
from iatros.clinical.export.fhir import build_bundle, send_bundle
from iatros.clinical.export.pdf import render_pdf
from iatros.clinical.scribe.crypto import Sealer
from iatros.clinical.scribe.drafting import DraftContext, NoteDrafter
from iatros.clinical.scribe.extraction import extract
from iatros.clinical.scribe.linking import link
from iatros.clinical.scribe.pending import PendingEncounters
from iatros.clinical.scribe.records import EncounterStore, EncounterView, ready
from iatros.clinical.scribe.recovery import TranscriptionRecovery
from iatros.clinical.scribe.settings import ScribeSettings
from iatros.clinical.scribe.speakers import SpeakerModel
from iatros.clinical.scribe.templates import NoteTemplate, templates
from iatros.clinical.scribe.transcript import Line, from_dicts, from_result, from_text
from iatros.clinical.speech.audio import probe
from iatros.clinical.speech.chunking import ChunkPlan, chunk_count
from iatros.clinical.speech.long_audio import Progress, transcribe_chunked
from iatros.clinical.speech.transcriber import Transcriber, Transcription
from iatros.errors import Conflict, GatewayError, InvalidRequest, NotFound
from iatros.gateway.chat import ChatService
from iatros.gateway.context import RequestContext
from iatros.governance.service import Governance
from iatros.jobs import JobContext, JobNotFound, JobQueue, PermanentError

TRANSCRIBE_JOB = "scribe.transcribe"
log = logging.getLogger("iatros.scribe")


class _Stopped(Exception):
    """The encounter left ``transcribing`` (cancelled) while its job ran."""


def coverage(sections: list[dict[str, Any]]) -> dict[str, Any]:
    """How much of the note is linked to the transcript."""
    items = [s for section in sections for s in section["statements"]]
    linked = sum(1 for s in items if not s["unsupported"])
    return {
        "statements": len(items),
        "linked": linked,
        "unsupported": len(items) - linked,
        "share_linked": round(linked / len(items), 3) if items else None,
    }


class ScribeService:
    def __init__(
        self,
        chat: ChatService,
        transcriber: Transcriber,
        governance: Governance,
        settings: ScribeSettings,
    ) -> None:
        self.chat = chat
        self.transcriber = transcriber
        self.governance = governance
        self.settings = settings
        self.drafter = NoteDrafter(chat, settings)
        self.store = EncounterStore(governance.db, Sealer(governance.chain.keyring))
        self.pending = PendingEncounters(self.store)
        self.speakers = SpeakerModel(chat, settings.model, settings.speaker_model_max_lines)
        self.queue: JobQueue | None = None
        self.recovery: TranscriptionRecovery | None = None
        self.plan = ChunkPlan(settings.chunk_s, settings.chunk_overlap_s, settings.chunk_search_s)

    def attach_queue(self, queue: JobQueue) -> None:
        """Transcribe long recordings as ``scribe.transcribe`` jobs of ``queue``.

        A failure inside the job is final at once (``PermanentError``: the encounter says
        why); the attempts left are for a worker that died mid-job, whose job another
        worker runs again from the start (the encounter is still ``transcribing``)."""
        queue.register(TRANSCRIBE_JOB, self._run_job, max_attempts=3)
        self.queue = queue
        self.recovery = TranscriptionRecovery(
            self.pending, queue, TRANSCRIBE_JOB, stale_after_s=self.settings.stale_after_s,
            interval_s=self.settings.recovery_interval_s,
        )  # fmt: skip

    def start_recovery(self) -> None:
        """Look for interrupted transcriptions now and every ``recovery_interval_s``."""
        if self.recovery is not None:
            self.recovery.start()

    async def close(self) -> None:
        if self.recovery is not None:
            await self.recovery.close()

    def template(self, name: str | None) -> NoteTemplate:
        name = name or self.settings.default_template
        found = templates().get(name)
        if found is None:
            raise InvalidRequest(
                f"Unknown template {name!r} (templates: {', '.join(sorted(templates()))}).",
                param="template",
            )
        return found

    def _audit(self, principal: Principal, action: str, target: str, patient: str | None,
               **details: Any) -> None:  # fmt: skip
        if patient:
            details["patient"] = self.governance.patient_ref(patient)
        self.governance.audit(
            tenant=principal.tenant,
            actor=principal.key_id,
            action=action,
            target=target,
            details=details,
        )

    async def transcribe(
        self, principal: Principal, audio: bytes, filename: str, language: str | None
    ) -> dict[str, Any]:
        """Transcribe as a request of its own (endpoint ``audio``), accounted like one."""
        ctx = RequestContext(principal=principal, endpoint="audio")
        try:
            done = await self.transcriber.transcribe(ctx, audio, filename, language=language)
        except GatewayError as exc:
            ctx.status = exc.status
            raise
        finally:
            self.chat.finish(ctx)
        return _transcript(done)

    def _long(self, audio: bytes) -> tuple[str, float] | None:
        """(container, duration) when the recording goes the chunked way, else None.

        Blocking (it decodes the whole file, keeping nothing): run it in a thread. Bad
        files fail here with the same precise 4xx as a short one.
        """
        s, limits = self.settings, self.transcriber.settings
        container, duration = probe(audio, s.max_duration_s, s.max_file_bytes)
        if (
            duration > s.background_after_s
            or duration > limits.max_duration_s
            or len(audio) > limits.max_file_bytes
        ):
            return container, duration
        return None

    async def _transcribe_long(
        self, principal: Principal, audio: bytes, container: str, duration: float,
        language: str | None, progress: Progress,
    ) -> dict[str, Any]:  # fmt: skip
        ctx = RequestContext(principal=principal, endpoint="audio")
        try:
            done = await transcribe_chunked(
                self.transcriber, ctx, audio, container=container, duration_s=duration,
                max_duration_s=self.settings.max_duration_s, language=language,
                plan=self.plan, progress=progress,
            )  # fmt: skip
        except GatewayError as exc:
            ctx.status = exc.status
            raise
        finally:
            self.chat.finish(ctx)
        return {**_transcript(done), "chunks": chunk_count(duration, self.plan)}

    async def _note(
        self, principal: Principal, chosen: NoteTemplate, transcript: dict[str, Any],
        lang: str, patient_id: str | None, source: str,
    ) -> dict[str, Any]:  # fmt: skip
        """The draft note (and, for a recording, the model's speaker votes if enabled)."""
        lines = from_dicts(transcript["lines"])
        if source == "audio" and self.settings.speaker_model:
            await self.speakers.label(principal, patient_id, lines)
            transcript["lines"] = [line.as_dict() for line in lines]
        ctx = DraftContext(principal, patient_id, lang)
        sections = await self.drafter.draft(ctx, chosen, lines)
        return {
            "template": chosen.id,
            "title": chosen.label(lang),
            "sections": sections,
            "structured": extract(lines),
            "coverage": coverage(sections),
        }

    async def create(
        self,
        principal: Principal,
        *,
        template: str | None = None,
        language: str | None = None,
        text: str | None = None,
        audio: bytes | None = None,
        filename: str = "recording",
        patient: dict[str, Any] | None = None,
        clinician: dict[str, Any] | None = None,
        background: bool = True,
        progress: Progress | None = None,
    ) -> EncounterView:
        """A new encounter, drafted; or, for a long recording with ``background`` and a
        queue, ``transcribing`` at once with a job queued (the HTTP API's 202).

        ``background=False`` (the CLI) transcribes a long recording in chunks here,
        calling ``progress`` after each chunk."""
        chosen = self.template(template)
        patient = patient or {}
        patient_id = patient.get("id")
        if audio is not None:
            long = await asyncio.to_thread(self._long, audio)
            if long is not None and background and self.queue is not None:
                return await self._queue_long(
                    principal, chosen, audio, filename, long, language, patient, clinician
                )
            if long is not None:
                transcript = await self._transcribe_long(
                    principal, audio, *long, language, progress or _quiet
                )
            else:
                transcript = await self.transcribe(principal, audio, filename, language)
            source = "audio"
        else:
            lines = from_text(text or "")
            if not lines:
                raise InvalidRequest("The transcript is empty.", param="transcript")
            transcript = {"lines": [line.as_dict() for line in lines], "language": language}
            source = "transcript"
        lang = language or transcript.get("language") or "en"
        transcript["language"] = lang
        note = await self._note(principal, chosen, transcript, lang, patient_id, source)
        eid = await asyncio.to_thread(
            self.store.create,
            tenant=principal.tenant,
            actor=principal.key_id,
            patient_ref=self.governance.patient_ref(patient_id) if patient_id else None,
            template=chosen.id,
            language=lang,
            source=source,
            transcript=transcript,
            details={"patient": patient, "clinician": clinician or {}},
            note=note,
            audio=audio,
            audio_type=transcript.get("container"),
        )
        self._audit(principal, "scribe.encounter.create", eid, patient_id, source=source)
        return await asyncio.to_thread(self.store.get, principal.tenant, eid)

    async def get(
        self, principal: Principal, encounter_id: str, version: int | None = None,
        action: str = "scribe.encounter.read",
    ) -> EncounterView:  # fmt: skip
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id, version)
        self._audit(principal, action, encounter_id, view.details.get("patient", {}).get("id"))
        return view

    async def encounters(self, principal: Principal) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.store.list, principal.tenant)

    async def edit(
        self,
        principal: Principal,
        encounter_id: str,
        sections: list[dict[str, Any]],
        structured: dict[str, Any] | None,
        base_version: int | None,
    ) -> EncounterView:
        """The clinician's edits: statements re-linked (their own line choices kept)."""
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)
        chosen = self.template(view.template)
        lines: list[Line] = from_dicts(view.transcript["lines"])
        known = {line.n for line in lines}
        edited = {s["id"]: s for s in sections}
        unknown = [sid for sid in edited if chosen.section(sid) is None]
        if unknown:
            raise InvalidRequest(
                f"Unknown section {unknown[0]!r} for template {chosen.id!r}.",
                param="sections",
            )
        new_sections = []
        for old in view.note["sections"]:
            if old["id"] not in edited:
                new_sections.append(old)
                continue
            statements = []
            for item in edited[old["id"]]["statements"]:
                given = [n for n in item.get("lines") or [] if n in known]
                linked = link(item["text"], lines, given)
                if given:  # the clinician's own links stand
                    linked = {**linked, "lines": sorted(set(given) | set(linked["lines"]))}
                statements.append({"text": item["text"], **linked, "edited": True})
            new_sections.append({**old, "statements": statements})
        note = {**view.note, "sections": new_sections, "coverage": coverage(new_sections)}
        if structured is not None:
            note["structured"] = structured
        await asyncio.to_thread(
            self.store.save_draft, principal.tenant, encounter_id, note, base_version
        )
        patient_id = view.details.get("patient", {}).get("id")
        self._audit(principal, "scribe.note.edit", encounter_id, patient_id)
        return await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)

    async def sign(
        self, principal: Principal, encounter_id: str, signer: dict[str, Any]
    ) -> EncounterView:
        version = await asyncio.to_thread(
            self.store.sign, principal.tenant, encounter_id, principal.key_id, signer
        )
        dropped = False
        if self.settings.audio_retention == "until_signed":
            dropped = await asyncio.to_thread(self.store.drop_audio, principal.tenant, encounter_id)
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)
        patient_id = view.details.get("patient", {}).get("id")
        self._audit(
            principal, "scribe.note.sign", encounter_id, patient_id, version=version,
            audio_deleted=dropped,
        )  # fmt: skip
        return view

    async def export_pdf(
        self, principal: Principal, encounter_id: str, version: int | None = None
    ) -> tuple[EncounterView, bytes]:
        view = await self.get(principal, encounter_id, version, action="scribe.export.pdf")
        ready(view.status)  # no PDF of a note a background job has not written yet
        pdf = await asyncio.to_thread(render_pdf, view.as_dict(), self.settings.practice_name)
        return view, pdf

    async def export_fhir(
        self, principal: Principal, encounter_id: str, version: int | None = None
    ) -> tuple[EncounterView, dict[str, Any]]:
        """The FHIR document, with the PDF inside its DocumentReference."""
        view = await self.get(principal, encounter_id, version, action="scribe.export.fhir")
        ready(view.status)
        data = view.as_dict()

        def build() -> dict[str, Any]:
            pdf = render_pdf(data, self.settings.practice_name)
            return build_bundle(data, self.settings.practice_name, pdf)

        return view, await asyncio.to_thread(build)

    async def send_fhir(self, principal: Principal, encounter_id: str) -> dict[str, Any]:
        """POST the signed note's FHIR document to the configured server (``scribe.fhir_url``)."""
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)
        if view.status != "signed":
            raise Conflict(
                "Only a signed note is sent to the record system; sign it first.",
                code="note_not_signed",
            )
        if not self.settings.fhir_url:
            raise NotFound(
                "No FHIR server is configured (scribe.fhir_url).",
                code="fhir_server_not_configured",
            )
        _, bundle = await self.export_fhir(principal, encounter_id)
        outcome = await send_bundle(self.settings, bundle)
        patient_id = view.details.get("patient", {}).get("id")
        self._audit(principal, "scribe.export.fhir_send", encounter_id, patient_id,
                    status=outcome["status"], version=view.version)  # fmt: skip
        return outcome

    async def amend(self, principal: Principal, encounter_id: str) -> EncounterView:
        version = await asyncio.to_thread(
            self.store.amend, principal.tenant, encounter_id, principal.key_id
        )
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)
        patient_id = view.details.get("patient", {}).get("id")
        self._audit(principal, "scribe.note.amend", encounter_id, patient_id, version=version)
        return view

    # --- long recordings: the background job --------------------------------------------

    async def _queue_long(
        self, principal: Principal, chosen: NoteTemplate, audio: bytes, filename: str,
        long: tuple[str, float], language: str | None, patient: dict[str, Any],
        clinician: dict[str, Any] | None,
    ) -> EncounterView:  # fmt: skip
        """Store the encounter ``transcribing`` (audio sealed in it) and queue its job."""
        assert self.queue is not None
        container, duration = long
        patient_id = patient.get("id")
        total = chunk_count(duration, self.plan)
        resume = {  # what the job needs, kept sealed in the encounter to queue it again
            "key_id": principal.key_id, "role": principal.role,
            "capabilities": list(principal.capabilities), "language": language,
            "filename": filename[:200],
        }  # fmt: skip
        eid = await asyncio.to_thread(
            self.store.create,
            tenant=principal.tenant,
            actor=principal.key_id,
            patient_ref=self.governance.patient_ref(patient_id) if patient_id else None,
            template=chosen.id,
            language=language or "en",
            source="audio",
            transcript={
                "lines": [], "language": language, "duration_s": round(duration, 2),
                "container": container,
                "job": {"id": None, "chunks_done": 0, "chunks_total": total, "error": None},
                "resume": resume,
            },
            details={"patient": patient, "clinician": clinician or {}},
            note={"template": chosen.id, "title": chosen.label(language or "en"),
                  "sections": [], "structured": {}, "coverage": coverage([])},
            audio=audio,
            audio_type=container,
            status="transcribing",
        )  # fmt: skip
        payload = {"encounter": eid, **resume}
        try:
            job_id = await self.queue.enqueue(
                TRANSCRIBE_JOB, payload, tenant=principal.tenant, idempotency_key=eid
            )
        except Exception as exc:
            message = "The transcription could not be queued."
            await asyncio.to_thread(
                self.pending.fail, principal.tenant, eid, message, "queue_error"
            )
            raise GatewayError(f"The transcription could not be queued: {exc}") from None
        await asyncio.to_thread(self.pending.job_update, principal.tenant, eid, id=job_id)
        self._audit(principal, "scribe.encounter.create", eid, patient_id, source="audio",
                    background=True, job=job_id, chunks=total)  # fmt: skip
        return await asyncio.to_thread(self.store.get, principal.tenant, eid)

    async def _run_job(self, job: JobContext) -> dict[str, Any]:
        """The ``scribe.transcribe`` job: chunks → transcript → draft note, or ``failed``."""
        p, tenant = job.payload, job.tenant
        eid = str(p["encounter"])
        principal = Principal(tenant=tenant, key_id=str(p["key_id"]), role=str(p["role"]),
                              capabilities=tuple(p.get("capabilities") or ()))  # fmt: skip
        status = await asyncio.to_thread(self.pending.restart, tenant, eid)
        if status != "transcribing":
            return {"encounter": eid, "skipped": status}
        view = await asyncio.to_thread(self.store.get, tenant, eid)
        patient_id = view.details.get("patient", {}).get("id")

        async def progress(done: int, total: int) -> None:
            state = await asyncio.to_thread(
                self.pending.job_update, tenant, eid, chunks_done=done, chunks_total=total
            )
            await job.progress({"encounter": eid, "chunks_done": done, "chunks_total": total})
            if state != "transcribing":
                raise _Stopped(state)

        try:
            found = await asyncio.to_thread(self.store.audio, tenant, eid)
            if found is None:
                raise InvalidRequest("The recording is no longer stored.", code="audio_deleted")
            audio, container = found
            duration = float(view.transcript.get("duration_s") or 0.0)
            language = p.get("language")
            transcript = await self._transcribe_long(
                principal, audio, container, duration, language, progress
            )
            del audio, found
            lang = language or transcript.get("language") or "en"
            transcript["language"] = lang
            chosen = self.template(view.template)
            note = await self._note(principal, chosen, transcript, lang, patient_id, "audio")
        except _Stopped as stopped:
            return {"encounter": eid, "stopped": str(stopped)}
        except Exception as exc:
            message = (
                exc.message
                if isinstance(exc, GatewayError)
                else (f"The transcription stopped on an internal error ({type(exc).__name__}).")
            )
            code = exc.code if isinstance(exc, GatewayError) else "internal_error"
            if not isinstance(exc, GatewayError):
                log.exception("scribe transcription job failed", extra={"job": job.id})
            await asyncio.to_thread(self.pending.fail, tenant, eid, message, code)
            self._audit(principal, "scribe.transcription.fail", eid, patient_id, job=job.id,
                        code=code)  # fmt: skip
            raise PermanentError(message) from None
        completed = await asyncio.to_thread(self.pending.complete, tenant, eid, transcript, note,
                                            transcript["language"])  # fmt: skip
        if not completed:
            return {"encounter": eid, "stopped": "cancelled"}
        self._audit(principal, "scribe.transcription.complete", eid, patient_id, job=job.id,
                    chunks=transcript.get("chunks"))  # fmt: skip
        return {"encounter": eid, "lines": len(transcript["lines"]),
                "chunks": transcript.get("chunks")}  # fmt: skip

    async def cancel(self, principal: Principal, encounter_id: str) -> EncounterView:
        """Stop a long recording's transcription: the encounter is ``cancelled`` (409 if it
        is not transcribing); the job stops at its next chunk (or at once if queued)."""
        job_id = await asyncio.to_thread(self.pending.cancel, principal.tenant, encounter_id)
        if job_id and self.queue is not None:
            with contextlib.suppress(JobNotFound):
                await self.queue.cancel(job_id, tenant=principal.tenant)
        view = await asyncio.to_thread(self.store.get, principal.tenant, encounter_id)
        patient_id = view.details.get("patient", {}).get("id")
        self._audit(principal, "scribe.transcription.cancel", encounter_id, patient_id,
                    job=job_id)  # fmt: skip
        return view


async def _quiet(done: int, total: int) -> None:
    """No progress report (the default of an inline chunked transcription)."""


def _transcript(done: Transcription) -> dict[str, Any]:
    result = done.result
    return {
        "lines": [line.as_dict() for line in from_result(result)],
        "language": result.language,
        "duration_s": round(result.duration_s, 2),
        "model": done.deployment,
        "container": done.container,
        "dropped": result.dropped,
    }
