"""Transcriptions a restart interrupted: queued again, or failed with a reason.

The in-process job queue keeps its jobs in memory, so a restart or a crash loses the
job of an encounter that is ``transcribing``; without this sweep the encounter would
wait for ever. A Redis queue keeps its jobs, but one whose worker was killed on every
attempt ends dead with the encounter still ``transcribing``.

Every ``scribe.recovery_interval_s`` the sweep looks for encounters still transcribing
whose job has not reported for ``scribe.stale_after_s`` (a running job reports at every
chunk), and asks the queue about the job. If the queue still has it queued or running,
it is left alone. Otherwise the encounter is claimed (a compare-and-set on its last
update, so that of two instances sweeping at once only one acts) and its transcription
is queued again from the start with the recording kept sealed in it, at most
:data:`MAX_RESUMES` times; after that, or for an encounter without the data to queue it
again, it fails with a message saying to upload the recording again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from iatros.clinical.scribe.pending import PendingEncounters
from iatros.jobs import JobNotFound, JobQueue

log = logging.getLogger("iatros.scribe")

MAX_RESUMES = 3
"""A recording whose transcription was interrupted this many times fails instead."""

@dataclass(slots=True)
class SweepResult:
    requeued: list[str]
    failed: list[str]
    running: list[str]


class TranscriptionRecovery:
    def __init__(
        self,
        pending: PendingEncounters,
        queue: JobQueue,
        job_name: str,
        *,
        stale_after_s: float,
        interval_s: float,
    ) -> None:
        self.pending = pending
        self.queue = queue
        self.job_name = job_name
        self.stale_after_s = stale_after_s
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> SweepResult:
        """One pass over the stale encounters (also called at start-up)."""
        result = SweepResult([], [], [])
        before = datetime.now(UTC) - timedelta(seconds=self.stale_after_s)
        stale = await asyncio.to_thread(self.pending.stale, before)
        for tenant, eid, seen, found in stale:
            job, resume = found["job"], found["resume"]
            if await self._still_queued(job.get("id"), tenant):
                result.running.append(eid)
                continue
            if not await asyncio.to_thread(self.pending.claim, tenant, eid, seen):
                continue  # another instance took it, or it moved on meanwhile
            attempt = int(job.get("resumed", 0)) + 1
            if resume is None or attempt > MAX_RESUMES:
                message = (
                    "The transcription was interrupted (the server restarted or its worker "
                    "stopped) too many times; upload the recording again."
                    if resume is not None
                    else "The transcription was interrupted (the server restarted or its "
                    "worker stopped); upload the recording again."
                )
                await asyncio.to_thread(self.pending.fail, tenant, eid, message, "interrupted")
                result.failed.append(eid)
                continue
            try:
                job_id = await self.queue.enqueue(
                    self.job_name, {"encounter": eid, **resume}, tenant=tenant,
                    idempotency_key=f"{eid}:resume:{attempt}",
                )  # fmt: skip
            except Exception as exc:  # the queue is down: try again at the next sweep
                log.warning("could not queue an interrupted transcription again",
                            extra={"encounter": eid, "error": repr(exc)})  # fmt: skip
                continue
            await asyncio.to_thread(
                self.pending.job_update, tenant, eid, id=job_id, resumed=attempt,
                chunks_done=0, error=None,
            )  # fmt: skip
            log.info("interrupted transcription queued again",
                     extra={"encounter": eid, "job": job_id, "attempt": attempt})  # fmt: skip
            result.requeued.append(eid)
        return result

    async def _still_queued(self, job_id: str | None, tenant: str) -> bool:
        if not job_id:
            return False
        try:
            info = await self.queue.status(job_id, tenant=tenant)
        except JobNotFound:
            return False
        return info.state in ("queued", "running", "failed")  # failed: to be retried

    def start(self) -> None:
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="iatros-scribe-recovery")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("scribe recovery sweep failed")
            await asyncio.sleep(self.interval_s)
