"""The web app (chat, documents, dashboard), served by the gateway process itself.

The front end is a static single-page app in ``static/`` (plain ES modules, no build
step, nothing fetched from the internet): ``/`` serves its page and ``/static`` its
files. This module adds the few endpoints the app needs beside the OpenAI ones:

- ``GET /v1/me``: who the key belongs to and what its role may do, so the app shows
  only what the caller can use;
- ``POST /v1/feedback``: thumbs up or down on an answer, stored for experiments;
- ``GET /admin/stats``: the dashboard's numbers over a period (admins and auditors), with
  the safety outcomes of grounded answers and the period's thumbs up and down.

The review queue (``/v1/reviews``) and the feedback list (``GET /v1/feedback``) the app's
Reviews and Feedback screens use live in :mod:`iatros.api.reviews`.

The front end, for whoever changes it (edit, reload; there is nothing to build):
``static/index.html`` holds the markup of every screen (texts as ``data-i18n`` keys);
``static/js/`` has one module per screen (``chat``, ``documents``, ``dashboard``,
``reviews``, ``feedback``) plus
``api`` (fetch, SSE, uploads), ``markdown`` (the safe renderer), ``charts`` (SVG),
``i18n`` and ``dom`` (elements from text nodes only: never ``innerHTML``);
``static/i18n/{en,fr}.json`` hold every interface text (the tests check both have the
same keys and that every key used exists).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from iatros.api.http import (
    Handler,
    bearer_token,
    error_response,
    error_responses,
    openapi_body,
    parse_body,
    read_body,
)
from iatros.api.validation import FreeText, identifier_query, timestamp, timestamp_query
from iatros.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from iatros.gateway import Gateway, RequestContext
from iatros.governance.roles import PERMISSIONS, allowed
from iatros.governance.service import Governance
from iatros.store.db import PLATFORM
from iatros.store.feedback import feedback_list, save_feedback
from iatros.web import stats

__all__ = ["HELP_DIR", "STATIC_DIR", "mount_help", "mount_web"]

STATIC_DIR = Path(__file__).parent / "static"

# The page may load only its own files and talk only to its own origin: even if some
# text slipped through the Markdown renderer unescaped, no script could run.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; worker-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}

# What the app offers, from the permissions of PERMISSIONS (the one matrix of roles).
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "chat": ("chat",),
    "feedback": ("feedback",),
    "documents": ("knowledge:read",),
    "documents_manage": ("knowledge:write",),
    "dashboard": ("usage:read",),
    "deployments": ("deployments:read",),
    # The clinical safety loop: "ask a human", the review queue, the feedback view.
    "reviews_ask": ("reviews:ask",),
    "reviews": ("reviews:answer",),
    "feedback_read": ("feedback:read",),
}


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    request_id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")
    rating: Literal["up", "down"]
    comment: FreeText = Field("", max_length=2000)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def capabilities(role: str, extra: tuple[str, ...] = ()) -> dict[str, bool]:
    """Which parts of the app a role may use (the first permission that exists decides);
    ``extra`` are the key's own capabilities (``reviewer``) beside its role's."""
    out: dict[str, bool] = {}
    for name, candidates in CAPABILITIES.items():
        permission = next((p for p in candidates if p in PERMISSIONS), None)
        out[name] = permission is not None and allowed(role, permission, extra)
    return out


def _has_knowledge_api(app: FastAPI) -> bool:
    return any(
        getattr(route, "path", "").startswith("/v1/knowledge/collections") for route in app.routes
    )


class _Static(StaticFiles):
    """Static files that browsers revalidate (so an upgrade shows at once) and may not sniff."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["cache-control"] = "no-cache"
        response.headers["x-content-type-options"] = "nosniff"
        if path.endswith(".webmanifest"):
            response.headers["content-type"] = "application/manifest+json"
        return response


def _parse_time(value: str | None, name: str) -> datetime | None:
    """UTC, within a range where a day back or a bucket on cannot overflow a datetime."""
    return timestamp(value, name)


def mount_web(app: FastAPI, gateway: Gateway, governance: Governance, handle: Handler) -> None:
    """Add the web app's page, files and endpoints to ``app``."""

    settings = governance.settings
    limit = settings.server.max_body_bytes
    prices = {
        name: (dep.price_per_1k_input, dep.price_per_1k_output)
        for name, dep in settings.deployments.items()
    }
    anonymous_possible = (
        settings.allow_anonymous_loopback and settings.is_loopback and settings.admin_key is None
    )

    # -- who am I ---------------------------------------------------------------

    @app.get("/v1/me", tags=["Web app"], summary="The caller: tenant, role and permissions")
    async def me(request: Request) -> Response:
        token = bearer_token(request)
        try:
            if not token and not anonymous_possible:
                # Not audited as a denial: the app asks this once to learn whether to sign in.
                raise AuthenticationFailed(
                    "Missing API key: send it as 'Authorization: Bearer <key>'.",
                    code="missing_api_key",
                )
            source = request.client.host if request.client else None
            principal = await governance.authenticate(token, source=source)
        except GatewayError as exc:
            return error_response(exc)
        return _json(
            {
                "object": "principal",
                "tenant": principal.tenant,
                "role": principal.role,
                "key_id": principal.key_id,
                "platform": principal.platform,
                "anonymous": token is None,
                "permissions": sorted(
                    p for p in PERMISSIONS if allowed(principal.role, p, principal.capabilities)
                ),
                "capabilities": capabilities(principal.role, principal.capabilities),
                "key_capabilities": list(principal.capabilities),
                "features": {"knowledge": _has_knowledge_api(app)},
                # /v1/models does not say which entries are embedding deployments.
                # ``knowledge``: the collection a route grounds every answer in, so that an
                # "ask a human" from its answers names it (a reviewer can then save the
                # answer there).
                "chat_models": [
                    {
                        "id": m.id,
                        "logical": m.id in settings.models,
                        "description": m.description,
                        "knowledge": (
                            settings.models[m.id].knowledge if m.id in settings.models else None
                        ),
                    }
                    for m in gateway.models()
                    if m.kind == "chat"
                ],
            }
        )

    # -- feedback ---------------------------------------------------------------

    @app.post(
        "/v1/feedback",
        tags=["Web app"],
        summary="Rate an answer (up or down)",
        responses=error_responses(404),
        openapi_extra=openapi_body(FeedbackIn),
    )
    async def feedback(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(FeedbackIn, await read_body(request, limit))
            await governance.flush()  # the answer's usage record may still be in the journal
            principal = ctx.principal
            saved = await asyncio.to_thread(
                lambda: save_feedback(
                    governance.db,
                    tenant=principal.tenant,
                    key_id=principal.key_id,
                    request_id=body.request_id,
                    rating=body.rating,
                    comment=body.comment.strip(),
                )
            )
            if saved is None:
                raise NotFound(
                    f"No answer {body.request_id!r} for this tenant.",
                    param="request_id",
                    code="request_not_found",
                )
            gateway.metrics.count_feedback(str(saved["model"]), body.rating)
            return _json({"object": "feedback", **saved}, 201)

        return await handle(request, "web", "feedback", work)

    # -- dashboard --------------------------------------------------------------

    @app.get("/admin/stats", tags=["Admin"], summary="Dashboard numbers over a period")
    async def admin_stats(
        request: Request,
        since: Annotated[str | None, timestamp_query()] = None,
        until: Annotated[str | None, timestamp_query()] = None,
        bucket: Literal["hour", "day"] = "hour",
        tenant: Annotated[str | None, identifier_query(64)] = None,
        key: Annotated[str | None, identifier_query(64)] = None,
        utc_offset: Annotated[int, Query(ge=-840, le=840, description="minutes")] = 0,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            now = datetime.now(UTC)
            end = _parse_time(until, "until") or now
            start = _parse_time(since, "since") or end - timedelta(days=1)
            if start >= end:
                raise InvalidRequest("since must be before until", param="since")
            offset = timedelta(minutes=utc_offset)
            step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
            if (end - start) / step > stats.MAX_BUCKETS:
                raise InvalidRequest(
                    f"the period holds more than {stats.MAX_BUCKETS} buckets; "
                    "choose a shorter period or bucket=day",
                    param="bucket",
                )
            principal = ctx.principal
            if tenant and not principal.platform and tenant != principal.tenant:
                raise PermissionDenied("You can only act on your own tenant.")
            scope = PLATFORM if principal.platform else principal.tenant
            await governance.flush()
            rows, truncated = await asyncio.to_thread(
                lambda: stats.load_rows(
                    governance.db,
                    scope,
                    since=start,
                    until=end,
                    tenant=tenant or None,
                    key_id=key or None,
                )
            )
            # Ratings of the period (per tenant; the usage table, not feedback, knows keys).
            feedback_counts = None
            if not key:
                feedback_counts = (
                    await asyncio.to_thread(
                        lambda: feedback_list(
                            governance.db, tenant or scope, since=start, until=end, limit=1
                        )
                    )
                )[1]
            body = stats.summarize(
                rows,
                since=start,
                until=end,
                bucket=bucket,
                prices=prices,
                offset=offset,
            )
            ttft = stats.histogram_quantiles(gateway.metrics.registry)
            if body["keys"]:
                # Keys by the name their owner gave them: ids mean nothing to a practice.
                known = await asyncio.to_thread(
                    governance.keys.list, scope, None if principal.platform else scope
                )
                names = {k.id: k.name for k in known}
                for row in body["keys"]:
                    row["name"] = names.get(row["key_id"]) or None
            return _json(
                {
                    "object": "stats",
                    "since": start.isoformat(),
                    "until": end.isoformat(),
                    "bucket": bucket,
                    "utc_offset": utc_offset,
                    "tenant": tenant or (None if principal.platform else principal.tenant),
                    "key": key or None,
                    "row_limit": stats.MAX_ROWS,
                    "truncated": truncated,
                    **body,
                    "feedback": feedback_counts,
                    "ttft": {**ttft, "scope": "process"},
                    "currency": "EUR",
                }
            )

        return await handle(request, "admin", "usage:read", work)

    # -- the page and its files -------------------------------------------------

    def page(name: str, media_type: str | None = None) -> FileResponse:
        return FileResponse(STATIC_DIR / name, media_type=media_type, headers=SECURITY_HEADERS)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("index.html", "text/html; charset=utf-8")

    @app.get("/sw.js", include_in_schema=False)
    async def service_worker() -> Response:
        # At the root so that its scope is the whole app.
        return page("sw.js", "text/javascript; charset=utf-8")

    @app.get("/manifest.webmanifest", include_in_schema=False)
    async def manifest() -> Response:
        return page("manifest.webmanifest", "application/manifest+json")

    app.mount("/static", _Static(directory=STATIC_DIR), name="web-static")
    mount_help(app)


# -- the documentation site (/help) ---------------------------------------------

# Built by `mkdocs build` (mkdocs.yml's site_dir; `make docs`, run by `make test`); not in
# the repository. Served only when it has been built.
HELP_DIR = Path(__file__).parent / "help"


def help_csp(directory: Path) -> str:
    """The app's CSP, plus exactly the inline scripts and style attributes the site's theme
    writes (hashed at build time into ``csp-hashes.json`` by ``docs/gen_ref.py``)."""
    try:
        hashes = orjson.loads((directory / "csp-hashes.json").read_bytes())
        scripts = " ".join(h for h in hashes.get("script", []) if h.startswith("'sha256-"))
        styles = " ".join(h for h in hashes.get("style", []) if h.startswith("'sha256-"))
    except (OSError, orjson.JSONDecodeError, AttributeError):
        scripts = styles = ""
    csp = CSP.replace("script-src 'self'", f"script-src 'self' {scripts}".rstrip())
    if styles:
        csp = csp.replace("style-src 'self'", f"style-src 'self' 'unsafe-hashes' {styles}")
    return csp


class _Help(StaticFiles):
    """The documentation's files, with the web app's security headers."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=True)
        self.headers = {**SECURITY_HEADERS, "content-security-policy": help_csp(directory)}

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.headers)
        return response


def mount_help(app: FastAPI, directory: Path | None = None) -> bool:
    """Serve the built documentation at ``/help`` if there is one; say whether it is."""
    directory = directory or HELP_DIR
    if not (directory / "index.html").is_file():
        return False
    app.mount("/help", _Help(directory), name="help")
    return True
