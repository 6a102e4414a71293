"""Ingestion: read files, parse, chunk, embed and write them, one transaction per file.

Blocking work (reading, parsing, SQLite, the index engines) runs on the knowledge
thread pool; embedding goes through the async embedding function, in batches that span
several small files (a group is parsed while the previous one is embedded). Writes
hold the shared write lock; the search index is updated once per group, because a
tantivy commit per small file would dominate the ingestion time. A bad file never
stops the others: its :class:`FileReport` says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iatros.knowledge.archives import ArchiveLimits, archive_limits
from iatros.knowledge.chunking import Chunk
from iatros.knowledge.context import Context
from iatros.knowledge.names import check_collection, check_tenant, document_name, mib
from iatros.knowledge.parsers import parse_document
from iatros.knowledge.types import FileReport, IngestError, IngestReport, InvalidName

log = logging.getLogger("iatros.knowledge")

ProgressFn = Callable[[int, int, FileReport | None], None]
"""``progress(done, total, report)``: once with ``(0, total, None)``, then after each file."""

_GROUP_CHUNKS = 256
_GROUP_FILES = 64


@dataclass(slots=True)
class Item:
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


class Ingestor:
    """Turns files into stored documents, chunks and vectors (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

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
        check_tenant(tenant)
        check_collection(collection)
        if isinstance(path_or_bytes, bytes | bytearray):
            if not filename:
                raise InvalidName("filename is required with bytes")
            item = self.item(filename, data=bytes(path_or_bytes))
        else:
            path = Path(path_or_bytes)
            item = self.item(filename or path.name, path=path)
        report = await self.ingest_items(tenant, collection, [item], None, metadata or {})
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
        check_tenant(tenant)
        check_collection(collection)
        items = await self.ctx.run(self._walk, [Path(p) for p in paths])
        return await self.ingest_items(tenant, collection, items, progress, metadata or {})

    def item(self, name: str, *, path: Path | None = None, data: bytes | None = None) -> Item:
        try:
            return Item(document_name(name), path=path, data=data)
        except InvalidName as exc:
            return Item(name, error=str(exc))

    def _walk(self, paths: list[Path]) -> list[Item]:
        items: list[Item] = []
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
                    items.append(self.item(rel, path=file))
            elif path.exists():
                items.append(self.item(path.name, path=path))
            else:
                items.append(Item(str(path), error=f"no such file or folder: {path}"))
        return items

    async def ingest_items(
        self,
        tenant: str,
        collection: str,
        items: list[Item],
        progress: ProgressFn | None,
        metadata: dict[str, Any],
        on_report: Callable[[FileReport], Awaitable[None]] | None = None,
    ) -> IngestReport:
        started = time.perf_counter()
        report = IngestReport()
        total = len(items)
        if progress is not None:
            progress(0, total, None)
        groups = await self.ctx.run(self._groups, items)
        pending: asyncio.Future[list[_Prepared]] | None = None
        for i, group in enumerate(groups):
            prepared = (
                await pending
                if pending is not None
                else await self.ctx.run(self._prepare_group, tenant, collection, group)
            )
            pending = None
            if i + 1 < len(groups):  # parse the next group while this one is embedded
                loop = asyncio.get_running_loop()
                pending = loop.run_in_executor(
                    self.ctx.executor,
                    partial(self._prepare_group, tenant, collection, groups[i + 1]),
                )
            await self._embed_group(prepared)
            async with self.ctx.write_lock:
                # One transaction per file (all or nothing), one index update per group
                # (a tantivy commit per small file would dominate the ingestion time).
                written = [
                    await self._write(tenant, collection, item, metadata) for item in prepared
                ]
                if any(r.status in ("indexed", "replaced") for r in written):
                    await self.ctx.run(self.ctx.sync_backend, written)
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

    def _groups(self, items: list[Item]) -> list[list[Item]]:
        """Groups of files whose chunks are embedded together (sizes are estimated)."""
        groups: list[list[Item]] = []
        current: list[Item] = []
        weight = 0.0
        per_chunk = self.ctx.settings.chunk_tokens * 6  # bytes of text per chunk, roughly
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

    def _prepare_group(self, tenant: str, collection: str, group: list[Item]) -> list[_Prepared]:
        return [self._prepare(tenant, collection, item) for item in group]

    def _prepare(self, tenant: str, collection: str, item: Item) -> _Prepared:
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
            with archive_limits(ArchiveLimits.from_settings(self.ctx.settings)):
                parsed = parse_document(item.name, data)
            chunks = self.ctx.chunker.chunk(parsed)
            if not chunks:
                raise IngestError("no text found in the file", code="no_text")
            report.content_type, report.pages = parsed.content_type, parsed.pages
            report.warnings.extend(parsed.warnings)
            prepared.chunks = chunks
            report.status = "indexed"
        except IngestError as exc:
            report.error, report.code, report.params = str(exc), exc.code, exc.params
        except Exception as exc:
            log.exception("unexpected error while reading a file")
            report.error = f"could not process the file: {type(exc).__name__}: {exc}"
        return prepared

    def _already_stored(self, tenant: str, collection: str, prepared: _Prepared) -> bool:
        """Mark the report skipped if this content is stored already (same or other name)."""
        report = prepared.report
        same = self.ctx.store.find_document(tenant, collection, name=prepared.name)
        if same is not None and same[2] == prepared.content_hash:
            report.status, report.reason, report.document_id = "skipped", "unchanged", same[0]
            return True
        twin = self.ctx.store.find_document(tenant, collection, content_hash=prepared.content_hash)
        if twin is not None and twin[1] != prepared.name:
            report.status, report.document_id = "skipped", twin[0]
            report.reason = f"duplicate of {twin[1]!r}"
            return True
        return False

    def _read(self, item: Item) -> bytes:
        limit = self.ctx.settings.max_file_bytes
        if item.data is not None:
            if len(item.data) > limit:
                raise IngestError(
                    f"file too large: {mib(len(item.data))}, over the {mib(limit)} limit "
                    "(knowledge.max_file_bytes)",
                    code="file_too_large",
                    limit=mib(limit),
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
                f"file too large: {mib(stat.st_size)}, over the {mib(limit)} limit "
                "(knowledge.max_file_bytes)"
            )
        try:
            with item.path.open("rb") as f:
                data = f.read(limit + 1)
        except OSError as exc:
            raise IngestError(f"cannot read {item.path}: {exc.strerror}") from None
        if len(data) > limit:  # grew since stat()
            raise IngestError(
                f"file too large: over the {mib(limit)} limit",
                code="file_too_large",
                limit=mib(limit),
            )
        return data

    async def _embed_group(self, group: list[_Prepared]) -> None:
        todo = [p for p in group if p.report.status == "indexed"]
        texts = [c.indexed_text for p in todo for c in p.chunks]
        if not texts:
            return
        try:
            matrix = await self.ctx.embed_texts(texts)
        except Exception as exc:
            log.warning("embedding failed", extra={"error": str(exc), "files": len(todo)})
            for p in todo:
                p.report.status, p.report.error = "error", f"embedding failed: {exc}"
            return
        start = 0
        for p in todo:
            p.vectors = matrix[start : start + len(p.chunks)]
            start += len(p.chunks)

    async def _write(
        self, tenant: str, collection: str, item: _Prepared, metadata: dict[str, Any]
    ) -> FileReport:
        """Store one file's document and chunks (the caller holds the write lock)."""
        report = item.report
        if report.status != "indexed" or item.vectors is None:
            return report
        try:
            result = await self.ctx.run(self._write_sync, tenant, collection, item, metadata)
        except IngestError as exc:
            report.status, report.error = "error", str(exc)
            report.code, report.params = exc.code, exc.params
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
        if self.ctx.dim is None:
            self.ctx.store.set_meta("dim", str(dim))
            self.ctx.dim = dim
        elif dim != self.ctx.dim:
            raise IngestError(
                f"embedding size {dim} differs from the knowledge base's {self.ctx.dim} "
                "(the embedding model changed: use a new data directory or re-ingest)"
            )
        if self._already_stored(tenant, collection, item):  # e.g. twice in one upload
            return None
        result = self.ctx.store.write_document(
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
