"""``POST /v1/embeddings``: OpenAI's wire format over the gateway's :class:`Embedder`."""

from __future__ import annotations

import base64
from array import array
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from iatros.api import schemas
from iatros.api.http import (
    Handler,
    error_responses,
    json_response,
    openapi_body,
    parse_body,
    read_body,
    unless_disconnected,
)
from iatros.errors import InvalidRequest
from iatros.gateway import Gateway, RequestContext
from iatros.governance.service import Governance
from iatros.routing.router import estimate_prompt_tokens


def add_embedding_routes(app: FastAPI, gw: Gateway, gov: Governance, handle: Handler) -> Any:
    """Declare the route (for the OpenAPI document) and return its handler for fast dispatch."""
    limit = gw.settings.server.max_body_bytes
    embedder = gw.embedder

    @app.post(
        "/v1/embeddings",
        tags=["OpenAI"],
        summary="Create embeddings (local all-MiniLM-L6-v2 by default)",
        response_model=schemas.EmbeddingResponse,
        responses=error_responses(),
        openapi_extra=openapi_body(schemas.EmbeddingRequest),
    )
    async def embeddings(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            req = parse_body(schemas.EmbeddingRequest, await read_body(request, limit))
            name = req.model or embedder.default_model
            if name is None:
                raise InvalidRequest("No embedding model is configured; name one.", param="model")
            deployment = embedder.resolve(ctx, name)
            inputs = [req.input] if isinstance(req.input, str) else req.input
            await gov.admit(ctx, estimate_prompt_tokens([{"content": text} for text in inputs]))
            result = await unless_disconnected(request, embedder.embed(ctx, deployment, inputs))
            if (
                req.dimensions is not None
                and result.vectors
                and req.dimensions != len(result.vectors[0])
            ):
                raise InvalidRequest(
                    f"dimensions={req.dimensions} is not supported by {deployment.name!r}: "
                    f"its vectors have {len(result.vectors[0])} dimensions.",
                    param="dimensions",
                )
            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": (
                        base64.b64encode(array("f", vec).tobytes()).decode()
                        if req.encoding_format == "base64"
                        else vec
                    ),
                }
                for i, vec in enumerate(result.vectors)
            ]
            tokens = ctx.usage.prompt_tokens
            body = {
                "object": "list",
                "data": data,
                "model": deployment.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            return json_response(body, headers=ctx.headers())

        return await handle(request, "embeddings", "embeddings", work)

    return embeddings
