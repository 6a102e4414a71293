"""Graceful shutdown: what SIGTERM means for an instance behind a load balancer.

uvicorn, on SIGTERM, already stops accepting connections, closes idle keep-alive
connections, waits up to ``timeout_graceful_shutdown`` (``server.shutdown_timeout_s``)
for the requests in flight, then runs the lifespan shutdown. This module adds what it
cannot know about:

- ``/readyz`` answers 503 ``draining`` from the signal on, so a balancer or Kubernetes
  stops routing here even where the listening socket stays reachable;
- the job workers stop taking jobs at once (a running job goes on until the lifespan
  shutdown, which hands it back to the queue for another worker);
- shortly before the deadline, every event stream still open is ended with an explicit
  ``server_shutting_down`` error event: a client is told, never cut off silently.

The signal handler chains to uvicorn's, so its own shutdown sequence is unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

SHUTDOWN_MSG = "iatros: server shutting down"
log = logging.getLogger("iatros.api")

_streams: set[asyncio.Task[Any]] = set()
"""Tasks serving an event stream right now (this process): ended at the deadline."""


def track_stream(task: asyncio.Task[Any]) -> None:
    _streams.add(task)


def untrack_stream(task: asyncio.Task[Any]) -> None:
    _streams.discard(task)


def is_shutdown(exc: BaseException) -> bool:
    """True for the cancellation sent to streams at the shutdown deadline."""
    return isinstance(exc, asyncio.CancelledError) and SHUTDOWN_MSG in exc.args


class Drain:
    """This process's shutdown state; ``draining`` flips on SIGTERM (or :meth:`begin`)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.draining = False
        self._on_begin: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def on_begin(self, callback: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._on_begin.append(callback)

    def install(self) -> None:
        """Chain a handler before uvicorn's for SIGTERM and SIGINT (main thread only:
        a server run inside a test's thread has no signals to watch)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin)
                previous(signum, frame)

            signal.signal(sig, handler)

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info(
            "draining: not ready, finishing requests in flight",
            extra={"streams": len(_streams), "deadline_s": self.timeout_s},
        )
        loop = asyncio.get_running_loop()
        for callback in self._on_begin:
            task = loop.create_task(callback())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        margin = min(1.0, self.timeout_s / 10)
        loop.call_later(max(0.0, self.timeout_s - margin), end_streams)


def end_streams() -> None:
    """End every open event stream with an explicit error event (see api/sse.py)."""
    if _streams:
        log.warning(
            "ending open streams at the shutdown deadline", extra={"streams": len(_streams)}
        )
    for task in list(_streams):
        task.cancel(msg=SHUTDOWN_MSG)
