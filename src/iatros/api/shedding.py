"""Load shedding: refuse model requests at once while the worker is too far behind.

Under overload an asyncio server does not slow everyone down evenly: every await of
every admitted request queues behind whatever else is ready, so some connections wait
seconds while the median still looks fine (#26 measured a p99 of 10 s for cache hits at
500 connections with a median of 60 ms). The fair answer is to serve the requests that
were admitted within a bounded wait and refuse the others quickly, so clients (and a
load balancer) retry elsewhere or later instead of hanging.

The signal is the event-loop lag the gateway already tracks (``observability.looplag``):
how late a 20 ms timer fires is how long any ready callback, including the next step
of an admitted request, waits for the loop. While it exceeds ``server.shed_lag_ms`` a
new model request gets ``429 overloaded`` with ``Retry-After`` before its body is even
read. Requests already admitted are not interrupted, and cheap endpoints (health,
metrics, the web app) are never shed: operators must still see the worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from iatros.errors import Overloaded
from iatros.observability.looplag import LoopLag, loop_lag

SHED_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/completions"})
"""The endpoints that start model work: the ones worth refusing under overload."""


class LoadShedder:
    """Decides, per new request, whether the worker is too far behind to take it."""

    def __init__(
        self, budget_ms: float | None, on_shed: Callable[[], None] | None = None
    ) -> None:
        self.budget_s = budget_ms / 1000 if budget_ms else None
        self.shed = 0
        """Requests refused since start (also counted in ``iatros_requests_shed_total``)."""
        self._lag: LoopLag | None = None
        self._on_shed = on_shed

    def refusal(self, path: str) -> Overloaded | None:
        """``Overloaded`` if a request to ``path`` should be refused now, else None.

        One attribute read on the hot path; the lag monitor is started on first use
        because it needs the running loop.
        """
        if self.budget_s is None or path not in SHED_PATHS:
            return None
        lag = self._lag
        if lag is None:
            lag = self._lag = loop_lag()
        if lag.value <= self.budget_s:
            return None
        self.shed += 1
        if self._on_shed is not None:
            self._on_shed()
        # The lag decays by a fifth every 20 ms once the loop catches up: a second is
        # the shortest Retry-After a client honours, and longer only when far behind.
        retry = max(1, math.ceil(lag.value))
        return Overloaded(
            f"The gateway is overloaded (its queue is {lag.value * 1000:.0f} ms behind, "
            f"the budget is {self.budget_s * 1000:.0f} ms); retry after {retry} s.",
            retry_after_s=retry,
        )
