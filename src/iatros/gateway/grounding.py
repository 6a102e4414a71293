"""The grounding step: retrieve passages for the question and decide whether they suffice.

Part of the chat flow (``ChatService``), so every caller of a ``knowledge:`` route gets the
same sources, confidence and escalation, whether it comes over HTTP, from the CLI or from
a later feature.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from iatros.cache.guard import signature
from iatros.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from iatros.gateway.verification import content_words
from iatros.knowledge import KnowledgeBase, KnowledgeError
from iatros.knowledge import NotFound as KnowledgeNotFound
from iatros.knowledge import grounding as grounding_lib
from iatros.knowledge.types import Passage


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
class Reviewed:
    """A reviewer's saved answer that matches the question (given verbatim)."""

    answer: str
    reviewer: str
    reviewed_at: str
    review_id: str
    document_id: str


@dataclass(slots=True)
class Grounding:
    """What retrieval found for a grounded chat request.

    ``sources`` are the passages at or above ``knowledge.min_score`` (the only ones the
    model sees, numbered as it sees them); ``candidates`` are the best passages whatever
    their relevance, kept for a reviewer when the question is escalated, never shown to
    the asker as sources.
    """

    collection: str
    version: str
    question: str
    sources: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    passages: list[str]
    """The sources' texts as the model saw them: what the answer is verified against."""
    retrieval_match: float
    escalate: bool
    refusal: str
    messages: list[dict[str, Any]]
    reviewed: Reviewed | None = None
    verification: dict[str, Any] | None = None
    review: dict[str, Any] | None = None
    """The review item this answer raised (id, status), if it raised one."""

    def payload(self) -> dict[str, Any]:
        """The ``iatros`` extension of the answer: what a client shows beside it.

        ``retrieval_match`` is how well the best source matches the question, not trust in
        the answer: the trust signal is ``verification``.
        """
        body: dict[str, Any] = {
            "sources": [] if self.escalate else self.sources,
            "retrieval_match": self.retrieval_match,
            "escalate": self.escalate,
        }
        if self.reviewed is not None:
            body["reviewed"] = {
                "reviewer": self.reviewed.reviewer,
                "reviewed_at": self.reviewed.reviewed_at,
                "review_id": self.reviewed.review_id,
            }
        if self.verification is not None:
            body["verification"] = self.verification
        if self.review is not None:
            body["review"] = self.review
        return body


class Grounder:
    """Retrieval for chat: the passages, the grounded prompt, and whether to refuse."""

    def __init__(
        self, kb: KnowledgeBase | None, min_score: float, reviewed_min_overlap: float = 0.6
    ) -> None:
        self.kb = kb
        self.min_score = min_score
        self.reviewed_min_overlap = reviewed_min_overlap

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
        relevant = [p for p in passages if p.score >= self.min_score]
        bodies = grounding_lib.passage_bodies(relevant, question)
        return Grounding(
            collection=collection,
            version=version,
            question=question,
            sources=grounding_lib.sources_payload(relevant),
            candidates=grounding_lib.sources_payload(passages),
            passages=bodies,
            retrieval_match=grounding_lib.confidence(passages),
            escalate=grounding_lib.should_escalate(passages, self.min_score),
            refusal=grounding_lib.no_answer_text(question),
            messages=grounding_lib.build_grounded_messages(messages, relevant, bodies=bodies),
            reviewed=self._reviewed(relevant, question),
        )

    def _reviewed(self, passages: list[Passage], question: str) -> Reviewed | None:
        """The reviewer's answer, when the best passage is one saved from the review queue
        for a question with the same clinical details (the cache guard's signature: "for a
        20 kg child" never gets the answer reviewed for "a 30 kg child")."""
        if not passages:
            return None
        best = max(passages, key=lambda p: p.score)
        meta = best.metadata or {}
        if not meta.get("review_id"):
            return None
        reviewed_question = str(meta.get("question", ""))
        mine, theirs = content_words(question), content_words(reviewed_question)
        overlap = len(mine & theirs) / max(1, len(mine | theirs))
        if overlap < self.reviewed_min_overlap:
            return None
        if signature(reviewed_question) != signature(question):
            return None
        return Reviewed(
            answer=str(meta.get("answer", "")),
            reviewer=str(meta.get("reviewer", "")),
            reviewed_at=str(meta.get("reviewed_at", "")),
            review_id=str(meta["review_id"]),
            document_id=best.document_id,
        )
