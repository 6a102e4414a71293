"""Cache keys, semantic scopes and invalidation tags, all keyed hashes of the request.

Nothing identifying is stored in clear: patient ids, tenants, models and collections
appear in Redis only as HMAC-SHA256 tags, and entry keys are keyed BLAKE2b digests of
the normalised request (so a key cannot be confirmed by hashing a guessed question).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import orjson

from iatros.cache.model import CacheRequest
from iatros.image_parts import part_digest

KEY_VERSION = 1

_IGNORED_PARAMS = frozenset({"stream", "stream_options", "user"})
"""Parameters that do not change the answer: a streamed and a plain request share entries."""
_FLOAT_PARAMS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})
_TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})
_TRAILING = re.compile(r"[\s?!.;:\u2026\u00bf\u00a1]+$")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class SemanticParts:
    """What a semantic lookup needs: where to search, and the question to compare."""

    scope: str
    """Hash of everything that must be equal for answers to be shared (all but the question)."""
    question: str
    """The last user message, as sent."""
    embed_text: str
    """The question as embedded: lowercased, whitespace and final punctuation folded."""


def _text(value: str) -> str:
    if not value.isascii():
        value = unicodedata.normalize("NFC", value)
    if "\r" in value:
        value = value.replace("\r\n", "\n")
    return value.strip()


class _Unkeyable(Exception):
    """The request holds something that must not be cached (an image behind a URL)."""


def _message(message: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in message.items():
        if value is None:
            continue
        if name == "content" and isinstance(value, str):
            value = _text(value)
        elif name == "content" and isinstance(value, list):
            value = [_part(part) for part in value]
        out[name] = value
    return out


def _part(part: Any) -> Any:
    """An image is keyed by the SHA-256 of its bytes, never by its base64 text (equal
    images share entries however encoded; the key material never holds the image).
    An image behind a remote URL can change: such requests are not cached."""
    if not isinstance(part, dict) or part.get("type") != "image_url":
        return part
    digest = part_digest(part)
    if digest is None:
        raise _Unkeyable
    image = part.get("image_url") or {}
    return {"type": "image_url", "image": digest, "detail": image.get("detail", "auto")}


def normalize_params(params: dict[str, Any]) -> dict[str, Any]:
    """Equivalent spellings of the same sampling parameters give the same key."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None or name in _IGNORED_PARAMS:
            continue
        if name == "n" and value == 1:
            continue
        if name == "stop":
            value = [value] if isinstance(value, str) else list(value)
            if not value:
                continue
        elif name in _FLOAT_PARAMS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


class KeyMaker:
    """Derives keys and tags with one secret, shared by every instance on one Redis."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._blake_key = hashlib.sha256(b"iatros-cache-key\0" + secret).digest()

    def tag(self, kind: str, value: str) -> str:
        digest = hmac.new(self._secret, f"{kind}\0{value}".encode(), hashlib.sha256)
        return f"{kind[0]}:{digest.hexdigest()[:32]}"

    def _digest(self, material: list[Any]) -> str | None:
        try:
            raw = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return None  # something not JSON-like in the request: do not cache it
        return hashlib.blake2b(raw, key=self._blake_key, digest_size=16).hexdigest()

    def _common(self, req: CacheRequest) -> list[Any]:
        patient = self.tag("patient", req.patient_id) if req.patient_id is not None else None
        return [
            req.tenant,
            req.model,
            req.deployment_scope,
            normalize_params(req.params),
            patient,
            req.collection,
            req.collection_version,
        ]

    def exact_key(self, req: CacheRequest) -> str | None:
        """The entry id of this exact request, or None when it cannot be keyed."""
        try:
            messages = [_message(m) for m in req.messages]
        except _Unkeyable:
            return None
        return self._digest(["exact", KEY_VERSION, *self._common(req), messages])

    def tags(self, req: CacheRequest) -> tuple[str, ...]:
        """What an entry can be invalidated by: tenant, model, patient, collection."""
        return self.filter_tags(
            tenant=req.tenant,
            model=req.model,
            patient_id=req.patient_id,
            collection=req.collection,
        )

    def filter_tags(
        self,
        *,
        tenant: str | None = None,
        patient_id: str | None = None,
        model: str | None = None,
        collection: str | None = None,
    ) -> tuple[str, ...]:
        out = []
        if tenant is not None:
            out.append(self.tag("tenant", tenant))
        if model is not None:
            out.append(self.tag("model", model))
        if patient_id is not None:
            out.append(self.tag("patient", patient_id))
        if collection is not None:
            out.append(self.tag("collection", collection))
        return tuple(out)

    def semantic_parts(
        self, req: CacheRequest, *, max_turns: int, max_chars: int, embedding_model: str = ""
    ) -> SemanticParts | None:
        """Scope and question when the request may be looked up by meaning, else None.

        Only plain-text conversations ending with a user question qualify; everything
        before that question (system prompt, earlier turns) is part of the scope and so
        must match exactly. Tool calls, images and long texts are exact-only.
        """
        messages = req.messages
        if not messages or messages[-1].get("role") != "user":
            return None
        user_turns = 0
        for message in messages:
            role = message.get("role")
            if role not in _TEXT_ROLES or not isinstance(message.get("content"), str):
                return None
            if "tool_calls" in message or "function_call" in message:
                return None
            if role == "user":
                user_turns += 1
        if user_turns > max_turns:
            return None
        question = _text(messages[-1]["content"])
        if not question or len(question) > max_chars:
            return None
        before = [_message(m) for m in messages[:-1]]
        scope = self._digest(["scope", KEY_VERSION, embedding_model, *self._common(req), before])
        if scope is None:
            return None
        embed_text = _SPACES.sub(" ", _TRAILING.sub("", question)).lower()
        return SemanticParts(scope=scope, question=question, embed_text=embed_text or question)
