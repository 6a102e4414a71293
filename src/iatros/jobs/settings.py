"""Job-queue settings: one pydantic section (``jobs:``) of the gateway configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class JobSettings(BaseModel):
    """Where background jobs queue and how workers run them.

    ``backend: auto`` (the default) queues on Redis when ``redis_url`` is set, so every
    instance and every ``iatros worker`` process shares one queue, and in process
    otherwise (the embedded default: nothing survives a restart but no server is needed).
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "memory", "redis"] = "auto"
    redis_url: str | None = None
    """Defaults to the top-level ``redis_url``."""
    prefix: str = Field("iatros:jobs:", min_length=1, max_length=64)
    """Prefix of every Redis key of the queue (one queue per prefix)."""
    workers: int = Field(1, ge=0, le=64)
    """Jobs the server process runs at once; 0: the server only enqueues and
    ``iatros worker`` processes run the jobs."""
    lease_s: float = Field(30.0, ge=1.0)
    """A job whose worker has not renewed its claim for this long (it died, or its
    machine did) is delivered to another worker (Redis Streams: XAUTOCLAIM)."""
    max_attempts: int = Field(5, ge=1, le=100)
    """Runs of a job (failures and crashes alike) before it goes to the dead-letter list."""
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    """Retry ``n`` waits a random time up to ``min(backoff_max_s, backoff_base_s * 2**(n-1))``."""
    keep_s: int = Field(7 * 86400, ge=60)
    """How long a finished job's record (and an idempotency key) is kept."""
    poll_s: float = Field(1.0, gt=0, le=30)
    """How often a worker promotes due retries, looks for orphaned jobs and checks for
    cancellation of the job it runs."""
