"""The ASGI application: the composition root.

``create_app`` builds the services once (:class:`iatros.services.Services`) and hands
them to one router module per area; the routers import :mod:`iatros.api.http` and the
services, never this module. The path of one chat request:

    IatrosApp.__call__ (fast dispatch) → api/chat.py (parse the OpenAI body)
    → api/http.RequestScope.handle (key, role, in-flight gauge)
    → gateway/chat.ChatService.respond: admission (governance) → grounding (knowledge)
      → cache lookup → Router.plan → Gateway.chat / open_stream (retries, fallback,
      breakers) → cache store
    → api/chat.py (completion JSON or SSE) → Gateway.finish (metrics, log, usage, audit)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from iatros import __version__, heap
from iatros.api.admin import add_admin_routes
from iatros.api.agents import add_agent_routes
from iatros.api.alerts import add_alert_routes
from iatros.api.audio import add_audio_routes
from iatros.api.chat import add_chat_routes
from iatros.api.docs import add_docs_routes
from iatros.api.embeddings import add_embedding_routes
from iatros.api.experiments import add_experiment_routes
from iatros.api.explorer import add_explorer_routes
from iatros.api.http import RequestScope, error_response, log
from iatros.api.jobs import add_job_routes
from iatros.api.knowledge import add_knowledge_routes
from iatros.api.models import add_model_routes
from iatros.api.openapi import build_openapi
from iatros.api.ops import add_ops_routes
from iatros.api.origin_guard import OriginGuard
from iatros.api.radiographs import add_radiograph_routes
from iatros.api.reviews import add_review_routes
from iatros.api.scribe import add_scribe_routes
from iatros.api.shedding import LoadShedder
from iatros.api.shutdown import Drain
from iatros.config import Settings, load_settings
from iatros.errors import GatewayError, InvalidRequest, NotFound
from iatros.gateway import Gateway
from iatros.observability.logging import configure_logging, flush_logging
from iatros.services import Services
from iatros.web import mount_web

_log = logging.getLogger("iatros.api")


class IatrosApp(FastAPI):
    """FastAPI, with the hot endpoints dispatched before routing and the middleware stack.

    Measured under load, Starlette's route matching, five middleware layers and
    FastAPI's request handling cost more CPU per chat request than the gateway's own
    work. The endpoints in ``fast_routes`` are still declared as FastAPI routes (so
    they are in the OpenAPI document), and their handlers already answer every
    failure themselves; this only skips the layers between the server and them.
    """

    def __init__(self, *, guard: OriginGuard, shedder: LoadShedder, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        self.shedder = shedder
        self.fast_routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.guard.refusal(scope)  # DNS rebinding, CSRF: before any handler
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None:
                shed = self.shedder.refusal(scope["path"])
                if shed is not None:
                    await error_response(shed)(scope, receive, send)
                    return
                scope["app"] = self
                try:
                    response = await handler(Request(scope, receive, send))
                except Exception:
                    log.exception("unhandled error", extra={"path": scope["path"]})
                    response = error_response(GatewayError("The gateway failed unexpectedly."))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, gateway: Gateway | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    services = Services.build(settings, gateway=gateway)
    gw, gov = services.gateway, services.governance
    settled = asyncio.Event()  # the heap frozen once the models have loaded: /readyz waits
    drain = Drain(settings.server.shutdown_timeout_s)  # SIGTERM: see api/shutdown.py

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.admin_key is None and settings.allow_anonymous_loopback:
            _log.warning("no IATROS_ADMIN_KEY set: accepting unauthenticated requests on loopback")
        for warning in settings.instance_warnings():
            _log.warning("several instances: %s", warning)
        await services.start()
        await services.jobs.start(settings.jobs.workers)
        services.scribe.start_recovery()  # transcriptions a restart interrupted: re-queued
        await services.agents.start()  # resumes runs a previous process left running
        drain.on_begin(services.jobs.drain)
        drain.install()
        heap.tune()
        heap.freeze("started")
        settled.clear()
        models = asyncio.create_task(_freeze_when_loaded(gw, settled), name="iatros-heap-freeze")
        _log.info("iatros started", extra={"version": __version__, "pid": os.getpid()})
        try:
            yield
        finally:
            models.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await models
            await services.close()
            heap.thaw()
            _log.info("iatros stopped", extra={"pid": os.getpid()})
            flush_logging()

    app = IatrosApp(
        guard=OriginGuard.from_settings(settings),
        shedder=LoadShedder(settings.server.shed_lag_ms, gw.metrics.requests_shed.inc),
        title="Iatros",
        version=__version__,
        description="OpenAI-compatible gateway for clinical assistants.",
        lifespan=lifespan,
        docs_url=None,  # served locally with a strict CSP (api/docs.py), not from a CDN
        redoc_url=None,
    )
    app.state.gateway = gw
    app.state.governance = gov
    app.state.services = services
    app.state.settings = settings
    app.state.drain = drain
    _add_error_handlers(app)

    handle = RequestScope(gw, gov).handle
    agent_model = add_agent_routes(app, services.agents, handle)
    app.fast_routes[("POST", "/v1/chat/completions")] = add_chat_routes(
        app, services.chat, handle, agent_model
    )
    app.fast_routes[("POST", "/v1/embeddings")] = add_embedding_routes(app, gw, gov, handle)
    add_model_routes(app, gw, handle)
    add_admin_routes(app, gw, gov, handle)
    add_explorer_routes(app, gw, gov, handle)
    add_alert_routes(app, services.monitor, gov, handle)
    add_knowledge_routes(app, gw, gov, services.knowledge, handle)
    add_job_routes(app, services.jobs, gov, handle)
    add_experiment_routes(app, services.experiments, handle)
    add_review_routes(app, services.reviews, gov, handle)
    add_audio_routes(app, services.transcriber, gov, handle)
    add_scribe_routes(app, services.scribe, handle)
    add_radiograph_routes(app, services.radiographs, handle)
    mount_web(app, gw, gov, handle)
    add_ops_routes(app, gw, gov, settled)
    add_docs_routes(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error body, on every path, in the OpenAI format."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body", "header")]
        param = ".".join(loc) or None
        msg = str(err.get("msg", "invalid value"))
        return error_response(InvalidRequest(f"Invalid '{param}': {msg}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(NotFound(f"Unknown path {request.url.path}"))
        err = GatewayError(str(exc.detail), code="http_error")
        err.status = exc.status_code
        err.type = "invalid_request_error"
        err.headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() != "allow"}
        if exc.status_code == 405:
            err.headers["allow"] = ", ".join(_allowed_methods(request))
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(GatewayError("The gateway failed unexpectedly."))


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path answers to (Starlette names only the first route's)."""
    path = request.url.path
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


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
        _log.warning("could not freeze the heap after loading", extra={"error": repr(exc)})
    finally:
        settled.set()


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` (used by ``iatros serve``, also with several workers)."""
    return create_app(load_settings())
