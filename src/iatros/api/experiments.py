"""Release registry and experiments over HTTP (``/admin/releases``, ``/admin/experiments``).

Routes are platform-wide, so what a route serves is a platform administrator's business
(``IATROS_ADMIN_KEY`` or a platform key): a tenant's admin gets 403, for reads too, since
an analysis counts every tenant's requests.
Every change is audited by the services; this module only parses and answers.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
)
from iatros.api.http import read_body as _read_body
from iatros.api.validation import FreeText, Identifier, identifier_path, identifier_query
from iatros.errors import PermissionDenied
from iatros.experiments.registry import RouteSpec
from iatros.experiments.service import ExperimentService
from iatros.gateway import RequestContext

Metric = Literal[
    "error_rate", "latency_ms", "ttft_ms", "cache_hit_ratio", "cost_eur", "tokens",
    "escalation_rate", "verification_failure_rate", "thumbs_up_rate",
]  # fmt: skip
B = TypeVar("B", bound=BaseModel)
Id = Annotated[str, identifier_path(64)]
RouteName = Annotated[str, identifier_path(128)]


class AgentReleaseCreate(BaseModel):
    """Promote it (``/admin/releases/{id}/promote``) to make that version the one that
    runs; ``/admin/routes/agent:<tenant>:<template>/rollback`` undoes it."""

    model_config = ConfigDict(extra="forbid", strict=True)
    tenant: Identifier = Field(max_length=64)
    template: Identifier = Field(max_length=64, description="An agent or workflow's name.")
    version: int = Field(ge=1, le=2**31 - 1)
    note: FreeText = Field("", max_length=2000)


class ReleaseCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    route: Identifier = Field(max_length=128, description="A logical model of the config.")
    spec: RouteSpec
    note: FreeText = Field("", max_length=2000)


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    reason: FreeText = Field("", max_length=500)


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Identifier = Field(max_length=32)
    release_id: Identifier = Field(max_length=40)
    share: float = Field(gt=0, le=100, description="Percent of the route's traffic.")


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    route: Identifier = Field(max_length=128)
    name: FreeText = Field("", max_length=128)
    variants: list[VariantIn] = Field(min_length=2, max_length=8)
    unit: Literal["key", "user", "conversation"] = "key"
    salt: Identifier | None = Field(None, max_length=64)
    primary_metric: Metric
    guardrails: list[Metric] = Field(default_factory=list, max_length=8)
    alpha: float = Field(0.05, gt=0, le=0.5)
    auto_promote: bool = False


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    variant: Identifier | None = Field(
        None, max_length=32, description="Promote this variant by hand; default: the winner."
    )


def _platform(ctx: RequestContext) -> str:
    if not ctx.principal.platform:
        raise PermissionDenied(
            "Routes serve every tenant: only a platform administrator sees and changes "
            "releases, experiments and rollouts (their analyses count every tenant's requests)."
        )
    return ctx.principal.key_id


def add_experiment_routes(app: FastAPI, svc: ExperimentService, handle: Handler) -> None:
    limit = svc.settings.server.max_body_bytes
    reg = svc.registry

    async def body_of(request: Request, model: type[B], *, optional: bool = False) -> B:
        """The parsed body; an optional one (a reason, a variant) may be empty."""
        raw = await _read_body(request, limit)
        return parse_body(model, b"{}" if optional and not raw.strip() else raw)

    # -- releases -----------------------------------------------------------------

    @app.get("/admin/releases", tags=["Experiments"], summary="Releases (newest first)")
    async def list_releases(
        request: Request, route: Annotated[str | None, identifier_query(128)] = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            data = await asyncio.to_thread(reg.list, route)
            return json_response({"object": "list", "data": data})

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/releases", tags=["Experiments"], summary="Write a new release of a route",
        status_code=201, openapi_extra=openapi_body(ReleaseCreate),
        responses=error_responses(400, 403, 404),
    )  # fmt: skip
    async def create_release(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, ReleaseCreate)
            out = await asyncio.to_thread(
                reg.create, body.route, body.spec.model_dump(), body.note, actor
            )
            return json_response(out, 201)

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/agent-releases", tags=["Experiments"],
        summary="Write a release pinning a version of a tenant's agent template",
        status_code=201, openapi_extra=openapi_body(AgentReleaseCreate),
        responses=error_responses(400, 403, 404),
    )  # fmt: skip
    async def create_agent_release(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, AgentReleaseCreate)
            out = await asyncio.to_thread(
                reg.create_agent, body.tenant, body.template, body.version, body.note, actor
            )
            return json_response(out, 201)

        return await handle(request, "admin", "deployments:read", work)

    @app.get(
        "/admin/releases/{release_id}", tags=["Experiments"],
        summary="A release, with its diff against the previous one",
        responses=error_responses(404),
    )  # fmt: skip
    async def show_release(request: Request, release_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            return json_response(await asyncio.to_thread(reg.show, release_id))

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/releases/{release_id}/promote", tags=["Experiments"],
        summary="Serve this release on its route (the current one becomes the rollback target)",
        openapi_extra=openapi_body(Reason), responses=error_responses(403, 404, 409),
    )  # fmt: skip
    async def promote_release(request: Request, release_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, Reason, optional=True)
            out = await asyncio.to_thread(
                lambda: reg.promote(release_id, actor, reason=body.reason)
            )
            return json_response(out)

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/releases/{release_id}/archive", tags=["Experiments"],
        summary="Archive a release (not the active one nor the rollback target)",
        responses=error_responses(403, 404, 409),
    )  # fmt: skip
    async def archive_release(request: Request, release_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            return json_response(await asyncio.to_thread(reg.archive, release_id, actor))

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/routes/{route}/rollback", tags=["Experiments"],
        summary="Switch a route back to its previous release, at once",
        openapi_extra=openapi_body(Reason), responses=error_responses(403, 404, 409),
    )  # fmt: skip
    async def rollback_route(request: Request, route: RouteName) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, Reason, optional=True)
            out = await asyncio.to_thread(lambda: reg.rollback(route, actor, reason=body.reason))
            return json_response(out)

        return await handle(request, "admin", "deployments:read", work)

    # -- experiments --------------------------------------------------------------

    @app.get("/admin/experiments", tags=["Experiments"], summary="Experiments (newest first)")
    async def list_experiments(
        request: Request, route: Annotated[str | None, identifier_query(128)] = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            data = await asyncio.to_thread(svc.find, route)
            return json_response({"object": "list", "data": data})

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/experiments", tags=["Experiments"], summary="Define an experiment (a draft)",
        status_code=201, openapi_extra=openapi_body(ExperimentCreate),
        responses=error_responses(400, 403, 404, 409),
    )  # fmt: skip
    async def create_experiment(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, ExperimentCreate)
            out = await asyncio.to_thread(svc.create, body.model_dump(), actor)
            return json_response(out, 201)

        return await handle(request, "admin", "deployments:read", work)

    @app.get(
        "/admin/experiments/{experiment_id}", tags=["Experiments"], summary="An experiment",
        responses=error_responses(404),
    )  # fmt: skip
    async def show_experiment(request: Request, experiment_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            return json_response(await asyncio.to_thread(svc.show, experiment_id))

        return await handle(request, "admin", "deployments:read", work)

    @app.get(
        "/admin/experiments/{experiment_id}/analysis", tags=["Experiments"],
        summary="Arms, lift, intervals, sample-ratio check and the decision",
        responses=error_responses(404, 409),
    )  # fmt: skip
    async def analyse_experiment(request: Request, experiment_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            return json_response(await asyncio.to_thread(svc.analysis, experiment_id))

        return await handle(request, "admin", "deployments:read", work)

    for action in ("start", "stop"):
        _add_transition(app, svc, handle, action)
    add_rollout_routes(app, svc, handle)

    @app.post(
        "/admin/experiments/{experiment_id}/promote", tags=["Experiments"],
        summary="Promote the winner (or a named variant) and end the experiment",
        openapi_extra=openapi_body(PromoteBody), responses=error_responses(403, 404, 409),
    )  # fmt: skip
    async def promote_experiment(request: Request, experiment_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = await body_of(request, PromoteBody, optional=True)
            out = await asyncio.to_thread(svc.promote, experiment_id, actor, body.variant)
            return json_response(out)

        return await handle(request, "admin", "deployments:read", work)


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    route: Identifier = Field(max_length=128)
    candidate_id: Identifier = Field(max_length=40, description="The release to roll out.")
    steps: list[float] = Field(
        default_factory=lambda: [10.0, 25.0, 50.0, 100.0], min_length=1, max_length=20,
        description="The candidate's share of traffic at each step; the last is 100.",
    )
    interval_s: float = Field(300.0, gt=0, le=86400, description="Analysis interval per step.")
    max_failures: int = Field(1, ge=1, le=100, description="Failed checks before rollback.")
    thresholds: dict[str, float] = Field(default_factory=dict)


def add_rollout_routes(app: FastAPI, svc: ExperimentService, handle: Handler) -> None:
    limit = svc.settings.server.max_body_bytes
    mgr = svc.rollouts

    @app.get("/admin/rollouts", tags=["Experiments"], summary="Canary rollouts (newest first)")
    async def list_rollouts(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            data = await asyncio.to_thread(mgr.find)
            return json_response({"object": "list", "data": data})

        return await handle(request, "admin", "deployments:read", work)

    @app.post(
        "/admin/rollouts", tags=["Experiments"],
        summary="Start a canary of a release against the route's active one",
        status_code=201, openapi_extra=openapi_body(RolloutCreate),
        responses=error_responses(400, 403, 404, 409),
    )  # fmt: skip
    async def create_rollout(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            body = parse_body(RolloutCreate, await _read_body(request, limit))
            out = await asyncio.to_thread(mgr.create, body.model_dump(), actor)
            return json_response(out, 201)

        return await handle(request, "admin", "deployments:read", work)

    @app.get(
        "/admin/rollouts/{rollout_id}", tags=["Experiments"],
        summary="A rollout with the checks of every interval", responses=error_responses(404),
    )  # fmt: skip
    async def show_rollout(request: Request, rollout_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            _platform(ctx)
            return json_response(await asyncio.to_thread(mgr.show, rollout_id))

        return await handle(request, "admin", "deployments:read", work)

    for action in ("pause", "resume", "abort"):
        _add_rollout_transition(app, svc, handle, action)


def _add_rollout_transition(
    app: FastAPI, svc: ExperimentService, handle: Handler, action: str
) -> None:
    @app.post(
        f"/admin/rollouts/{{rollout_id}}/{action}", tags=["Experiments"],
        summary=f"{action.capitalize()} a rollout", responses=error_responses(403, 404, 409),
        name=f"{action}_rollout",
    )  # fmt: skip
    async def transition(request: Request, rollout_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            out = await asyncio.to_thread(svc.rollouts.transition, rollout_id, action, actor)
            return json_response(out)

        return await handle(request, "admin", "deployments:read", work)


def _add_transition(
    app: FastAPI, svc: ExperimentService, handle: Handler, action: Literal["start", "stop"]
) -> None:
    @app.post(
        f"/admin/experiments/{{experiment_id}}/{action}", tags=["Experiments"],
        summary=f"{action.capitalize()} an experiment", responses=error_responses(403, 404, 409),
        name=f"{action}_experiment",
    )  # fmt: skip
    async def transition(request: Request, experiment_id: Id) -> Response:
        async def work(ctx: RequestContext) -> Response:
            actor = _platform(ctx)
            fn = svc.start if action == "start" else svc.stop
            return json_response(await asyncio.to_thread(fn, experiment_id, actor))

        return await handle(request, "admin", "deployments:read", work)
