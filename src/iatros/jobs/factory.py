"""Pick the queue the settings ask for."""

from __future__ import annotations

from iatros.jobs.base import JobQueue
from iatros.jobs.memory import MemoryQueue
from iatros.jobs.settings import JobSettings


def build_queue(settings: JobSettings, redis_url: str | None) -> JobQueue:
    """Redis when ``backend`` is ``redis`` or ``auto`` with a URL; in process otherwise."""
    url = settings.redis_url or redis_url
    if settings.backend == "redis" and not url:
        raise ValueError("jobs.backend: redis needs jobs.redis_url or redis_url")
    if settings.backend == "memory" or url is None:
        return MemoryQueue(settings)
    from iatros.jobs.redis_queue import RedisQueue

    return RedisQueue(settings, url)
