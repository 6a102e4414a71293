"""Live signals per deployment, route and tenant, watched by the anomaly detectors.

The monitor is a sink of the gateway (it sees every finished request, as the usage
records do) and adds up, for each evaluation interval (``alerts.interval_s``):

- per **deployment**: provider attempts and their failures (the attempt error rate: a
  30 % failing upstream shows as 30 % here even when retries hide it from clients),
  latency p95, time-to-first-token p95, and its circuit breaker's state;
- per **route** (the model clients ask for): cache hit ratio, escalation rate and
  verification-failure rate (``flagged``/``withheld`` grounded answers);
- per **tenant**: cost per hour and tokens per interval.

Every series has its own :class:`~iatros.observability.anomaly.Detector`; breaches become
warnings. Two conditions are critical whatever the baseline: an attempt error rate at or
over ``alerts.error_rate_critical`` (two intervals in a row, with at least 5 attempts), and
an open breaker. :class:`~iatros.observability.alerts.Alerting` does the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iatros.observability.alerts import Alerting, Finding, Notifier, Severity, fingerprint
from iatros.observability.anomaly import Detector, DetectorSettings, Verdict

log = logging.getLogger("iatros.alerts")
MIN_ATTEMPTS = 5
"""Fewer attempts than this in an interval say nothing about an error rate."""
MIN_FAILURES = 3
"""... nor fewer failures than this (a critical rate needs them within one interval)."""
RATIO_WINDOW = 6
"""Intervals summed for the ratio signals (error, cache hit, escalation rates)."""


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    scope_kind: str
    detector: DetectorSettings
    unit: str = ""
    summary: str = ""


SIGNALS = {
    "error_rate": Signal("error_rate", "deployment", DetectorSettings(min_delta=0.05, floor=0.01)),
    "latency_p95": Signal(
        "latency_p95", "deployment", DetectorSettings(min_delta=0.25, floor=0.01), "s"
    ),
    "ttft_p95": Signal("ttft_p95", "deployment", DetectorSettings(min_delta=0.25, floor=0.01), "s"),
    "cache_hit_ratio": Signal(
        "cache_hit_ratio", "route", DetectorSettings(min_delta=0.2, floor=0.02, direction="down")
    ),
    "escalation_rate": Signal(
        "escalation_rate", "route", DetectorSettings(min_delta=0.15, floor=0.02)
    ),
    "verification_failure_rate": Signal(
        "verification_failure_rate", "route", DetectorSettings(min_delta=0.15, floor=0.02)
    ),
    "cost_per_hour": Signal(
        "cost_per_hour", "tenant", DetectorSettings(min_delta=1.0, floor=0.05), "EUR/h"
    ),
    "tokens": Signal("tokens", "tenant", DetectorSettings(min_delta=5000, floor=100)),
}


@dataclass(slots=True)
class _Deployment:
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Route:
    requests: int = 0
    cacheable: int = 0
    hits: int = 0
    escalated: int = 0
    grounded: int = 0
    failed_checks: int = 0


@dataclass(slots=True)
class _Tenant:
    cost: float = 0.0
    tokens: int = 0


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


class Monitor:
    """Aggregates what the gateway served and evaluates the detectors every interval."""

    def __init__(self, settings: Any, gateway: Any, *, clock: Callable[[], float] = time.time):
        self.settings = settings.alerts
        self.gateway = gateway
        self.prices = {
            name: (dep.price_per_1k_input, dep.price_per_1k_output)
            for name, dep in settings.deployments.items()
        }
        routes = settings.models

        def serves(route: str) -> list[str]:
            config = routes.get(route)
            return [] if config is None else [*config.deployments, *config.fallbacks]

        self.alerting = Alerting(self.settings, Notifier(self.settings), clock, serves)
        self.clock = clock
        self.detectors: dict[tuple[str, str], Detector] = {}
        self._hard: dict[tuple[str, str], int] = {}
        self._deployments: dict[str, _Deployment] = {}
        self._routes: dict[str, _Route] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._failures_seen: dict[str, float] = {}
        self._windows: dict[tuple[str, str], deque[tuple[float, ...]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.evaluations = 0
        self._reported: dict[str, Finding] = {}
        self._unreported: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()  # report/clear come from worker threads

    # -- the request path (a gateway sink) -------------------------------------

    def observe(self, ctx: Any) -> None:
        if ctx.endpoint != "chat":
            return
        cached = ctx.cache.startswith("hit")
        if ctx.deployment and not cached and ctx.status < 500:
            dep = self._deployments.get(ctx.deployment)
            if dep is None:
                dep = self._deployments[ctx.deployment] = _Deployment()
            dep.ok += 1
            if ctx.status < 400:
                dep.latencies.append(ctx.upstream_s)
                if ctx.ttft_s is not None:
                    dep.ttfts.append(ctx.ttft_s)
        route = self._routes.get(ctx.model)
        if route is None:
            route = self._routes[ctx.model] = _Route()
        route.requests += 1
        if ctx.cache != "bypass":
            route.cacheable += 1
            route.hits += cached
        grounding = getattr(ctx, "grounding", "")
        escalated = grounding == "escalated" or ctx.route.endswith("; escalate")
        if escalated or grounding:
            route.grounded += 1
            route.escalated += escalated
            route.failed_checks += grounding in ("flagged", "withheld")
        tenant = self._tenants.get(ctx.principal.tenant)
        if tenant is None:
            tenant = self._tenants[ctx.principal.tenant] = _Tenant()
        usage = ctx.usage
        tenant.tokens += usage.prompt_tokens + usage.completion_tokens
        if not cached:
            price_in, price_out = self.prices.get(ctx.deployment, (0.0, 0.0))
            tenant.cost += (
                usage.prompt_tokens * price_in + usage.completion_tokens * price_out
            ) / 1000

    # -- events from elsewhere --------------------------------------------------

    def report(self, finding: Finding) -> None:
        """An incident another part raises (a canary rolled back): it fires from the next
        evaluation on, like a detector's finding, until :meth:`clear`. Thread-safe."""
        with self._lock:
            self._reported[fingerprint(finding.name, finding.labels)] = finding

    def clear(self, name: str, labels: dict[str, str]) -> None:
        """The reported incident is over: resolved at the next evaluation."""
        with self._lock:
            if self._reported.pop(fingerprint(name, labels), None) is not None:
                self._unreported.append((name, dict(labels)))

    # -- evaluation -------------------------------------------------------------

    async def start(self) -> None:
        self.gateway.sinks.append(self.observe)
        self._failures_seen = self._failures()
        self._task = asyncio.create_task(self._run(), name="iatros-alerts")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(ValueError):
            self.gateway.sinks.remove(self.observe)
        await self.alerting.notifier.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                self.evaluate()
            except Exception:  # an evaluation bug must not stop the next ones
                log.exception("alert evaluation failed")

    def _failures(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for family in self.gateway.metrics.failures.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    dep = sample.labels["deployment"]
                    totals[dep] = totals.get(dep, 0.0) + sample.value
        return totals

    def _series(self, signal: str, scope: str) -> Detector:
        key = (signal, scope)
        detector = self.detectors.get(key)
        if detector is None:
            settings = dataclasses.replace(
                SIGNALS[signal].detector,
                warmup=self.settings.warmup_samples,
                clear=self.settings.resolve_after,
            )
            detector = self.detectors[key] = Detector(settings)
        return detector

    def evaluate(self) -> None:
        """One interval: compute each series' value, update its detector, fold in alerts."""
        self.evaluations += 1
        interval = self.settings.interval_s
        failures = self._failures()
        values: list[tuple[str, str, float, int | None]] = []
        attempts: dict[str, tuple[int, float]] = {}
        for name in set(self._deployments) | set(failures):
            dep = self._deployments.get(name, _Deployment())
            failed = failures.get(name, 0.0) - self._failures_seen.get(name, 0.0)
            total = dep.ok + failed
            attempts[name] = (int(total), failed)
            counts = self._windowed(("deployment", name), (total, failed))
            if counts[0] >= MIN_ATTEMPTS:
                values.append(("error_rate", name, counts[1] / counts[0], int(counts[0])))
            for signal, samples in (("latency_p95", dep.latencies), ("ttft_p95", dep.ttfts)):
                value = p95(samples)
                if value is not None and len(samples) >= MIN_ATTEMPTS:
                    values.append((signal, name, value, None))
        self._failures_seen = failures
        for name, route in self._routes.items():
            cacheable, hits, grounded, escalated, failed_checks = self._windowed(
                ("route", name),
                (route.cacheable, route.hits, route.grounded, route.escalated, route.failed_checks),
            )
            if cacheable >= MIN_ATTEMPTS:
                values.append(("cache_hit_ratio", name, hits / cacheable, int(cacheable)))
            if grounded >= MIN_ATTEMPTS:
                values.append(("escalation_rate", name, escalated / grounded, int(grounded)))
                values.append(
                    ("verification_failure_rate", name, failed_checks / grounded, int(grounded))
                )
        for name, tenant in self._tenants.items():
            values.append(("cost_per_hour", name, tenant.cost * 3600 / interval, None))
            values.append(("tokens", name, float(tenant.tokens), None))
        self._deployments, self._routes, self._tenants = {}, {}, {}
        firing: list[Finding] = []
        cleared: list[tuple[str, dict[str, str]]] = []
        now = self.clock()
        for signal, scope, value, count in values:
            verdict = self._series(signal, scope).update(value, count, now)
            labels = self._labels(signal, scope)
            if verdict.firing:
                firing.append(self._anomaly(signal, scope, labels, verdict))
            elif verdict.changed:
                cleared.append((signal, labels))
        self._hard_rules(attempts, firing, cleared)
        with self._lock:
            firing.extend(self._reported.values())
            cleared.extend(self._unreported)
            self._unreported = []
        self.alerting.evaluate(firing, cleared)

    def _windowed(self, key: tuple[str, str], counts: tuple[float, ...]) -> tuple[float, ...]:
        """Sums over the last ``RATIO_WINDOW`` intervals: a rate from a handful of requests
        is noise (one failure in five is 20 %), so ratios are judged on a minute or so."""
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = deque(maxlen=RATIO_WINDOW)
        window.append(counts)
        return tuple(sum(column) for column in zip(*window, strict=True))

    def _labels(self, signal: str, scope: str) -> dict[str, str]:
        kind = SIGNALS[signal].scope_kind if signal in SIGNALS else "deployment"
        labels = {"scope_kind": kind, "scope": scope, kind: scope}
        return labels

    def _anomaly(
        self, signal: str, scope: str, labels: dict[str, str], verdict: Verdict
    ) -> Finding:
        spec = SIGNALS[signal]
        word = "under" if spec.detector.direction == "down" else "over"
        return Finding(
            signal,
            "warning",
            labels,
            f"{signal} of {spec.scope_kind} {scope} is {verdict.value:.3g}{spec.unit}, {word} its "
            f"band ({verdict.upper:.3g}; baseline {verdict.baseline:.3g})",
            verdict.value,
            verdict.baseline,
            verdict.upper,
        )

    def _hard_rules(
        self,
        attempts: dict[str, tuple[int, float]],
        firing: list[Finding],
        cleared: list[tuple[str, dict[str, str]]],
    ) -> None:
        """Critical whatever the baseline: a failing deployment, an open breaker."""
        limit = self.settings.error_rate_critical
        health = self.gateway.router.health
        names = set(attempts) | {n for n, h in health.items() if h.current_state().value == "open"}
        names |= {scope for (rule, scope) in self._hard}
        for name in names:
            total, failed = attempts.get(name, (0, 0.0))
            rate = failed / total if total else 0.0
            breaching = total >= MIN_ATTEMPTS and failed >= MIN_FAILURES and rate >= limit
            summary = (
                f"deployment {name}: {rate:.0%} of {total} attempts failed "
                f"(critical at {limit:.0%})"
            )
            self._rule(
                "deployment_failing", name, breaching, firing, cleared, "critical", summary, rate,
                limit,
            )  # fmt: skip
            state = health[name].current_state().value if name in health else "closed"
            summary = f"deployment {name}: circuit breaker open"
            self._rule(
                "breaker_open", name, state == "open", firing, cleared, "critical", summary, 1.0,
                None, confirm=1,
            )  # fmt: skip

    def _rule(
        self,
        rule: str,
        scope: str,
        breaching: bool,
        firing: list[Finding],
        cleared: list[tuple[str, dict[str, str]]],
        severity: Severity,
        summary: str,
        value: float,
        threshold: float | None,
        confirm: int = 2,
    ) -> None:
        key = (rule, scope)
        run = self._hard.get(key, 0)
        labels = self._labels(rule, scope)
        was_firing = run >= confirm or run < 0
        if breaching:
            run = max(run, 0) + 1
            self._hard[key] = run
            if run >= confirm:
                firing.append(Finding(rule, severity, labels, summary, value, None, threshold))
            return
        if not was_firing:
            self._hard.pop(key, None)
            return
        # hysteresis: resolve after alerts.resolve_after normal intervals (counted negative)
        run = (run if run < 0 else 0) - 1
        if -run >= self.settings.resolve_after:
            self._hard.pop(key, None)
            cleared.append((rule, labels))
        else:
            self._hard[key] = run
            firing.append(Finding(rule, severity, labels, summary, value, None, threshold))
