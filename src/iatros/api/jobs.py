"""Job administration: the dead-letter list, one job, retry and cancel.

Admins see their tenant's jobs; the platform admin (``IATROS_ADMIN_KEY``) sees every
tenant's. Another tenant's job id is a 404, exactly like an unknown one. Retrying and
cancelling are audited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query, Request
from starlette.responses import Response

from iatros.api.http import Handler, error_responses, json_response
from iatros.api.validation import identifier_path
from iatros.errors import Conflict, NotFound
from iatros.gateway import RequestContext
from iatros.governance.service import Governance
from iatros.jobs import JobConflict, JobNotFound, JobQueue

JobId = Annotated[str, identifier_path(64)]


def _tenant(ctx: RequestContext) -> str | None:
    return None if ctx.principal.platform else ctx.principal.tenant


def add_job_routes(app: FastAPI, queue: JobQueue, gov: Governance, handle: Handler) -> None:
    @app.get("/admin/jobs/dead", tags=["Admin"], summary="Dead letters: jobs that gave up")
    async def dead_letters(
        request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            dead = await queue.dead_letters(tenant=_tenant(ctx), limit=limit)
            return json_response({"object": "list", "data": [j.to_dict() for j in dead]})

        return await handle(request, "admin", "jobs:manage", work)

    @app.get(
        "/admin/jobs/{job_id}", tags=["Admin"], summary="A job", responses=error_responses(404)
    )
    async def job(request: Request, job_id: JobId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            try:
                info = await queue.status(job_id, tenant=_tenant(ctx))
            except JobNotFound:
                raise NotFound(f"No job {job_id!r}.", code="job_not_found") from None
            return json_response(info.to_dict())

        return await handle(request, "admin", "jobs:manage", work)

    @app.post(
        "/admin/jobs/{job_id}/retry",
        tags=["Admin"],
        summary="Queue a dead job again (its attempts start over)",
        responses=error_responses(404, 409),
    )
    async def retry(request: Request, job_id: JobId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            try:
                info = await queue.retry(job_id, tenant=_tenant(ctx))
            except JobNotFound:
                raise NotFound(f"No job {job_id!r}.", code="job_not_found") from None
            except JobConflict as exc:
                raise Conflict(str(exc), code="job_not_dead") from None
            gov.audit(
                tenant=info.tenant, actor=ctx.principal.key_id, action="job.retry", target=job_id
            )
            return json_response(info.to_dict())

        return await handle(request, "admin", "jobs:manage", work)

    @app.post(
        "/admin/jobs/{job_id}/cancel",
        tags=["Admin"],
        summary="Cancel a job (a running one stops at its worker's next check)",
        responses=error_responses(404),
    )
    async def cancel(request: Request, job_id: JobId) -> Response:
        async def work(ctx: RequestContext) -> Response:
            try:
                info = await queue.cancel(job_id, tenant=_tenant(ctx))
            except JobNotFound:
                raise NotFound(f"No job {job_id!r}.", code="job_not_found") from None
            gov.audit(
                tenant=info.tenant, actor=ctx.principal.key_id, action="job.cancel", target=job_id
            )
            return json_response(info.to_dict())

        return await handle(request, "admin", "jobs:manage", work)
