"""Per-deployment health: a circuit breaker and a latency estimate.

The breaker opens after ``failure_threshold`` consecutive failures, or when the
error rate over the last ``window_s`` seconds reaches ``error_rate`` with at
least ``min_requests`` outcomes. Open, it refuses traffic for a cooldown that
doubles on every repeated trip (up to ``max_cooldown_s``); then it lets
``half_open_probes`` requests through: one success closes it, a failure reopens
it. Latency is an EWMA of time to first token, used by latency routing.
"""

from __future__ import annotations

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
    half_open_probes: int = Field(1, ge=1)


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
    ewma_ttft_s: float | None = None
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)

    # -- breaker ------------------------------------------------------------

    def cooldown_s(self) -> float:
        return min(
            self.settings.cooldown_s * 2.0 ** max(self.trips - 1, 0), self.settings.max_cooldown_s
        )

    def current_state(self) -> State:
        """The state now (an open breaker whose cooldown is over is half-open)."""
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown_s():
            self.state = State.HALF_OPEN
            self.probes_in_flight = 0
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
        """Reserve the right to send one request (a probe when half-open)."""
        if not self.available():
            return False
        if self.state is State.HALF_OPEN:
            self.probes_in_flight += 1
        return True

    def record_success(self, ttft_s: float | None = None) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self._push(True)
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.trips = 0
            self.probes_in_flight = 0
        if ttft_s is not None:
            self.observe_latency(ttft_s)

    def record_failure(self, reason: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self._push(False)
        if self.state is State.HALF_OPEN:
            self._trip()
            return
        if self.state is State.CLOSED and (
            self.consecutive_failures >= self.settings.failure_threshold or self._rate_exceeded()
        ):
            self._trip()

    def record_check_ok(self) -> None:
        """An active health check passed: an open breaker may probe again right away."""
        if self.state is State.OPEN:
            self.state = State.HALF_OPEN
            self.probes_in_flight = 0

    def release_probe(self) -> None:
        """A probe ended without telling us anything (e.g. the client left)."""
        if self.state is State.HALF_OPEN and self.probes_in_flight:
            self.probes_in_flight -= 1

    def _trip(self) -> None:
        self.state = State.OPEN
        self.trips += 1
        self.opened_at = self.clock()
        self.probes_in_flight = 0

    def _push(self, ok: bool) -> None:
        now = self.clock()
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
        return {
            "state": self.current_state().value,
            "consecutive_failures": self.consecutive_failures,
            "successes": self.successes,
            "failures": self.failures,
            "trips": self.trips,
            "cooldown_s": round(self.cooldown_s(), 3) if self.state is State.OPEN else 0.0,
            "ewma_ttft_ms": None if self.ewma_ttft_s is None else round(self.ewma_ttft_s * 1000, 2),
            "last_error": self.last_error,
        }
