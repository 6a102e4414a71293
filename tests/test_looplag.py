"""The event-loop lag monitor: one per loop, and it sees a blocked loop."""

from __future__ import annotations

import asyncio
import time

from iatros.observability.looplag import LoopLag, loop_lag


async def test_one_monitor_per_loop_that_sees_a_blocked_loop() -> None:
    monitor = loop_lag()
    assert loop_lag() is monitor
    seen: list[float] = []
    monitor.listeners.append(seen.append)
    await asyncio.sleep(LoopLag.INTERVAL_S * 3)
    assert monitor.value < 0.03  # an idle loop is on time
    time.sleep(0.08)  # noqa: ASYNC251 - blocking work on the loop: every timer is late
    await asyncio.sleep(LoopLag.INTERVAL_S * 2)
    assert monitor.value >= 0.05 and max(seen) >= 0.05
    await asyncio.sleep(0.5)
    assert monitor.value < 0.03  # it decays once the loop is on time again


def test_each_loop_has_its_own_monitor() -> None:
    async def get() -> LoopLag:
        return loop_lag()

    assert asyncio.run(get()) is not asyncio.run(get())
