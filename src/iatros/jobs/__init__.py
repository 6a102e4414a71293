"""Background jobs: one small queue API, in process or shared on Redis.

Long work (document ingestion today; transcription, image analysis, agent runs and
webhook deliveries as they arrive) is queued instead of done inside a request. A
feature registers a handler by name and enqueues with an idempotency key:

    from iatros.jobs import JobContext, PermanentError

    async def deliver(job: JobContext) -> dict[str, object]:
        await job.progress({"step": "sending"})
        ...                                   # may run twice: make it idempotent
        return {"status": 200}

    queue.register("webhooks.deliver", deliver, max_attempts=8)
    job_id = await queue.enqueue("webhooks.deliver", {"url": url}, tenant=tenant,
                                 idempotency_key=event_id)

Delivery is at least once; a failure is retried with full-jitter exponential backoff
up to ``max_attempts`` runs (``PermanentError`` skips the retries), then the job is a
dead letter that admins list and retry (``GET /admin/jobs/dead``, ``iatros jobs dead``).
With ``redis_url`` set the queue is shared by every instance and ``iatros worker``
process (:class:`RedisQueue`); without it, :class:`MemoryQueue` runs jobs in process.
"""

from iatros.jobs.base import JobQueue
from iatros.jobs.factory import build_queue
from iatros.jobs.memory import MemoryQueue
from iatros.jobs.settings import JobSettings
from iatros.jobs.types import (
    Handler,
    JobConflict,
    JobContext,
    JobError,
    JobInfo,
    JobNotFound,
    JobState,
    PermanentError,
    UnknownHandler,
)

__all__ = [
    "Handler",
    "JobConflict",
    "JobContext",
    "JobError",
    "JobInfo",
    "JobNotFound",
    "JobQueue",
    "JobSettings",
    "JobState",
    "MemoryQueue",
    "PermanentError",
    "UnknownHandler",
    "build_queue",
]
