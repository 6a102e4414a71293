"""How late this process's event loop runs its timers: the saturation signal.

On a saturated worker every await that is not the model (a Redis reply, the next
request's bytes) waits behind everything else that is ready. A ticker that asks to
wake every 20 ms and measures how late it wakes sees that wait. Request budgets
stretch by it (the Redis cache does not blame Redis for it) and operators see it in
``/metrics`` as ``iatros_event_loop_lag_seconds``.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable


class LoopLag:
    """The lateness of one loop's timers: the worst recent value, decaying over ~0.2 s."""

    INTERVAL_S = 0.02

    def __init__(self) -> None:
        self.value = 0.0
        self.listeners: list[Callable[[float], None]] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.INTERVAL_S)
            late = loop.time() - started - self.INTERVAL_S
            self.value = max(late, self.value * 0.8)
            for listener in self.listeners:
                listener(self.value)


_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLag] = (
    weakref.WeakKeyDictionary()
)


def loop_lag() -> LoopLag:
    """The running loop's monitor, started on first use: one ticker however many users."""
    loop = asyncio.get_running_loop()
    monitor = _monitors.get(loop)
    if monitor is None or monitor.task is None or monitor.task.done():
        monitor = LoopLag()
        monitor.task = loop.create_task(monitor.run(), name="iatros-loop-lag")
        _monitors[loop] = monitor
    return monitor
