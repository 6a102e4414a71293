"""The request explorer: search recent requests, and follow one through the gateway.

``GET /admin/requests`` searches the usage records (one per chat or embeddings request)
by time, key, model, deployment, route, status, cache outcome, grounding outcome and
escalation; ``GET /admin/requests/{request_id}`` gives one record with its route decision
and, when tracing is on (``tracing.enabled``), the spans this process kept of it (a
bounded window: ``tracing.keep_local`` traces, ``keep_local_s`` seconds): the timeline,
the passages retrieval found (ids and scores, never their text), each provider attempt.
Prompts and answers appear only if ``log_content`` was on when the request ran (they
are in the spans then, and nowhere else). It needs no tracing server.

Admins and auditors (``usage:read``) see their own tenant; a platform administrator sees
every tenant or names one with ``?tenant=``; another tenant's request is a 404. Opening a
request's detail is audited (``requests.read``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from sqlalchemy import or_, select
from starlette.responses import Response

from iatros.api.http import Handler
from iatros.api.validation import (
    identifier_path,
    identifier_query,
    int64_query,
    timestamp,
    timestamp_query,
)
from iatros.errors import InvalidRequest, NotFound, PermissionDenied
from iatros.gateway import Gateway, RequestContext
from iatros.governance.service import Governance
from iatros.observability.tracing import spans_json
from iatros.store.db import PLATFORM
from iatros.store.models import UsageRecord

_GROUNDING = getattr(UsageRecord, "grounding", None)
"""The grounding outcome column (migration 0004), where this version of the store has it."""
_STATUS_CLASSES = {"2xx": (200, 300), "4xx": (400, 500), "5xx": (500, 600), "error": (400, 1000)}


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _scope(ctx: RequestContext, tenant: str | None) -> str:
    if tenant is None:
        return PLATFORM if ctx.principal.platform else ctx.principal.tenant
    if not ctx.principal.platform and tenant != ctx.principal.tenant:
        raise PermissionDenied("You can only see your own tenant's requests.")
    return tenant


def record_json(row: UsageRecord) -> dict[str, Any]:
    out = {
        "id": row.id,
        "request_id": row.request_id,
        "ts": row.ts.isoformat(),
        "tenant": row.tenant_id,
        "key_id": row.key_id,
        "endpoint": row.endpoint,
        "model": row.model,
        "deployment": row.deployment,
        "route": row.route,
        "cache": row.cache,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost_eur": row.cost_eur,
        "latency_ms": row.latency_ms,
        "ttft_ms": row.ttft_ms,
        "grounding": getattr(row, "grounding", "") or "",
    }
    out["escalated"] = out["grounding"] == "escalated" or "; escalate" in row.route
    return out


def route_decision(route: str) -> dict[str, Any]:
    """``x-iatros-route`` taken apart: the model, ``key=value`` steps and bare flags."""
    parts = [p.strip() for p in route.split(";") if p.strip()]
    steps: dict[str, str] = {}
    flags: list[str] = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            steps[key] = value
        else:
            flags.append(part)
    tried = steps.get("tried")
    return {
        "model": parts[0] if parts else "",
        "steps": steps,
        "flags": flags,
        "tried": tried.split(">") if tried and tried != "none" else [],
    }


def _status_filter(status: str) -> tuple[int, int]:
    if status in _STATUS_CLASSES:
        return _STATUS_CLASSES[status]
    if status.isdigit() and len(status) == 3:
        code = int(status)
        return code, code + 1
    raise InvalidRequest(
        "status must be an HTTP status (404) or one of 2xx, 4xx, 5xx, error", param="status"
    )


def _details(trace: dict[str, Any]) -> dict[str, Any]:
    """Sources, attempts and (when it was logged) content, read off the kept spans."""
    sources: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    content: dict[str, Any] | None = None
    for span in trace["spans"]:
        attrs = span["attributes"]
        if attrs.get("gen_ai.operation.name") == "retrieval":
            ids = attrs.get("iatros.retrieval.chunk_ids") or []
            docs = attrs.get("iatros.retrieval.document_ids") or []
            scores = attrs.get("iatros.retrieval.scores") or []
            for n, chunk in enumerate(ids):
                sources.append(
                    {
                        "index": n + 1,
                        "chunk_id": chunk,
                        "document_id": docs[n] if n < len(docs) else None,
                        "score": scores[n] if n < len(scores) else None,
                    }
                )
        if span["kind"] == "client":
            attempts.append(
                {
                    "deployment": attrs.get("iatros.deployment"),
                    "model": attrs.get("gen_ai.request.model"),
                    "error": span["error"],
                    "ms": round((span["end_ns"] - span["start_ns"]) / 1e6, 3),
                }
            )
        if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
            content = {
                "input": _loads(attrs.get("gen_ai.input.messages")),
                "output": _loads(attrs.get("gen_ai.output.messages")),
            }
    return {"sources": sources, "attempts": attempts, "content": content}


def _loads(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def add_explorer_routes(app: FastAPI, gw: Gateway, gov: Governance, handle: Handler) -> None:
    tracing = gw.tracing

    @app.get("/admin/requests", tags=["Admin"], summary="Search recent requests (explorer)")
    async def list_requests(
        request: Request,
        since: Annotated[str | None, timestamp_query()] = None,
        until: Annotated[str | None, timestamp_query()] = None,
        tenant: Annotated[str | None, identifier_query(64)] = None,
        key: Annotated[str | None, identifier_query(32)] = None,
        model: Annotated[str | None, identifier_query(128)] = None,
        deployment: Annotated[str | None, identifier_query(128)] = None,
        route: Annotated[str | None, identifier_query(200)] = None,
        endpoint: Annotated[str | None, identifier_query(32)] = None,
        status: Annotated[str | None, identifier_query(8)] = None,
        cache: Annotated[str | None, identifier_query(16)] = None,
        grounding: Annotated[str | None, identifier_query(16)] = None,
        escalated: Annotated[bool | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before_id: Annotated[int | None, int64_query()] = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, tenant)
            window = timestamp(since, "since"), timestamp(until, "until")
            statuses = _status_filter(status) if status else None
            if grounding is not None and _GROUNDING is None:
                raise InvalidRequest("This store has no grounding outcomes yet.", param="grounding")
            await gov.flush()  # what is still in the journal too

            def read() -> list[dict[str, Any]]:
                query = select(UsageRecord).order_by(UsageRecord.id.desc()).limit(limit)
                if before_id is not None:
                    query = query.where(UsageRecord.id < before_id)
                if window[0] is not None:
                    query = query.where(UsageRecord.ts >= window[0])
                if window[1] is not None:
                    query = query.where(UsageRecord.ts < window[1])
                for column, value in (
                    (UsageRecord.key_id, key),
                    (UsageRecord.model, model),
                    (UsageRecord.deployment, deployment),
                    (UsageRecord.endpoint, endpoint),
                ):
                    if value is not None:
                        query = query.where(column == value)
                if route is not None:
                    query = query.where(UsageRecord.route.contains(route, autoescape=True))
                if statuses is not None:
                    query = query.where(
                        UsageRecord.status >= statuses[0], UsageRecord.status < statuses[1]
                    )
                if cache == "hit":
                    query = query.where(UsageRecord.cache.startswith("hit"))
                elif cache is not None:
                    query = query.where(UsageRecord.cache == cache)
                if grounding is not None and _GROUNDING is not None:
                    query = query.where(grounding == _GROUNDING)
                if escalated is not None:
                    marks = [UsageRecord.route.contains("; escalate", autoescape=True)]
                    if _GROUNDING is not None:
                        marks.append(_GROUNDING == "escalated")
                    either = or_(*marks)
                    query = query.where(either if escalated else ~either)
                with gov.db.session(scope) as session:
                    return [record_json(row) for row in session.scalars(query)]

            rows = await asyncio.to_thread(read)
            for row in rows:
                row["trace_kept"] = tracing.store.get(row["request_id"]) is not None
            return _json(
                {
                    "object": "list",
                    "data": rows,
                    "next_before_id": rows[-1]["id"] if len(rows) == limit else None,
                    "tracing": tracing.enabled,
                }
            )

        return await handle(request, "admin", "usage:read", work)

    @app.get(
        "/admin/requests/{request_id}",
        tags=["Admin"],
        summary="One request: record, route decision, timeline of spans",
    )
    async def request_detail(
        request: Request, request_id: Annotated[str, identifier_path(40)]
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            scope = _scope(ctx, None)
            await gov.flush()

            def read() -> dict[str, Any] | None:
                query = select(UsageRecord).where(UsageRecord.request_id == request_id)
                with gov.db.session(scope) as session:
                    row = session.scalars(query).first()
                    return None if row is None else record_json(row)

            record = await asyncio.to_thread(read)
            if record is None:
                raise NotFound(f"No request {request_id!r}.", code="request_not_found")
            gov.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="requests.read",
                target=request_id,
            )
            kept = tracing.store.get(request_id)
            trace = spans_json(kept) if kept is not None else None
            body: dict[str, Any] = {
                "object": "request",
                "record": record,
                "route_decision": route_decision(record["route"]),
                "tracing": tracing.enabled,
                "trace": trace,
            }
            body.update(
                _details(trace) if trace else {"sources": [], "attempts": [], "content": None}
            )
            return _json(body)

        return await handle(request, "admin", "usage:read", work)
