"""The shared queue: Redis Streams with one consumer group, driven by Lua scripts.

Why Streams and not a library: a consumer group already *is* at-least-once delivery
(an entry stays pending until acknowledged), ``XAUTOCLAIM`` hands a dead worker's
entries to a live one after ``lease_s`` of silence, and ``XCLAIM ... JUSTID`` renews a
claim, so the queue is a few atomic scripts (:mod:`iatros.jobs.scripts`) over a data
structure Redis maintains, with nothing else to install. The libraries compared
(taskiq + taskiq-redis, rq, dramatiq; see docs/how-to/scale-out.md) each brought
their own worker process model and still lacked part of what is needed here (tenant
scoping, progress, cancellation of a running job, an admin-visible dead-letter list).

Keys (``p`` = ``jobs.prefix``): ``p:stream`` the deliveries, ``p:job:<id>`` one hash per
job (state, attempts, progress, result, error, owner, delivery), ``p:files:<id>`` its
attachments, ``p:idem:<handler>:<key>`` idempotency keys, ``p:delayed`` retries waiting
for their backoff (a sorted set by due time), ``p:dead`` the dead-letter list.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from iatros import redis_connect
from iatros.jobs import scripts
from iatros.jobs.base import JobQueue, RunContext, log
from iatros.jobs.settings import JobSettings
from iatros.jobs.types import (
    FINAL_STATES,
    JobConflict,
    JobInfo,
    JobNotFound,
    PermanentError,
    backoff_s,
    new_job_id,
)


class _Shutdown(Exception):
    """The worker is stopping: the job goes back to the queue."""


class RedisQueue(JobQueue):
    kind = "redis"
    shared = True

    def __init__(self, settings: JobSettings, url: str) -> None:
        super().__init__(settings)
        self.url = url
        self.redis: Redis = redis_connect.client(url, decode_responses=False)  # Sentinel too
        p = settings.prefix
        self.stream = p + "stream"
        self.delayed = p + "delayed"
        self.dead = p + "dead"
        self.job_prefix = p + "job:"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._scripts = {
            name: self.redis.register_script(getattr(scripts, name))
            for name in (
                "ENQUEUE",
                "START",
                "HEARTBEAT",
                "PROGRESS",
                "FINISH",
                "RETRY_LATER",
                "REQUEUE",
                "PROMOTE",
                "CANCEL",
                "RESURRECT",
            )
        }
        self._workers = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._draining = False
        self._slot = asyncio.Event()
        self._group_ready = False

    def _job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def _files(self, job_id: str) -> str:
        return self.settings.prefix + "files:" + job_id

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._scripts[name](keys=keys, args=args)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.stream, scripts.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- producing and inspecting -------------------------------------------------

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
        await self._ensure_group()
        job_id = new_job_id()
        keep = self.settings.keep_s
        if attachments:
            files = self._files(job_id)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(files, mapping=dict[Any, Any](attachments))
                pipe.expire(files, keep)
                await pipe.execute()
        now = time.time()
        fields: dict[str, Any] = {
            "id": job_id,
            "name": name,
            "tenant": tenant,
            "state": "queued",
            "payload": orjson.dumps(dict(payload)),
            "attempts": 0,
            "max_attempts": spec.max_attempts,
            "created_at": now,
            "updated_at": now,
            "progress": b"{}",
            "owner": "",
            "delivery": "",
            "cancel": "0",
        }
        flat: list[Any] = []
        for key, value in fields.items():
            flat += [key, value]
        idem = f"{self.settings.prefix}idem:{name}:{idempotency_key}" if idempotency_key else ""
        result = await self._script(
            "ENQUEUE",
            [self._job(job_id), idem, self.stream, self._files(job_id)],
            [job_id, keep, self.job_prefix, *flat],
        )
        return _text(result)

    async def status(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self._job(job_id)))
        info = _info(raw)
        if info is None or (tenant is not None and info.tenant != tenant):
            raise JobNotFound(f"no job {job_id!r}")
        return info

    async def cancel(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        await self.status(job_id, tenant=tenant)
        await self._script(
            "CANCEL",
            [self._job(job_id), self.delayed, self._files(job_id)],
            [time.time(), self.settings.keep_s, job_id],
        )
        return await self.status(job_id, tenant=tenant)

    async def dead_letters(self, *, tenant: str | None = None, limit: int = 100) -> list[JobInfo]:
        ids = await self.redis.zrevrange(self.dead, 0, max(limit * 10, 1000) - 1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw_id in ids:
                pipe.hgetall(self._job(_text(raw_id)))
            rows = cast(list[dict[bytes, bytes]], await pipe.execute())
        found: list[JobInfo] = []
        gone: list[Any] = []
        for raw_id, row in zip(ids, rows, strict=True):
            info = _info(row)
            if info is None or info.state != "dead":
                gone.append(raw_id)
            elif tenant is None or info.tenant == tenant:
                found.append(info)
        if gone:
            await self.redis.zrem(self.dead, *gone)
        return found[:limit]

    async def retry(self, job_id: str, *, tenant: str | None = None) -> JobInfo:
        await self.status(job_id, tenant=tenant)
        await self._ensure_group()
        moved = await self._script(
            "RESURRECT", [self._job(job_id), self.dead, self.stream], [time.time(), job_id]
        )
        info = await self.status(job_id, tenant=tenant)
        if not moved:
            raise JobConflict(f"job {job_id!r} is {info.state}, not dead")
        return info

    async def counts(self) -> dict[str, int]:
        """Deliveries waiting and in hand, retries waiting, dead letters (for metrics/CLI)."""
        await self._ensure_group()
        groups = await self.redis.xinfo_groups(self.stream)
        group = next((g for g in groups if _text(g["name"]) == scripts.GROUP), None)
        return {
            "pending": int(group["pending"]) if group else 0,
            "lag": int(group.get("lag") or 0) if group else 0,
            "delayed": int(await self.redis.zcard(self.delayed)),
            "dead": int(await self.redis.zcard(self.dead)),
        }

    # --- working ------------------------------------------------------------------

    async def start(self, workers: int) -> None:
        """Never fails on an unreachable Redis: the server starts, the loops retry."""
        try:
            await self._ensure_group()
        except Exception as exc:
            log.warning("job queue unavailable at start; retrying", extra={"error": repr(exc)})
        self._workers = workers
        if workers:
            self._loops = [
                asyncio.create_task(self._read_loop(), name="jobs-read"),
                asyncio.create_task(self._maintain_loop(), name="jobs-maintain"),
            ]

    async def drain(self) -> None:
        self._draining = True
        self._slot.set()

    async def close(self) -> None:
        self._draining = True
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop
        self._loops = []
        for handler in list(self._running.values()):
            handler.cancel(msg="shutdown")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        with contextlib.suppress(Exception):  # leave no empty consumer behind in the group
            if self._workers and not await self.redis.xpending_range(
                self.stream, scripts.GROUP, "-", "+", 1, consumername=self.consumer
            ):
                await self.redis.xgroup_delconsumer(self.stream, scripts.GROUP, self.consumer)
        await self.redis.aclose()

    def _free(self) -> int:
        return self._workers - len(self._tasks)

    async def _read_loop(self) -> None:
        while not self._draining:
            free = self._free()
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                continue
            try:
                reply = await self.redis.xreadgroup(
                    scripts.GROUP, self.consumer, {self.stream: ">"}, count=free, block=1000
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job queue read failed", extra={"error": repr(exc)})
                self._group_ready = False
                await asyncio.sleep(self.settings.poll_s)
                with contextlib.suppress(Exception):
                    await self._ensure_group()
                continue
            for _stream, entries in cast(list[Any], reply or []):
                for entry_id, fields in entries:
                    self._spawn(_text(entry_id), _text(fields.get(b"job", b"")))

    async def _maintain_loop(self) -> None:
        lease_ms = int(self.settings.lease_s * 1000)
        while not self._draining:
            try:
                await self._script(
                    "PROMOTE", [self.delayed, self.stream], [time.time(), self.job_prefix]
                )
                free = self._free()
                if free > 0:
                    reply = await self.redis.xautoclaim(
                        self.stream, scripts.GROUP, self.consumer, lease_ms, "0-0", count=free
                    )
                    for entry_id, fields in reply[1]:
                        if fields:
                            log.warning(
                                "job taken over from a silent worker",
                                extra={"entry": _text(entry_id)},
                            )
                            self._spawn(_text(entry_id), _text(fields.get(b"job", b"")))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("job queue maintenance failed", extra={"error": repr(exc)})
            await asyncio.sleep(self.settings.poll_s)

    def _spawn(self, entry: str, job_id: str) -> None:
        task = asyncio.create_task(self._deliver(entry, job_id), name=f"job-{job_id}")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._slot.set()

        task.add_done_callback(done)

    async def _ack(self, entry: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, scripts.GROUP, entry)
            pipe.xdel(self.stream, entry)
            await pipe.execute()

    async def _deliver(self, entry: str, job_id: str) -> None:
        try:
            await self._deliver_one(entry, job_id)
        except Exception as exc:  # Redis down mid-job: the lease brings the job back
            log.warning("job delivery failed", extra={"job": job_id, "error": repr(exc)})

    async def _deliver_one(self, entry: str, job_id: str) -> None:
        key = self._job(job_id)
        if not job_id:
            await self._ack(entry)
            return
        verdict, attempts_raw = await self._script(
            "START", [key], [entry, self.consumer, time.time()]
        )
        verdict, attempts = _text(verdict), int(attempts_raw)
        if verdict in ("gone", "skip", "cancelled"):
            await self._ack(entry)
            return
        if verdict == "exhausted":
            await self._finish(
                entry,
                job_id,
                "dead",
                "error",
                f"gave up after {attempts - 1} attempts (workers lost)",
            )
            return
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(key))
        info = _info(raw)
        assert info is not None
        spec = self.handlers.get(info.name)
        if spec is None:
            await self._finish(
                entry,
                job_id,
                "dead",
                "error",
                f"no handler {info.name!r} in the worker that took it",
            )
            return
        payload = info.payload

        async def progress(value: dict[str, Any]) -> None:
            await self._script(
                "PROGRESS", [key], [entry, self.consumer, orjson.dumps(value), time.time()]
            )

        async def attachment(name: str) -> bytes | None:
            data = await self.redis.hget(self._files(job_id), name)
            return cast(bytes | None, data)

        ctx = RunContext(job_id, info.tenant, payload, attempts, progress, attachment)
        handler: asyncio.Task[dict[str, Any] | None] = asyncio.create_task(
            spec.run(ctx), name=f"job-run-{job_id}"
        )
        self._running[job_id] = handler
        outcome = "lost"
        try:
            outcome = await self._watch(entry, job_id, handler)
        finally:
            self._running.pop(job_id, None)
        await self._conclude(entry, job_id, handler, outcome, attempts, info.max_attempts)

    async def _watch(self, entry: str, job_id: str, handler: asyncio.Task[Any]) -> str:
        """Renew the claim while the handler runs; cancel it if the job is cancelled or lost."""
        every = min(self.settings.poll_s, self.settings.lease_s / 3)
        key = self._job(job_id)
        while True:
            done, _ = await asyncio.wait({handler}, timeout=every)
            if done:
                return "finished"
            try:
                beat = await self._script(
                    "HEARTBEAT", [key, self.stream], [entry, self.consumer, self.consumer]
                )
            except Exception as exc:
                log.warning("job heartbeat failed", extra={"job": job_id, "error": repr(exc)})
                continue
            if beat == 0:
                handler.cancel()
                log.warning("job taken over by another worker", extra={"job": job_id})
                return "lost"
            if beat == 2:
                handler.cancel()
                return "cancelled"

    async def _conclude(
        self,
        entry: str,
        job_id: str,
        handler: asyncio.Task[Any],
        outcome: str,
        attempts: int,
        max_attempts: int,
    ) -> None:
        with contextlib.suppress(BaseException):
            await handler
        if outcome == "lost":
            return
        if outcome == "cancelled" or (handler.cancelled() and not self._draining):
            await self._finish(entry, job_id, "cancelled", "error", "cancelled")
            return
        if handler.cancelled():  # shutdown: not the job's fault, another worker takes it
            await self._script(
                "REQUEUE",
                [self._job(job_id), self.stream],
                [entry, self.consumer, time.time(), job_id],
            )
            log.info("job requeued at shutdown", extra={"job": job_id})
            return
        exc = handler.exception()
        if exc is None:
            await self._finish(entry, job_id, "done", "result", orjson.dumps(handler.result()))
            return
        error = str(exc) or type(exc).__name__
        log.warning("job failed", extra={"job": job_id, "attempt": attempts, "error": error})
        if isinstance(exc, PermanentError) or attempts >= max_attempts:
            await self._finish(entry, job_id, "dead", "error", error)
            return
        due = time.time() + backoff_s(
            attempts, self.settings.backoff_base_s, self.settings.backoff_max_s
        )
        await self._script(
            "RETRY_LATER",
            [self._job(job_id), self.stream, self.delayed],
            [entry, self.consumer, error, time.time(), due, job_id],
        )

    async def _finish(self, entry: str, job_id: str, state: str, field: str, value: Any) -> None:
        await self._script(
            "FINISH",
            [self._job(job_id), self.stream, self.dead, self._files(job_id)],
            [entry, self.consumer, state, field, value, time.time(), self.settings.keep_s, job_id],
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(raw: Mapping[bytes, bytes]) -> JobInfo | None:
    if not raw or b"state" not in raw:
        return None
    get = raw.get
    result = get(b"result")
    error = _text(get(b"error", b"")) or None
    state = _text(raw[b"state"])
    return JobInfo(
        id=_text(raw[b"id"]),
        name=_text(raw[b"name"]),
        tenant=_text(raw[b"tenant"]),
        state=state,  # type: ignore[arg-type]
        attempts=int(get(b"attempts", b"0")),
        max_attempts=int(get(b"max_attempts", b"1")),
        created_at=float(get(b"created_at", b"0")),
        updated_at=float(get(b"updated_at", b"0")),
        progress=dict(orjson.loads(get(b"progress", b"{}") or b"{}")),
        result=orjson.loads(result) if result else None,
        error=error if state not in ("done",) or error else None,
        cancel_requested=get(b"cancel") == b"1" and state not in FINAL_STATES,
        payload=dict(orjson.loads(get(b"payload", b"{}") or b"{}")),
    )
