"""The provider seam: what every model adapter implements, and the data it exchanges.

Inside the gateway data is plain dataclasses; pydantic stays at the wire boundary.
A provider is long-lived (one per configured provider entry), owns its connections
or loaded model, and serves any deployment that names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iatros.errors import InvalidRequest

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class ChatCall:
    """One chat request as a provider sees it (already validated)."""

    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """OpenAI parameters the gateway does not interpret (tools, response_format, ...)."""
    fairness_key: str = "anonymous"
    """Who is asking, for fair queueing in providers that have a queue."""


@dataclass(slots=True)
class ChatResult:
    message: dict[str, Any]
    """The assistant message as OpenAI shapes it (``role``, ``content``, maybe ``tool_calls``)."""
    finish_reason: str
    usage: Usage


@dataclass(slots=True)
class StreamDelta:
    """One streamed piece: a delta of the assistant message, or the end of it."""

    delta: dict[str, Any]
    finish_reason: str | None = None
    usage: Usage | None = None
    extension: dict[str, Any] | None = None
    """Iatros facts to send with this chunk (``iatros``: the verification at the end)."""


@dataclass(slots=True)
class EmbedResult:
    vectors: list[list[float]]
    usage: Usage


class Provider:
    """Base class for adapters. Override what the provider supports.

    ``start`` loads models or opens connection pools and may take a while;
    ``ready`` tells ``/readyz`` whether requests can be served now.
    """

    type_name: str = "base"

    def __init__(self, name: str) -> None:
        self.name = name
        self._loading: asyncio.Task[None] | None = None
        """What ``start`` loads in the background (a model), for providers that do."""

    async def start(self) -> None:
        """Load models / open pools. Called once, inside the running event loop."""

    async def close(self) -> None:
        """Release resources. Called once at shutdown."""

    def ready(self) -> bool:
        return True

    async def loaded(self) -> bool:
        """Wait until what ``start`` loads in the background has loaded or failed.

        True if there was such a load (a model), False if there was nothing to wait for.
        """
        if self._loading is None:
            return False
        await asyncio.wait({self._loading})
        return True

    async def health_check(self) -> bool:
        """Active check used by optional periodic probing; by default, readiness."""
        return self.ready()

    async def probe(self, deployment: DeploymentConfig) -> bool:
        """A cheap request telling whether ``deployment`` answers again.

        Sent only while the deployment's breaker is open (every
        ``routing.breaker.probe_interval_s``); a pass half-opens the breaker at once.
        By default the provider's :meth:`health_check`.
        """
        return await self.health_check()

    async def chat(self, deployment: DeploymentConfig, call: ChatCall) -> ChatResult:
        raise InvalidRequest(
            f"provider {self.name!r} does not serve chat completions", code="unsupported"
        )

    def stream(self, deployment: DeploymentConfig, call: ChatCall) -> AsyncIterator[StreamDelta]:
        raise InvalidRequest(
            f"provider {self.name!r} does not stream chat completions", code="unsupported"
        )

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        raise InvalidRequest(
            f"provider {self.name!r} does not serve embeddings", code="unsupported"
        )
