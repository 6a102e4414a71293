"""The scribe service: encounters from audio or text, drafts, edits, sign-off, amendments.

Transport-free like the chat service: the HTTP router (``api/scribe.py``) and the CLI
(``iatros scribe``) both call it. It transcribes through the :class:`Transcriber`, drafts
through the :class:`ChatService`, and keeps everything sealed in the store; every access
is audited with the patient id as a keyed hash, never in clear.
"""

from __future__ import annotations

import asyncio
from typing import Any

from iatros.auth import Principal
from iatros.clinical.export.fhir import build_bundle, send_bundle
from iatros.clinical.export.pdf import render_pdf
from iatros.clinical.scribe.crypto import Sealer
from iatros.clinical.scribe.drafting import DraftContext, NoteDrafter
from iatros.clinical.scribe.extraction import extract
from iatros.clinical.scribe.linking import link
from iatros.clinical.scribe.records import EncounterStore, EncounterView
from iatros.clinical.scribe.settings import ScribeSettings
from iatros.clinical.scribe.templates import NoteTemplate, templates
from iatros.clinical.scribe.transcript import Line, from_dicts, from_result, from_text
from iatros.clinical.speech.transcriber import Transcriber
from iatros.errors import Conflict, GatewayError, InvalidRequest, NotFound
from iatros.gateway.chat import ChatService
from iatros.gateway.context import RequestContext
from iatros.governance.service import Governance


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
        result = done.result
        return {
            "lines": [line.as_dict() for line in from_result(result)],
            "language": result.language,
            "duration_s": round(result.duration_s, 2),
            "model": done.deployment,
            "container": done.container,
            "dropped": result.dropped,
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
    ) -> EncounterView:
        chosen = self.template(template)
        patient = patient or {}
        patient_id = patient.get("id")
        if audio is not None:
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
        lines = from_dicts(transcript["lines"])
        ctx = DraftContext(principal, patient_id, lang)
        sections = await self.drafter.draft(ctx, chosen, lines)
        note = {
            "template": chosen.id,
            "title": chosen.label(lang),
            "sections": sections,
            "structured": extract(lines),
            "coverage": coverage(sections),
        }
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
        pdf = await asyncio.to_thread(render_pdf, view.as_dict(), self.settings.practice_name)
        return view, pdf

    async def export_fhir(
        self, principal: Principal, encounter_id: str, version: int | None = None
    ) -> tuple[EncounterView, dict[str, Any]]:
        """The FHIR document, with the PDF inside its DocumentReference."""
        view = await self.get(principal, encounter_id, version, action="scribe.export.fhir")
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
