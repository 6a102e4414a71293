"""Knowledge endpoints: collections, document uploads (background jobs), search.

Every call is scoped to the caller's tenant by the knowledge base itself. Changes to
a collection drop the cached answers built on it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import UploadFile
from starlette.responses import Response

from iatros.api.http import (
    Handler,
    error_responses,
    openapi_body,
    openapi_upload,
    parse_body,
    read_body,
)
from iatros.api.validation import ModelInput, check_json, identifier_path, identifier_query
from iatros.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from iatros.gateway import Gateway, RequestContext
from iatros.gateway.grounding import knowledge_error, knowledge_unavailable
from iatros.governance.service import Governance
from iatros.knowledge import KnowledgeBase, KnowledgeError
from iatros.knowledge.archives import ArchiveLimits, ArchiveTooLarge, check_uploads
from iatros.knowledge.names import COLLECTION_PATTERN
from iatros.store.db import PLATFORM
from iatros.store.models import Tenant

MAX_FILES = 50
CollectionName = Annotated[str, Path(pattern=COLLECTION_PATTERN)]
TenantQuery = Annotated[
    str | None,
    identifier_query(
        64, description="Platform admins: the tenant whose knowledge to act on (else their own)"
    ),
]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: ModelInput = Field(min_length=1, max_length=4000)
    collection: str = Field(pattern=COLLECTION_PATTERN)
    k: int = Field(5, ge=1, le=100)
    filters: dict[str, Any] | None = None
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"

    @field_validator("filters")
    @classmethod
    def _filters_fit(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            check_json(value, "filters")  # integers beyond 64 bits: 400, not a failed bind
        return value


class NewCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=COLLECTION_PATTERN)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def add_knowledge_routes(
    app: FastAPI, gw: Gateway, gov: Governance, kb: KnowledgeBase | None, handle: Handler
) -> None:
    settings = gov.settings
    upload_limit = settings.knowledge.max_file_bytes * 4 + 1024 * 1024
    archive_limits = ArchiveLimits.from_settings(settings.knowledge)

    def require() -> KnowledgeBase:
        if kb is None:
            raise knowledge_unavailable()
        return kb

    def known_tenant(tenant: str) -> bool:
        with gov.db.session(PLATFORM) as session:
            return session.get(Tenant, tenant) is not None

    async def acting_tenant(ctx: RequestContext, tenant: str | None) -> str:
        """Whose knowledge a request acts on: the caller's tenant, or — for a platform
        admin only — the existing tenant it names, so the admin can fill a practice's
        collections for its clinicians (an admin's uploads otherwise land in the admin's
        own tenant, where the practice never sees them)."""
        if tenant is None or tenant == ctx.principal.tenant:
            return ctx.principal.tenant
        if not ctx.principal.platform:
            raise PermissionDenied("You can only act on your own tenant.")
        if not await asyncio.to_thread(known_tenant, tenant):
            raise NotFound(f"No tenant {tenant!r}.", param="tenant")
        return tenant

    async def forget_answers(tenant: str, collection: str) -> None:
        await gw.cache.invalidate(tenant=tenant, collection=collection)

    @app.get(
        "/v1/knowledge/collections",
        tags=["Knowledge"],
        summary="Your collections",
        responses=error_responses(404, 503),
    )
    async def collections(request: Request, tenant: TenantQuery = None) -> Response:
        async def work(ctx: RequestContext) -> Response:
            infos = await asyncio.to_thread(
                require().list_collections, await acting_tenant(ctx, tenant)
            )
            return _json({"object": "list", "data": [c.to_dict() for c in infos]})

        return await handle(request, "knowledge", "knowledge:read", work)

    @app.post(
        "/v1/knowledge/collections",
        tags=["Knowledge"],
        summary="Create an empty collection (201; 200 if it exists already)",
        status_code=201,
        responses={**error_responses(404, 503), 200: {"description": "The collection existed"}},
    )
    async def create_collection(
        request: Request, body: NewCollection, tenant: TenantQuery = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            owner = await acting_tenant(ctx, tenant)
            try:
                created = await require().create_collection(owner, body.name)
                infos = await asyncio.to_thread(require().list_collections, owner)
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            if created:
                gov.audit(
                    tenant=owner,
                    actor=ctx.principal.key_id,
                    action="knowledge.collection.create",
                    target=body.name,
                )
            info = next(c for c in infos if c.name == body.name)
            return _json(info.to_dict(), 201 if created else 200)

        return await handle(request, "knowledge", "knowledge:write", work)

    @app.delete(
        "/v1/knowledge/collections/{name}",
        tags=["Knowledge"],
        summary="Delete a collection with all its documents and passages",
    )
    async def delete_collection(
        request: Request, name: CollectionName, tenant: TenantQuery = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            owner = await acting_tenant(ctx, tenant)
            try:
                removed = await require().delete_collection(owner, name)
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            await forget_answers(owner, name)
            gov.audit(
                tenant=owner,
                actor=ctx.principal.key_id,
                action="knowledge.collection.delete",
                target=name,
                details={"documents": removed},
            )
            return _json({"deleted": name, "documents": removed})

        return await handle(request, "knowledge", "knowledge:write", work)

    @app.get("/v1/knowledge/collections/{name}/documents", tags=["Knowledge"], summary="Documents")
    async def documents(
        request: Request, name: CollectionName, tenant: TenantQuery = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            try:
                docs = await asyncio.to_thread(
                    require().list_documents, await acting_tenant(ctx, tenant), name
                )
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            return _json({"object": "list", "data": [d.to_dict() for d in docs]})

        return await handle(request, "knowledge", "knowledge:read", work)

    @app.post(
        "/v1/knowledge/collections/{name}/documents",
        tags=["Knowledge"],
        summary="Upload documents (multipart field 'files'); ingested in the background",
        status_code=202,
        responses=error_responses(404, 503),
        openapi_extra=openapi_upload("files"),
    )
    async def upload(
        request: Request, name: CollectionName, tenant: TenantQuery = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            base = require()
            owner = await acting_tenant(ctx, tenant)
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > upload_limit:
                raise PayloadTooLarge(
                    f"The upload is larger than {upload_limit} bytes; send fewer or smaller files."
                )
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise InvalidRequest("Send the files as multipart/form-data in the field 'files'.")
            try:
                form = await request.form(max_files=MAX_FILES, max_part_size=upload_limit)
            except Exception as exc:
                raise InvalidRequest(f"The multipart body could not be read: {exc}") from None
            files: list[tuple[str, bytes]] = []
            for item in form.getlist("files"):
                if not isinstance(item, UploadFile):
                    raise InvalidRequest("'files' must be file parts.", param="files")
                files.append((item.filename or "unnamed", await item.read()))
            if not files:
                raise InvalidRequest("No file in the field 'files'.", param="files")
            try:  # a decompression bomb gets its 413 now, not a failed job later
                await asyncio.to_thread(check_uploads, files, archive_limits)
            except ArchiveTooLarge as exc:
                raise PayloadTooLarge(str(exc), param="files", code=exc.code) from None
            try:
                job_id = await base.submit_upload(owner, name, files)
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            gov.audit(
                tenant=owner,
                actor=ctx.principal.key_id,
                action="knowledge.upload",
                target=name,
                details={"files": len(files)},
            )
            await forget_answers(owner, name)
            return _json({"object": "knowledge.job", "job_id": job_id, "files": len(files)}, 202)

        return await handle(request, "knowledge", "knowledge:write", work)

    @app.get("/v1/knowledge/jobs/{job_id}", tags=["Knowledge"], summary="An ingestion job")
    async def job(
        request: Request, job_id: Annotated[str, identifier_path(64)], tenant: TenantQuery = None
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            owner = await acting_tenant(ctx, tenant)
            try:
                status = await asyncio.to_thread(require().job_status, owner, job_id)
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            return _json(status.to_dict())

        return await handle(request, "knowledge", "knowledge:read", work)

    @app.delete(
        "/v1/knowledge/collections/{name}/documents/{document_id}",
        tags=["Knowledge"],
        summary="Delete a document and its chunks",
    )
    async def delete(
        request: Request,
        name: CollectionName,
        document_id: Annotated[str, identifier_path(128)],
        tenant: TenantQuery = None,
    ) -> Response:
        async def work(ctx: RequestContext) -> Response:
            owner = await acting_tenant(ctx, tenant)
            try:
                removed = await require().delete_document(owner, name, document_id)
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            await forget_answers(owner, name)
            gov.audit(
                tenant=owner,
                actor=ctx.principal.key_id,
                action="knowledge.delete",
                target=f"{name}/{document_id}",
            )
            return _json({"deleted": document_id, "chunks": removed})

        return await handle(request, "knowledge", "knowledge:write", work)

    @app.post(
        "/v1/knowledge/search",
        tags=["Knowledge"],
        summary="Hybrid search in a collection",
        responses=error_responses(404, 503),
        openapi_extra=openapi_body(SearchRequest),
    )
    async def search(request: Request) -> Response:
        async def work(ctx: RequestContext) -> Response:
            body = parse_body(
                SearchRequest, await read_body(request, settings.server.max_body_bytes)
            )
            try:
                passages = await require().search(
                    ctx.principal.tenant,
                    body.collection,
                    body.query,
                    body.k,
                    body.filters,
                    body.mode,
                )
            except KnowledgeError as exc:
                raise knowledge_error(exc) from None
            return _json({"object": "list", "data": [p.to_dict() for p in passages]})

        return await handle(request, "knowledge", "knowledge:read", work)
