"""``POST /v1/chat/completions``: OpenAI's wire format over the :class:`ChatService`.

This module only translates: the body into a :class:`ChatRequest`, the service's
:class:`Answer` into a completion object, its :class:`Streaming` into server-sent events.
Everything that decides (admission, grounding, cache, routing, fallback) is the service's.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any, TypeVar

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from iatros.api import schemas
from iatros.api.http import (
    Handler,
    ParseMemo,
    error_responses,
    json_response,
    openapi_body,
    read_body,
    unless_disconnected,
)
from iatros.api.sse import DONE, EventStreamResponse, error_event, event
from iatros.auth import Principal
from iatros.errors import GatewayError, InvalidRequest
from iatros.gateway.chat import Answer, ChatRequest, ChatService, Streaming
from iatros.gateway.context import RequestContext
from iatros.providers.base import ChatCall, StreamDelta

T = TypeVar("T")


def chat_request(req: schemas.ChatCompletionRequest, principal: Principal) -> ChatRequest:
    """The validated OpenAI body as a transport-free request (shared with the CLI)."""
    if req.n is not None and req.n != 1:
        raise InvalidRequest(
            "Only n=1 is supported: ask several times for several answers.",
            param="n",
            code="unsupported_parameter",
        )
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise InvalidRequest(
            "Send max_tokens or max_completion_tokens, not both.", param="max_tokens"
        )
    # A copy all the way down: the validated request may be shared (ParseMemo) and a
    # provider may adjust what it forwards.
    extra = copy.deepcopy(req.model_extra) if req.model_extra else {}
    call = ChatCall(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        temperature=req.temperature,
        top_p=req.top_p,
        max_tokens=req.max_tokens or req.max_completion_tokens,
        stop=req.stop_list(),
        seed=req.seed,
        user=req.user,
        extra=extra,
        fairness_key=f"{principal.tenant}/{req.user or principal.key_id}",
    )
    ext = req.iatros
    if ext is None:
        return ChatRequest(req.model, call, stream=req.stream)
    return ChatRequest(
        req.model,
        call,
        stream=req.stream,
        pin=ext.deployment,
        cache_mode=ext.cache,
        cache_ttl_s=ext.cache_ttl,
        knowledge=ext.knowledge,
        knowledge_k=ext.knowledge_k,
        conversation_id=ext.conversation_id,
        patient_id=ext.patient_id,
    )


def completion_body(ctx: RequestContext, completion_id: str, answer: Answer) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ctx.deployment,
        "choices": [
            {
                "index": 0,
                "message": answer.message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": ctx.usage.as_dict(),
    }
    if answer.extension is not None:
        body["iatros"] = answer.extension
    return body


async def _aiter(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def stream_response(
    service: ChatService,
    ctx: RequestContext,
    deltas: AsyncIterator[StreamDelta],
    completion_id: str,
    include_usage: bool,
    extension: dict[str, Any] | None,
) -> Response:
    """SSE in OpenAI's chunk format; ends with [DONE], or with an error event.

    ``extension`` (the sources of a grounded answer) rides on the first chunk, so a
    client can show the sources before the first token.
    """
    headers = ctx.headers()
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    base = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": ctx.deployment,
    }
    pending_extension = [extension] if extension is not None else []
    gauge = service.gateway.metrics.in_flight_gauge(ctx.endpoint)

    def chunk(delta: StreamDelta) -> bytes:
        extra = {"iatros": pending_extension.pop()} if pending_extension else {}
        if delta.extension is not None:  # the verification, on the last chunk
            extra = {"iatros": {**extra.get("iatros", {}), **delta.extension}}
        choice = {
            "index": 0,
            "delta": delta.delta,
            "logprobs": None,
            "finish_reason": delta.finish_reason,
        }
        return event({**base, **extra, "choices": [choice]})

    async def body() -> AsyncIterator[bytes]:
        accounted = False

        def account(status: int) -> None:
            # The usage record is journaled before the last event: a response the client
            # saw complete always has its record.
            nonlocal accounted
            if not accounted:
                accounted = True
                ctx.status = status
                gauge.dec()
                service.finish(ctx)

        try:
            async for delta in deltas:
                if delta.delta or delta.finish_reason:
                    yield chunk(delta)
            account(200)
            if include_usage:
                yield event({**base, "choices": [], "usage": ctx.usage.as_dict()})
            yield DONE
        except GatewayError as exc:
            account(exc.status)
            yield error_event(exc)
        except asyncio.CancelledError:
            account(499)
            raise
        finally:
            # Account first: under anyio's cancellation every await here raises again.
            account(ctx.status if ctx.status != 200 else 499)
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose())

    return EventStreamResponse(body(), headers=headers)


def add_chat_routes(
    app: FastAPI, service: ChatService, handle: Handler, agent_model: Any = None
) -> Any:
    """Declare the route (for the OpenAPI document) and return its handler for fast dispatch.

    ``agent_model`` (``api/agents.py``) answers models named ``agent:<name>``.
    """
    limit = service.settings.server.max_body_bytes
    bodies = ParseMemo(schemas.ChatCompletionRequest)

    @app.post(
        "/v1/chat/completions",
        tags=["OpenAI"],
        summary="Create a chat completion (streaming with stream=true)",
        response_model=schemas.ChatCompletionResponse,
        responses=error_responses(),
        openapi_extra=openapi_body(schemas.ChatCompletionRequest),
    )
    async def chat_completions(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            req = bodies.parse(await read_body(request, limit))
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            completion_id = "chatcmpl-" + ctx.request_id.removeprefix("req_")
            if agent_model is not None and req.model.startswith("agent:"):
                return await agent_model(ctx, req, completion_id)  # type: ignore[no-any-return]
            reply = await service.respond(
                ctx,
                chat_request(req, ctx.principal),
                guard=functools.partial(unless_disconnected, request),
            )
            if isinstance(reply, Streaming):
                return stream_response(
                    service, ctx, reply.deltas, completion_id, include_usage, reply.extension
                )
            if req.stream:
                return stream_response(
                    service,
                    ctx,
                    _aiter(_with_usage(reply, ctx)),
                    completion_id,
                    include_usage,
                    reply.extension,
                )
            return json_response(completion_body(ctx, completion_id, reply), headers=ctx.headers())

        return await handle(request, "chat", "chat", work)

    return chat_completions


def _with_usage(answer: Answer, ctx: RequestContext) -> Iterable[StreamDelta]:
    """A complete answer's deltas, the last one carrying the request's usage."""
    for delta in answer.deltas():
        if delta.finish_reason is not None and delta.usage is None:
            delta = StreamDelta(delta.delta, finish_reason=delta.finish_reason, usage=ctx.usage)
        yield delta
