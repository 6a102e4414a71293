"""An in-process test model: deterministic answers and embeddings, no server, no weights.

Like pydantic-ai's ``TestModel``: a feature's tests (or a user's) configure a provider of
type ``test`` and get the whole gateway path — routing, cache, governance, streaming —
without the fake upstream, which stays for tests of the HTTP wire format itself.

    providers: {t: {type: test, reply: "Take 400 mg."}}
    deployments: {t-chat: {provider: t, model: any}}

By default the answer echoes the last user message (``test answer: <question>``), so two
different questions get two different answers. Code may pass ``respond``, a function of
the messages (pydantic-ai's ``FunctionModel``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from iatros.providers.base import ChatCall, ChatResult, EmbedResult, Provider, StreamDelta, Usage
from iatros.providers.registry import parse_options

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

Respond = Callable[[list[dict[str, Any]]], str]


class TestModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reply: str | None = None
    """A fixed answer; default: ``test answer: <last user message>``."""
    chunk_words: int = Field(1, ge=1)
    """Words per streamed delta."""
    dimensions: int = Field(256, ge=2, le=4096)
    """Size of the deterministic embedding vectors."""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _words(text: str) -> int:
    return max(len(text.split()), 1)


class TestModelProvider(Provider):
    type_name = "test"
    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, name: str, options: TestModelOptions, respond: Respond | None = None):
        super().__init__(name)
        self.options = options
        self.respond = respond
        self.calls: list[ChatCall] = []
        """Every chat call received, for tests to inspect (what the gateway sent)."""

    def _answer(self, call: ChatCall) -> str:
        self.calls.append(call)
        if self.respond is not None:
            return self.respond(call.messages)
        if self.options.reply is not None:
            return self.options.reply
        return f"test answer: {_last_user_text(call.messages)}"

    def _usage(self, call: ChatCall, answer: str) -> Usage:
        prompt = sum(_words(str(m.get("content") or "")) for m in call.messages)
        return Usage(prompt, _words(answer))

    async def chat(self, deployment: DeploymentConfig, call: ChatCall) -> ChatResult:
        answer = self._answer(call)
        message = {"role": "assistant", "content": answer}
        return ChatResult(message, "stop", self._usage(call, answer))

    async def stream(
        self, deployment: DeploymentConfig, call: ChatCall
    ) -> AsyncIterator[StreamDelta]:
        answer = self._answer(call)
        words = answer.split(" ")
        step = self.options.chunk_words
        for i in range(0, len(words), step):
            piece = " ".join(words[i : i + step])
            delta: dict[str, Any] = {"content": (" " if i else "") + piece}
            if i == 0:
                delta["role"] = "assistant"
            yield StreamDelta(delta)
        yield StreamDelta({}, finish_reason="stop", usage=self._usage(call, answer))

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        vectors = [self._vector(text) for text in inputs]
        return EmbedResult(vectors, Usage(sum(_words(t) for t in inputs), 0))

    def _vector(self, text: str) -> list[float]:
        """Feature hashing of the words: texts sharing words are near, others far apart.

        Deterministic and meaningful enough for retrieval and semantic-cache tests
        without a model (a question scores high against the passage that holds its words).
        """
        vector = [0.0] * self.options.dimensions
        for word in re.findall(r"\w+", text.lower()) or [""]:
            digest = hashlib.sha256(word.encode()).digest()
            index = int.from_bytes(digest[:4], "big") % len(vector)
            vector[index] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]


def factory(name: str, options: dict[str, Any]) -> Provider:
    return TestModelProvider(name, parse_options(name, TestModelOptions, options))
