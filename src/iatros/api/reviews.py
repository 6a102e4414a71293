"""The review queue over HTTP: ``/v1/reviews…`` (askers and reviewers) and feedback for admins.

Askers (``reviews:ask``) raise an item ("ask a human") and poll their own items
(``/v1/reviews/mine``), which is how a reviewer's answer reaches their conversation.
Reviewers (``reviews:answer``: admins, and keys with the ``reviewer`` capability) list,
claim, answer, dismiss and decide. Another tenant's item does not exist (404); acting on a
closed item is a 409.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
    read_body,
)
from iatros.api.validation import (
    FreeText,
    Identifier,
    identifier_path,
    identifier_query,
    timestamp,
    timestamp_query,
)
from iatros.errors import NotFound
from iatros.gateway import RequestContext
from iatros.governance.roles import allowed
from iatros.governance.service import Governance
from iatros.reviews import ReviewDesk, ReviewFilter, ReviewQueue
from iatros.store.feedback import feedback_list

Status = Literal["open", "claimed", "answered", "dismissed", "pending"]
Kind = Literal["escalation", "approval"]  # iatros.reviews.models.KINDS
Reason = Literal[
    "no_source", "unsupported_detail", "model_failure", "user_request", "feedback", "approval"
]  # iatros.reviews.models.REASONS


class AskHuman(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: FreeText = Field(min_length=1, max_length=8000)
    messages: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    draft: FreeText | None = Field(None, max_length=20000)
    collection: Identifier | None = Field(None, max_length=64)
    conversation_id: Identifier | None = Field(None, max_length=64)
    request_id: Identifier | None = Field(None, max_length=40)
    reason: Literal["user_request", "feedback"] = Field(
        "user_request", description="feedback: a thumbs-down sent on to a reviewer."
    )
    comment: FreeText | None = Field(
        None,
        max_length=4000,
        description="The asker's words for the reviewer (a thumbs-down's comment).",
    )


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    answer: FreeText = Field(min_length=1, max_length=20000)
    reviewer_name: FreeText = Field("", max_length=128)
    save_to_knowledge: bool = False


class DismissBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    note: FreeText = Field("", max_length=4000)


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    decision: Literal["approved", "rejected"]
    comment: FreeText = Field("", max_length=4000)
    reviewer_name: FreeText = Field("", max_length=128)


ReviewId = Annotated[str, identifier_path(40)]


def add_review_routes(app: FastAPI, desk: ReviewDesk, gov: Governance, handle: Handler) -> None:
    queue: ReviewQueue = desk.queue
    limit = gov.settings.server.max_body_bytes
    tags: list[str | Enum] = ["Reviews"]

    @app.get("/v1/reviews", tags=tags, summary="The review queue", responses=error_responses())
    async def list_reviews(
        request: Request,
        status: Status | None = None,
        kind: Kind | None = None,
        reason: Reason | None = None,
        limit_: Annotated[int, Query(alias="limit", ge=1, le=500)] = 100,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            flt = ReviewFilter(status=status, kind=kind, reason=reason, limit=limit_)
            items = await queue.list(queue.scope(ctx.principal), flt)
            return json_response({"object": "list", "data": items})

        return await handle(request, "reviews", "reviews:answer", work)

    @app.get("/v1/reviews/counts", tags=tags, summary="Items per status (the header's badge)")
    async def review_counts(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            counts = await queue.counts(queue.scope(ctx.principal))
            pending = counts.get("open", 0) + counts.get("claimed", 0)
            return json_response(
                {"object": "review.counts", "pending": pending, "by_status": counts}
            )

        return await handle(request, "reviews", "reviews:answer", work)

    @app.get(
        "/v1/reviews/mine",
        tags=tags,
        summary="Your own escalations (what your conversation polls for answers)",
        responses=error_responses(),
    )
    async def my_reviews(
        request: Request,
        conversation_id: Annotated[str | None, identifier_query(64)] = None,
        since: Annotated[str | None, timestamp_query()] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            flt = ReviewFilter(
                asker=ctx.principal.key_id,
                conversation_id=conversation_id,
                since=timestamp(since, "since"),
            )
            items = await queue.list(ctx.principal.tenant, flt)
            return json_response({"object": "list", "data": items})

        return await handle(request, "reviews", "reviews:ask", work)

    @app.post(
        "/v1/reviews",
        tags=tags,
        summary="Ask a human (creates a review item)",
        status_code=201,
        responses=error_responses(),
        openapi_extra=openapi_body(AskHuman),
    )
    async def ask_human(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(AskHuman, await read_body(request, limit))
            item = await desk.ask_human(
                ctx.principal,
                body.question,
                messages=body.messages,
                draft=body.draft,
                collection=body.collection,
                conversation_id=body.conversation_id,
                request_id=body.request_id,
                reason=body.reason,
                comment=body.comment,
            )
            return json_response(item, 201)

        return await handle(request, "reviews", "reviews:ask", work)

    @app.get(
        "/v1/reviews/deliveries",
        tags=tags,
        summary="Webhook delivery log",
        responses=error_responses(),
    )
    async def deliveries(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            rows = await asyncio.to_thread(queue.webhooks.deliveries, queue.scope(ctx.principal))
            return json_response({"object": "list", "data": rows})

        return await handle(request, "reviews", "reviews:answer", work)

    @app.get("/v1/reviews/{review_id}", tags=tags, summary="One item", responses=error_responses())
    async def get_review(request: Request, review_id: ReviewId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            item = await queue.get(queue.scope(ctx.principal), review_id)
            principal = ctx.principal
            reviewer = allowed(principal.role, "reviews:answer", principal.capabilities)
            if not reviewer and item["asker"] != principal.key_id:
                raise NotFound(f"No review {review_id!r}.", param="id", code="review_not_found")
            return json_response(item)

        return await handle(request, "reviews", "reviews:ask", work)

    @app.post(
        "/v1/reviews/{review_id}/claim",
        tags=tags,
        summary="Claim an item",
        responses=error_responses(400, 401, 403, 404, 409, 429),
    )
    async def claim(request: Request, review_id: ReviewId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            item = await queue.claim(queue.scope(ctx.principal), review_id, ctx.principal)
            return json_response(item)

        return await handle(request, "reviews", "reviews:answer", work)

    @app.post(
        "/v1/reviews/{review_id}/answer",
        tags=tags,
        summary="Answer an escalation (optionally saved to the knowledge base)",
        responses=error_responses(400, 401, 403, 404, 409, 429),
        openapi_extra=openapi_body(AnswerBody),
    )
    async def answer(request: Request, review_id: ReviewId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(AnswerBody, await read_body(request, limit))
            item = await desk.answer(
                queue.scope(ctx.principal),
                review_id,
                ctx.principal,
                body.answer,
                body.reviewer_name,
                save_to_knowledge=body.save_to_knowledge,
            )
            return json_response(item)

        return await handle(request, "reviews", "reviews:answer", work)

    @app.post(
        "/v1/reviews/{review_id}/dismiss",
        tags=tags,
        summary="Dismiss an item",
        responses=error_responses(400, 401, 403, 404, 409, 429),
        openapi_extra=openapi_body(DismissBody),
    )
    async def dismiss(request: Request, review_id: ReviewId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(DismissBody, await read_body(request, limit))
            item = await queue.dismiss(
                queue.scope(ctx.principal), review_id, ctx.principal, body.note
            )
            return json_response(item)

        return await handle(request, "reviews", "reviews:answer", work)

    @app.post(
        "/v1/reviews/{review_id}/decision",
        tags=tags,
        summary="Approve or reject an approval item",
        responses=error_responses(400, 401, 403, 404, 409, 429),
        openapi_extra=openapi_body(DecisionBody),
    )
    async def decide(request: Request, review_id: ReviewId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(DecisionBody, await read_body(request, limit))
            item = await queue.decide(
                queue.scope(ctx.principal),
                review_id,
                ctx.principal,
                body.decision,
                body.comment,
                body.reviewer_name,
            )
            return json_response(item)

        return await handle(request, "reviews", "reviews:answer", work)

    # -- feedback, for the people who act on it ------------------------------------------

    @app.get(
        "/v1/feedback",
        tags=["Feedback"],
        summary="Ratings with their requests (route, model, sources' outcome)",
        responses=error_responses(),
    )
    async def list_feedback(
        request: Request,
        rating: Literal["up", "down"] | None = None,
        model: Annotated[str | None, identifier_query(128)] = None,
        deployment: Annotated[str | None, identifier_query(128)] = None,
        since: Annotated[str | None, timestamp_query()] = None,
        until: Annotated[str | None, timestamp_query()] = None,
        limit_: Annotated[int, Query(alias="limit", ge=1, le=500)] = 100,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = queue.scope(ctx.principal)
            rows, counts = await asyncio.to_thread(
                feedback_list,
                gov.db,
                scope,
                rating=rating,
                model=model,
                deployment=deployment,
                since=timestamp(since, "since"),
                until=timestamp(until, "until"),
                limit=limit_,
            )
            return json_response({"object": "list", "data": rows, "counts": counts})

        return await handle(request, "feedback", "feedback:read", work)
