"""Wire formats of the OpenAI-compatible API (requests validated strictly, in JSON mode).

Strings and integers use the boundary types of :mod:`iatros.api.validation`, so that
nothing a request carries can fail later where it is encoded or stored (NUL bytes,
integers beyond 64 bits); see that module for which rule applies to which kind of text.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from iatros.api.validation import (
    INT64_MAX,
    INT64_MIN,
    Identifier,
    NulFree,
    check_json,
    check_model_input,
)
from iatros.errors import InvalidRequest


class _Open(BaseModel):
    """OpenAI objects may carry fields we pass through untouched."""

    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    """A content part: ``{"type": "text", "text": "..."}``, or an image for a model with
    vision, ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,...",
    "detail": "auto"|"low"|"high"}}`` (PNG, JPEG or WebP as a base64 data URL, or a stored
    radiograph as ``iatros://radiographs/images/<id>``, in user messages; remote URLs only
    where ``images.allow_remote_urls`` is on). Image parts are checked by the chat service,
    which names the part in a 400 (``iatros/image_parts.py``).
    """

    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1)


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: NulFree | list[TextPart] | None = None
    name: Identifier | None = Field(None, max_length=256)

    @field_validator("content")
    @classmethod
    def _content_storable(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        # Checked after the union is resolved, so the error names the rule, not a union member.
        if isinstance(value, str):
            check_model_input(value)
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class IatrosExtension(BaseModel):
    """Iatros-specific request options, in ``{"iatros": {...}}`` so plain clients keep working."""

    model_config = ConfigDict(extra="forbid")
    deployment: Identifier | None = Field(
        None,
        max_length=128,
        description="Pin one deployment of the requested model (skips routing).",
    )
    patient_id: Identifier | None = Field(
        None,
        max_length=200,
        description="Patient context of the request; recorded as a reference, never logged.",
    )
    cache: Literal["default", "no-cache", "no-store", "refresh"] = Field(
        "default",
        description="default: look up and store; no-cache: neither; no-store: look up only; "
        "refresh: answer afresh and store.",
    )
    cache_ttl: int | None = Field(
        None, ge=0, le=30 * 86400, description="Keep this answer at most this many seconds."
    )
    knowledge: Identifier | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Answer from this collection of your documents, citing them as [n].",
    )
    knowledge_k: int | None = Field(None, ge=1, le=20, description="Passages to retrieve.")
    conversation_id: Identifier | None = Field(
        None,
        max_length=64,
        description="The asker's conversation: a reviewer's answer to an escalation is "
        "listed under it (GET /v1/reviews/mine?conversation_id=…).",
    )


class ChatCompletionRequest(_Open):
    model: Identifier = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    stop: NulFree | list[NulFree] | None = None
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    n: int | None = Field(None, ge=1)
    user: Identifier | None = Field(None, max_length=256)
    iatros: IatrosExtension | None = None

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        for text in [value] if isinstance(value, str) else value or ():
            check_model_input(text)
        return value

    @model_validator(mode="after")
    def _passed_through_fits(self) -> ChatCompletionRequest:
        """Fields forwarded untouched must be encodable and their text storable.

        Raises :class:`InvalidRequest` itself rather than ``ValueError``: pydantic lets
        other exceptions through, and a model-level ``ValueError`` has no field path,
        while the client needs to know which field (``messages.0.tool_calls.0...``).
        """
        if self.model_extra:
            check_json(self.model_extra, "")
        for i, message in enumerate(self.messages):
            if message.model_extra:
                check_json(message.model_extra, f"messages.{i}")
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.model_extra:
                        where = f"messages.{i}.content.{j}"
                        check_json(part.model_extra, where)
                        text = part.model_extra.get("text")
                        if isinstance(text, str) and "\x00" in text:
                            raise InvalidRequest(
                                f"Invalid '{where}.text': must not contain NUL characters "
                                "(\\u0000)",
                                param=f"{where}.text",
                            )
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Identifier | None = Field(None, min_length=1, max_length=128)
    input: NulFree | list[NulFree] = Field(description="Text or list of texts (at most 2048).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT64_MAX)
    user: Identifier | None = Field(None, max_length=256)

    @field_validator("input")
    @classmethod
    def _input_limits(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > 2048:
            raise ValueError("at most 2048 inputs per request")
        if any(not item for item in items):
            raise ValueError("inputs must be non-empty strings")
        for item in items:
            check_model_input(item)
        return value


# -- responses (documented in the OpenAPI schema) ------------------------------


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceOut(BaseModel):
    index: int
    message: dict[str, Any]
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


class EmbeddingOut(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingOut]
    model: str
    usage: dict[str, int]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail
