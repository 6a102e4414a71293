"""The job queue's contract, on both implementations: the in-process one and Redis.

Redis tests use a unique key prefix each and delete their keys afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from iatros.jobs import (
    JobConflict,
    JobContext,
    JobNotFound,
    JobQueue,
    JobSettings,
    MemoryQueue,
    PermanentError,
    UnknownHandler,
)
from iatros.jobs.redis_queue import RedisQueue

REDIS_URL = "redis://127.0.0.1:6379/0"
pytestmark = pytest.mark.asyncio(loop_scope="session")  # the fixture closes on the same loop


def _settings(prefix: str, **extra: Any) -> JobSettings:
    base: dict[str, Any] = {
        "prefix": prefix,
        "lease_s": 1.0,
        "poll_s": 0.1,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "max_attempts": 3,
    }
    return JobSettings(**{**base, **extra})


def _cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
async def make_queue(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., JobQueue]]:
    prefix = f"test:jobs:{uuid.uuid4().hex[:10]}:"
    made: list[JobQueue] = []

    def make(**extra: Any) -> JobQueue:
        settings = _settings(prefix, **extra)
        queue: JobQueue = (
            MemoryQueue(settings) if request.param == "memory" else RedisQueue(settings, REDIS_URL)
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        await queue.close()
    if request.param == "redis":
        _cleanup(prefix)


async def _until(predicate: Callable[[], Any], limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _state(queue: JobQueue, job_id: str, state: str) -> None:
    async def reached() -> bool:
        return (await queue.status(job_id)).state == state

    await _until(reached)


async def test_runs_reports_progress_and_result(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue()
    seen: list[tuple[str, dict[str, Any], bytes | None]] = []

    async def handler(job: JobContext) -> dict[str, Any]:
        await job.progress({"step": 1})
        seen.append((job.tenant, job.payload, await job.attachment("a")))
        return {"ok": True, "n": job.payload["n"]}

    queue.register("t.work", handler)
    await queue.start(2)
    job_id = await queue.enqueue("t.work", {"n": 7}, tenant="t1", attachments={"a": b"\x00x"})
    await _state(queue, job_id, "done")
    info = await queue.status(job_id, tenant="t1")
    assert info.result == {"ok": True, "n": 7}
    assert info.progress == {"step": 1}
    assert info.attempts == 1
    assert seen == [("t1", {"n": 7}, b"\x00x")]
    with pytest.raises(JobNotFound):  # another tenant's id is simply not found
        await queue.status(job_id, tenant="t2")
    with pytest.raises(UnknownHandler):
        await queue.enqueue("t.nobody", {}, tenant="t1")


async def test_idempotency_key_returns_the_first_job(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue()
    runs: list[str] = []

    async def handler(job: JobContext) -> None:
        runs.append(job.id)

    queue.register("t.once", handler)
    first = await queue.enqueue("t.once", {}, tenant="t", idempotency_key="k1")
    again = await queue.enqueue("t.once", {}, tenant="t", idempotency_key="k1")
    other = await queue.enqueue("t.once", {}, tenant="t", idempotency_key="k2")
    assert first == again != other
    await queue.start(1)
    await _state(queue, first, "done")
    await _state(queue, other, "done")
    assert sorted(runs) == sorted([first, other])


async def test_retries_with_backoff_then_dead_letter_and_retry(
    make_queue: Callable[..., JobQueue],
) -> None:
    queue = make_queue()
    calls: dict[str, int] = {}
    healed = False

    async def flaky(job: JobContext) -> dict[str, Any]:
        calls[job.id] = calls.get(job.id, 0) + 1
        if not healed:
            raise RuntimeError(f"upstream down (try {job.attempt})")
        return {"attempt": job.attempt}

    queue.register("t.flaky", flaky)
    await queue.start(1)
    job_id = await queue.enqueue("t.flaky", {}, tenant="t")
    await _state(queue, job_id, "dead")
    info = await queue.status(job_id)
    assert calls[job_id] == 3 == info.attempts  # max_attempts runs, then no more
    assert "try 3" in (info.error or "")
    assert [d.id for d in await queue.dead_letters()] == [job_id]
    assert await queue.dead_letters(tenant="other") == []
    with pytest.raises(JobNotFound):
        await queue.retry(job_id, tenant="other")
    healed = True
    await queue.retry(job_id)
    await _state(queue, job_id, "done")
    assert (await queue.status(job_id)).result == {"attempt": 1}
    assert await queue.dead_letters() == []
    with pytest.raises(JobConflict):
        await queue.retry(job_id)


async def test_permanent_error_skips_retries(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue()

    async def bad_input(job: JobContext) -> None:
        raise PermanentError("not a PDF")

    queue.register("t.bad", bad_input)
    await queue.start(1)
    job_id = await queue.enqueue("t.bad", {}, tenant="t")
    await _state(queue, job_id, "dead")
    info = await queue.status(job_id)
    assert info.attempts == 1 and info.error == "not a PDF"


async def test_cancel_queued_and_running(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue()
    started = asyncio.Event()
    stopped: list[str] = []

    async def slow(job: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(job.id)
            raise

    queue.register("t.slow", slow)
    waiting = await queue.enqueue("t.slow", {}, tenant="t")
    assert (await queue.cancel(waiting, tenant="t")).state == "cancelled"
    with pytest.raises(JobNotFound):
        await queue.cancel(waiting, tenant="other")
    await queue.start(1)
    running = await queue.enqueue("t.slow", {}, tenant="t")
    await asyncio.wait_for(started.wait(), 10)
    await _state(queue, running, "running")
    await queue.cancel(running, tenant="t")
    await _state(queue, running, "cancelled")
    assert stopped == [running]  # the cancelled one never ran
    assert (await queue.status(waiting)).state == "cancelled"


async def test_shutdown_requeues_the_running_job_for_another_worker() -> None:
    """A worker stopped mid-job (SIGTERM) hands it back; another worker finishes it."""
    prefix = f"test:jobs:{uuid.uuid4().hex[:10]}:"
    first = RedisQueue(_settings(prefix), REDIS_URL)
    second = RedisQueue(_settings(prefix), REDIS_URL)
    started = asyncio.Event()
    finished_by: list[str] = []

    def handler_for(queue: RedisQueue) -> Any:
        async def handler(job: JobContext) -> None:
            if queue is first:
                started.set()
                await asyncio.sleep(30)
            finished_by.append(queue.consumer)

        return handler

    first.register("t.long", handler_for(first))
    second.register("t.long", handler_for(second))
    try:
        await first.start(1)
        job_id = await first.enqueue("t.long", {}, tenant="t")
        await asyncio.wait_for(started.wait(), 10)
        await first.close()  # requeues the job (its attempt does not count)
        await second.start(1)
        await _state(second, job_id, "done")
        info = await second.status(job_id)
        assert finished_by == [second.consumer]
        assert info.attempts == 1
    finally:
        await second.close()
        _cleanup(prefix)


async def test_a_silent_worker_s_job_is_taken_over_after_the_lease() -> None:
    """At-least-once: a worker that stops renewing (as if SIGKILLed) loses its job."""
    prefix = f"test:jobs:{uuid.uuid4().hex[:10]}:"
    dead = RedisQueue(_settings(prefix), REDIS_URL)
    alive = RedisQueue(_settings(prefix), REDIS_URL)
    started = asyncio.Event()
    attempts: list[int] = []

    async def stuck(job: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    async def works(job: JobContext) -> dict[str, int]:
        attempts.append(job.attempt)
        return {"attempt": job.attempt}

    dead.register("t.job", stuck)
    alive.register("t.job", works)
    try:
        await dead.start(1)
        job_id = await dead.enqueue("t.job", {}, tenant="t")
        await asyncio.wait_for(started.wait(), 10)
        for task in [*dead._loops, *dead._tasks]:  # the process "dies": nothing renews
            task.cancel()
        await alive.start(1)
        await _state(alive, job_id, "done")
        assert attempts == [2]
        assert (await alive.status(job_id)).result == {"attempt": 2}
    finally:
        await alive.close()
        dead._running.clear()
        await dead.redis.aclose()
        _cleanup(prefix)


async def test_an_unreachable_redis_does_not_stop_the_start() -> None:
    """The server starts with Redis down (cache and limits degrade); enqueueing fails loudly."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    queue = RedisQueue(_settings("test:jobs:down:"), f"redis://127.0.0.1:{port}/0")

    async def handler(job: JobContext) -> None:
        return None

    queue.register("t.down", handler)
    await queue.start(1)
    with pytest.raises(Exception):  # noqa: B017 - redis-py's ConnectionError, whatever the shape
        await queue.enqueue("t.down", {}, tenant="t")
    await queue.close()


async def test_a_stopped_worker_leaves_no_consumer_behind() -> None:
    prefix = f"test:jobs:{uuid.uuid4().hex[:10]}:"
    queue = RedisQueue(_settings(prefix), REDIS_URL)

    async def handler(job: JobContext) -> None:
        return None

    queue.register("t.x", handler)
    try:
        await queue.start(1)
        job_id = await queue.enqueue("t.x", {}, tenant="t")
        await _state(queue, job_id, "done")
        await queue.close()
        client = redis.Redis.from_url(REDIS_URL)
        consumers = client.xinfo_consumers(prefix + "stream", "workers")
        client.close()
        assert consumers == []
    finally:
        _cleanup(prefix)
