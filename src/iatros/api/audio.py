"""``POST /v1/audio/transcriptions``: OpenAI's wire format over the :class:`Transcriber`.

The official SDKs work unchanged (``client.audio.transcriptions.create(model="whisper-1",
file=...)``). Form fields: ``file`` (required), ``model``, ``language`` (ISO-639-1),
``prompt``, ``response_format`` (json, text, srt, vtt, verbose_json) and
``timestamp_granularities[]`` (segment, word; verbose_json only). Anything else is
refused, never ignored. Every bad file gets its own 4xx (see ``clinical/speech/audio.py``).
"""

from __future__ import annotations

import math
import re
from typing import Any, get_args

from fastapi import FastAPI
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from iatros.api.http import Handler, error_responses, json_response
from iatros.api.validation import check_model_input
from iatros.clinical.speech.formats import ResponseFormat, srt, verbose, vtt
from iatros.clinical.speech.transcriber import Transcriber
from iatros.errors import InvalidRequest, PayloadTooLarge
from iatros.gateway import RequestContext
from iatros.governance.service import Governance

FIELDS = {"file", "model", "language", "prompt", "response_format", "timestamp_granularities[]",
          "timestamp_granularities"}  # fmt: skip
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_MODEL = re.compile(r"^[A-Za-z0-9._:/\-]{1,128}$")


def _upload_schema() -> dict[str, Any]:
    props: dict[str, Any] = {
        "file": {"type": "string", "format": "binary"},
        "model": {"type": "string", "example": "whisper-1"},
        "language": {"type": "string", "pattern": "^[a-z]{2}$"},
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(get_args(ResponseFormat))},
        "timestamp_granularities[]": {
            "type": "array",
            "items": {"type": "string", "enum": ["segment", "word"]},
        },
    }
    schema = {"type": "object", "properties": props, "required": ["file"]}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


async def read_audio_form(request: Request, max_bytes: int) -> tuple[bytes, str, dict[str, Any]]:
    """The uploaded file, its name, and the other form fields (checked for unknown ones)."""
    declared = request.headers.get("content-length")
    limit = max_bytes + 64 * 1024
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"The upload is larger than the limit of {max_bytes} bytes.",
            param="file",
            code="audio_too_large",
        )
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send the audio as multipart/form-data with the file in the field 'file'.",
            code="invalid_content_type",
        )
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
    except Exception as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc}") from None
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown parameter '{unknown[0]}'.", param=unknown[0])
    fields: dict[str, Any] = {}
    for key in FIELDS - {"file"}:
        values = form.getlist(key)
        if any(not isinstance(v, str) for v in values):
            raise InvalidRequest(f"'{key}' must be a text field.", param=key)
        if values:
            fields[key.removesuffix("[]")] = values if key.startswith("timestamp") else values[0]
    upload = form.get("file")
    if upload is None:
        raise InvalidRequest("No audio in the field 'file'.", param="file", code="missing_file")
    if not isinstance(upload, UploadFile):
        raise InvalidRequest("'file' must be a file part.", param="file")
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The audio file is larger than the limit of {max_bytes} bytes.",
            param="file",
            code="audio_too_large",
        )
    return data, upload.filename or "audio", fields


def _options(fields: dict[str, Any]) -> tuple[str | None, str | None, str | None, str, bool]:
    model = fields.get("model")
    if model is not None and not _MODEL.match(model):
        raise InvalidRequest("Invalid 'model': not a model name.", param="model")
    language = fields.get("language") or None
    if language is not None and not _LANGUAGE.match(language):
        raise InvalidRequest(
            "Invalid 'language': use an ISO-639-1 code such as 'en' or 'fr'.", param="language"
        )
    prompt = fields.get("prompt") or None
    if prompt is not None:
        try:
            check_model_input(prompt)
        except ValueError as exc:
            raise InvalidRequest(f"Invalid 'prompt': {exc}", param="prompt") from None
        if len(prompt) > 2000:
            raise InvalidRequest("Invalid 'prompt': at most 2000 characters.", param="prompt")
    fmt = fields.get("response_format") or "json"
    if fmt not in get_args(ResponseFormat):
        raise InvalidRequest(
            f"Invalid 'response_format': {fmt!r} (one of {', '.join(get_args(ResponseFormat))}).",
            param="response_format",
        )
    granularities = fields.get("timestamp_granularities") or []
    bad = [g for g in granularities if g not in ("segment", "word")]
    if bad:
        raise InvalidRequest(
            f"Invalid 'timestamp_granularities': {bad[0]!r} (segment or word).",
            param="timestamp_granularities",
        )
    if granularities and fmt != "verbose_json":
        raise InvalidRequest(
            "'timestamp_granularities' needs response_format=verbose_json.",
            param="timestamp_granularities",
        )
    return model, language, prompt, fmt, "word" in granularities


def add_audio_routes(
    app: FastAPI, transcriber: Transcriber, gov: Governance, handle: Handler
) -> None:
    max_bytes = transcriber.settings.max_file_bytes

    @app.post(
        "/v1/audio/transcriptions",
        tags=["OpenAI"],
        summary="Transcribe audio (local faster-whisper by default)",
        responses=error_responses(400, 401, 403, 404, 413, 429, 502, 503),
        openapi_extra=_upload_schema(),
    )
    async def transcriptions(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            data, filename, fields = await read_audio_form(request, max_bytes)
            model, language, prompt, fmt, words = _options(fields)
            await gov.admit(ctx, 0)
            done = await transcriber.transcribe(
                ctx, data, filename, model=model, language=language, prompt=prompt,
                word_timestamps=words,
            )  # fmt: skip
            result = done.result
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="audio.transcribe",
                target=done.deployment,
                details={"request_id": ctx.request_id, "seconds": round(result.duration_s, 1)},
            )
            headers = ctx.headers()
            if fmt == "text":
                return PlainTextResponse(result.text + "\n", headers=headers)
            if fmt == "srt":
                return PlainTextResponse(srt(result), headers=headers)
            if fmt == "vtt":
                return PlainTextResponse(vtt(result), headers=headers, media_type="text/vtt")
            if fmt == "verbose_json":
                return json_response(verbose(result, words), headers=headers)
            usage = {"type": "duration", "seconds": math.ceil(result.duration_s)}
            return json_response({"text": result.text, "usage": usage}, headers=headers)

        return await handle(request, "audio", "chat", work)
