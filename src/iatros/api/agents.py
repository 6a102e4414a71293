"""Agents over HTTP: the template schema, templates, tools, workflow runs, and agents
called as models (``model: "agent:<name>"`` on ``/v1/chat/completions``).

Templates and runs are tenant-scoped (another tenant's run is a 404); a template that
does not load is a 400 whose message names the file, line and field of each problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iatros.agents.loader import TemplateError
from iatros.agents.marketplace import gallery, plugin_list
from iatros.agents.runner import AgentResult
from iatros.agents.service import AgentService
from iatros.agents.spec import json_schema
from iatros.api import schemas
from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
    read_body,
)
from iatros.api.sse import DONE, EventStreamResponse, error_event, event
from iatros.api.validation import Identifier, ModelInput, check_json, identifier_path
from iatros.errors import GatewayError, InvalidRequest, NotFound
from iatros.gateway import RequestContext
from iatros.gateway.chat import ChatService
from iatros.store.db import PLATFORM

AgentModel = Callable[[RequestContext, schemas.ChatCompletionRequest, str], Awaitable[Response]]
"""What ``/v1/chat/completions`` calls for a model named ``agent:<name>``."""


class TemplateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    content: ModelInput | None = Field(None, max_length=200_000, description="YAML or JSON.")
    template: dict[str, Any] | None = Field(None, description="The template as an object.")
    source: ModelInput = Field("request", min_length=1, max_length=256,
                               description="A file name, for errors.")  # fmt: skip


class RunBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    workflow: Identifier = Field(min_length=1, max_length=64)
    input: Any = None
    wait_s: float = Field(0.0, ge=0, le=120, description="Wait this long for the run to end.")


def json_value(value: Any, param: str) -> Any:
    """A value that can be stored and sent as JSON (64-bit integers, valid Unicode)."""
    check_json(value, param)
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise InvalidRequest(f"Invalid '{param}': {exc}", param=param) from None
    return value


def template_error(exc: TemplateError) -> InvalidRequest:
    first = exc.problems[0]
    message = "; ".join(str(p) for p in exc.problems[:10])
    return InvalidRequest(f"Invalid template: {message}", param=first.field or None,
                          code="invalid_template")  # fmt: skip


def _text(body: TemplateBody) -> str:
    if (body.content is None) == (body.template is None):
        raise InvalidRequest("Send 'content' (YAML or JSON text) or 'template' (an object).",
                             param="content")  # fmt: skip
    if body.content is not None:
        return body.content
    json_value(body.template, "template")
    return orjson.dumps(body.template, option=orjson.OPT_INDENT_2).decode()


def add_agent_routes(app: FastAPI, agents: AgentService, handle: Handler) -> AgentModel:
    limit = agents.settings.server.max_body_bytes
    tags: list[str | Enum] = ["Agents"]

    @app.get("/v1/schemas/agent.json", tags=tags, summary="JSON Schema of agent templates")
    async def agent_schema() -> Response:
        return json_response(json_schema())

    @app.get("/v1/tools", tags=tags, summary="Installed tools, and which this tenant enabled")
    async def list_tools(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            data = agents.templates.tool_list(ctx.principal.tenant)
            return json_response({"object": "list", "data": data})

        return await handle(request, "agents", "agents:run", work)

    @app.get("/v1/plugins", tags=tags, summary="Installed plugins: loaded, skipped, available")
    async def list_plugins(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response({"object": "list", "data": plugin_list()})

        return await handle(request, "agents", "deployments:read", work)

    @app.get("/v1/agents", tags=tags, summary="Templates (latest version of each)")
    async def list_templates(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            rows = await agents.store.templates(ctx.principal.tenant)
            return json_response({"object": "list", "data": rows})

        return await handle(request, "agents", "agents:run", work)

    @app.get("/v1/agent-gallery", tags=tags, summary="Templates shipped with Iatros")
    async def list_gallery(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response({"object": "list", "data": gallery()})

        return await handle(request, "agents", "agents:run", work)

    @app.get("/v1/agents/{name}", tags=tags, summary="A template", responses=error_responses())
    async def get_template(
        request: Request,
        name: Annotated[str, identifier_path(64)],
        version: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response(await agents.store.template(ctx.principal.tenant, name, version))

        return await handle(request, "agents", "agents:run", work)

    @app.delete("/v1/agents/{name}/memory/{conversation_id}", tags=tags, status_code=204,
                summary="Forget what an agent remembers of a conversation",
                responses=error_responses(400, 401, 403, 404))  # fmt: skip
    async def forget_memory(
        request: Request, name: Annotated[str, identifier_path(64)],
        conversation_id: Annotated[str, identifier_path(64)],
    ) -> Response:  # fmt: skip
        async def work(ctx: RequestContext) -> Response:
            tenant = ctx.principal.tenant
            if not await agents.memory.forget(tenant, name, conversation_id):
                raise NotFound(f"Agent {name!r} remembers nothing of conversation "
                               f"{conversation_id!r}.", param="conversation_id",
                               code="memory_not_found")  # fmt: skip
            agents.governance.audit(tenant=tenant, actor=ctx.principal.key_id,
                                    action="agents.memory.forget", target=name,
                                    outcome="deleted")  # fmt: skip
            return Response(status_code=204)

        return await handle(request, "agents", "agents:run", work)

    async def _apply(request: Request, save: bool) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(TemplateBody, await read_body(request, limit))
            text = _text(body)
            try:
                if not save:
                    tenant = ctx.principal.tenant
                    loaded = await agents.templates.validate(tenant, text, body.source)
                    return json_response({"object": "agent.validation", "valid": True,
                                          "name": loaded.spec.name, "kind": loaded.spec.kind})
                row, created = await agents.templates.apply(ctx.principal, text, body.source)
            except TemplateError as exc:
                raise template_error(exc) from None
            return json_response({**row, "created": created}, 201 if created else 200)

        return await handle(request, "agents", "agents:manage", work)

    @app.post("/v1/agents", tags=tags, summary="Apply a template (idempotent)",
              responses=error_responses(), openapi_extra=openapi_body(TemplateBody))  # fmt: skip
    async def apply_template(request: Request) -> Response:
        return await _apply(request, True)

    @app.post("/v1/agent-checks", tags=tags, summary="Check a template without saving it",
              responses=error_responses(), openapi_extra=openapi_body(TemplateBody))  # fmt: skip
    async def validate_template(request: Request) -> Response:
        return await _apply(request, False)

    @app.post("/v1/runs", tags=tags, summary="Start a workflow run",
              responses=error_responses(), openapi_extra=openapi_body(RunBody))  # fmt: skip
    async def start_run(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(RunBody, await read_body(request, limit))
            json_value(body.input, "input")
            run = await agents.start_run(ctx.principal, body.workflow, body.input,
                                         wait_s=body.wait_s)  # fmt: skip
            return json_response(run, 201)

        return await handle(request, "agents", "agents:run", work)

    @app.get("/v1/runs", tags=tags, summary="The latest runs, newest first")
    async def list_runs(
        request: Request, limit_: Annotated[int, Query(alias="limit", ge=1, le=200)] = 50
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = PLATFORM if ctx.principal.platform else ctx.principal.tenant
            rows = await agents.store.runs(scope, limit_)
            return json_response({"object": "list", "data": rows})

        return await handle(request, "agents", "agents:run", work)

    @app.get("/v1/runs/{run_id}", tags=tags, summary="A run: state, steps, usage",
             responses=error_responses())  # fmt: skip
    async def get_run(request: Request, run_id: Annotated[str, identifier_path(40)]) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = PLATFORM if ctx.principal.platform else ctx.principal.tenant
            return json_response(await agents.get_run(scope, run_id))

        return await handle(request, "agents", "agents:run", work)

    async def agent_model(
        ctx: RequestContext, req: schemas.ChatCompletionRequest, completion_id: str
    ) -> Response:
        name = req.model.removeprefix("agent:")
        ctx.model = req.model
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        conversation_id = req.iatros.conversation_id if req.iatros is not None else None
        result = await agents.call_agent(
            ctx.principal, name, messages, ctx.request_id, conversation_id=conversation_id,
            stream=req.stream, trace=ctx.trace,
        )  # fmt: skip
        ctx.route = f"{req.model}; agent"
        ctx.deployment = result.deployment
        created = int(time.time())
        if result.stream is not None:
            return _stream(agents.runner.chat, ctx, req, completion_id, created, name, result)
        extension = _extension(name, result)
        message = {"role": "assistant", "content": result.content}
        if not req.stream:
            return json_response({
                "id": completion_id, "object": "chat.completion", "created": created,
                "model": req.model, "usage": _usage(result), "iatros": extension,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": "stop"}],
            }, headers=ctx.headers())  # fmt: skip
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": req.model}  # fmt: skip
        chunks = [
            event({**base, "iatros": extension, "choices": [
                {"index": 0, "delta": message, "logprobs": None, "finish_reason": None}]}),
            event({**base, "choices": [
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}),
        ]  # fmt: skip
        if req.stream_options and req.stream_options.include_usage:
            chunks.append(event({**base, "choices": [], "usage": _usage(result)}))
        chunks.append(DONE)
        headers = {**ctx.headers(), "cache-control": "no-cache"}
        return Response(b"".join(chunks), media_type="text/event-stream", headers=headers)

    return agent_model


def _usage(result: AgentResult) -> dict[str, Any]:
    return {"prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}  # fmt: skip


def _extension(name: str, result: AgentResult) -> dict[str, Any]:
    """The ``iatros`` object of an agent's answer: what it did, what it cost, its sources."""
    agent = {"name": name, "model_calls": result.model_calls, "tool_calls": result.tool_calls,
             "output": result.output, "cost_eur": round(result.cost_eur, 8),
             "latency_ms": result.latency_ms, "calls": result.calls}  # fmt: skip
    return {**(result.sources or {}), "agent": agent}


def _stream(
    chat: ChatService, ctx: RequestContext, req: schemas.ChatCompletionRequest,
    completion_id: str, created: int, name: str, result: AgentResult,
) -> Response:  # fmt: skip
    """The agent's final answer as server-sent events, token by token as the model writes
    it; what the agent did rides on the last chunk (known only then), its sources on the
    first. A failure mid-stream ends with an error event, never a silent [DONE]. The
    request is accounted (and its trace ended) when the stream ends, as a chat stream's."""
    assert result.stream is not None
    gauge = chat.gateway.metrics.in_flight_gauge(ctx.endpoint)
    accounted = False

    def account(status: int) -> None:
        nonlocal accounted
        if not accounted:
            accounted = True
            ctx.status = status
            gauge.dec()
            chat.finish(ctx)
    deltas = result.stream
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": req.model}  # fmt: skip
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def body() -> AsyncIterator[bytes]:
        first = True
        tail: dict[str, Any] = {}  # the verification of a grounded answer, known at its end
        try:
            async for delta in deltas:
                if delta.extension is not None:
                    tail.update(delta.extension)
                if not (delta.delta or delta.finish_reason):
                    continue
                extra: dict[str, Any] = {}
                if first and result.sources:
                    extra["iatros"] = dict(result.sources)
                first = False
                if delta.finish_reason is not None:
                    continue  # sent below, with what the agent did
                choice = {"index": 0, "delta": delta.delta, "logprobs": None,
                          "finish_reason": None}  # fmt: skip
                yield event({**base, **extra, "choices": [choice]})
            done = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
            extension = {**tail, **_extension(name, result)}
            yield event({**base, "iatros": extension, "choices": [done]})
            account(200)
            if include_usage:
                yield event({**base, "choices": [], "usage": _usage(result)})
            yield DONE
        except GatewayError as exc:
            account(exc.status)
            yield error_event(exc)
        except asyncio.CancelledError:
            account(499)
            raise
        finally:
            account(ctx.status if ctx.status != 200 else 499)
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose())

    headers = {**ctx.headers(), "cache-control": "no-cache", "x-accel-buffering": "no"}
    return EventStreamResponse(body(), headers=headers)
