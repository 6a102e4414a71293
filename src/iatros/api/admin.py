"""Administration endpoints: keys, usage, audit, deployment health.

Every query runs in the caller's tenant scope (the store enforces it); a
platform administrator may name another tenant with ``?tenant=``.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response

from iatros.api.http import Handler, openapi_body, parse_body, read_body
from iatros.api.validation import (
    INT32_MAX,
    FreeText,
    Identifier,
    identifier_path,
    identifier_query,
    int64_query,
    timestamp,
    timestamp_query,
)
from iatros.errors import InvalidRequest, NotFound, PermissionDenied
from iatros.gateway import Gateway, RequestContext
from iatros.governance.service import Governance
from iatros.governance.usage import aggregate
from iatros.store.db import PLATFORM
from iatros.store.models import AuditRecord


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    tenant: Identifier | None = Field(
        None, max_length=64, description="Platform admins only; default: your tenant."
    )
    role: Literal["admin", "clinician", "service", "auditor"]
    name: FreeText = Field("", max_length=128)
    rpm: int | None = Field(None, gt=0, le=INT32_MAX)
    tpm: int | None = Field(None, gt=0, le=INT32_MAX)
    budget_eur: float | None = Field(None, gt=0)
    expires_at: datetime | None = None
    capabilities: list[Literal["reviewer"]] = Field(
        default_factory=list,
        max_length=4,
        description="Permissions beside the role: `reviewer` answers the review queue.",
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _scope(ctx: RequestContext, tenant: str | None) -> str:
    """The tenant a request may act on: its own, or any for a platform admin."""
    if tenant is None:
        return PLATFORM if ctx.principal.platform else ctx.principal.tenant
    if not ctx.principal.platform and tenant != ctx.principal.tenant:
        raise PermissionDenied("You can only act on your own tenant.")
    return tenant


def add_admin_routes(app: FastAPI, gw: Gateway, gov: Governance, handle: Handler) -> None:

    limit = gov.settings.server.max_body_bytes

    @app.get("/admin/deployments", tags=["Admin"], summary="Deployment health and breakers")
    async def admin_deployments(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return _json({"object": "list", "data": gw.router.snapshot()})

        return await handle(request, "admin", "deployments:read", work)

    @app.get("/admin/keys", tags=["Admin"], summary="List API keys (prefixes only)")
    async def list_keys(
        request: Request, tenant: Annotated[str | None, identifier_query(64)] = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, tenant)
            keys = await asyncio.to_thread(
                gov.keys.list, scope, None if scope == PLATFORM else scope
            )
            return _json({"object": "list", "data": [asdict(k) for k in keys]})

        return await handle(request, "admin", "keys:manage", work)

    @app.post(
        "/admin/keys",
        tags=["Admin"],
        summary="Create an API key (shown once)",
        status_code=201,
        openapi_extra=openapi_body(KeyCreate),
    )
    async def create_key(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(KeyCreate, await read_body(request, limit))
            tenant = body.tenant or ctx.principal.tenant
            scope = _scope(ctx, tenant)
            try:
                token, info = await asyncio.to_thread(
                    lambda: gov.keys.create(
                        tenant=tenant,
                        role=body.role,
                        actor=ctx.principal.key_id,
                        name=body.name,
                        rpm=body.rpm,
                        tpm=body.tpm,
                        budget_eur=body.budget_eur,
                        expires_at=body.expires_at,
                        scope=scope,
                        capabilities=body.capabilities,
                    )
                )
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            gov.forget_keys()
            return _json({"key": token, **asdict(info)}, 201)

        return await handle(request, "admin", "keys:manage", work)

    @app.delete("/admin/keys/{key_id}", tags=["Admin"], summary="Revoke an API key")
    async def revoke_key(request: Request, key_id: Annotated[str, identifier_path(64)]) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, None)
            try:
                info = await asyncio.to_thread(
                    lambda: gov.keys.revoke(key_id, scope=scope, actor=ctx.principal.key_id)
                )
            except LookupError:
                raise NotFound(f"No key {key_id!r}.", code="key_not_found") from None
            gov.forget_keys()
            return _json(asdict(info))

        return await handle(request, "admin", "keys:manage", work)

    @app.post("/admin/keys/{key_id}/rotate", tags=["Admin"], summary="Replace a key by a new one")
    async def rotate_key(request: Request, key_id: Annotated[str, identifier_path(64)]) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, None)
            try:
                token, info = await asyncio.to_thread(
                    lambda: gov.keys.rotate(key_id, scope=scope, actor=ctx.principal.key_id)
                )
            except LookupError:
                raise NotFound(f"No key {key_id!r}.", code="key_not_found") from None
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            gov.forget_keys()
            return _json({"key": token, **asdict(info)}, 201)

        return await handle(request, "admin", "keys:manage", work)

    @app.get("/admin/usage", tags=["Admin"], summary="Usage totals by day, model, key or tenant")
    async def usage(
        request: Request,
        group_by: Literal["day", "model", "key", "tenant"] = "day",
        since: Annotated[str | None, timestamp_query()] = None,
        until: Annotated[str | None, timestamp_query()] = None,
        tenant: Annotated[str | None, identifier_query(64)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, tenant)
            window = [_date(since, "since"), _date(until, "until")]
            await gov.flush()  # include what is still in the journal
            rows = await asyncio.to_thread(
                lambda: aggregate(
                    gov.db,
                    scope,
                    group_by=group_by,
                    since=window[0],
                    until=window[1],
                )
            )
            return _json({"object": "list", "group_by": group_by, "data": rows})

        return await handle(request, "admin", "usage:read", work)

    @app.get("/admin/audit", tags=["Admin"], summary="Audit records (newest first)")
    async def audit_log(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, int64_query()] = None,  # the id column is a bigint
        tenant: Annotated[str | None, identifier_query(64)] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, tenant)
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="audit.read",
                target=scope,
            )
            await gov.flush()

            def read() -> list[dict[str, Any]]:
                with gov.db.session(scope) as session:
                    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
                    if before_id is not None:
                        query = query.where(AuditRecord.id < before_id)
                    return [
                        {
                            "id": r.id,
                            "ts": r.ts.isoformat(),
                            "tenant": r.tenant_id,
                            "actor": r.actor,
                            "action": r.action,
                            "target": r.target,
                            "outcome": r.outcome,
                            "details": r.details,
                            "hash": r.hash,
                        }
                        for r in session.scalars(query)
                    ]

            return _json({"object": "list", "data": await asyncio.to_thread(read)})

        return await handle(request, "admin", "audit:read", work)

    @app.delete("/admin/cache", tags=["Admin"], summary="Drop cached answers (patient, model, ...)")
    async def invalidate_cache(
        request: Request,
        patient_id: Annotated[str | None, identifier_query(200)] = None,
        tenant: Annotated[str | None, identifier_query(64)] = None,
        model: Annotated[str | None, identifier_query(128)] = None,
        collection: Annotated[str | None, identifier_query(64)] = None,
        drop_all: Annotated[
            str | None,
            Query(
                alias="all",
                description="true: drop every cached answer of your tenant (no other filter)",
            ),
        ] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, tenant)
            target_tenant = None if scope == PLATFORM else scope
            if drop_all not in (None, "true", "false"):
                raise InvalidRequest("all must be true or false", param="all")
            # A tenant admin's request without filters would drop the whole tenant's cache:
            # that must be asked for in so many words, never be what a forgotten filter does.
            if not any((patient_id, tenant, model, collection)) and (
                target_tenant is None or drop_all != "true"
            ):
                raise InvalidRequest(
                    "Name what to drop: patient_id, model, collection or tenant; or pass "
                    "all=true to drop every cached answer of your tenant.",
                    param="all",
                )
            dropped = await gw.cache.invalidate(
                tenant=target_tenant, patient_id=patient_id, model=model, collection=collection
            )
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="cache.invalidated",
                target=gov.patient_ref(patient_id) if patient_id else (model or collection or ""),
                details={"dropped": dropped, "tenant": target_tenant or "*"},
            )
            return _json({"dropped": dropped})

        return await handle(request, "admin", "cache:manage", work)


def _date(value: str | None, name: str) -> datetime | None:
    """An ISO date or date-time (UTC unless it says otherwise), within a range SQL takes."""
    return timestamp(value, name)
