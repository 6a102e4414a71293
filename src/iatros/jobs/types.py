"""What a job is, what a handler receives, and the queue's errors."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

JobState = Literal["queued", "running", "done", "failed", "dead", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"done", "dead", "cancelled"})


class JobError(Exception):
    """Base class of the queue's errors."""


class JobNotFound(JobError, LookupError):
    """No such job, or another tenant's (the same answer, so ids leak nothing)."""


class UnknownHandler(JobError, ValueError):
    """``enqueue`` named a handler that no one registered."""


class JobConflict(JobError):
    """The job is not in a state that allows the operation (retrying a job that is not dead)."""


class PermanentError(Exception):
    """Raised by a handler: the job cannot succeed by trying again (bad input).

    It goes to the dead-letter list at once instead of being retried.
    """


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:20]


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Full-jitter exponential backoff before retry ``attempt`` (1 = the first retry)."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


@dataclass(slots=True)
class JobInfo:
    """A job as the API shows it (tenants see their own; platform admins every one)."""

    id: str
    name: str
    tenant: str
    state: JobState
    attempts: int
    max_attempts: int
    created_at: float
    updated_at: float
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    cancel_requested: bool = False
    payload: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the job was enqueued with (left out of :meth:`to_dict`: it may hold URLs or
    references a listing need not show)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "object": "job",
            "id": self.id,
            "name": self.name,
            "tenant": self.tenant,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
        }


class JobContext(Protocol):
    """What a handler is given: the job, and the means to report on it.

    Delivery is at least once: after a worker dies mid-job another one runs it again
    (``attempt`` > 1), so a handler must be idempotent (the ingestion handler is: an
    unchanged file is skipped by its content hash). Cancellation arrives as
    ``asyncio.CancelledError`` inside the handler.
    """

    @property
    def id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def payload(self) -> dict[str, Any]: ...

    @property
    def attempt(self) -> int: ...

    async def progress(self, progress: dict[str, Any]) -> None:
        """Replace the job's progress (visible at once through ``status``)."""

    async def attachment(self, name: str) -> bytes | None:
        """A file enqueued with the job (None if it was not stored or has expired)."""


Handler = Callable[[JobContext], Coroutine[Any, Any, dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    name: str
    run: Handler
    max_attempts: int
