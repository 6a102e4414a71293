"""Active probes of open breakers: one background task per open breaker, only while open.

A breaker that opened waits out a cooldown that doubles on every repeated trip; an
upstream that came back meanwhile would stay out of rotation until the cooldown ends
and a live request dares to try it (issue #28: 22,145 requests refused while the
primary had been healthy for 4 s). So when a breaker opens, a task sends the
provider's cheap probe (:meth:`~iatros.providers.base.Provider.probe`: ``GET
/models`` by default, or a one-token completion) every ``probe_interval_s``; the
first pass half-opens the breaker at once and the task ends. Nothing runs for a
closed breaker, so a healthy system sends no probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from iatros.routing.health import DeploymentHealth, State

if TYPE_CHECKING:
    from iatros.routing.router import Deployment

log = logging.getLogger("iatros.routing")

ProbeListener = Callable[[str, bool], None]
"""Called with (deployment, passed) after every probe (metrics)."""


class Prober:
    """Owns the probe tasks; :meth:`watch` is each breaker's ``on_open`` callback."""

    def __init__(
        self,
        deployments: Mapping[str, Deployment],
        health: Mapping[str, DeploymentHealth],
        interval_s: float | None,
        timeout_s: float,
        listener: ProbeListener | None = None,
    ) -> None:
        self.deployments = deployments
        self.health = health
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.listener = listener
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False
        if interval_s is not None:
            for name, deployment_health in health.items():
                deployment_health.on_open = self._watcher(name)

    def _watcher(self, name: str) -> Callable[[], None]:
        return lambda: self.watch(name)

    @property
    def probing(self) -> list[str]:
        """Deployments being probed now."""
        return sorted(name for name, task in self._tasks.items() if not task.done())

    def start(self) -> None:
        """Start probing (inside the running loop); breakers already open are probed too."""
        self._running = True
        for name, health in self.health.items():
            if health.state is State.OPEN:
                self.watch(name)

    def watch(self, name: str) -> None:
        """A breaker opened: probe its upstream until it passes (one task per breaker)."""
        if not self._running or self.interval_s is None:
            return
        task = self._tasks.get(name)
        if task is not None and not task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a breaker tripped outside the loop (a unit test): nothing to run
            return
        self._tasks[name] = loop.create_task(self._probe(name), name=f"probe-{name}")

    async def _probe(self, name: str) -> None:
        assert self.interval_s is not None
        health = self.health[name]
        deployment = self.deployments[name]
        while True:
            await asyncio.sleep(self.interval_s)
            if health.current_state() is not State.OPEN:
                return  # half-open (cooldown over): live requests probe from here
            try:
                async with asyncio.timeout(self.timeout_s):
                    passed = await deployment.provider.probe(deployment.config)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a probe must never kill the task
                log.debug("probe of %s failed: %s", name, type(exc).__name__)
                passed = False
            health.record_probe(passed)
            if self.listener is not None:
                self.listener(name, passed)
            if passed:
                return

    async def close(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
