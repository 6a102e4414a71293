"""The review desk: the queue seen from the chat service and from the reviewers.

- :meth:`ReviewDesk.escalate` is what the chat service calls (it implements
  :class:`iatros.gateway.safety.Escalations`): it turns a grounded request that could not
  be answered into a review item, with the question, the conversation's last turns, the
  candidate sources (whatever their relevance: the reviewer needs them, the asker was
  not shown them) and the model's draft.
- :meth:`ReviewDesk.answer` answers an item and, when asked, saves the answer into the
  collection the question was asked against, as a document signed by the reviewer: the
  next asker of the same question gets it verbatim (see ``Grounder``), with the reviewer
  and date as its source.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from iatros.auth import Principal
from iatros.errors import InvalidRequest, ServiceUnavailable
from iatros.gateway.context import RequestContext
from iatros.gateway.grounding import Grounding
from iatros.knowledge import KnowledgeBase
from iatros.reviews.queue import NewReview, ReviewQueue

log = logging.getLogger("iatros.reviews")


class ReviewDesk:
    def __init__(self, queue: ReviewQueue, kb: KnowledgeBase | None) -> None:
        self.queue = queue
        self.kb = kb

    async def escalate(
        self,
        ctx: RequestContext,
        grounding: Grounding,
        reason: str,
        messages: list[dict[str, Any]],
        *,
        draft: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any] | None:
        item = await self.queue.open(
            NewReview(
                tenant=ctx.principal.tenant,
                asker_key_id=ctx.principal.key_id,
                reason=reason,
                question=grounding.question,
                route=ctx.model,
                messages=messages,
                sources=grounding.candidates,
                draft=draft,
                details={
                    "collection": grounding.collection,
                    "retrieval_match": grounding.retrieval_match,
                    "verification": grounding.verification,
                },
                conversation_id=conversation_id,
                request_id=ctx.request_id,
            )
        )
        return {"id": item["id"], "status": item["status"], "reason": reason}

    async def ask_human(
        self,
        principal: Principal,
        question: str,
        *,
        messages: list[dict[str, Any]],
        draft: str | None,
        collection: str | None,
        conversation_id: str | None,
        request_id: str | None,
        reason: str = "user_request",
        comment: str | None = None,
    ) -> dict[str, Any]:
        """The asker's "ask a human" (or a thumbs-down turned into a review)."""
        details: dict[str, Any] = {"collection": collection} if collection else {}
        if comment:
            details["comment"] = comment
        return await self.queue.open(
            NewReview(
                tenant=principal.tenant,
                asker_key_id=principal.key_id,
                reason=reason,
                question=question,
                messages=messages,
                draft=draft,
                details=details,
                conversation_id=conversation_id,
                request_id=request_id,
            )
        )

    async def answer(
        self,
        scope: str,
        item_id: str,
        reviewer: Principal,
        text: str,
        reviewer_name: str,
        *,
        save_to_knowledge: bool = False,
    ) -> dict[str, Any]:
        if save_to_knowledge and self.kb is None:
            raise ServiceUnavailable(
                "The knowledge base is not configured: the answer cannot be saved to it.",
                code="knowledge_unavailable",
            )
        if save_to_knowledge:
            current = await self.queue.get(scope, item_id)
            if not (current.get("details") or {}).get("collection"):
                raise InvalidRequest(
                    "This question was not asked against a collection: there is none to "
                    "save the answer to.",
                    param="save_to_knowledge",
                )
        item = await self.queue.answer(scope, item_id, reviewer, text, reviewer_name)
        if save_to_knowledge:
            item["document_id"] = await self._save(item)
        return item

    async def _save(self, item: dict[str, Any]) -> str | None:
        """Ingest the answer as a document of the item's collection (signed, dated)."""
        assert self.kb is not None
        collection = item["details"]["collection"]
        reviewer = item["reviewer_name"] or item["answered_by"]
        date = (item["answered_at"] or datetime.now(UTC).isoformat())[:10]
        # One short chunk holding the question too: the next asker's question is then
        # close to it (retrieval compares questions with chunk texts, not headings).
        body = (
            f"Question: {item['question']}\n\nAnswer: {item['answer']}\n\n"
            f"Reviewed answer by {reviewer}, {date}.\n"
        )
        slug = re.sub(r"[^a-z0-9]+", "-", item["question"].lower()).strip("-")[:48] or "answer"
        report = await self.kb.ingest_file(
            item["tenant"],
            collection,
            body.encode(),
            f"reviewed-{slug}-{item['id'][-6:]}.md",
            metadata={
                "review_id": item["id"],
                "reviewer": reviewer,
                "reviewed_at": item["answered_at"] or "",
                "answer": item["answer"],
                "question": item["question"],
            },
        )
        document_id = report.document_id
        if report.status == "error" or not document_id:
            log.warning("could not save review %s to knowledge: %s", item["id"], report.error)
            return None
        await self.queue.link_document(item["tenant"], item["id"], document_id)
        return str(document_id)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start delivering webhooks (in the server process)."""
        self.queue.webhooks.start()

    async def close(self) -> None:
        await self.queue.webhooks.close()
