"""The queue's interface, shared by the in-process and the Redis implementation.

A feature registers a handler by name once, at start, then enqueues work for it:

    queue.register("knowledge.ingest", ingest)          # async (JobContext) -> dict | None
    job_id = await queue.enqueue("knowledge.ingest", {"collection": "docs"},
                                 tenant="clinic-a", idempotency_key=upload_digest,
                                 attachments={"00000": pdf_bytes})
    info = await queue.status(job_id, tenant="clinic-a")  # state, progress, result, error
    await queue.cancel(job_id, tenant="clinic-a")

Every process that runs workers must have registered the handlers of the jobs it may
take (``iatros worker`` builds the same services as the server, so it has).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from iatros.jobs.settings import JobSettings
from iatros.jobs.types import Handler, HandlerSpec, JobInfo, UnknownHandler

log = logging.getLogger("iatros.jobs")


class JobQueue(ABC):
    """Register handlers, enqueue jobs, run workers; see the module docstring."""

    kind: str = "queue"
    shared: bool = False
    """True when other processes and instances share this queue (Redis)."""

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings
        self.handlers: dict[str, HandlerSpec] = {}

    def register(self, name: str, handler: Handler, *, max_attempts: int | None = None) -> None:
        """Make ``name`` runnable here; registering a name again replaces its handler."""
        self.handlers[name] = HandlerSpec(name, handler, max_attempts or self.settings.max_attempts)

    def spec(self, name: str) -> HandlerSpec:
        spec = self.handlers.get(name)
        if spec is None:
            raise UnknownHandler(f"no job handler named {name!r}")
        return spec

    @abstractmethod
    async def enqueue(
        self,
        name: str,
        payload: Mapping[str, Any],
        *,
        tenant: str,
        idempotency_key: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
    ) -> str:
        """Queue one job; the same ``idempotency_key`` (per handler) returns the first job's id."""

    @abstractmethod
    async def status(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        """The job; ``tenant=None`` for a platform admin. JobNotFound otherwise."""

    @abstractmethod
    async def cancel(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        """Cancel a queued job at once, a running one at its worker's next check."""

    @abstractmethod
    async def dead_letters(self, *, tenant: str | None = None, limit: int = 100) -> list[JobInfo]:
        """Jobs that failed ``max_attempts`` times (or permanently), newest first."""

    @abstractmethod
    async def retry(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        """Put a dead job back in the queue with its attempts reset (JobConflict otherwise)."""

    @abstractmethod
    async def start(self, workers: int) -> None:
        """Open connections and run ``workers`` jobs at once in this process (0: none)."""

    @abstractmethod
    async def drain(self) -> None:
        """Stop taking new jobs (SIGTERM); jobs in hand go on until :meth:`close`."""

    @abstractmethod
    async def close(self) -> None:
        """Stop the workers; a job still running is interrupted and queued again."""


class RunContext:
    """The :class:`~iatros.jobs.types.JobContext` both queues hand to a handler."""

    __slots__ = ("_attachment", "_progress", "attempt", "id", "payload", "tenant")

    def __init__(
        self,
        job_id: str,
        tenant: str,
        payload: dict[str, Any],
        attempt: int,
        progress: Any,
        attachment: Any,
    ) -> None:
        self.id = job_id
        self.tenant = tenant
        self.payload = payload
        self.attempt = attempt
        self._progress = progress
        self._attachment = attachment

    async def progress(self, progress: dict[str, Any]) -> None:
        await self._progress(progress)

    async def attachment(self, name: str) -> bytes | None:
        result: bytes | None = await self._attachment(name)
        return result
