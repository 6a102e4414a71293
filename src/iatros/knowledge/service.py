"""The knowledge base: a thin facade over ingestion, retrieval and upload jobs.

Each part owns one idea (:mod:`~iatros.knowledge.ingestion`,
:mod:`~iatros.knowledge.retrieval`, :mod:`~iatros.knowledge.jobs`); this class opens what
they share (:class:`~iatros.knowledge.context.Context`: the store, the search backend
chosen through the ``iatros.knowledge_backends`` entry points, the thread pool and the
write lock), checks names at the entrance and keeps the public surface the API, the CLI,
the web app and the benchmarks use. Tenants are kept apart by
:mod:`iatros.knowledge.store` (every query carries the tenant).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iatros.jobs import JobQueue
from iatros.knowledge.backends.base import BackendFactory, SearchBackend
from iatros.knowledge.chunking import Chunker
from iatros.knowledge.context import Context, EmbedFn
from iatros.knowledge.ingestion import Ingestor, ProgressFn
from iatros.knowledge.jobs import JobRunner
from iatros.knowledge.names import check_collection, check_tenant
from iatros.knowledge.retrieval import (
    RerankFn,
    Retriever,
    reciprocal_rank_fusion,
    zscore_fusion,
)
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import MetaStore
from iatros.knowledge.types import (
    CollectionInfo,
    DocumentInfo,
    FileReport,
    IngestReport,
    JobStatus,
    Passage,
    SearchMode,
)
from iatros.plugins import KNOWLEDGE_BACKENDS, load_one

__all__ = [
    "EmbedFn",
    "KnowledgeBase",
    "ProgressFn",
    "RerankFn",
    "reciprocal_rank_fusion",
    "zscore_fusion",
]


def _factory(obj: object) -> BackendFactory:
    if not callable(obj):
        raise TypeError("a knowledge backend entry point must name a factory")
    return obj


class KnowledgeBase:
    """Per-tenant collections of documents, searchable by meaning and by words.

    Args:
        settings: chunking, backend and retrieval settings.
        data_dir: the service's data directory; everything goes under ``knowledge/``.
        embed: async function from texts to vectors (the gateway's embedding provider).
        rerank: optional async ``(query, texts) -> scores`` applied to the top hybrid hits
            (no cross-encoder ships offline with Iatros, so none is used by default).
        run_jobs: run upload jobs in this process (a CLI that only ingests does not).
    """

    def __init__(
        self,
        settings: KnowledgeSettings,
        data_dir: Path,
        embed: EmbedFn,
        *,
        rerank: RerankFn | None = None,
        run_jobs: bool = True,
    ) -> None:
        self.root = Path(data_dir) / "knowledge"
        self._ctx = Context(
            settings, self.root, embed, Chunker(settings.chunk_tokens, settings.chunk_overlap)
        )
        self._ingestor = Ingestor(self._ctx)
        self._retriever = Retriever(self._ctx, rerank)
        self._jobs: asyncio.Queue[str] = asyncio.Queue()
        self._runner = JobRunner(self._ctx, self._ingestor, self._jobs)
        self._run_jobs = run_jobs

    # --- shared state (replaceable: the benchmarks vary chunking on a started base) ---

    @property
    def settings(self) -> KnowledgeSettings:
        return self._ctx.settings

    @settings.setter
    def settings(self, value: KnowledgeSettings) -> None:
        self._ctx.settings = value

    @property
    def _chunker(self) -> Chunker:
        return self._ctx.chunker

    @_chunker.setter
    def _chunker(self, value: Chunker) -> None:
        self._ctx.chunker = value

    @property
    def store(self) -> MetaStore:
        return self._ctx.store

    @property
    def backend(self) -> SearchBackend:
        return self._ctx.backend

    @property
    def worker_id(self) -> str:
        """Who this instance is in the job table's ``owner`` column."""
        return self._runner.owner

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and the index (replaying any unapplied change), start the jobs."""
        ctx = self._ctx
        self.root.mkdir(parents=True, exist_ok=True)
        ctx.opened_store = await ctx.run(MetaStore, self.root / "knowledge.sqlite3")
        dim = ctx.store.get_meta("dim")
        ctx.dim = int(dim) if dim else None
        factory = load_one(KNOWLEDGE_BACKENDS, self.settings.backend, _factory)
        ctx.opened_backend = factory(self.settings, self.root)
        await ctx.run(ctx.backend.open, ctx.store)
        if self._run_jobs:
            self._runner.start()

    async def close(self) -> None:
        """Stop the job worker, let the calls already in worker threads finish, then close.

        Cancelling a task does not stop the thread running its blocking call (and it
        releases the write lock): closing the store under a write still in progress is a
        use-after-free inside SQLite, which crashed the process. So the executor is
        drained first, and the store is closed on the loop's thread, where no synchronous
        reader can run at the same time. A job interrupted here goes back to the queue.
        """
        ctx = self._ctx
        await self._runner.stop()
        await asyncio.to_thread(ctx.executor.shutdown, True)
        if ctx.opened_store is not None:
            self._runner.release_current()
        if ctx.opened_backend is not None:
            await asyncio.to_thread(ctx.opened_backend.close)
        if ctx.opened_store is not None:
            ctx.opened_store.close()

    async def flush(self) -> None:
        """Make every applied change durable now (indexes are otherwise saved every 30 s)."""
        async with self._ctx.write_lock:
            await self._ctx.run(self.backend.checkpoint, True)

    # --- ingestion ----------------------------------------------------------------

    async def ingest_file(
        self,
        tenant: str,
        collection: str,
        path_or_bytes: Path | str | bytes,
        filename: str | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> FileReport:
        """Ingest one file (a path, or bytes with their ``filename``); never raises for
        a bad file: the report says what went wrong."""
        return await self._ingestor.ingest_file(
            tenant, collection, path_or_bytes, filename, metadata=metadata
        )

    async def ingest_paths(
        self,
        tenant: str,
        collection: str,
        paths: Sequence[Path | str],
        progress: ProgressFn | None = None,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> IngestReport:
        """Ingest files and folders (recursively; hidden files are ignored)."""
        return await self._ingestor.ingest_paths(
            tenant, collection, paths, progress, metadata=metadata
        )

    # --- documents and collections ------------------------------------------------

    async def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        """Remove a document and its chunks; returns how many chunks went."""
        check_tenant(tenant)
        check_collection(collection)
        ctx = self._ctx
        async with ctx.write_lock:
            _, removed = await ctx.run(ctx.store.delete_document, tenant, collection, document_id)
            await ctx.run(ctx.sync_backend)
        return removed

    async def create_collection(self, tenant: str, collection: str) -> bool:
        """Create an empty collection; False if it already existed."""
        check_tenant(tenant)
        check_collection(collection)
        ctx = self._ctx
        async with ctx.write_lock:
            return await ctx.run(ctx.store.create_collection, tenant, collection)

    async def delete_collection(self, tenant: str, collection: str) -> int:
        """Remove a whole collection; returns how many documents went."""
        check_tenant(tenant)
        check_collection(collection)
        ctx = self._ctx
        async with ctx.write_lock:
            _, removed = await ctx.run(ctx.store.delete_collection, tenant, collection)
            await ctx.run(ctx.sync_backend)
        return removed

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        return self.store.list_collections(check_tenant(tenant))

    def list_documents(self, tenant: str, collection: str) -> list[DocumentInfo]:
        return self.store.list_documents(check_tenant(tenant), check_collection(collection))

    def collection_version(self, tenant: str, collection: str) -> str:
        """An opaque token that changes on every ingest or delete in the collection."""
        ref = self.store.collection(check_tenant(tenant), check_collection(collection))
        return "absent" if ref is None else ref.version_token

    # --- retrieval ----------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        collection: str,
        query: str,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        """The ``k`` best passages for ``query`` (see :meth:`Retriever.search`)."""
        return await self._retriever.search(tenant, collection, query, k, filters, mode)

    # --- background upload jobs ---------------------------------------------------

    async def submit_upload(
        self,
        tenant: str,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Store the uploaded files and queue their ingestion; returns the job id."""
        return await self._runner.submit_upload(tenant, collection, files, metadata=metadata)

    def attach_queue(self, queue: JobQueue) -> None:
        """Ingest as ``knowledge.ingest`` jobs of ``queue``; uploads go there when it is
        shared (Redis), else to the SQLite job table (see :mod:`iatros.knowledge.jobs`)."""
        self._runner.attach(queue)

    def job_status(self, tenant: str, job_id: str) -> JobStatus:
        """The job's state and per-file results so far (NotFound for another tenant's)."""
        return self._runner.job_status(tenant, job_id)
