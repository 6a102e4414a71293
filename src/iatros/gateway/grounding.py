"""The grounding step: retrieve passages for the question and decide whether they suffice.

Part of the chat flow (``ChatService``), so every caller of a ``knowledge:`` route gets the
same sources, confidence and escalation, whether it comes over HTTP, from the CLI or from
a later feature.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from iatros.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from iatros.knowledge import KnowledgeBase, KnowledgeError
from iatros.knowledge import NotFound as KnowledgeNotFound
from iatros.knowledge import grounding as grounding_lib


def knowledge_error(exc: KnowledgeError) -> GatewayError:
    """The knowledge base's errors, in the gateway's terms (a 404 or a 400)."""
    if isinstance(exc, KnowledgeNotFound):
        return NotFound(str(exc), code="not_found")
    return InvalidRequest(str(exc))


def knowledge_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The knowledge base needs an embedding model (embeddings.default_model).",
        code="knowledge_unavailable",
    )


@dataclass(slots=True)
class Grounding:
    """What retrieval found for a grounded chat request."""

    collection: str
    version: str
    sources: list[dict[str, Any]]
    confidence: float
    escalate: bool
    refusal: str
    messages: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        """The ``iatros`` extension of the answer: what a client shows beside it."""
        return {"sources": self.sources, "confidence": self.confidence, "escalate": self.escalate}


class Grounder:
    """Retrieval for chat: the passages, the grounded prompt, and whether to refuse."""

    def __init__(self, kb: KnowledgeBase | None, min_score: float) -> None:
        self.kb = kb
        self.min_score = min_score

    async def ground(
        self, tenant: str, collection: str, messages: list[dict[str, Any]], k: int | None
    ) -> Grounding:
        if self.kb is None:
            raise knowledge_unavailable()
        question = grounding_lib.last_user_text(messages)
        try:
            passages = await self.kb.search(tenant, collection, question, k)
            version = await asyncio.to_thread(self.kb.collection_version, tenant, collection)
        except KnowledgeError as exc:
            raise knowledge_error(exc) from None
        return Grounding(
            collection=collection,
            version=version,
            sources=grounding_lib.sources_payload(passages),
            confidence=grounding_lib.confidence(passages),
            escalate=grounding_lib.should_escalate(passages, self.min_score),
            refusal=grounding_lib.no_answer_text(question),
            messages=grounding_lib.build_grounded_messages(messages, passages),
        )
