"""Background upload jobs: saved first, then claimed and run by exactly one worker.

An upload's files are written under ``uploads/<job id>`` *before* the job is recorded,
so whichever worker claims it finds them. Every worker (each process of a server, each
instance on the same data directory) runs a loop that claims jobs through the job
store's conditional update (:meth:`~iatros.knowledge.jobstore.JobStore.claim`): the one
that submitted a job tries first, the others find it when they look for work (at start
and every ``job_poll_s``), and only one of them ever wins. The winner renews its lease
every third of ``job_lease_s`` while it works; if it dies, the lease runs out and another
worker takes the job over; if it finds it has lost the lease (it stalled for longer
than the lease), it stops, and its late updates are refused by the store.

With a shared queue (Redis, :mod:`iatros.jobs`), uploads go there instead: the files
travel with the job as attachments, any instance or ``iatros worker`` process runs it
(handler ``knowledge.ingest``), and any instance answers ``GET /v1/knowledge/jobs/{id}``
from the queue's record. The SQLite table stays the embedded default (durable on one
data directory without a server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iatros.jobs import JobContext, JobInfo, JobNotFound, JobQueue
from iatros.knowledge.context import Context
from iatros.knowledge.ingestion import Ingestor, Item
from iatros.knowledge.jobstore import JobStore, new_job_id
from iatros.knowledge.names import check_collection, check_tenant, mib
from iatros.knowledge.types import FileReport, JobState, JobStatus, KnowledgeError, NotFound

INGEST_JOB = "knowledge.ingest"
log = logging.getLogger("iatros.knowledge.jobs")


class LeaseLost(Exception):
    """Another worker took the job over: this one must stop writing to it."""


class JobRunner:
    """Submits uploads and runs the jobs this worker claims.

    Args:
        ctx: the shared store, settings and thread pool.
        ingestor: runs a job's files.
        wakeups: job ids submitted by this instance, so it tries them at once instead
            of waiting for its next look for work.
    """

    def __init__(self, ctx: Context, ingestor: Ingestor, wakeups: asyncio.Queue[str]) -> None:
        self.ctx = ctx
        self.ingestor = ingestor
        self.wakeups = wakeups
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None
        self.queue: JobQueue | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None

    def attach(self, queue: JobQueue) -> None:
        """Run ingestion as ``knowledge.ingest`` jobs of ``queue``; uploads go there when
        it is shared (without Redis the SQLite job table stays the queue)."""
        queue.register(INGEST_JOB, self.run_queued)
        self.queue = queue

    @property
    def jobs(self) -> JobStore:
        return self.ctx.store.jobs

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._loop(), name="knowledge-jobs")

    async def stop(self) -> None:
        """Stop taking jobs; the job in hand is released by :meth:`release_current`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def release_current(self) -> None:
        """Hand the interrupted job back to the queue (blocking; after the threads stopped)."""
        if self._current is not None:
            with contextlib.suppress(Exception):
                self.jobs.release(self._current, self.owner)
            self._current = None

    # --- submitting ---------------------------------------------------------------

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
        check_tenant(tenant)
        check_collection(collection)
        if not files:
            raise KnowledgeError("no files to ingest")
        self._event_loop = asyncio.get_running_loop()
        if self.queue is not None and self.queue.shared:
            return await self._enqueue(tenant, collection, files, metadata or {})
        job_id = new_job_id()
        await self.ctx.run(self._save_upload, job_id, list(files), metadata or {})
        names = [name for name, _ in files]
        await self.ctx.run(self.jobs.create, tenant, collection, names, job_id)
        self.wakeups.put_nowait(job_id)
        return job_id

    def upload_dir(self, job_id: str) -> Path:
        return self.ctx.root / "uploads" / job_id

    def _save_upload(
        self, job_id: str, files: list[tuple[str, bytes]], metadata: dict[str, Any]
    ) -> None:
        folder = self.upload_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        limit = self.ctx.settings.max_file_bytes
        for i, (_, data) in enumerate(files):
            if len(data) <= limit:
                (folder / f"{i:05d}.bin").write_bytes(data)
        (folder / "metadata.json").write_text(json.dumps(metadata))

    def job_status(self, tenant: str, job_id: str) -> JobStatus:
        """The job's state and per-file results so far (NotFound for another tenant's).

        Blocking (called from a worker thread): a queued job is read on the event loop.
        """
        check_tenant(tenant)
        queue, loop = self.queue, self._event_loop
        if queue is not None and queue.shared and loop is not None:
            if asyncio._get_running_loop() is loop:  # would wait on itself for 30 s
                raise RuntimeError("job_status blocks: call it from a worker thread")
            future = asyncio.run_coroutine_threadsafe(queue.status(job_id, tenant=tenant), loop)
            try:
                return _from_queue(future.result(timeout=30))
            except JobNotFound:
                pass  # perhaps from before the queue was configured
        return self.jobs.job(tenant, job_id)

    async def _enqueue(
        self,
        tenant: str,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        metadata: dict[str, Any],
    ) -> str:
        assert self.queue is not None
        limit = self.ctx.settings.max_file_bytes
        attachments = {f"{i:05d}": data for i, (_, data) in enumerate(files) if len(data) <= limit}
        payload = {
            "collection": collection,
            "files": [name for name, _ in files],
            "stored": [len(data) <= limit for _, data in files],
            "metadata": metadata,
        }
        return await self.queue.enqueue(INGEST_JOB, payload, tenant=tenant, attachments=attachments)

    async def run_queued(self, job: JobContext) -> dict[str, Any]:
        """The ``knowledge.ingest`` handler: idempotent, since an unchanged file is skipped."""
        payload = job.payload
        collection = str(payload["collection"])
        names = [str(n) for n in payload["files"]]
        stored = list(payload.get("stored", [True] * len(names)))
        limit = self.ctx.settings.max_file_bytes
        items: list[Item] = []
        for i, name in enumerate(names):
            if not stored[i]:
                error = f"file too large: over the {mib(limit)} limit (knowledge.max_file_bytes)"
                items.append(Item(name, error=error))
                continue
            data = await job.attachment(f"{i:05d}")
            if data is None:
                items.append(Item(name, error="the uploaded file expired before ingestion"))
            else:
                items.append(self.ingestor.item(name, data=data))
        results: list[dict[str, Any]] = []

        async def on_report(report: FileReport) -> None:
            results.append(report.to_dict())
            await job.progress({"results": results})

        report = await self.ingestor.ingest_items(
            job.tenant, collection, items, None, dict(payload.get("metadata") or {}), on_report
        )
        return {"results": [r.to_dict() for r in report.reports]}

    # --- running ------------------------------------------------------------------

    async def _loop(self) -> None:
        poll = self.ctx.settings.job_poll_s
        while True:
            for job_id in await self.ctx.run(self.jobs.claimable):
                await self._try(job_id)
            try:
                job_id = await asyncio.wait_for(self.wakeups.get(), poll)
            except TimeoutError:
                continue
            await self._try(job_id)

    async def _try(self, job_id: str) -> None:
        """Run ``job_id`` if this worker wins the claim (another may have it already)."""
        lease = self.ctx.settings.job_lease_s
        if not await self.ctx.run(self.jobs.claim, job_id, self.owner, lease):
            return
        self._current = job_id
        run = asyncio.create_task(self._run(job_id), name=f"knowledge-job-{job_id}")
        hold = asyncio.create_task(self._hold(job_id), name=f"knowledge-lease-{job_id}")
        try:
            await asyncio.wait({run, hold}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            run.cancel()
            hold.cancel()
            raise
        if not run.done():  # the lease was lost: someone else runs it now
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
            log.warning("knowledge job taken over by another worker", extra={"job": job_id})
            self._current = None
            return
        hold.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hold
        self._current = None
        exc = run.exception()
        if exc is None or isinstance(exc, LeaseLost):
            return
        log.error("knowledge job failed", exc_info=exc, extra={"job": job_id})
        with contextlib.suppress(Exception):
            await self.ctx.run(
                self.jobs.update, job_id, owner=self.owner, state="failed", error=str(exc)
            )

    async def _hold(self, job_id: str) -> None:
        """Renew the lease until cancelled; returns when the job is no longer ours."""
        lease = self.ctx.settings.job_lease_s
        while True:
            await asyncio.sleep(lease / 3)
            if not await self.ctx.run(self.jobs.heartbeat, job_id, self.owner, lease):
                return

    async def _update(self, job_id: str, **changes: Any) -> None:
        if not await self.ctx.run(self.jobs.update, job_id, owner=self.owner, **changes):
            raise LeaseLost(job_id)

    async def _run(self, job_id: str) -> None:
        found = await self.ctx.run(self.jobs.tenant_of, job_id)
        if found is None:
            return
        tenant, job = found
        folder = self.upload_dir(job_id)
        if not folder.exists():
            await self._update(
                job_id, state="failed", error="the uploaded files were lost (restart?)"
            )
            return
        metadata_path = folder / "metadata.json"
        metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        limit = self.ctx.settings.max_file_bytes
        items: list[Item] = []
        for i, name in enumerate(job.files):
            stored = folder / f"{i:05d}.bin"
            if stored.exists():
                items.append(self.ingestor.item(name, path=stored))
            else:
                error = f"file too large: over the {mib(limit)} limit (knowledge.max_file_bytes)"
                items.append(Item(name, error=error))
        results: list[FileReport] = []

        async def on_report(report: FileReport) -> None:
            results.append(report)
            await self._update(job_id, results=results)

        report = await self.ingestor.ingest_items(
            tenant, job.collection, items, None, metadata, on_report
        )
        await self._update(job_id, state="done", results=report.reports)
        await self.ctx.run(shutil.rmtree, folder, ignore_errors=True)


_STATES: dict[str, JobState] = {
    "queued": "queued",
    "running": "running",
    "done": "done",
    "failed": "queued",
}


def _from_queue(info: JobInfo) -> JobStatus:
    """A queue record in the shape ``GET /v1/knowledge/jobs/{id}`` has always had."""
    if info.name != INGEST_JOB:
        raise NotFound(f"no job {info.id!r}")
    payload_files = info.payload.get("files")
    source = info.result if info.result is not None else info.progress
    results = [FileReport.from_dict(r) for r in (source or {}).get("results", [])]
    error = info.error
    if info.state == "dead":
        error = f"failed after {info.attempts} attempt(s): {error}"
    return JobStatus(
        info.id,
        str(info.payload.get("collection", "")),
        _STATES.get(info.state, "failed"),
        info.created_at,
        info.updated_at,
        list(payload_files) if isinstance(payload_files, list) else [],
        results,
        error if info.state in ("dead", "cancelled", "failed") else None,
    )
