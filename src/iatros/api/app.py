"""The ASGI application: OpenAI-compatible endpoints over the :class:`Gateway`.

Handlers read the body themselves (size-limited), parse it with pydantic in
strict JSON mode and answer every failure in the OpenAI error format, so a
client SDK sees the exception type it expects.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import logging
import os
import re
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from iatros import __version__, heap
from iatros.api import schemas
from iatros.api.admin import add_admin_routes
from iatros.api.knowledge import add_knowledge_routes, knowledge_error
from iatros.api.sse import DONE, EventStreamResponse, error_event, event
from iatros.auth import Principal
from iatros.config import Settings, load_settings
from iatros.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from iatros.gateway import Gateway, RequestContext
from iatros.gateway.caching import CacheMode, replay
from iatros.governance.service import Governance
from iatros.knowledge import KnowledgeBase, KnowledgeError
from iatros.knowledge import grounding as grounding_lib
from iatros.observability.logging import configure_logging, flush_logging
from iatros.providers.base import ChatCall, ChatResult, StreamDelta
from iatros.routing.router import estimate_prompt_tokens
from iatros.web import mount_web

log = logging.getLogger("iatros.api")
M = TypeVar("M", bound=BaseModel)
_JSON = "application/json"
_STARTED = int(time.time())
# pydantic names the union member that failed inside ``loc`` (``input.list[str].0``); clients
# only care about the field path.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|[A-Z][A-Za-z]+)$")


class ClientDisconnected(Exception):
    """The client went away before the answer was ready."""


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=_JSON)


def error_response(exc: GatewayError, request_id: str | None = None) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-iatros-request-id"] = request_id
    return _json(exc.body(), exc.status, headers)


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body; every failure names the field (OpenAI's ``param``)."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] in ("json_invalid", "json_type"):
            raise InvalidRequest(
                f"The request body is not valid JSON: {err['msg']}", code="invalid_json"
            ) from None
        if err["type"] == "model_type" or not err["loc"]:
            raise InvalidRequest(
                "The request body must be a JSON object.", code="invalid_json"
            ) from None
        param = ".".join(str(p) for p in err["loc"] if not _UNION_TAG.match(str(p)))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "Field required"
        elif err["type"] == "extra_forbidden":
            msg = "Unknown parameter"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
        raise InvalidRequest(f"Invalid '{param}': {msg}{more}", param=param) from None


class ParseMemo(Generic[M]):
    """Validated bodies by their bytes, so a repeated request skips pydantic.

    Repeated questions are what the cache serves; their bodies are byte-identical, and
    validating one measured 5 µs for a one-line question and more for a conversation.
    Only small bodies are kept, at most ``size`` of them (the oldest goes first). The
    models handed out are shared: handlers read them and never assign to them.
    """

    def __init__(self, model: type[M], size: int = 512, max_body: int = 8192) -> None:
        self.model = model
        self.size = size
        self.max_body = max_body
        self._memo: dict[bytes, M] = {}

    def parse(self, body: bytes) -> M:
        found = self._memo.get(body)
        if found is not None:
            return found
        parsed = parse_body(self.model, body)  # an invalid body raises: never kept
        if len(body) <= self.max_body:
            memo = self._memo
            if len(memo) >= self.size:
                del memo[next(iter(memo))]
            memo[body] = parsed
        return parsed


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; larger bodies get 413 before they are buffered."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_large = int(declared) > limit
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if too_large:
            raise _too_large(limit)
    receive = request.receive
    message = await receive()
    if message["type"] != "http.request":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the usual case: one message holds it all
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = bytearray(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            return bytes(chunks)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


T = TypeVar("T")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` in this task, cancelling it if the client disconnects first.

    The work runs in the request's own task (no hand-off to another task, which would
    cost a loop iteration under load); a small watcher cancels it when the client goes.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _wait_disconnect(request.receive)
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        watcher.cancel()


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.headers.get("api-key")


async def _aiter(items: Iterable[T]) -> AsyncIterator[T]:
    for item in items:
        yield item


def _chat_call(req: schemas.ChatCompletionRequest, principal: Principal) -> ChatCall:
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
    return ChatCall(
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


def _completion_body(
    ctx: RequestContext, completion_id: str, message: dict[str, Any], finish: str
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ctx.deployment,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": ctx.usage.as_dict(),
    }


def _openapi_body(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    defs.update(schema.pop("$defs", {}))
    defs[model.__name__] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _error_responses() -> dict[int | str, dict[str, Any]]:
    return {
        code: {"model": schemas.ErrorResponse, "description": text}
        for code, text in (
            (400, "Invalid request"),
            (401, "Missing or invalid API key"),
            (404, "Unknown model"),
            (413, "Body too large"),
            (429, "Overloaded; see Retry-After"),
            (502, "Upstream failure"),
        )
    }


class IatrosApp(FastAPI):
    """FastAPI, with the hot endpoints dispatched before routing and the middleware stack.

    Measured under load, Starlette's route matching, five middleware layers and
    FastAPI's request handling cost more CPU per chat request than the gateway's own
    work. The endpoints in ``fast_routes`` are still declared as FastAPI routes (so
    they are in the OpenAPI document), and their handlers already answer every
    failure themselves; this only skips the layers between the server and them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self
                try:
                    response = await handler(Request(scope, receive, send))
                except Exception:
                    log.exception("unhandled error", extra={"path": scope["path"]})
                    response = error_response(GatewayError("The gateway failed unexpectedly."))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    *,
    gateway: Gateway | None = None,
) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    gw = gateway or Gateway.from_settings(settings)
    gov = Governance(settings, limiter_registry=gw.metrics.registry)
    gw.sinks.append(gov.record)
    kb = knowledge_base(settings, gw)
    limit = settings.server.max_body_bytes
    metrics = gw.metrics
    chat_bodies = ParseMemo(schemas.ChatCompletionRequest)
    settled = asyncio.Event()  # the heap frozen once the models have loaded: /readyz waits

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.admin_key is None and settings.allow_anonymous_loopback:
            log.warning("no IATROS_ADMIN_KEY set: accepting unauthenticated requests on loopback")
        await gov.start()
        await gw.start()
        if kb is not None:
            await kb.start()
        heap.tune()
        heap.freeze("started")
        settled.clear()
        models = asyncio.create_task(_freeze_when_loaded(gw, settled), name="iatros-heap-freeze")
        log.info("iatros started", extra={"version": __version__, "pid": os.getpid()})
        try:
            yield
        finally:
            models.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await models
            if kb is not None:
                await kb.close()
            await gw.close()
            await gov.close()
            heap.thaw()
            log.info("iatros stopped", extra={"pid": os.getpid()})
            flush_logging()

    app = IatrosApp(
        title="Iatros",
        version=__version__,
        description="OpenAI-compatible gateway for clinical assistants.",
        lifespan=lifespan,
    )
    app.state.gateway = gw
    app.state.governance = gov
    app.state.settings = settings
    schema_defs: dict[str, Any] = {}

    # -- errors ---------------------------------------------------------------

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"Unknown path {request.url.path}"))
        err = GatewayError(str(exc.detail), code="http_error")
        err.status = exc.status_code
        err.type = "invalid_request_error"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(GatewayError("The gateway failed unexpectedly."))

    # -- shared request handling ----------------------------------------------

    async def handle(
        request: Request,
        endpoint: str,
        permission: str,
        work: Callable[[RequestContext], Awaitable[Response]],
    ) -> Response:
        """Authenticate, authorise, run and account for a request; map failures to errors."""
        gauge = metrics.in_flight_gauge(endpoint)
        gauge.inc()
        ctx: RequestContext | None = None
        handed_off = False
        try:
            principal = await gov.authenticate(_bearer(request))
            ctx = RequestContext(principal=principal, endpoint=endpoint)
            gov.authorize(ctx, permission)
            response = await work(ctx)
            handed_off = isinstance(response, StreamingResponse)
            return response
        except GatewayError as exc:
            if ctx is None:
                return error_response(exc)
            ctx.status = exc.status
            exc.headers = {**ctx.extra_headers, **exc.headers}
            return error_response(exc, ctx.request_id)
        except ClientDisconnected:
            if ctx is not None:
                ctx.status = 499
            return Response(status_code=499)
        finally:
            if not handed_off:
                gauge.dec()
                if ctx is not None:
                    gw.finish(ctx)

    # -- chat -----------------------------------------------------------------

    @app.post(
        "/v1/chat/completions",
        tags=["OpenAI"],
        summary="Create a chat completion (streaming with stream=true)",
        response_model=schemas.ChatCompletionResponse,
        responses=_error_responses(),
        openapi_extra=_openapi_body(schemas.ChatCompletionRequest, schema_defs),
    )
    async def chat_completions(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            req = chat_bodies.parse(await read_body(request, limit))
            ext = req.iatros
            if ext is not None:
                ctx.patient_id = ext.patient_id
            call = _chat_call(req, ctx.principal)
            await gov.admit(ctx, estimate_prompt_tokens(call.messages))
            pin = ext.deployment if ext else None
            mode: CacheMode = ext.cache if ext else "default"
            ctx.model = req.model
            completion_id = "chatcmpl-" + ctx.request_id.removeprefix("req_")
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            if settings.log_content:
                ctx.content = {"messages": call.messages}
            route = settings.models.get(req.model)
            collection = (ext.knowledge if ext else None) or (route.knowledge if route else None)
            grounding: Grounding | None = None
            if collection is not None:
                grounding = await ground(ctx, collection, call, ext.knowledge_k if ext else None)
                if grounding.escalate:  # nothing supports an answer: say so, ask no model
                    ctx.route = f"{req.model}; knowledge={collection}; escalate"
                    ctx.deployment = ""
                    message = {"role": "assistant", "content": grounding.refusal}
                    return answer(
                        ctx, req.stream, completion_id, include_usage, message, "stop", grounding
                    )
            cache_req = gw.cache.request(
                ctx,
                call,
                pin=pin,
                ttl_s=ext.cache_ttl if ext else None,
                collection=collection,
                collection_version=grounding.version if grounding else None,
            )
            hit = await gw.cache.lookup(ctx, cache_req, mode)
            if hit is not None:
                if req.stream:
                    return stream_response(
                        ctx,
                        None,
                        _aiter(replay(hit)),
                        completion_id,
                        include_usage,
                        extension=grounding.payload() if grounding else None,
                    )
                return answer(
                    ctx,
                    False,
                    completion_id,
                    include_usage,
                    hit.message,
                    hit.finish_reason,
                    grounding,
                )
            if grounding is not None:
                call.messages = grounding.messages
            plan = gw.plan(ctx, req.model, call, pin=pin)

            async def keep(result: ChatResult) -> None:
                await gw.cache.store(ctx, cache_req, mode, result)

            if req.stream:
                # Wait for the first delta before sending headers: failures until then fall
                # back to other deployments, and if all fail the client gets an HTTP error.
                first, deltas = await unless_disconnected(request, gw.open_stream(ctx, plan, call))
                return stream_response(
                    ctx,
                    first,
                    deltas,
                    completion_id,
                    include_usage,
                    keep,
                    extension=grounding.payload() if grounding else None,
                )
            result = await unless_disconnected(request, gw.chat(ctx, plan, call))
            if ctx.content is not None:
                ctx.content["answer"] = result.message.get("content")
            await keep(result)
            return answer(
                ctx,
                False,
                completion_id,
                include_usage,
                result.message,
                result.finish_reason,
                grounding,
            )

        return await handle(request, "chat", "chat", work)

    app.fast_routes[("POST", "/v1/chat/completions")] = chat_completions

    async def ground(
        ctx: RequestContext, collection: str, call: ChatCall, k: int | None
    ) -> Grounding:
        """Retrieve passages for the last question; decide whether they support an answer."""
        if kb is None:
            raise ServiceUnavailable(
                "The knowledge base needs an embedding model (embeddings.default_model).",
                code="knowledge_unavailable",
            )
        question = grounding_lib.last_user_text(call.messages)
        tenant = ctx.principal.tenant
        try:
            passages = await kb.search(tenant, collection, question, k)
            version = await asyncio.to_thread(kb.collection_version, tenant, collection)
        except KnowledgeError as exc:
            raise knowledge_error(exc) from None
        return Grounding(
            version=version,
            sources=grounding_lib.sources_payload(passages),
            confidence=grounding_lib.confidence(passages),
            escalate=grounding_lib.should_escalate(passages, settings.knowledge.min_score),
            refusal=grounding_lib.no_answer_text(question),
            messages=grounding_lib.build_grounded_messages(call.messages, passages),
        )

    def answer(
        ctx: RequestContext,
        stream: bool,
        completion_id: str,
        include_usage: bool,
        message: dict[str, Any],
        finish: str,
        grounding: Grounding | None,
    ) -> Response:
        """A complete answer (from the cache, or a refusal), as JSON or as a short stream."""
        extension = grounding.payload() if grounding else None
        if stream:
            content = StreamDelta({"role": "assistant", "content": message.get("content") or ""})
            done = StreamDelta({}, finish_reason=finish, usage=ctx.usage)
            return stream_response(
                ctx,
                None,
                _aiter([content, done]),
                completion_id,
                include_usage,
                extension=extension,
            )
        body = _completion_body(ctx, completion_id, message, finish)
        if extension is not None:
            body["iatros"] = extension
        return _json(body, headers=ctx.headers())

    def stream_response(
        ctx: RequestContext,
        first: StreamDelta | None,
        deltas: AsyncIterator[StreamDelta],
        completion_id: str,
        include_usage: bool,
        on_complete: Callable[[ChatResult], Awaitable[None]] | None = None,
        *,
        extension: dict[str, Any] | None = None,
    ) -> Response:
        """SSE in OpenAI's chunk format; ends with [DONE], or with an error event.

        ``extension`` (the sources of a grounded answer) rides on the first chunk, so a
        client can show the sources before the first token.
        """
        headers = ctx.headers()
        headers["cache-control"] = "no-cache"
        headers["x-accel-buffering"] = "no"
        created = int(time.time())
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": ctx.deployment,
        }

        pending_extension = [extension] if extension is not None else []

        def chunk(delta: StreamDelta) -> bytes:
            extra = {"iatros": pending_extension.pop()} if pending_extension else {}
            return event(
                {
                    **base,
                    **extra,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta.delta,
                            "logprobs": None,
                            "finish_reason": delta.finish_reason,
                        }
                    ],
                }
            )

        async def body() -> AsyncIterator[bytes]:
            gauge = metrics.in_flight_gauge(ctx.endpoint)
            finished = False
            accounted = False

            def account(status: int) -> None:
                # The usage record is journaled before the last event: a response the client
                # saw complete always has its record.
                nonlocal accounted
                if not accounted:
                    accounted = True
                    ctx.status = status
                    gauge.dec()
                    gw.finish(ctx)

            pieces: list[str] = []
            finish = "stop"
            try:
                if first is not None and (first.delta or first.finish_reason):
                    pieces.append(first.delta.get("content") or "")
                    yield chunk(first)
                async for delta in deltas:
                    if delta.delta or delta.finish_reason:
                        if delta.finish_reason is not None:
                            finished, finish = True, delta.finish_reason
                        pieces.append(delta.delta.get("content") or "")
                        yield chunk(delta)
                if first is not None and first.finish_reason is not None:
                    finished, finish = True, first.finish_reason
                if not finished:
                    raise GatewayError("The model stream ended without a finish reason.")
                if on_complete is not None:
                    message = {"role": "assistant", "content": "".join(pieces)}
                    await on_complete(ChatResult(message, finish, ctx.usage))
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

    # -- embeddings -------------------------------------------------------------

    @app.post(
        "/v1/embeddings",
        tags=["OpenAI"],
        summary="Create embeddings (local all-MiniLM-L6-v2 by default)",
        response_model=schemas.EmbeddingResponse,
        responses=_error_responses(),
        openapi_extra=_openapi_body(schemas.EmbeddingRequest, schema_defs),
    )
    async def embeddings(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            req = parse_body(schemas.EmbeddingRequest, await read_body(request, limit))
            name = req.model or gw.default_embedding_model()
            if name is None:
                raise InvalidRequest("No embedding model is configured; name one.", param="model")
            deployment = gw.resolve_embedding(ctx, name)
            inputs = [req.input] if isinstance(req.input, str) else req.input
            await gov.admit(ctx, estimate_prompt_tokens([{"content": text} for text in inputs]))
            result = await unless_disconnected(request, gw.embed(ctx, deployment, inputs))
            if (
                req.dimensions is not None
                and result.vectors
                and req.dimensions != len(result.vectors[0])
            ):
                raise InvalidRequest(
                    f"dimensions={req.dimensions} is not supported by {deployment.name!r}: "
                    f"its vectors have {len(result.vectors[0])} dimensions.",
                    param="dimensions",
                )
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": (
                        base64.b64encode(array("f", vec).tobytes()).decode()
                        if req.encoding_format == "base64"
                        else vec
                    ),
                }
                for i, vec in enumerate(result.vectors)
            ]
            tokens = ctx.usage.prompt_tokens
            body = {
                "object": "list",
                "data": data,
                "model": deployment.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            return _json(body, headers=ctx.headers())

        return await handle(request, "embeddings", "embeddings", work)

    app.fast_routes[("POST", "/v1/embeddings")] = embeddings

    # -- models -----------------------------------------------------------------

    def _model_out(info: Any) -> dict[str, Any]:
        return {"id": info.id, "object": "model", "created": _STARTED, "owned_by": info.owned_by}

    @app.get(
        "/v1/models",
        tags=["OpenAI"],
        response_model=schemas.ModelList,
        responses=_error_responses(),
    )
    async def list_models(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return _json({"object": "list", "data": [_model_out(m) for m in gw.models()]})

        return await handle(request, "models", "models", work)

    @app.get(
        "/v1/models/{model_id:path}",
        tags=["OpenAI"],
        response_model=schemas.ModelOut,
        responses=_error_responses(),
    )
    async def get_model(request: Request, model_id: str) -> Response:
        async def work(ctx: RequestContext) -> Response:
            for info in gw.models():
                if info.id == model_id:
                    return _json(_model_out(info))
            raise NotFound(
                f"The model {model_id!r} does not exist.", param="model", code="model_not_found"
            )

        return await handle(request, "models", "models", work)

    # -- operations ---------------------------------------------------------------

    add_admin_routes(app, gw, gov, handle)
    add_knowledge_routes(app, gw, gov, kb, handle)
    mount_web(app, gw, gov, handle)

    @app.get("/healthz", tags=["Operations"], summary="Liveness: the process answers")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["Operations"], summary="Readiness: models loaded, stores reachable")
    async def readyz() -> Response:
        checks = {f"provider:{name}": ok for name, ok in gw.readiness().items()}
        checks["store"] = await asyncio.to_thread(gov.ready)
        checks["heap"] = settled.is_set()
        ready = all(checks.values())
        return _json(
            {"status": "ready" if ready else "starting", "checks": checks}, 200 if ready else 503
        )

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schema_defs)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


@dataclass(slots=True)
class Grounding:
    """What retrieval found for a grounded chat request."""

    version: str
    sources: list[dict[str, Any]]
    confidence: float
    escalate: bool
    refusal: str
    messages: list[dict[str, Any]]

    def payload(self) -> dict[str, Any]:
        return {"sources": self.sources, "confidence": self.confidence, "escalate": self.escalate}


async def _freeze_when_loaded(gw: Gateway, settled: asyncio.Event) -> None:
    """Freeze again once the models have loaded in the background (their objects too).

    That freeze collects the loading's objects first, with the loop stopped (about 0.2 s
    for half a million objects), so ``settled`` is set only after it: ``/readyz`` stays
    "starting" until then and traffic routed on readiness never meets that pause. An
    optimisation only: whatever goes wrong is logged, never raised into shutdown.
    """
    try:
        if await gw.loaded():
            heap.freeze("models loaded")
    except Exception as exc:
        log.warning("could not freeze the heap after loading", extra={"error": repr(exc)})
    finally:
        settled.set()


def knowledge_base(settings: Settings, gw: Gateway) -> KnowledgeBase | None:
    """The knowledge base, embedding with the default embedding deployment (if any)."""
    name = settings.embeddings.default_model
    deployment = gw.deployments.get(name) if name else None
    if deployment is None:
        return None
    provider, config = deployment.provider, deployment.config

    async def embed(texts: list[str]) -> list[list[float]]:
        return (await provider.embed(config, texts)).vectors

    return KnowledgeBase(settings.knowledge, settings.data_dir, embed)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``iatros serve``, also with several workers)."""
    return create_app(load_settings())
