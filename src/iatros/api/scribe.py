"""The clinical scribe over HTTP: encounters, drafts, edits, sign-off, amendments, exports.

``POST /v1/scribe/encounters`` takes a transcript (JSON) or a recording (multipart:
``file`` plus the same fields flattened: ``template``, ``language``, ``patient_id``,
``patient_name``, ``patient_birth_date``, ``clinician_name``). Encounters belong to the
caller's tenant: another tenant's id is a 404, as an unknown one. Editing or signing a
signed note is a 409 that says what to do instead (amend it).

A recording longer than ``scribe.background_after_s`` is answered 202: the encounter is
``transcribing``, a background job transcribes it in chunks, and ``GET`` shows its
``progress`` (chunks done / chunks in all) until it is a ``draft`` (or ``failed``, with the
job's error; ``POST …/cancel`` stops it).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import orjson
from annotated_types import Interval
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
    read_body,
    validation_error,
)
from iatros.api.validation import FreeText, Identifier, ModelInput
from iatros.clinical.scribe.service import ScribeService
from iatros.clinical.scribe.templates import templates
from iatros.errors import InvalidRequest, PayloadTooLarge
from iatros.gateway import RequestContext

EncounterId = Annotated[str, Path(pattern=r"^enc_[0-9a-f]{24}$")]
PERMISSION = "chat"
"""Who may use the scribe: the roles that may ask the models (admin, clinician, service)."""


class Patient(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: Identifier | None = Field(None, min_length=1, max_length=64)
    name: FreeText | None = Field(None, max_length=200)
    birth_date: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    gender: Literal["male", "female", "other", "unknown"] | None = None

    @field_validator("birth_date")
    @classmethod
    def _real_date(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)
        return value


class Clinician(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: FreeText | None = Field(None, max_length=200)
    qualification: FreeText | None = Field(None, max_length=200)


class EncounterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    transcript: ModelInput = Field(min_length=1, max_length=200_000)
    template: str | None = Field(None, pattern=r"^[a-z_]{1,32}$")
    language: str | None = Field(None, pattern=r"^[a-z]{2}$")
    patient: Patient | None = None
    clinician: Clinician | None = None


def _whole(values: Any) -> Any:
    """JSON Schema's integers include ``2.0``; pydantic's strict mode does not."""
    if not isinstance(values, list):
        return values
    return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]


def _whole_one(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


LineNumbers = Annotated[list[Annotated[int, Interval(ge=1, le=100_000)]], BeforeValidator(_whole)]
Whole = Annotated[int, BeforeValidator(_whole_one)]
"""An integer that may be written ``2.0`` (constraints go in ``Field`` beside it)."""
Version = Annotated[Annotated[int, Interval(ge=1, le=100_000)] | None, BeforeValidator(_whole_one)]


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: ModelInput = Field(min_length=1, max_length=4000)
    lines: LineNumbers | None = Field(None, max_length=50)
    """Transcript line numbers (``1.0`` is taken as ``1``, as JSON Schema's integers are)."""


class SectionEdit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: str = Field(pattern=r"^[a-z_]{1,32}$")
    statements: list[Statement] = Field(max_length=200)


class Dose(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    value: float = Field(ge=0, le=1_000_000)
    unit: FreeText = Field(min_length=1, max_length=16)


class Medication(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: FreeText = Field(min_length=1, max_length=200)
    dose: Dose | None = None
    route: FreeText | None = Field(None, max_length=64)
    frequency: FreeText | None = Field(None, max_length=64)
    lines: LineNumbers = Field(default_factory=list, max_length=50)


class Allergy(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    substance: FreeText = Field(min_length=1, max_length=200)
    lines: LineNumbers = Field(default_factory=list, max_length=50)


class BloodPressure(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    systolic: Whole = Field(ge=0, le=400)
    diastolic: Whole = Field(ge=0, le=300)


class Vital(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal[
        "blood_pressure", "heart_rate", "temperature", "oxygen_saturation",
        "respiratory_rate", "weight",
    ]  # fmt: skip
    value: BloodPressure | Annotated[float, Field(ge=0, le=1000)]
    unit: FreeText = Field(min_length=1, max_length=16)
    lines: LineNumbers = Field(default_factory=list, max_length=50)


class Tooth(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    fdi: Whole = Field(ge=11, le=85)
    lines: LineNumbers = Field(default_factory=list, max_length=50)


class Structured(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    medications: list[Medication] = Field(default_factory=list, max_length=100)
    allergies: list[Allergy] = Field(default_factory=list, max_length=100)
    vitals: list[Vital] = Field(default_factory=list, max_length=20)
    teeth: list[Tooth] = Field(default_factory=list, max_length=52)


class NoteEdit(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Version = None
    """The version edited; a newer one on the server gives 409 ``version_mismatch``."""
    sections: list[SectionEdit] = Field(max_length=50)
    structured: Structured | None = None
    """The structured fields, corrected by the clinician (replace the extracted ones)."""


class SignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: FreeText = Field(min_length=1, max_length=200)
    """The signing clinician's name as it appears on the PDF and in the FHIR attester."""
    qualification: FreeText | None = Field(None, max_length=200)


FORM_FIELDS = {"file", "template", "language", "patient_id", "patient_name",
               "patient_birth_date", "patient_gender", "clinician_name"}  # fmt: skip


async def _from_form(request: Request, max_bytes: int) -> tuple[bytes, str, EncounterRequest]:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + 65536:
        raise PayloadTooLarge(
            f"The recording is larger than {max_bytes} bytes.", param="file", code="audio_too_large"
        )
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=max_bytes + 65536)
    except Exception as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}") from None
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown parameter '{unknown[0]}'.", param=unknown[0])
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("Send the recording in the file field 'file'.", param="file")
    values = {k: v for k, v in form.items() if isinstance(v, str) and v != ""}
    patient = {
        key: values[f"patient_{key}"]
        for key in ("id", "name", "birth_date", "gender")
        if f"patient_{key}" in values
    }
    body: dict[str, Any] = {
        "transcript": "(audio)",
        "template": values.get("template"),
        "language": values.get("language"),
        "patient": patient or None,
        "clinician": {"name": values["clinician_name"]} if "clinician_name" in values else None,
    }
    try:
        parsed = EncounterRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The recording is larger than {max_bytes} bytes.", param="file", code="audio_too_large"
        )
    return data, upload.filename or "recording", parsed


def add_scribe_routes(app: FastAPI, scribe: ScribeService, handle: Handler) -> None:
    limit = scribe.chat.settings.server.max_body_bytes
    audio_limit = scribe.settings.max_file_bytes

    @app.get("/v1/scribe/templates", tags=["Scribe"], summary="Note templates")
    async def list_templates(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            data = [t.model_dump() for t in templates().values()]
            return json_response({"object": "list", "data": data})

        return await handle(request, "scribe", PERMISSION, work)

    @app.post(
        "/v1/scribe/encounters",
        tags=["Scribe"],
        summary="A new encounter from a transcript (JSON) or a recording (multipart)",
        status_code=201,
        responses={
            202: {"description": "A long recording: the encounter is transcribing (poll it)"},
            **error_responses(400, 401, 403, 413, 429, 502, 503),
        },
        openapi_extra=openapi_body(EncounterRequest),
    )
    async def create(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            content_type = request.headers.get("content-type", "")
            audio: bytes | None = None
            filename = "recording"
            if content_type.startswith("multipart/form-data"):
                audio, filename, body = await _from_form(request, audio_limit)
            else:
                body = parse_body(EncounterRequest, await read_body(request, limit))
            view = await scribe.create(
                ctx.principal,
                template=body.template,
                language=body.language,
                text=None if audio is not None else body.transcript,
                audio=audio,
                filename=filename,
                patient=body.patient.model_dump(exclude_none=True) if body.patient else None,
                clinician=(
                    body.clinician.model_dump(exclude_none=True) if body.clinician else None
                ),
            )
            return json_response(view.as_dict(), 202 if view.status == "transcribing" else 201)

        return await handle(request, "scribe", PERMISSION, work)

    @app.post(
        "/v1/scribe/encounters/{encounter_id}/cancel",
        tags=["Scribe"],
        summary="Cancel a long recording's transcription (409 if it is not transcribing)",
        responses=error_responses(401, 403, 404, 409),
    )
    async def cancel(request: Request, encounter_id: EncounterId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            view = await scribe.cancel(ctx.principal, encounter_id)
            return json_response(view.as_dict())

        return await handle(request, "scribe", PERMISSION, work)

    @app.get("/v1/scribe/encounters", tags=["Scribe"], summary="Your tenant's encounters")
    async def list_encounters(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response({"object": "list", "data": await scribe.encounters(ctx.principal)})

        return await handle(request, "scribe", PERMISSION, work)

    @app.get(
        "/v1/scribe/encounters/{encounter_id}",
        tags=["Scribe"],
        summary="An encounter: transcript, note (current or a given version), versions",
        responses=error_responses(400, 401, 403, 404),
    )
    async def get(
        request: Request,
        encounter_id: EncounterId,
        version: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            view = await scribe.get(ctx.principal, encounter_id, version)
            return json_response(view.as_dict())

        return await handle(request, "scribe", PERMISSION, work)

    @app.put(
        "/v1/scribe/encounters/{encounter_id}/note",
        tags=["Scribe"],
        summary="Edit the draft note (409 once signed: amend it instead)",
        responses=error_responses(400, 401, 403, 404, 409),
        openapi_extra=openapi_body(NoteEdit),
    )
    async def edit(request: Request, encounter_id: EncounterId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(NoteEdit, await read_body(request, limit))
            view = await scribe.edit(
                ctx.principal,
                encounter_id,
                [s.model_dump() for s in body.sections],
                body.structured.model_dump() if body.structured else None,
                body.version,
            )
            return json_response(view.as_dict())

        return await handle(request, "scribe", PERMISSION, work)

    @app.post(
        "/v1/scribe/encounters/{encounter_id}/sign",
        tags=["Scribe"],
        summary="Sign the note: the version becomes immutable (409 if already signed)",
        responses=error_responses(400, 401, 403, 404, 409),
        openapi_extra=openapi_body(SignRequest),
    )
    async def sign(request: Request, encounter_id: EncounterId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(SignRequest, await read_body(request, limit))
            view = await scribe.sign(
                ctx.principal, encounter_id, body.model_dump(exclude_none=True)
            )
            return json_response(view.as_dict())

        return await handle(request, "scribe", PERMISSION, work)

    @app.get(
        "/v1/scribe/encounters/{encounter_id}/pdf",
        tags=["Scribe"],
        summary="The note as a PDF (a DRAFT mark until it is signed)",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def pdf(
        request: Request,
        encounter_id: EncounterId,
        version: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            view, data = await scribe.export_pdf(ctx.principal, encounter_id, version)
            name = f"{view.id}-v{view.version}.pdf"
            return Response(
                data,
                media_type="application/pdf",
                headers={"content-disposition": f'inline; filename="{name}"'},
            )

        return await handle(request, "scribe", PERMISSION, work)

    @app.get(
        "/v1/scribe/encounters/{encounter_id}/fhir",
        tags=["Scribe"],
        summary="The note as an HL7 FHIR R4 document Bundle (PDF in its DocumentReference)",
        responses=error_responses(400, 401, 403, 404, 409),
    )
    async def fhir(
        request: Request,
        encounter_id: EncounterId,
        version: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _, bundle = await scribe.export_fhir(ctx.principal, encounter_id, version)
            return Response(orjson.dumps(bundle), media_type="application/fhir+json")

        return await handle(request, "scribe", PERMISSION, work)

    @app.post(
        "/v1/scribe/encounters/{encounter_id}/fhir/send",
        tags=["Scribe"],
        summary="POST the signed note's FHIR document to the configured FHIR server",
        responses=error_responses(401, 403, 404, 409, 502),
    )
    async def send(request: Request, encounter_id: EncounterId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            outcome = await scribe.send_fhir(ctx.principal, encounter_id)
            return json_response({"object": "scribe.fhir_delivery", **outcome})

        return await handle(request, "scribe", PERMISSION, work)

    @app.post(
        "/v1/scribe/encounters/{encounter_id}/amend",
        tags=["Scribe"],
        summary="Start an amendment: a new draft version of a signed note",
        responses=error_responses(401, 403, 404, 409),
    )
    async def amend(request: Request, encounter_id: EncounterId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            view = await scribe.amend(ctx.principal, encounter_id)
            return json_response(view.as_dict(), 201)

        return await handle(request, "scribe", PERMISSION, work)
