"""Per-deployment health: a circuit breaker and a latency estimate.

The breaker opens after ``failure_threshold`` consecutive failures, or when the
error rate over the last ``window_s`` seconds reaches ``error_rate`` with at
least ``min_requests`` outcomes. Open, it refuses traffic for a cooldown that
doubles on every repeated trip (up to ``max_cooldown_s``); then it half-opens.

Half-open admits ``half_open_probes`` concurrent requests (3 by default, not 1):
any success closes the breaker at once, and it reopens (doubling the cooldown)
only once a strict majority of that many probes has failed with no success in
between. Why a majority: one unlucky probe (a connection reset by an upstream
that is still restarting, a cold start's slow first answer) must not double the
cooldown and keep a recovered upstream out for minutes, which is how a refused
backlog of requests came about in issue #28; yet several failures in a row with
no success are a consistent signal, and waiting for *all* probes would only send
more requests to an upstream that is still down. With one probe the old rule
holds (one failure reopens).

While open, the gateway also probes the upstream actively
(:mod:`iatros.routing.probes`, every ``probe_interval_s``): a passing probe
half-opens the breaker at once instead of leaving a recovered upstream out for
the rest of a (doubled) cooldown. A breaker that refuses traffic is still a
last resort: the router puts such deployments after the admitted ones (panic
routing, :mod:`iatros.routing.router`), so a breaker sheds load from a failing
upstream but never turns a recovered one into an outage.

Latency is an EWMA of time to first token, used by latency routing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class BreakerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    failure_threshold: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    min_requests: int = Field(20, ge=1)
    window_s: float = Field(30.0, gt=0)
    cooldown_s: float = Field(5.0, gt=0)
    max_cooldown_s: float = Field(300.0, gt=0)
    half_open_probes: int = Field(3, ge=1)
    """Concurrent requests a half-open breaker admits; a majority must fail to reopen it."""
    probe_interval_s: float | None = Field(2.0, gt=0)
    """Actively probe the upstream of an open breaker this often (``None``: never). Only
    open breakers are probed, so a healthy system sends no probes."""
    probe_timeout_s: float = Field(2.0, gt=0)
    """A probe that has not answered after this long counts as failed."""


Clock = Callable[[], float]


class State(Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> float:
        return {State.CLOSED: 0.0, State.HALF_OPEN: 1.0, State.OPEN: 2.0}[self]


@dataclass
class DeploymentHealth:
    settings: BreakerSettings
    clock: Clock = time.monotonic
    state: State = State.CLOSED
    consecutive_failures: int = 0
    trips: int = 0
    opened_at: float = 0.0
    probes_in_flight: int = 0
    half_open_failures: int = 0
    """Failures since the breaker last half-opened (a majority of the probes reopens it)."""
    ewma_ttft_s: float | None = None
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    last_ok_at: float = -math.inf
    """When a request or an active probe last succeeded (orders panic routing)."""
    panic_tries: int = 0
    """Requests sent while the breaker refused them (panic routing, the last resort)."""
    probes_ok: int = 0
    probes_failed: int = 0
    last_probe: str | None = None
    on_open: Callable[[], None] | None = None
    """Called whenever the breaker opens (the gateway starts probing the upstream)."""
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)

    # -- breaker ------------------------------------------------------------

    def cooldown_s(self) -> float:
        return min(
            self.settings.cooldown_s * 2.0 ** max(self.trips - 1, 0), self.settings.max_cooldown_s
        )

    def remaining_cooldown_s(self) -> float:
        """Seconds until an open breaker half-opens by itself (0 when it is not open)."""
        if self.current_state() is not State.OPEN:
            return 0.0
        return max(self.opened_at + self.cooldown_s() - self.clock(), 0.0)

    def current_state(self) -> State:
        """The state now (an open breaker whose cooldown is over is half-open)."""
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s():
            self._half_open()
        return self.state

    def available(self) -> bool:
        """May a request be sent now? (Does not reserve a probe; see :meth:`acquire`.)"""
        state = self.current_state()
        if state is State.CLOSED:
            return True
        if state is State.HALF_OPEN:
            return self.probes_in_flight < self.settings.half_open_probes
        return False

    def acquire(self) -> bool:
        """Reserve the right to send one request (a probe slot when half-open).

        After a successful call, ``state is State.HALF_OPEN`` tells the caller that it
        holds a probe slot, to hand back with ``record_failure(..., probe=True)`` or
        :meth:`release_probe`.
        """
        if not self.available():
            return False
        if self.state is State.HALF_OPEN:
            self.probes_in_flight += 1
        return True

    def reopen_after(self) -> int:
        """Half-open failures that reopen the breaker: a strict majority of the probes."""
        return self.settings.half_open_probes // 2 + 1

    def record_success(self, ttft_s: float | None = None) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self._push(True)
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.trips = 0
            self.probes_in_flight = 0
            self.half_open_failures = 0
        if ttft_s is not None:
            self.observe_latency(ttft_s)

    def record_failure(self, reason: str, *, probe: bool = False) -> None:
        """A call failed; ``probe`` says it held a half-open probe slot (now handed back)."""
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self._push(False)
        if self.state is State.HALF_OPEN:
            if probe and self.probes_in_flight:
                self.probes_in_flight -= 1
            self.half_open_failures += 1
            if self.half_open_failures >= self.reopen_after():
                self._trip()
            return
        if self.state is State.CLOSED and (
            self.consecutive_failures >= self.settings.failure_threshold or self._rate_exceeded()
        ):
            self._trip()

    def record_probe(self, ok: bool) -> None:
        """An active probe's result: a pass half-opens an open breaker at once.

        Half-open rather than closed: a cheap probe (``GET /models``) shows that the
        upstream answers, not that it completes chats; the first live success closes it.
        A failed probe changes nothing (the breaker is already open; it does not double
        the cooldown either, so probing never keeps an upstream out longer).
        """
        if ok:
            self.probes_ok += 1
            self.last_probe = "ok"
            self.last_ok_at = self.clock()
            if self.state is State.OPEN:
                self._half_open()
        else:
            self.probes_failed += 1
            self.last_probe = "failed"

    def record_check_ok(self) -> None:
        """A periodic health check passed: an open breaker may probe again right away."""
        if self.state is State.OPEN:
            self._half_open()

    def release_probe(self) -> None:
        """A probe ended without telling us anything (e.g. the client left)."""
        if self.state is State.HALF_OPEN and self.probes_in_flight:
            self.probes_in_flight -= 1

    def _half_open(self) -> None:
        self.state = State.HALF_OPEN
        self.probes_in_flight = 0
        self.half_open_failures = 0

    def _trip(self) -> None:
        self.state = State.OPEN
        self.trips += 1
        self.opened_at = self.clock()
        self.probes_in_flight = 0
        self.half_open_failures = 0
        if self.on_open is not None:
            self.on_open()

    def _push(self, ok: bool) -> None:
        now = self.clock()
        if ok:
            self.last_ok_at = now
        self._outcomes.append((now, ok))
        horizon = now - self.settings.window_s
        while self._outcomes and self._outcomes[0][0] < horizon:
            self._outcomes.popleft()

    def _rate_exceeded(self) -> bool:
        if len(self._outcomes) < self.settings.min_requests:
            return False
        failed = sum(1 for _, ok in self._outcomes if not ok)
        return failed / len(self._outcomes) >= self.settings.error_rate

    # -- latency ------------------------------------------------------------

    def observe_latency(self, seconds: float, alpha: float = 0.3) -> None:
        if self.ewma_ttft_s is None:
            self.ewma_ttft_s = seconds
        else:
            self.ewma_ttft_s = alpha * seconds + (1 - alpha) * self.ewma_ttft_s

    def snapshot(self) -> dict[str, object]:
        state = self.current_state()
        return {
            "state": state.value,
            "consecutive_failures": self.consecutive_failures,
            "successes": self.successes,
            "failures": self.failures,
            "trips": self.trips,
            "cooldown_s": round(self.cooldown_s(), 3) if state is State.OPEN else 0.0,
            "cooldown_remaining_s": round(self.remaining_cooldown_s(), 3),
            "ewma_ttft_ms": None if self.ewma_ttft_s is None else round(self.ewma_ttft_s * 1000, 2),
            "last_error": self.last_error,
            "panic_tries": self.panic_tries,
            "probes_ok": self.probes_ok,
            "probes_failed": self.probes_failed,
            "last_probe": self.last_probe,
        }
