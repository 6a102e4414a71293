"""``iatros worker`` (run queued jobs outside the server) and ``iatros jobs`` (admin).

A worker builds the same services as the server (so every handler is registered: the
knowledge ingestion, and whatever feature registers its own) and runs ``--concurrency``
jobs at once from the shared Redis queue. SIGTERM stops it taking jobs and hands the
running ones back to the queue. A worker ingests into the knowledge backend of its own
configuration: point it at the same shared backend as the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.table import Table

from iatros.cli_common import ConfigOpt, _fail, _settings, err, out
from iatros.jobs import JobConflict, JobNotFound, JobQueue, build_queue

if TYPE_CHECKING:
    from iatros.config import Settings

T = TypeVar("T")
jobs_app = typer.Typer(help="Background jobs: dead letters, retry, cancel.", no_args_is_help=True)


def worker(
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Jobs run at once.")] = 2,
    config: ConfigOpt = None,
) -> None:
    """Run jobs from the shared queue (Redis) until SIGTERM."""
    settings = _settings(config)
    if build_queue(settings.jobs, settings.redis_url).kind != "redis":
        _fail("iatros worker needs the shared queue: set redis_url (or jobs.redis_url)")
    for warning in settings.instance_warnings():
        err.print(f"[yellow]warning:[/yellow] {warning}")
    asyncio.run(_work(settings, concurrency))


async def _work(settings: Settings, concurrency: int) -> None:
    from iatros.observability.logging import configure_logging
    from iatros.services import Services

    configure_logging(settings.log_level)
    services = Services.build(settings, run_jobs=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await services.start()
    await services.jobs.start(concurrency)
    err.print(
        f"iatros worker: {concurrency} job(s) at once, handlers: "
        f"{', '.join(sorted(services.jobs.handlers)) or 'none'}"
    )
    try:
        await stop.wait()
    finally:
        await services.jobs.drain()
        await services.close()  # running jobs go back to the queue
    err.print("iatros worker stopped")


def _queue(config: Path | None) -> JobQueue:
    settings = _settings(config)
    return build_queue(settings.jobs, settings.redis_url)


async def _closing(queue: JobQueue, action: Awaitable[T]) -> T:
    try:
        return await action
    finally:
        with contextlib.suppress(Exception):
            await queue.close()


@jobs_app.command("dead")
def dead(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    config: ConfigOpt = None,
) -> None:
    """List dead letters: jobs that failed their last attempt."""
    queue = _queue(config)
    found = asyncio.run(_closing(queue, queue.dead_letters(tenant=tenant, limit=limit)))
    if as_json:
        for info in found:
            out.print_json(json.dumps(info.to_dict()))
        return
    table = Table("id", "handler", "tenant", "attempts", "failed at", "error")
    for info in found:
        table.add_row(
            info.id,
            info.name,
            info.tenant,
            str(info.attempts),
            f"{info.updated_at:.0f}",
            (info.error or "")[:80],
        )
    out.print(table)


@jobs_app.command("show")
def show(job_id: str, config: ConfigOpt = None) -> None:
    """One job, as JSON."""
    queue = _queue(config)
    try:
        info = asyncio.run(_closing(queue, queue.status(job_id)))
    except JobNotFound:
        _fail(f"no job {job_id!r}", 1)
    out.print_json(json.dumps(info.to_dict()))


@jobs_app.command("retry")
def retry(job_id: str, config: ConfigOpt = None) -> None:
    """Queue a dead job again (its attempts start over)."""
    queue = _queue(config)
    try:
        asyncio.run(_closing(queue, queue.retry(job_id)))
    except JobNotFound:
        _fail(f"no job {job_id!r}", 1)
    except JobConflict as exc:
        _fail(str(exc), 1)
    err.print(f"job {job_id} queued again")


@jobs_app.command("cancel")
def cancel(job_id: str, config: ConfigOpt = None) -> None:
    """Cancel a job (a running one stops at its worker's next check)."""
    queue = _queue(config)
    try:
        info = asyncio.run(_closing(queue, queue.cancel(job_id)))
    except JobNotFound:
        _fail(f"no job {job_id!r}", 1)
    err.print(f"job {job_id}: {info.state}")
