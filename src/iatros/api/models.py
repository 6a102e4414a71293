"""``GET /v1/models`` and ``GET /v1/models/{id}``: the logical models and deployments."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from iatros.api import schemas
from iatros.api.http import Handler, error_responses, json_response
from iatros.errors import NotFound
from iatros.gateway import Gateway, RequestContext
from iatros.gateway.pipeline import ModelInfo

_STARTED = int(time.time())


def _model_out(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": _STARTED, "owned_by": info.owned_by}


def add_model_routes(app: FastAPI, gw: Gateway, handle: Handler) -> None:
    @app.get(
        "/v1/models",
        tags=["OpenAI"],
        response_model=schemas.ModelList,
        responses=error_responses(400, 401, 403),
    )
    async def list_models(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            return json_response({"object": "list", "data": [_model_out(m) for m in gw.models()]})

        return await handle(request, "models", "models", work)

    @app.get(
        "/v1/models/{model_id:path}",
        tags=["OpenAI"],
        response_model=schemas.ModelOut,
        responses=error_responses(400, 401, 403, 404),
    )
    async def get_model(request: Request, model_id: str) -> Response:
        async def work(ctx: RequestContext) -> Response:
            for info in gw.models():
                if info.id == model_id:
                    return json_response(_model_out(info))
            raise NotFound(
                f"The model {model_id!r} does not exist.", param="model", code="model_not_found"
            )

        return await handle(request, "models", "models", work)
