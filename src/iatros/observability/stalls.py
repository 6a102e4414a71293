"""Say where the event loop is stuck while it is stuck: a stall watchdog.

The loop-lag ticker (:mod:`iatros.observability.looplag`) wakes every 20 ms. When it
has been silent for ``threshold_s``, nothing else on the loop has run either: every
request of the worker waits. A lag metric says so only after the stall ends, and not
why. This watchdog thread notices during the stall and logs the loop thread's stack
at that moment (code locations only: no local variables, so no request data).

It runs Python, so it needs the GIL: if the stall is native code holding the GIL, the
watchdog wakes only after it, and its log says it woke late (that itself names the
kind of stall: native code or the process not scheduled).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

from iatros.observability.looplag import LoopLag

log = logging.getLogger("iatros.stalls")

STACK_FRAMES = 12
"""Innermost frames of the loop thread's stack that a stall report keeps."""


class StallWatch:
    """A daemon thread reporting each stall of one loop once (see the module docstring)."""

    def __init__(self, lag: LoopLag, threshold_s: float, on_stall: Callable[[float], None]) -> None:
        self._lag = lag
        self._threshold_s = threshold_s
        self._on_stall = on_stall
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()  # built on the loop's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iatros-stall-watch", daemon=True)

    def start(self) -> None:
        self._lag.listeners.append(self._heard)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._heard in self._lag.listeners:
            self._lag.listeners.remove(self._heard)
        if self._thread.is_alive():
            self._thread.join(1)

    def _heard(self, _lag: float) -> None:
        self._beat = time.monotonic()

    def _run(self) -> None:
        period = self._threshold_s / 4
        reported = 0.0
        while True:
            asleep = time.monotonic()
            if self._stop.wait(period):
                return
            now = time.monotonic()
            beat = self._beat
            silent = now - beat
            if silent < self._threshold_s or beat == reported:
                continue
            reported = beat
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame, limit=STACK_FRAMES)) if frame else ""
            self._on_stall(silent)
            log.warning(
                "event loop stalled",
                extra={
                    "silent_ms": round(silent * 1000),
                    # Waking this late means the GIL was held elsewhere (native code) or
                    # the process was not scheduled: the stack is from after the stall.
                    "watchdog_late_ms": round(max(now - asleep - period, 0.0) * 1000),
                    "stack": stack,
                },
            )
