"""Speech-to-text through any OpenAI-compatible ``/audio/transcriptions`` endpoint.

OpenAI's ``whisper-1``, Azure OpenAI, vLLM or a whisper.cpp server. The file is sent as
``multipart/form-data`` with ``response_format=verbose_json`` so that segments and their
timestamps come back whatever the caller asked for (Iatros renders the format itself).

A provider configured as ``type: openai`` serves chat and embeddings; the transcriber
wraps it with :func:`wrap` for its ``kind: transcription`` deployments, so one provider
entry (one URL, one key) serves all three. ``type: openai-transcription`` declares one
for transcription only.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import orjson

from iatros.errors import UpstreamError
from iatros.providers.http import HttpClient, HttpError
from iatros.providers.openai_compat import OpenAICompatProvider, OpenAIOptions, _map_status
from iatros.providers.registry import parse_options
from iatros.providers.transcription import (
    Segment,
    TranscribeCall,
    TranscriptionProvider,
    TranscriptResult,
    Word,
)

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

LANGUAGE_CODES = {
    "english": "en", "french": "fr", "german": "de", "spanish": "es", "italian": "it",
    "portuguese": "pt", "dutch": "nl",
}  # fmt: skip
"""OpenAI's verbose_json names the language in full; Iatros uses ISO-639-1 codes."""


def multipart(fields: dict[str, str | list[str]], file: tuple[str, bytes]) -> tuple[str, bytes]:
    """A ``multipart/form-data`` body: (content type, bytes)."""
    boundary = "iatros" + secrets.token_hex(16)
    out = bytearray()
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            out += f'--{boundary}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n'.encode()
            out += item.encode() + b"\r\n"
    filename = file[0].replace('"', "").replace("\r", "").replace("\n", "") or "audio"
    out += (
        f'--{boundary}\r\ncontent-disposition: form-data; name="file"; '
        f'filename="{filename}"\r\ncontent-type: application/octet-stream\r\n\r\n'
    ).encode()
    out += file[1] + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


class OpenAITranscriptionProvider(TranscriptionProvider):
    type_name = "openai-transcription"

    def __init__(self, name: str, options: OpenAIOptions) -> None:
        super().__init__(name)
        self.options = options
        headers = dict(options.headers)
        if options.api_key is not None:
            secret = options.api_key.get_secret_value()
            if options.flavor == "azure":
                headers["api-key"] = secret
            else:
                headers["authorization"] = f"Bearer {secret}"
        self._headers = headers
        self._client: HttpClient | None = None

    async def start(self) -> None:
        self._client = HttpClient(
            self.options.base_url,
            headers=self._headers,
            max_connections=min(self.options.max_connections, 64),
            connect_timeout_s=self.options.connect_timeout_s,
            timeout_s=self.options.timeout_s,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _target(self, client: HttpClient, deployment: DeploymentConfig) -> str:
        if self.options.flavor == "azure":
            return client.url_path(
                f"openai/deployments/{deployment.model}/audio/transcriptions",
                f"api-version={self.options.api_version}",
            )
        return client.url_path("audio/transcriptions")

    async def transcribe(
        self, deployment: DeploymentConfig, call: TranscribeCall
    ) -> TranscriptResult:
        client = self._client
        if client is None:
            raise UpstreamError(f"provider {self.name!r} is not started", retryable=False)
        granularities = ["segment", "word"] if call.word_timestamps else ["segment"]
        fields: dict[str, str | list[str]] = {
            "model": deployment.model,
            "response_format": "verbose_json",
            "timestamp_granularities[]": granularities,
        }
        if call.language:
            fields["language"] = call.language
        if call.prompt:
            fields["prompt"] = call.prompt
        content_type, body = multipart(fields, (call.filename, call.audio))
        try:
            status, headers, raw = await client.request(
                "POST", self._target(client, deployment), body, {"content-type": content_type}
            )
        except HttpError as exc:
            raise UpstreamError(
                f"provider {self.name!r} is unreachable: {exc}", code="upstream_unreachable"
            ) from exc
        if status >= 400:
            message = raw[:500].decode("utf-8", "replace")
            try:
                parsed = orjson.loads(raw)
                if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                    message = str(parsed["error"].get("message") or message)
            except orjson.JSONDecodeError:
                pass
            raise _map_status(self.name, status, message, headers.get("retry-after"))
        try:
            return parse_verbose(orjson.loads(raw), call)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"provider {self.name!r} sent a malformed transcription") from exc


def parse_verbose(data: Any, call: TranscribeCall) -> TranscriptResult:
    """OpenAI's ``verbose_json`` (or plain ``json``: one segment) as a result."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError("no text")
    language = str(data.get("language") or call.language or "")
    language = LANGUAGE_CODES.get(language.lower(), language.lower()[:2] or "und")
    words = [
        Word(str(w["word"]), float(w["start"]), float(w["end"])) for w in data.get("words") or []
    ]
    raw_segments = data.get("segments")
    if not raw_segments:
        raw_segments = [{"start": 0.0, "end": call.duration_s, "text": data["text"]}]
    segments = []
    for i, s in enumerate(raw_segments):
        start, end = float(s["start"]), float(s["end"])
        segments.append(
            Segment(
                id=i,
                start=start,
                end=end,
                text=str(s["text"]),
                avg_logprob=float(s.get("avg_logprob", 0.0)),
                no_speech_prob=float(s.get("no_speech_prob", 0.0)),
                compression_ratio=float(s.get("compression_ratio", 1.0)),
                temperature=float(s.get("temperature", 0.0)),
                tokens=[int(t) for t in s.get("tokens") or []],
                words=[w for w in words if start <= w.start < end],
            )
        )
    return TranscriptResult(segments, language, float(data.get("duration") or call.duration_s))


def wrap(provider: OpenAICompatProvider) -> OpenAITranscriptionProvider:
    """The transcription side of an OpenAI-compatible provider (same URL, same key)."""
    return OpenAITranscriptionProvider(provider.name, provider.options)


def factory(name: str, options: dict[str, Any]) -> OpenAITranscriptionProvider:
    return OpenAITranscriptionProvider(name, parse_options(name, OpenAIOptions, options))
