"""Failed authentication: throttled per source, and audited as counts rather than rows.

Without this, anyone could send wrong keys as fast as the network allows: each one
a database lookup and an audit row (500 rows in 0.9 s were seen), and an unlimited
number of guesses. Here:

* A source (the client address; uvicorn takes it from ``X-Forwarded-For`` only when
  the peer is a trusted proxy) gets ``limit`` failed attempts per minute, counted by
  the shared rate limiter (Redis when configured, so every instance counts them
  together). Past that, every request from that source gets a 429 with
  ``Retry-After`` until the window frees up, *valid keys included*: otherwise a
  guesser would simply keep guessing. The block is remembered in process, so a
  blocked source costs no I/O at all; another instance learns of it at that
  source's next failure there.
* The first failure of a kind (source, tenant, actor, reason) in a window is
  audited at once; the ones after it are counted and audited as one record with
  the count when the window ends (or at shutdown).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iatros.governance.ratelimit import Limit, RateLimiter

WINDOW_S = 60
MAX_TRACKED = 10_000
"""Distinct (source, tenant, actor, reason) counted at once; more flushes the counts early."""


@dataclass(slots=True)
class _Count:
    started: float
    repeats: int = 0


Kind = tuple[str, str, str, str]
"""(source, tenant, actor, reason)"""


class FailedAuthGuard:
    def __init__(
        self,
        limiter: RateLimiter,
        *,
        limit: int,
        audit: Callable[..., None],
        window_s: int = WINDOW_S,
    ) -> None:
        self.limiter = limiter
        self.limit = limit
        self.window_s = window_s
        self._audit = audit
        self._blocked: dict[str, float] = {}
        self._counts: dict[Kind, _Count] = {}

    def retry_after(self, source: str | None) -> float | None:
        """Seconds until ``source`` may try again, or None if it may now (no I/O)."""
        if source is None:
            return None
        until = self._blocked.get(source)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[source]
            return None
        return left

    async def failed(
        self, source: str | None, tenant: str, actor: str, reason: str
    ) -> float | None:
        """Count one failure; returns the seconds to wait if the source is now throttled."""
        self._count((source or "unknown", tenant, actor, reason))
        if source is None:
            return None
        limit = Limit("auth-failures", f"authfail:{source}", self.limit, self.window_s)
        decision = await self.limiter.check([(limit, 1)])
        if decision.allowed:
            return None
        wait = max(decision.retry_after_s, 1.0)
        self._blocked[source] = time.monotonic() + wait
        if len(self._blocked) > MAX_TRACKED:  # drop the expired ones (and, at worst, the oldest)
            now = time.monotonic()
            self._blocked = {s: t for s, t in self._blocked.items() if t > now}
            while len(self._blocked) > MAX_TRACKED:
                self._blocked.pop(next(iter(self._blocked)))
        return wait

    def throttled(self, source: str, tenant: str = "default") -> None:
        """A request refused because its source is blocked (counted like a failure)."""
        self._count((source, tenant, "unknown", "throttled"))

    def _count(self, kind: Kind) -> None:
        now = time.monotonic()
        seen = self._counts.get(kind)
        if seen is not None and now - seen.started < self.window_s:
            seen.repeats += 1
            return
        if seen is not None:
            self._report(kind, seen)
        self._counts[kind] = _Count(now)
        source, tenant, actor, reason = kind
        self._audit(
            tenant=tenant,
            actor=actor,
            action="access.denied",
            outcome=reason,
            details={"source": source, "count": 1},
        )
        if len(self._counts) > MAX_TRACKED:
            self.report(force=True)

    def report(self, *, force: bool = False) -> None:
        """Audit the counts of the windows that ended (all of them when ``force``)."""
        now = time.monotonic()
        for kind, seen in list(self._counts.items()):
            if force or now - seen.started >= self.window_s:
                del self._counts[kind]
                self._report(kind, seen)

    def _report(self, kind: Kind, seen: _Count) -> None:
        if not seen.repeats:
            return
        source, tenant, actor, reason = kind
        details: dict[str, Any] = {
            "source": source,
            "count": seen.repeats,
            "repeated": True,
            "window_s": self.window_s,
        }
        self._audit(
            tenant=tenant, actor=actor, action="access.denied", outcome=reason, details=details
        )


def retry_header(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}
