"""The embedded queue: in this process, no server, nothing kept across a restart.

Same semantics as the Redis queue within one process (retries with backoff, a
dead-letter list, progress, cancellation, idempotency keys), so a feature written
against :class:`~iatros.jobs.base.JobQueue` works the same on one box and in a cluster.
What it cannot give is durability: a job queued or running when the process stops is
gone (knowledge uploads keep their own SQLite job table without Redis for that reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from iatros.jobs.base import JobQueue, RunContext, log
from iatros.jobs.types import (
    FINAL_STATES,
    JobConflict,
    JobInfo,
    JobNotFound,
    PermanentError,
    backoff_s,
    new_job_id,
)


@dataclass(slots=True)
class _Job:
    info: JobInfo
    payload: dict[str, Any]
    attachments: dict[str, bytes] = field(default_factory=dict)
    task: asyncio.Task[dict[str, Any] | None] | None = None


class MemoryQueue(JobQueue):
    kind = "memory"
    shared = False

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self._jobs: dict[str, _Job] = {}
        self._idem: dict[tuple[str, str], str] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._draining = False
        self._enqueued = 0

    def _get(self, job_id: str, tenant: str | None) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or (tenant is not None and job.info.tenant != tenant):
            raise JobNotFound(f"no job {job_id!r}")
        return job

    async def enqueue(
        self,
        name: str,
        payload: Mapping[str, Any],
        *,
        tenant: str,
        idempotency_key: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
    ) -> str:
        spec = self.spec(name)
        if idempotency_key is not None:
            known = self._idem.get((name, idempotency_key))
            if known is not None and known in self._jobs:
                return known
        self._enqueued += 1
        if self._enqueued % 100 == 0:
            self._prune()
        now = time.time()
        job_id = new_job_id()
        info = JobInfo(
            job_id,
            name,
            tenant,
            "queued",
            0,
            spec.max_attempts,
            now,
            now,
            payload=dict(payload),
        )
        self._jobs[job_id] = _Job(info, dict(payload), dict(attachments or {}))
        if idempotency_key is not None:
            self._idem[(name, idempotency_key)] = job_id
        self._ready.put_nowait(job_id)
        return job_id

    def _prune(self) -> None:
        horizon = time.time() - self.settings.keep_s
        for job_id in [
            j
            for j, job in self._jobs.items()
            if job.info.state in FINAL_STATES and job.info.updated_at < horizon
        ]:
            del self._jobs[job_id]
        self._idem = {k: v for k, v in self._idem.items() if v in self._jobs}

    async def status(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        return replace(self._get(job_id, tenant).info)

    async def cancel(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        job = self._get(job_id, tenant)
        info = job.info
        if info.state in ("queued", "failed"):
            info.state = "cancelled"
            info.updated_at = time.time()
            job.attachments.clear()
        elif info.state == "running":
            info.cancel_requested = True
            if job.task is not None:
                job.task.cancel()
        return replace(info)

    async def dead_letters(self, *, tenant: str | None = None, limit: int = 100) -> list[JobInfo]:
        dead = [
            replace(j.info)
            for j in self._jobs.values()
            if j.info.state == "dead" and (tenant is None or j.info.tenant == tenant)
        ]
        dead.sort(key=lambda i: i.updated_at, reverse=True)
        return dead[:limit]

    async def retry(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        job = self._get(job_id, tenant)
        if job.info.state != "dead":
            raise JobConflict(f"job {job_id!r} is {job.info.state}, not dead")
        job.info.state = "queued"
        job.info.attempts = 0
        job.info.error = None
        job.info.updated_at = time.time()
        self._ready.put_nowait(job_id)
        return replace(job.info)

    async def start(self, workers: int) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"jobs-worker-{i}") for i in range(workers)
        ]

    async def drain(self) -> None:
        self._draining = True

    async def close(self) -> None:
        self._draining = True
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []

    async def _work(self) -> None:
        while not self._draining:
            job_id = await self._ready.get()
            job = self._jobs.get(job_id)
            if job is None or job.info.state != "queued":
                continue
            if self._draining:
                self._ready.put_nowait(job_id)
                return
            await self._run(job)

    async def _run(self, job: _Job) -> None:
        info = job.info
        spec = self.handlers.get(info.name)
        if spec is None:
            self._finish(info, "dead", error=f"no handler {info.name!r} in this process")
            return
        info.state = "running"
        info.attempts += 1
        info.updated_at = time.time()

        async def progress(value: dict[str, Any]) -> None:
            info.progress = dict(value)
            info.updated_at = time.time()

        async def attachment(name: str) -> bytes | None:
            return job.attachments.get(name)

        ctx = RunContext(info.id, info.tenant, job.payload, info.attempts, progress, attachment)
        job.task = asyncio.create_task(spec.run(ctx), name=f"job-{info.id}")
        try:
            result = await asyncio.shield(job.task)
        except asyncio.CancelledError:
            if not job.task.done():  # this worker is being stopped, not the job
                job.task.cancel()
                with contextlib.suppress(BaseException):
                    await job.task
            if info.cancel_requested:
                self._finish(info, "cancelled", error="cancelled")
                job.attachments.clear()
            else:
                info.state = "queued"  # interrupted by shutdown: not the job's fault
                info.attempts -= 1
                if not self._draining:
                    self._ready.put_nowait(info.id)
            return
        except PermanentError as exc:
            self._finish(info, "dead", error=str(exc) or type(exc).__name__)
        except Exception as exc:
            log.warning(
                "job failed",
                extra={
                    "job": info.id,
                    "handler": info.name,
                    "attempt": info.attempts,
                    "error": repr(exc),
                },
            )
            error = str(exc) or type(exc).__name__
            if info.attempts >= info.max_attempts:
                self._finish(info, "dead", error=error)
            else:
                info.state = "failed"
                info.error = error
                info.updated_at = time.time()
                delay = backoff_s(
                    info.attempts, self.settings.backoff_base_s, self.settings.backoff_max_s
                )
                asyncio.get_running_loop().call_later(delay, self._requeue, info.id)
        else:
            info.result = result
            self._finish(info, "done")
            job.attachments.clear()
        finally:
            job.task = None

    def _requeue(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.info.state == "failed":
            job.info.state = "queued"
            self._ready.put_nowait(job_id)

    @staticmethod
    def _finish(info: JobInfo, state: Any, *, error: str | None = None) -> None:
        info.state = state
        info.error = error
        info.updated_at = time.time()
