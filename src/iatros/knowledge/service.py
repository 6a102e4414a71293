"""The knowledge base: ingestion, hybrid retrieval and background upload jobs.

Blocking work (reading and parsing files, SQLite, the index engines) runs on a small
thread pool, never on the event loop; embedding goes through the async ``embed``
function the caller provides, in batches that span several small files. Writes are
serialised by one asyncio lock; searches run concurrently with each other and with
writes. Tenants are kept apart by :mod:`iatros.knowledge.store` (every query carries the
tenant) and every name is validated here, at the entrance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from iatros.knowledge.backends.base import Hits, SearchBackend
from iatros.knowledge.chunking import Chunk, Chunker
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import CollectionRef, MetaStore
from iatros.knowledge.text import snippet, terms
from iatros.knowledge.types import (
    CollectionInfo,
    DocumentInfo,
    FileReport,
    IngestError,
    IngestReport,
    InvalidName,
    JobStatus,
    KnowledgeError,
    Passage,
    SearchMode,
)

log = logging.getLogger("iatros.knowledge")

EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]
RerankFn = Callable[[str, list[str]], Awaitable[list[float]]]
ProgressFn = Callable[[int, int, FileReport | None], None]
"""``progress(done, total, report)``: once with ``(0, total, None)``, then after each file."""

T = TypeVar("T")
_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GROUP_CHUNKS = 256
_GROUP_FILES = 64


def _check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
        raise InvalidName("tenant must be a non-empty string of at most 128 characters")
    if any(ord(c) < 32 for c in tenant):
        raise InvalidName("tenant must not contain control characters")
    return tenant


def _check_collection(name: str) -> str:
    if not isinstance(name, str) or not _COLLECTION.match(name):
        raise InvalidName(
            f"invalid collection name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _document_name(name: str) -> str:
    cleaned = "/".join(p for p in name.replace("\\", "/").split("/") if p not in ("", ".", ".."))
    if not cleaned or len(cleaned) > 512 or any(ord(c) < 32 for c in cleaned):
        raise InvalidName(f"invalid document name {name!r}")
    return cleaned


def _mib(n: float) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"


@dataclass(slots=True)
class _Item:
    """One file to ingest: a path or bytes, or an error found before reading it."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    error: str | None = None


@dataclass(slots=True)
class _Prepared:
    name: str
    report: FileReport
    content_hash: str = ""
    size: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    vectors: npt.NDArray[np.float32] | None = None


class KnowledgeBase:
    """Per-tenant collections of documents, searchable by meaning and by words.

    Args:
        settings: chunking, backend and retrieval settings.
        data_dir: the service's data directory; everything goes under ``knowledge/``.
        embed: async function from texts to vectors (the gateway's embedding provider).
        rerank: optional async ``(query, texts) -> scores`` applied to the top hybrid hits
            (no cross-encoder ships offline with Iatros, so none is used by default).
    """

    def __init__(
        self,
        settings: KnowledgeSettings,
        data_dir: Path,
        embed: EmbedFn,
        *,
        rerank: RerankFn | None = None,
    ) -> None:
        self.settings = settings
        self.root = Path(data_dir) / "knowledge"
        self._embed = embed
        self._rerank = rerank
        self._chunker = Chunker(settings.chunk_tokens, settings.chunk_overlap)
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="knowledge")
        self._write_lock = asyncio.Lock()
        self._store: MetaStore | None = None
        self._backend: SearchBackend | None = None
        self._jobs: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._dim: int | None = None

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and indexes (replaying any unapplied change), resume jobs."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._store = await self._run(MetaStore, self.root / "knowledge.sqlite3")
        dim = self._store.get_meta("dim")
        self._dim = int(dim) if dim else None
        self._backend = self._make_backend()
        await self._run(self._backend.open, self._store)
        for tenant, job_id in await self._run(self._store.unfinished_jobs):
            await self._run(partial(self.store.update_job, tenant, job_id, state="queued"))
            self._jobs.put_nowait((tenant, job_id))
        self._worker = asyncio.create_task(self._job_worker(), name="knowledge-jobs")

    def _make_backend(self) -> SearchBackend:
        if self.settings.backend == "qdrant":
            from iatros.knowledge.backends.qdrant import QdrantBackend

            return QdrantBackend(
                url=self.settings.qdrant_url,
                api_key=self.settings.qdrant_api_key,
                path=self.root / "qdrant",
                collection=self.settings.qdrant_collection,
            )
        from iatros.knowledge.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(self.root / "embedded")

    async def close(self) -> None:
        """Stop the job worker, let the calls already in worker threads finish, then close.

        Cancelling a task does not stop the thread running its blocking call (and it
        releases the write lock): closing the store under a write still in progress is a
        use-after-free inside SQLite, which crashed the process. So the executor is
        drained first, and the store is closed on the loop's thread, where no synchronous
        reader can run at the same time.
        """
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        await asyncio.to_thread(self._executor.shutdown, True)
        if self._backend is not None:
            await asyncio.to_thread(self._backend.close)
        if self._store is not None:
            self._store.close()

    async def flush(self) -> None:
        """Make every applied change durable now (indexes are otherwise saved every 30 s)."""
        async with self._write_lock:
            await self._run(self.backend.checkpoint, True)

    @property
    def store(self) -> MetaStore:
        if self._store is None:
            raise RuntimeError("KnowledgeBase.start() has not been called")
        return self._store

    @property
    def backend(self) -> SearchBackend:
        if self._backend is None:
            raise RuntimeError("KnowledgeBase.start() has not been called")
        return self._backend

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

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
        _check_tenant(tenant)
        _check_collection(collection)
        if isinstance(path_or_bytes, bytes | bytearray):
            if not filename:
                raise InvalidName("filename is required with bytes")
            item = self._item(filename, data=bytes(path_or_bytes))
        else:
            path = Path(path_or_bytes)
            item = self._item(filename or path.name, path=path)
        report = await self._ingest_items(tenant, collection, [item], None, metadata or {})
        return report.reports[0]

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
        _check_tenant(tenant)
        _check_collection(collection)
        items = await self._run(self._walk, [Path(p) for p in paths])
        return await self._ingest_items(tenant, collection, items, progress, metadata or {})

    def _item(self, name: str, *, path: Path | None = None, data: bytes | None = None) -> _Item:
        try:
            return _Item(_document_name(name), path=path, data=data)
        except InvalidName as exc:
            return _Item(name, error=str(exc))

    def _walk(self, paths: list[Path]) -> list[_Item]:
        items: list[_Item] = []
        for path in paths:
            if path.is_dir():
                base = path.resolve()
                found: list[Path] = []
                for dirpath, dirnames, filenames in os.walk(base):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    found.extend(
                        Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")
                    )
                for file in found:
                    rel = file.relative_to(base.parent).as_posix()
                    items.append(self._item(rel, path=file))
            elif path.exists():
                items.append(self._item(path.name, path=path))
            else:
                items.append(_Item(str(path), error=f"no such file or folder: {path}"))
        return items

    async def _ingest_items(
        self,
        tenant: str,
        collection: str,
        items: list[_Item],
        progress: ProgressFn | None,
        metadata: dict[str, Any],
        on_report: Callable[[FileReport], Awaitable[None]] | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        total = len(items)
        if progress is not None:
            progress(0, total, None)
        groups = await self._run(self._groups, items)
        pending: asyncio.Future[list[_Prepared]] | None = None
        for i, group in enumerate(groups):
            prepared = (
                await pending
                if pending is not None
                else await self._run(self._prepare_group, tenant, collection, group)
            )
            pending = None
            if i + 1 < len(groups):  # parse the next group while this one is embedded
                loop = asyncio.get_running_loop()
                pending = loop.run_in_executor(
                    self._executor, partial(self._prepare_group, tenant, collection, groups[i + 1])
                )
            await self._embed_group(prepared)
            async with self._write_lock:
                # One transaction per file (all or nothing), one index update per group
                # (a tantivy commit per small file would dominate the ingestion time).
                written = [
                    await self._write(tenant, collection, item, metadata) for item in prepared
                ]
                if any(r.status in ("indexed", "replaced") for r in written):
                    await self._run(self._sync_backend, written)
            for file_report in written:
                report.add(file_report)
                if progress is not None:
                    progress(report.files, total, file_report)
                if on_report is not None:
                    await on_report(file_report)
        report.seconds = time.perf_counter() - started
        log.info(
            "ingested",
            extra={
                "files": report.files,
                "chunks": report.chunks,
                "skipped": report.skipped,
                "errors": len(report.errors),
                "seconds": round(report.seconds, 2),
            },
        )
        return report

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        """Groups of files whose chunks are embedded together (sizes are estimated)."""
        groups: list[list[_Item]] = []
        current: list[_Item] = []
        weight = 0.0
        per_chunk = self.settings.chunk_tokens * 6  # bytes of text per chunk, roughly
        for item in items:
            current.append(item)
            size = len(item.data) if item.data is not None else 0
            if item.path is not None:
                with contextlib.suppress(OSError):
                    size = item.path.stat().st_size
            weight += max(1.0, size / per_chunk)
            if weight >= _GROUP_CHUNKS or len(current) >= _GROUP_FILES:
                groups.append(current)
                current, weight = [], 0.0
        if current:
            groups.append(current)
        return groups

    def _prepare_group(self, tenant: str, collection: str, group: list[_Item]) -> list[_Prepared]:
        return [self._prepare(tenant, collection, item) for item in group]

    def _prepare(self, tenant: str, collection: str, item: _Item) -> _Prepared:
        """Read, check, dedup, parse and chunk one file (blocking; no writes)."""
        report = FileReport(item.name, "error")
        prepared = _Prepared(item.name, report)
        try:
            if item.error is not None:
                raise IngestError(item.error)
            data = self._read(item)
            prepared.size = len(data)
            prepared.content_hash = hashlib.sha256(data).hexdigest()
            if self._already_stored(tenant, collection, prepared):
                return prepared
            from iatros.knowledge.parsing import parse

            parsed = parse(item.name, data)
            chunks = self._chunker.chunk(parsed)
            if not chunks:
                raise IngestError("no text found in the file")
            report.content_type, report.pages = parsed.content_type, parsed.pages
            report.warnings.extend(parsed.warnings)
            prepared.chunks = chunks
            report.status = "indexed"
        except IngestError as exc:
            report.error = str(exc)
        except Exception as exc:
            log.exception("unexpected error while reading a file")
            report.error = f"could not process the file: {type(exc).__name__}: {exc}"
        return prepared

    def _already_stored(self, tenant: str, collection: str, prepared: _Prepared) -> bool:
        """Mark the report skipped if this content is stored already (same or other name)."""
        report = prepared.report
        same = self.store.find_document(tenant, collection, name=prepared.name)
        if same is not None and same[2] == prepared.content_hash:
            report.status, report.reason, report.document_id = "skipped", "unchanged", same[0]
            return True
        twin = self.store.find_document(tenant, collection, content_hash=prepared.content_hash)
        if twin is not None and twin[1] != prepared.name:
            report.status, report.document_id = "skipped", twin[0]
            report.reason = f"duplicate of {twin[1]!r}"
            return True
        return False

    def _read(self, item: _Item) -> bytes:
        limit = self.settings.max_file_bytes
        if item.data is not None:
            if len(item.data) > limit:
                raise IngestError(
                    f"file too large: {_mib(len(item.data))}, over the {_mib(limit)} limit "
                    "(knowledge.max_file_bytes)"
                )
            return item.data
        assert item.path is not None
        try:
            stat = item.path.stat()
        except FileNotFoundError:
            raise IngestError(f"no such file: {item.path}") from None
        except OSError as exc:
            raise IngestError(f"cannot access {item.path}: {exc.strerror}") from None
        if not item.path.is_file():
            raise IngestError(f"not a regular file: {item.path}")
        if stat.st_size > limit:
            raise IngestError(
                f"file too large: {_mib(stat.st_size)}, over the {_mib(limit)} limit "
                "(knowledge.max_file_bytes)"
            )
        try:
            with item.path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise IngestError(f"cannot read {item.path}: {exc.strerror}") from None
        if len(data) > limit:  # grew since stat()
            raise IngestError(f"file too large: over the {_mib(limit)} limit")
        return data

    async def _embed_group(self, group: list[_Prepared]) -> None:
        todo = [p for p in group if p.report.status == "indexed"]
        texts = [c.indexed_text for p in todo for c in p.chunks]
        if not texts:
            return
        try:
            matrix = await self._embed_texts(texts)
        except Exception as exc:
            log.warning("embedding failed", extra={"error": str(exc), "files": len(todo)})
            for p in todo:
                p.report.status, p.report.error = "error", f"embedding failed: {exc}"
            return
        start = 0
        for p in todo:
            p.vectors = matrix[start : start + len(p.chunks)]
            start += len(p.chunks)

    async def _embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        parts: list[npt.NDArray[np.float32]] = []
        batch = self.settings.embed_batch
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            vectors = await self._embed(chunk)
            array = np.asarray(vectors, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != len(chunk) or not array.shape[1]:
                raise KnowledgeError("the embedding function returned a wrong number of vectors")
            parts.append(array)
        matrix = np.vstack(parts)
        if not np.isfinite(matrix).all():
            raise KnowledgeError("the embedding function returned non-finite values")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)

    async def _write(
        self, tenant: str, collection: str, item: _Prepared, metadata: dict[str, Any]
    ) -> FileReport:
        """Store one file's document and chunks (the caller holds the write lock)."""
        report = item.report
        if report.status != "indexed" or item.vectors is None:
            return report
        try:
            result = await self._run(self._write_sync, tenant, collection, item, metadata)
        except IngestError as exc:
            report.status, report.error = "error", str(exc)
            return report
        except Exception as exc:
            log.exception("could not store a document")
            report.status, report.error = "error", f"could not store the document: {exc}"
            return report
        if result is not None:  # None: found to be a duplicate at the last moment
            report.document_id = result
            report.chunks = len(item.chunks)
        return report

    def _write_sync(
        self, tenant: str, collection: str, item: _Prepared, metadata: dict[str, Any]
    ) -> str | None:
        assert item.vectors is not None
        dim = int(item.vectors.shape[1])
        if self._dim is None:
            self.store.set_meta("dim", str(dim))
            self._dim = dim
        elif dim != self._dim:
            raise IngestError(
                f"embedding size {dim} differs from the knowledge base's {self._dim} "
                "(the embedding model changed: use a new data directory or re-ingest)"
            )
        if self._already_stored(tenant, collection, item):  # e.g. twice in one upload
            return None
        result = self.store.write_document(
            tenant,
            collection,
            name=item.name,
            content_type=item.report.content_type or "",
            content_hash=item.content_hash,
            size=item.size,
            pages=item.report.pages,
            chunks=item.chunks,
            vectors=item.vectors,
            metadata=metadata,
            warnings=item.report.warnings,
        )
        if result.replaced:
            item.report.status = "replaced"
        return result.document_id

    def _sync_backend(self, reports: Sequence[FileReport] = ()) -> None:
        try:
            self.backend.sync(self.store)
            self.backend.checkpoint(False)
        except Exception as exc:  # the store has it; the next write or start replays it
            log.exception("search index update failed; it will be retried")
            for report in reports:
                if report.status in ("indexed", "replaced"):
                    report.warnings.append(f"search index update deferred: {exc}")

    # --- documents and collections ------------------------------------------------

    async def delete_document(self, tenant: str, collection: str, document_id: str) -> int:
        """Remove a document and its chunks; returns how many chunks went."""
        _check_tenant(tenant)
        _check_collection(collection)
        async with self._write_lock:
            _, removed = await self._run(
                self.store.delete_document, tenant, collection, document_id
            )
            await self._run(self._sync_backend)
        return removed

    async def delete_collection(self, tenant: str, collection: str) -> int:
        """Remove a whole collection; returns how many documents went."""
        _check_tenant(tenant)
        _check_collection(collection)
        async with self._write_lock:
            _, removed = await self._run(self.store.delete_collection, tenant, collection)
            await self._run(self._sync_backend)
        return removed

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        return self.store.list_collections(_check_tenant(tenant))

    def list_documents(self, tenant: str, collection: str) -> list[DocumentInfo]:
        return self.store.list_documents(_check_tenant(tenant), _check_collection(collection))

    def collection_version(self, tenant: str, collection: str) -> str:
        """An opaque token that changes on every ingest or delete in the collection."""
        ref = self.store.collection(_check_tenant(tenant), _check_collection(collection))
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
        """The ``k`` best passages for ``query`` (raises NotFound for an unknown collection).

        Filters match document fields (``document_id``, ``document``, ``content_type``),
        chunk fields (``page``, ``section``) or keys of the metadata given at ingestion:
        a value, a list of values, or for numbers a range ``{"gte": 2, "lte": 5}``.
        """
        _check_tenant(tenant)
        _check_collection(collection)
        if mode not in ("hybrid", "dense", "lexical"):
            raise ValueError(f"unknown search mode {mode!r}")
        k = k or self.settings.top_k
        if not query.strip():
            return []
        ref = await self._run(self.store.require_collection, tenant, collection)
        allowed = None
        if filters:
            allowed = await self._run(self.store.allowed_keys, ref, filters)
            if not len(allowed):
                return []
        vector = None
        if mode != "lexical":
            vector = (await self._embed_texts([query]))[0]
        if self._rerank is None or mode != "hybrid":
            return await self._run(self._search_sync, ref, query, vector, k, allowed, mode)
        passages = await self._run(self._search_sync, ref, query, vector, max(k, 20), allowed, mode)
        scores = await self._rerank(query, [p.text for p in passages])
        order = sorted(range(len(passages)), key=lambda i: -scores[i])[:k]
        return [dataclasses.replace(passages[i], rank_score=float(scores[i])) for i in order]

    def _search_sync(
        self,
        ref: CollectionRef,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        k: int,
        allowed: npt.NDArray[np.int64] | None,
        mode: SearchMode,
    ) -> list[Passage]:
        depth = max(self.settings.candidates, k)
        dense: Hits = []
        lexical: Hits = []
        if vector is not None:
            dense = self.backend.search_dense(ref.id, vector, depth, allowed)
        if mode != "dense":
            lexical = self.backend.search_lexical(ref.id, terms(query), depth, allowed)
        if mode == "hybrid" and self.settings.fusion == "rrf":
            ranked = reciprocal_rank_fusion([dense, lexical], self.settings.rrf_k)
        elif mode == "hybrid":
            weight = self.settings.dense_weight
            ranked = zscore_fusion([dense, lexical], [weight, 1.0 - weight])
        else:
            ranked = dense if mode == "dense" else lexical
        wanted = [key for key, _ in ranked[: k * 2 + 10]]
        rows = self.store.chunk_rows(ref, wanted)
        passages: list[Passage] = []
        for key, rank_score in ranked:
            row = rows.get(key)
            if row is None:
                continue
            if vector is not None:
                norm = float(np.linalg.norm(row.vector)) or 1.0
                score = max(0.0, min(1.0, float(row.vector @ vector) / norm))
            else:
                score = rank_score / (rank_score + 10.0)
            passages.append(
                Passage(
                    document_id=row.document_id,
                    document=row.document,
                    page=row.page,
                    chunk_id=str(key),
                    text=row.text,
                    snippet=snippet(row.text, query),
                    score=round(score, 4),
                    rank_score=round(rank_score, 6),
                    section=row.section,
                    collection=ref.name,
                    metadata=row.metadata,
                )
            )
            if len(passages) >= k:
                break
        return passages

    # --- background upload jobs ---------------------------------------------------

    async def submit_upload(
        self,
        tenant: str,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Store the uploaded files and queue their ingestion; returns the job id.

        Files over ``max_file_bytes`` are not stored: the job reports them as errors.
        """
        _check_tenant(tenant)
        _check_collection(collection)
        if not files:
            raise KnowledgeError("no files to ingest")
        names = [name for name, _ in files]
        job_id = await self._run(self.store.create_job, tenant, collection, names)
        await self._run(self._save_upload, tenant, job_id, list(files), metadata or {})
        self._jobs.put_nowait((tenant, job_id))
        return job_id

    def _upload_dir(self, job_id: str) -> Path:
        return self.root / "uploads" / job_id

    def _save_upload(
        self, tenant: str, job_id: str, files: list[tuple[str, bytes]], metadata: dict[str, Any]
    ) -> None:
        folder = self._upload_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        limit = self.settings.max_file_bytes
        for i, (_, data) in enumerate(files):
            if len(data) <= limit:
                (folder / f"{i:05d}.bin").write_bytes(data)
        (folder / "metadata.json").write_text(json.dumps(metadata))

    def job_status(self, tenant: str, job_id: str) -> JobStatus:
        """The job's state and per-file results so far (NotFound for another tenant's)."""
        return self.store.job(_check_tenant(tenant), job_id)

    async def _job_worker(self) -> None:
        while True:
            tenant, job_id = await self._jobs.get()
            try:
                await self._run_job(tenant, job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("knowledge job failed")
                with contextlib.suppress(Exception):
                    await self._run(
                        partial(
                            self.store.update_job, tenant, job_id, state="failed", error=str(exc)
                        )
                    )

    async def _run_job(self, tenant: str, job_id: str) -> None:
        job = await self._run(self.store.job, tenant, job_id)
        folder = self._upload_dir(job_id)
        if not folder.exists():
            await self._run(
                partial(
                    self.store.update_job,
                    tenant,
                    job_id,
                    state="failed",
                    error="the uploaded files were lost (restart?)",
                )
            )
            return
        await self._run(partial(self.store.update_job, tenant, job_id, state="running"))
        metadata_path = folder / "metadata.json"
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        limit = self.settings.max_file_bytes
        items: list[_Item] = []
        for i, name in enumerate(job.files):
            stored = folder / f"{i:05d}.bin"
            if stored.exists():
                items.append(self._item(name, path=stored))
            else:
                items.append(
                    _Item(
                        name,
                        error=f"file too large: over the {_mib(limit)} limit "
                        "(knowledge.max_file_bytes)",
                    )
                )
        results: list[FileReport] = []

        async def on_report(report: FileReport) -> None:
            results.append(report)
            await self._run(partial(self.store.update_job, tenant, job_id, results=results))

        report = await self._ingest_items(tenant, job.collection, items, None, metadata, on_report)
        await self._run(
            partial(self.store.update_job, tenant, job_id, state="done", results=report.reports)
        )
        await self._run(partial(shutil.rmtree, folder, ignore_errors=True))


def zscore_fusion(rankings: Sequence[Hits], weights: Sequence[float]) -> Hits:
    """Fuse scored lists: sum of weight * (score - mean) / std over each list's candidates.

    Unlike rank fusion this keeps how far ahead a hit is: a BM25 hit far above the rest
    is not outvoted by a dense list whose top scores are all alike. A key missing from
    a list counts as that list's average (0).
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking or not weight:
            continue
        values = np.fromiter((s for _, s in ranking), dtype=np.float64, count=len(ranking))
        mean, std = float(values.mean()), float(values.std()) or 1.0
        for key, score in ranking:
            scores[key] = scores.get(key, 0.0) + weight * (score - mean) / std
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def reciprocal_rank_fusion(rankings: Sequence[Hits], k: int = 60) -> Hits:
    """Fuse ranked lists: score(key) = sum over lists of 1 / (k + rank), rank from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (key, _) in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
