"""Alerts over HTTP: what fires, what resolved, silences (``iatros alerts`` uses these).

``GET /admin/alerts`` (admins and auditors): active alerts (with ``silenced`` and
``inhibited``), recent resolved ones, live silences, the notifications sent and their
deliveries. Alerts about deployments and routes concern everyone who uses them; alerts
about a tenant are shown to that tenant's staff and platform administrators only.
``POST /admin/alerts/silences`` and ``DELETE /admin/alerts/silences/{id}`` (platform
administrators: silencing is an operator's decision for the whole gateway) are audited.
With ``alerts.enabled: false`` the list says so and silences get 409 ``alerts_disabled``.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iatros.api.http import Handler, error_responses, openapi_body, parse_body, read_body
from iatros.api.validation import FreeText, identifier_path
from iatros.errors import Conflict, NotFound, PermissionDenied
from iatros.gateway import RequestContext
from iatros.governance.service import Governance
from iatros.observability.monitor import Monitor

MAX_SILENCE_S = 30 * 86400


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    matchers: dict[
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")],
        Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\u0000-\u001f]*$")],
    ] = Field(
        min_length=1, max_length=8, description='label → value, e.g. {"deployment": "gpt-eu"}'
    )
    duration_s: float = Field(gt=0, le=MAX_SILENCE_S)
    comment: FreeText = Field("", max_length=500)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _visible(alert: dict[str, Any], ctx: RequestContext) -> bool:
    tenant = alert.get("labels", {}).get("tenant")
    return ctx.principal.platform or tenant is None or tenant == ctx.principal.tenant


def _disabled() -> Conflict:
    return Conflict(
        "Alerts are off (alerts.enabled: false): there is nothing to silence.",
        code="alerts_disabled",
    )


def add_alert_routes(
    app: FastAPI, monitor: Monitor | None, gov: Governance, handle: Handler
) -> None:
    limit = gov.settings.server.max_body_bytes

    @app.get("/admin/alerts", tags=["Admin"], summary="Active and recent alerts, silences")
    async def list_alerts(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            if monitor is None:
                return _json({"enabled": False, "active": [], "resolved": [], "silences": []})
            snapshot = monitor.alerting.snapshot()
            for name in ("active", "resolved"):
                snapshot[name] = [a for a in snapshot[name] if _visible(a, ctx)]
            snapshot["notifications"] = [
                n for n in snapshot["notifications"]
                if ctx.principal.platform or n.get("tenant") in (None, ctx.principal.tenant)
            ]  # fmt: skip
            if not ctx.principal.platform:
                snapshot["deliveries"] = []  # targets are the operator's business
            return _json({"enabled": True, **snapshot})

        return await handle(request, "admin", "usage:read", work)

    @app.post(
        "/admin/alerts/silences",
        tags=["Admin"],
        summary="Silence matching alerts until an expiry",
        responses=error_responses(400, 401, 403, 404, 409, 413, 429),
        status_code=201,
        openapi_extra=openapi_body(SilenceIn),
    )
    async def create_silence(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            if not ctx.principal.platform:
                raise PermissionDenied("Only a platform administrator may silence alerts.")
            body = parse_body(SilenceIn, await read_body(request, limit))
            if monitor is None:
                raise _disabled()
            silence = monitor.alerting.silence(
                dict(body.matchers), body.duration_s, ctx.principal.key_id, body.comment
            )
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="alerts.silenced",
                target=silence.id,
                details={"matchers": silence.matchers, "duration_s": body.duration_s},
            )
            return _json(silence.to_dict(), 201)

        return await handle(request, "admin", "deployments:read", work)

    @app.delete(
        "/admin/alerts/silences/{silence_id}",
        tags=["Admin"],
        summary="End a silence",
        responses=error_responses(400, 401, 403, 404, 409, 429),
    )
    async def expire_silence(
        request: Request, silence_id: Annotated[str, identifier_path(40)]
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            if not ctx.principal.platform:
                raise PermissionDenied("Only a platform administrator may end silences.")
            if monitor is None:
                raise _disabled()
            try:
                silence = monitor.alerting.expire(silence_id)
            except KeyError:
                raise NotFound(f"No silence {silence_id!r}.", code="silence_not_found") from None
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="alerts.unsilenced",
                target=silence.id,
            )
            return _json(silence.to_dict())

        return await handle(request, "admin", "deployments:read", work)
