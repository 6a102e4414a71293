"""Radiographs over HTTP: upload (multipart, 202 + background job), studies, renditions,
annotations, the AI second opinion, signing, and the PDF / FHIR exports.

Everything is scoped to the caller's tenant (another tenant's id is a 404, like an
unknown one) and audited by the service. An upload body is counted while it streams in:
one larger than ``imaging.max_upload_bytes`` is refused with a 413 before it is read,
whether or not it declares a Content-Length.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
    read_body,
    validation_error,
)
from iatros.api.validation import FreeText, Identifier
from iatros.clinical.imaging.service import RadiographService
from iatros.clinical.imaging.settings import ImagingSettings
from iatros.errors import InvalidRequest, PayloadTooLarge
from iatros.gateway import RequestContext

StudyId = Annotated[str, Path(pattern=r"^rs_[0-9a-f]{24}$")]
ImageId = Annotated[str, Path(pattern=r"^ri_[0-9a-f]{24}$")]
AnnotationId = Annotated[str, Path(pattern=r"^ra_[0-9a-f]{24}$")]
ENDPOINT = "radiographs"
PERMISSION = "chat"
"""Who may use radiographs: the roles that may ask the models (admin, clinician, service)."""
PNG_HEADERS = {"cache-control": "private, no-store"}


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Whole = Annotated[int, BeforeValidator(_whole)]
Point = Annotated[list[float], Field(min_length=2, max_length=2)]
Finding = Literal["caries", "deep_caries", "periapical_lesion", "impacted_tooth",
                  "restoration", "bone_loss", "other"]  # fmt: skip


class AnnotationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shape: Literal["box", "polygon", "point"]
    points: list[Point] = Field(min_length=1, max_length=500)
    """Image pixel coordinates ``[x, y]``: a box is two opposite corners."""
    finding: Finding
    tooth: Whole | None = None
    """FDI tooth number (11-48, 51-85), checked by the service (400 naming ``tooth``)."""
    note: FreeText | None = Field(None, max_length=2000)


class AnnotationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Whole = Field(ge=1, le=1_000_000)
    """The version edited; another one on the server is a 409 ``version_mismatch``."""
    # Optional but not nullable (null is refused naming the field): a default of None
    # that the declared type does not admit, so the schema says "omit it", not "null".
    points: list[Point] = Field(None, min_length=1, max_length=500)  # type: ignore[arg-type]
    finding: Finding = None  # type: ignore[assignment]
    tooth: Whole | None = None
    """null clears the tooth."""
    note: FreeText | None = Field(None, max_length=2000)
    status: Literal["accepted", "proposed", "rejected"] = None  # type: ignore[assignment]


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conclusion: FreeText = Field(min_length=1, max_length=8000)
    name: FreeText | None = Field(None, max_length=200)
    """The signing clinician's name as the PDF shows it (default: the API key's id)."""


class AnalyseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["en", "fr"] = "en"
    model: Identifier | None = Field(None, max_length=128)


class UploadFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: Identifier = Field(min_length=1, max_length=64)
    description: FreeText | None = Field(None, max_length=500)


FORM_FIELDS = {"files", "patient_id", "description"}


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, keeping uploaded files in memory.

    Its default spills a file over 1 MB to a temporary file on disk: for radiographs
    that would put identifiable images on disk in clear before de-identification. The
    whole body is bounded by ``imaging.max_upload_bytes`` anyway (counted as it streams).
    """


async def read_upload(request: Request, settings: ImagingSettings
                      ) -> tuple[UploadFields, list[tuple[str, bytes]]]:  # fmt: skip
    """The multipart upload, its size counted as it streams (413 as soon as it is too big)."""
    limit = settings.max_upload_bytes

    def too_large() -> PayloadTooLarge:
        return PayloadTooLarge(
            f"The upload is larger than {limit} bytes (imaging.max_upload_bytes).",
            param="files", code="upload_too_large",
        )  # fmt: skip

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send the radiographs as multipart/form-data: files, patient_id, description.",
            param="files", code="multipart_required",
        )  # fmt: skip
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large()
        return message

    parser = _InMemoryParser(
        request.headers, Request(request.scope, counted).stream(),
        max_files=settings.max_files + 1, max_fields=8, max_part_size=64 * 1024,
    )  # fmt: skip
    parser.spool_max_size = settings.max_upload_bytes + 1
    try:
        form = await parser.parse()
    except PayloadTooLarge:
        raise
    except Exception as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        raise InvalidRequest(f"The multipart body could not be read: {detail}") from None
    try:
        unknown = sorted(set(form.keys()) - FORM_FIELDS)
        if unknown:
            raise InvalidRequest(f"Unknown parameter '{unknown[0]}'.", param=unknown[0])
        values = {k: v for k, v in form.items() if isinstance(v, str) and k != "files"}
        try:
            fields = UploadFields.model_validate(
                {k: v for k, v in values.items() if v != "" or k == "patient_id"}
            )
        except ValidationError as exc:
            raise validation_error(exc) from None
        uploads = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not uploads:
            raise InvalidRequest("Send at least one file in 'files'.", param="files")
        if len(uploads) > settings.max_files:
            raise InvalidRequest(f"At most {settings.max_files} files per study.",
                                 param="files", code="too_many_files")  # fmt: skip
        files: list[tuple[str, bytes]] = []
        for i, upload in enumerate(uploads):
            if upload.size is not None and upload.size > settings.max_file_bytes:
                raise PayloadTooLarge(
                    f"files[{i}] is larger than {settings.max_file_bytes} bytes "
                    "(imaging.max_file_bytes).", param=f"files.{i}", code="file_too_large",
                )  # fmt: skip
            data = await upload.read(settings.max_file_bytes + 1)
            if len(data) > settings.max_file_bytes:
                raise PayloadTooLarge(f"files[{i}] is too large.", param=f"files.{i}",
                                      code="file_too_large")  # fmt: skip
            files.append(((upload.filename or f"file{i}")[:200], data))
        return fields, files
    finally:
        await form.close()


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers=PNG_HEADERS)


def add_radiograph_routes(app: FastAPI, service: RadiographService, handle: Handler) -> None:
    limit = 1024 * 1024
    tags: list[str | Enum] = ["Radiographs"]

    @app.get("/v1/radiographs/status", tags=tags, summary="Vision models and accepted formats")
    async def status(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response(service.status())

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.post(
        "/v1/radiographs/studies", tags=tags, status_code=202,
        summary="Upload radiographs (DICOM, PNG, JPEG), processed in the background",
        responses=error_responses(400, 401, 403, 413, 415, 429),
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["files", "patient_id"], "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "patient_id": {"type": "string", "maxLength": 64},
                "description": {"type": "string", "maxLength": 500}}}}}}},
    )  # fmt: skip
    async def upload(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            fields, files = await read_upload(request, service.settings)
            study = await service.upload(ctx.principal, fields.patient_id, fields.description,
                                         files)  # fmt: skip
            return json_response(study, 202)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/studies", tags=tags, summary="Studies (of one patient)",
             responses=error_responses(400, 401, 403))  # fmt: skip
    async def studies(
        request: Request,
        patient_id: Annotated[str | None, Query(min_length=1, max_length=64,
                                                pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
    ) -> Response:  # fmt: skip
        async def work(ctx: RequestContext) -> Response:
            found = await service.studies(ctx.principal, patient_id)
            return json_response({"object": "list", "data": found})

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/studies/{study_id}", tags=tags, summary="A study and its images",
             responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def study(request: Request, study_id: StudyId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response(await service.study(ctx.principal, study_id))

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/images/{image_id}/thumbnail.png", tags=tags,
             summary="Thumbnail (8-bit PNG, default window)",
             responses=error_responses(400, 401, 403, 404, 409))  # fmt: skip
    async def thumbnail(request: Request, image_id: ImageId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return _png(await service.thumbnail(ctx.principal, image_id))

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/images/{image_id}/render.png", tags=tags,
             summary="8-bit rendition with window/level applied server-side",
             responses=error_responses(400, 401, 403, 404, 409))  # fmt: skip
    async def render(
        request: Request,
        image_id: ImageId,
        center: Annotated[float | None, Query(ge=-1e7, le=1e7)] = None,
        width: Annotated[float | None, Query(ge=1, le=1e7)] = None,
        invert: Annotated[int, Query(ge=0, le=1)] = 0,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            data = await service.render(ctx.principal, image_id, center, width, bool(invert))
            return _png(data)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/images/{image_id}/annotations", tags=tags,
             summary="An image's annotations (clinician's and AI proposals)",
             responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def annotations(request: Request, image_id: ImageId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            found = await service.annotations(ctx.principal, image_id)
            return json_response({"object": "list", "data": found})

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.post("/v1/radiographs/images/{image_id}/annotations", tags=tags, status_code=201,
              summary="Annotate: a box, polygon or point with a finding and an FDI tooth",
              responses=error_responses(400, 401, 403, 404, 409),
              openapi_extra=openapi_body(AnnotationIn))  # fmt: skip
    async def annotate(request: Request, image_id: ImageId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(AnnotationIn, await read_body(request, limit))
            made = await service.annotate(ctx.principal, image_id, body.model_dump())
            return json_response(made, 201)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.patch("/v1/radiographs/annotations/{annotation_id}", tags=tags,
               summary="Edit, accept or reject an annotation (optimistic version)",
               responses=error_responses(400, 401, 403, 404, 409),
               openapi_extra=openapi_body(AnnotationPatch))  # fmt: skip
    async def edit(request: Request, annotation_id: AnnotationId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(AnnotationPatch, await read_body(request, limit))
            given = body.model_fields_set - {"version"}
            for name in ("points", "finding", "status"):
                if name in given and getattr(body, name) is None:
                    raise InvalidRequest(f"'{name}' cannot be null.", param=name)
            changes = {name: getattr(body, name) for name in given}
            updated = await service.edit_annotation(ctx.principal, annotation_id, body.version,
                                                    changes)  # fmt: skip
            return json_response(updated)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.delete("/v1/radiographs/annotations/{annotation_id}", tags=tags, status_code=204,
                summary="Delete an annotation (409 once the study is signed)",
                responses=error_responses(400, 401, 403, 404, 409))  # fmt: skip
    async def delete(request: Request, annotation_id: AnnotationId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            await service.delete_annotation(ctx.principal, annotation_id)
            return Response(status_code=204)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.post("/v1/radiographs/images/{image_id}/analyse", tags=tags,
              summary="AI second opinion: findings proposed by a vision model",
              responses=error_responses(400, 401, 403, 404, 409, 429, 502, 503, 504),
              openapi_extra=openapi_body(AnalyseIn))  # fmt: skip
    async def analyse(request: Request, image_id: ImageId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            raw = await read_body(request, limit)
            body = parse_body(AnalyseIn, raw) if raw.strip() else AnalyseIn()
            result = await service.analyse(ctx.principal, image_id, body.language, body.model)
            return json_response(result)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.post("/v1/radiographs/studies/{study_id}/sign", tags=tags,
              summary="Sign the study with a conclusion (409 if signed already)",
              responses=error_responses(400, 401, 403, 404, 409),
              openapi_extra=openapi_body(SignIn))  # fmt: skip
    async def sign(request: Request, study_id: StudyId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(SignIn, await read_body(request, limit))
            study = await service.sign(ctx.principal, study_id, body.conclusion, body.name)
            return json_response(study)

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/studies/{study_id}/report.pdf", tags=tags,
             summary="The report: images with accepted annotations, findings by tooth",
             responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def report(request: Request, study_id: StudyId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            pdf = await service.report_pdf(ctx.principal, study_id)
            return Response(pdf, media_type="application/pdf", headers={
                "content-disposition": f'inline; filename="{study_id}.pdf"',
                "cache-control": "private, no-store"})  # fmt: skip

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/studies/{study_id}/fhir", tags=tags,
             summary="FHIR R4 Bundle: ImagingStudy, DiagnosticReport, Observations by tooth",
             responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def fhir(request: Request, study_id: StudyId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            bundle = await service.fhir(ctx.principal, study_id)
            return Response(orjson.dumps(bundle), media_type="application/fhir+json")

        return await handle(request, ENDPOINT, PERMISSION, work)

    @app.get("/v1/radiographs/studies/{study_id}/sr.dcm", tags=tags,
             summary="The accepted annotations as a DICOM Comprehensive SR",
             responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def structured_report(request: Request, study_id: StudyId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            data = await service.structured_report(ctx.principal, study_id)
            return Response(data, media_type="application/dicom", headers={
                "content-disposition": f'attachment; filename="{study_id}-sr.dcm"',
                "cache-control": "private, no-store"})  # fmt: skip

        return await handle(request, ENDPOINT, PERMISSION, work)
