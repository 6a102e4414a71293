"""What every router shares: reading and parsing bodies, errors, the request scope.

Routers (``api/chat.py``, ``api/admin.py``, ``api/knowledge.py``, ``web/``) import this
module and the services; they never import ``api/app.py`` or each other, so the HTTP
layer has no import circle and a new router needs nothing but this file.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from iatros.api import schemas
from iatros.errors import GatewayError, InvalidRequest, PayloadTooLarge
from iatros.gateway import Gateway, RequestContext
from iatros.governance.service import Governance

log = logging.getLogger("iatros.api")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
JSON = "application/json"
MAX_AUTH_HEADER = 4096
"""Bytes: a key is tens of characters; anything longer is refused before it is hashed."""
# pydantic names the union member that failed inside ``loc`` (``input.list[str].0``); clients
# only care about the field path.
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|[A-Z][A-Za-z]+)$")

Work = Callable[[RequestContext], Awaitable[Response]]
Handler = Callable[[Request, str, str, Work], Awaitable[Response]]
"""``handle(request, endpoint, permission, work)``: see :class:`RequestScope`."""


class ClientDisconnected(Exception):
    """The client went away before the answer was ready."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type=JSON)


def error_response(exc: GatewayError, request_id: str | None = None) -> Response:
    headers = dict(exc.headers)
    if request_id:
        headers["x-iatros-request-id"] = request_id
    return json_response(exc.body(), exc.status, headers)


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a JSON body; every failure names the field (OpenAI's ``param``)."""
    if not body.strip():
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        return model.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """A pydantic failure as one 400 naming the first field that failed."""
    err = exc.errors(include_url=False)[0]
    if err["type"] in ("json_invalid", "json_type"):
        return InvalidRequest(
            f"The request body is not valid JSON: {err['msg']}", code="invalid_json"
        )
    if err["type"] == "model_type" or not err["loc"]:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    param = prefix + ".".join(str(p) for p in err["loc"] if not _UNION_TAG.match(str(p)))
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "Field required"
    elif err["type"] == "extra_forbidden":
        msg = "Unknown parameter"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
    return InvalidRequest(f"Invalid '{param}': {msg}{more}", param=param)


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
        if not declared.isdigit():  # int() would take "-5", "+5", " 5" and "1_0"
            raise InvalidRequest(
                "Invalid Content-Length header: it must be a non-negative integer.",
                param="content-length",
                code="invalid_header",
            )
        if int(declared) > limit:
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


def trace_headers(request: Request) -> tuple[str | None, str | None]:
    """The client's ``traceparent`` and ``tracestate`` headers, if any."""
    headers = request.headers
    return headers.get("traceparent"), headers.get("tracestate")


def bearer_token(request: Request) -> str | None:
    """The caller's key from ``Authorization: Bearer`` (or Azure's ``api-key``)."""
    header = request.headers.get("authorization")
    if header:
        if len(header) > MAX_AUTH_HEADER:
            raise InvalidRequest(
                f"The Authorization header is longer than {MAX_AUTH_HEADER} bytes.",
                param="authorization",
                code="invalid_header",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    key = request.headers.get("api-key")
    if key is not None and len(key) > MAX_AUTH_HEADER:
        raise InvalidRequest(
            f"The api-key header is longer than {MAX_AUTH_HEADER} bytes.",
            param="api-key",
            code="invalid_header",
        )
    return key


class RequestScope:
    """Authenticate, authorise, run and account for one HTTP request.

    Every router's handlers go through :meth:`handle`, so no endpoint can forget the
    key check, the permission, the in-flight gauge or the usage record. A streaming
    response is accounted by the stream itself when it ends.
    """

    def __init__(self, gateway: Gateway, governance: Governance) -> None:
        self.gateway = gateway
        self.governance = governance

    async def handle(
        self, request: Request, endpoint: str, permission: str, work: Work
    ) -> Response:
        gw, gov = self.gateway, self.governance
        gauge = gw.metrics.in_flight_gauge(endpoint)
        gauge.inc()
        ctx: RequestContext | None = None
        handed_off = False
        try:
            client = request.scope.get("client")  # not request.client: no namedtuple per call
            source = client[0] if client else None
            principal = await gov.authenticate(bearer_token(request), source=source)
            ctx = RequestContext(principal=principal, endpoint=endpoint)
            if gw.tracing.enabled:  # a client's W3C trace context makes its span our parent
                gw.tracing.begin(ctx, *trace_headers(request))
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


# -- the OpenAPI document ----------------------------------------------------------

ERROR_TEXTS = {
    400: "Invalid request (the `param` field names what is wrong)",
    401: "Missing or invalid API key",
    402: "The key's or tenant's monthly budget is used up",
    403: "The key's role does not allow this, or another tenant's resource",
    404: "Unknown model, path or resource",
    409: "Conflict with the current state",
    413: "Body too large",
    415: "Unsupported content type",
    429: "Rate limit, budget or queue full; see Retry-After",
    500: "Unexpected failure (logged with the request id)",
    502: "Upstream failure",
    503: "No deployment or store available right now; see Retry-After",
    504: "Upstream timeout",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses an operation really returns."""
    chosen = codes or (400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
    return {
        code: {"model": schemas.ErrorResponse, "description": ERROR_TEXTS[code]} for code in chosen
    }


_BODY_SCHEMAS: dict[str, Any] = {}
"""JSON Schemas of the bodies that handlers read themselves, for the OpenAPI components."""


def body_schemas() -> dict[str, Any]:
    return dict(_BODY_SCHEMAS)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """An ``openapi_extra`` naming ``model`` as the JSON body (handlers read it themselves)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    _BODY_SCHEMAS.update(schema.pop("$defs", {}))
    _BODY_SCHEMAS[model.__name__] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def openapi_upload(field: str) -> dict[str, Any]:
    """An ``openapi_extra`` for a multipart upload of one or more files in ``field``."""
    files = {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1}
    schema = {"type": "object", "properties": {field: files}, "required": [field]}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }
