"""Operations endpoints: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from iatros.api.http import json_response
from iatros.gateway import Gateway
from iatros.governance.service import Governance

_METRICS_DOC = {
    200: {
        "description": "Prometheus text exposition format",
        "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
    }
}


def add_ops_routes(app: FastAPI, gw: Gateway, gov: Governance, settled: asyncio.Event) -> None:
    @app.get("/healthz", tags=["Operations"], summary="Liveness: the process answers")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get(
        "/readyz",
        tags=["Operations"],
        summary="Readiness: models loaded, stores reachable",
        responses={503: {"description": "Still starting, or a provider or store is down"}},
    )
    async def readyz() -> Response:
        checks = {f"provider:{name}": ok for name, ok in gw.readiness().items()}
        checks["store"] = await asyncio.to_thread(gov.ready)
        checks["heap"] = settled.is_set()
        ready = all(checks.values())
        drain = getattr(app.state, "drain", None)
        if drain is not None and drain.draining:  # SIGTERM: the balancer must stop sending
            return json_response({"status": "draining", "checks": checks}, 503)
        return json_response(
            {"status": "ready" if ready else "starting", "checks": checks}, 200 if ready else 503
        )

    @app.get(
        "/metrics",
        tags=["Operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses=_METRICS_DOC,  # type: ignore[arg-type]
    )
    async def prometheus_metrics() -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)
