"""The OpenAPI document, made to tell the truth about every operation.

FastAPI documents what it can see: a 200 and its own 422. Iatros' handlers read their
bodies themselves and answer every failure in the OpenAI error format with the status
that fits, and never 422. So the document is completed here, from what the shared
request path (:mod:`iatros.api.http`) really does: every authenticated operation can
answer 400 (a bad header or parameter), 401, 403 and 429 (throttled sign-in attempts);
one with a body also 413 and 415; one with a path parameter also 404. Routes declare
the rest (``responses=error_responses(...)``). ``tests/test_openapi_contract.py`` runs
schemathesis against a live server to keep it true.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from iatros.api import schemas
from iatros.api.http import ERROR_TEXTS, body_schemas

_OPEN = ("/healthz", "/readyz", "/metrics")
"""Operations that need no key: they answer what they declare, and nothing else."""
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_METHODS = ("get", "put", "post", "delete", "patch", "options", "head")


def _error(code: int) -> dict[str, Any]:
    content = {"application/json": {"schema": _ERROR_REF}}
    return {"description": ERROR_TEXTS[code], "content": content}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.update(body_schemas())
    error_schema = schemas.ErrorResponse.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components.update(error_schema.pop("$defs", {}))
    components["ErrorResponse"] = error_schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            if method in _METHODS:
                _complete(path, method, operation)
    return spec


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's; Iatros answers 400 in the OpenAI format instead
    if path in _OPEN:
        return
    codes = {400, 401, 403, 429}
    if "requestBody" in operation:
        codes |= {413, 415}
    if "{" in path:
        codes.add(404)
    if path.startswith("/v1/knowledge"):
        codes.add(503)  # no embedding model configured: no knowledge base
    for status in sorted(codes):
        responses.setdefault(str(status), _error(status))
    for code, response in responses.items():
        if code.isdigit() and int(code) >= 400:
            response.setdefault("content", {"application/json": {"schema": _ERROR_REF}})
