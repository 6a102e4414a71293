"""Prometheus metrics for the gateway, kept in one registry per application.

Label children are cached so recording a request costs a few dictionary
lookups, not a label-resolution per observation, and the per-request updates go
through a :class:`~iatros.observability.tally.Tally` (plain sums, folded into the
children when the registry is read).

With several worker processes (``server.workers`` > 1) ``iatros serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: every value then lives in
a per-process file, and whichever worker answers a scrape sums them all
(prometheus_client's multiprocess mode). Collectors computed at scrape time
(provider readiness, breaker state, cache entries) come from that worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from iatros.observability.tally import MULTIPROC_ENV, tally_for


class _Merged:
    """Every process's values (multiprocess files) plus this process's scrape-time collectors."""

    def __init__(self, registry: CollectorRegistry, directory: str) -> None:
        self._registry = registry
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        collector = MultiProcessCollector(None, self._directory)  # type: ignore[no-untyped-call]
        shared = list(collector.collect())  # type: ignore[no-untyped-call]
        names = {family.name for family in shared}
        yield from shared
        for family in self._registry.collect():
            if family.name not in names and family.samples:
                yield family


LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)

GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


def journal_quarantine_counter(registry: CollectorRegistry) -> Counter:
    """Usage and audit records the database refused, set aside in the quarantine files.

    Alert on any increase: each one is a request whose record is not in the database
    until an operator repairs and replays it (``<data_dir>/quarantine/<kind>.jsonl``).
    """
    return Counter(
        "iatros_journal_quarantined",
        "Journaled usage or audit records the database refused, set aside in "
        "<data_dir>/quarantine/<kind>.jsonl (alert on any increase)",
        ("kind",),
        registry=registry,
    )


class _ProviderCollector(Collector):
    def __init__(self, readiness: Callable[[], dict[str, bool]]) -> None:
        self._readiness = readiness

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "iatros_provider_ready", "1 when the provider can serve requests", labels=["provider"]
        )
        for name, ready in sorted(self._readiness().items()):
            family.add_metric([name], 1.0 if ready else 0.0)
        yield family


class _DeploymentCollector(Collector):
    """Breaker state and latency estimate of every deployment, read at scrape time."""

    def __init__(self, health: Callable[[], dict[str, Any]]) -> None:
        self._health = health

    def collect(self) -> Iterable[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "iatros_deployment_state",
            "Circuit breaker: 0 closed, 1 half-open, 2 open",
            labels=["deployment"],
        )
        latency = GaugeMetricFamily(
            "iatros_deployment_latency_ewma_seconds",
            "Recent time to first token (EWMA) used by latency routing",
            labels=["deployment"],
        )
        for name, health in sorted(self._health().items()):
            state.add_metric([name], health.current_state().gauge)
            if health.ewma_ttft_s is not None:
                latency.add_metric([name], health.ewma_ttft_s)
        yield state
        yield latency


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = tally_for(self.registry)
        labels = ("endpoint", "model", "status")
        self.requests = Counter(
            "iatros_requests", "Requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "iatros_request_duration_seconds",
            "Total time to answer a request (end of stream for streams)",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "iatros_gateway_overhead_seconds",
            "Time spent in the gateway itself, excluding waiting for the model",
            labels,
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "iatros_time_to_first_token_seconds",
            "Time from request to the first streamed token",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grounded = Counter(
            "iatros_grounded_answers",
            "Answers on knowledge routes by safety outcome (supported, no-details, flagged, "
            "withheld, escalated, reviewed): the clinical-safety rates",
            ("route", "outcome"),
            registry=self.registry,
        )
        self.feedback = Counter(
            "iatros_feedback",
            "Ratings of answers by the logical model (route) that gave them: up or down (a "
            "changed rating counts again); the clinical-safety dashboard's thumbs-up rate",
            ("route", "rating"),
            registry=self.registry,
        )
        self.tokens = Counter(
            "iatros_tokens", "Tokens processed", ("model", "direction"), registry=self.registry
        )
        self.in_flight = Gauge(
            "iatros_requests_in_flight",
            "Requests being served",
            ("endpoint",),
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.loop_lag = Gauge(
            "iatros_event_loop_lag_seconds",
            "How late the event loop runs its timers (recent worst, decaying over ~0.2 s); "
            "the worst worker. Tens of ms means the worker is saturated: add workers or cores",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.requests_shed = Counter(
            "iatros_requests_shed",
            "Chat/embedding requests refused with 429 overloaded because the event loop ran "
            "later than server.shed_lag_ms (load shedding)",
            registry=self.registry,
        )
        self.loop_stalls = Counter(
            "iatros_event_loop_stalls",
            "Times the event loop ran nothing for server.stall_log_ms or more; each is logged "
            '("event loop stalled") with where the loop was stuck',
            registry=self.registry,
        )
        self.gc_pauses = Histogram(
            "iatros_gc_pause_seconds",
            "Garbage collections of the worker processes, by generation: the event loop "
            "serves nothing meanwhile. Full (generation 2) passes stay short because the "
            "start-up heap is frozen",
            ("generation",),
            buckets=GC_BUCKETS,
            registry=self.registry,
        )
        self.failures = Counter(
            "iatros_deployment_failures",
            "Failed calls to a deployment (feeding its circuit breaker)",
            ("deployment", "code"),
            registry=self.registry,
        )
        self.retries = Counter(
            "iatros_retries",
            "Retries on the same deployment",
            ("deployment",),
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "iatros_fallbacks",
            "Requests that moved on from a deployment to the next one",
            ("model", "from_deployment"),
            registry=self.registry,
        )
        self.panics = Counter(
            "iatros_panic_routes",
            "Requests that, every admitted deployment having failed, were sent to deployments "
            "whose circuit breakers refused them (panic routing, the last resort)",
            ("model",),
            registry=self.registry,
        )
        self.probes = Counter(
            "iatros_breaker_probes",
            "Active probes of open breakers' upstreams (a pass half-opens the breaker)",
            ("deployment", "outcome"),
            registry=self.registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        self._series: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def watch_providers(self, readiness: Callable[[], dict[str, bool]]) -> None:
        self.registry.register(_ProviderCollector(readiness))

    def watch_deployments(self, health: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_DeploymentCollector(health))

    def count_failure(self, deployment: str, code: str) -> None:
        self._child(self.failures, deployment, code).inc()

    def count_retry(self, deployment: str) -> None:
        self._child(self.retries, deployment).inc()

    def count_fallback(self, model: str, deployment: str) -> None:
        self._child(self.fallbacks, model, deployment).inc()

    def count_panic(self, model: str) -> None:
        self._child(self.panics, model).inc()

    def count_probe(self, deployment: str, passed: bool) -> None:
        self._child(self.probes, deployment, "pass" if passed else "fail").inc()

    def grounded_answer(self, route: str, outcome: str) -> None:
        self.tally.inc(self._child(self.grounded, route, outcome))

    def count_feedback(self, route: str, rating: str) -> None:
        """A thumbs up or down given on an answer of ``route``."""
        self._child(self.feedback, route or "-", rating).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def in_flight_gauge(self, endpoint: str) -> Any:
        return self._child(self.in_flight, endpoint)

    def record(
        self,
        *,
        endpoint: str,
        model: str,
        status: int,
        total_s: float,
        overhead_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        key = (endpoint, model, status)
        series = self._series.get(key)
        if series is None:
            code = str(status)
            series = self._series[key] = (
                self._child(self.requests, endpoint, model, code),
                self._child(self.latency, endpoint, model, code),
                self._child(self.overhead, endpoint, model, code),
            )
        requests, latency, overhead = series
        tally = self.tally
        tally.inc(requests)
        tally.observe(latency, total_s)
        tally.observe(overhead, max(overhead_s, 0.0))
        if ttft_s is not None:
            tally.observe(self._child(self.ttft, model), ttft_s)
        if prompt_tokens:
            tally.inc(self._child(self.tokens, model, "input"), prompt_tokens)
        if completion_tokens:
            tally.inc(self._child(self.tokens, model, "output"), completion_tokens)

    def render(self) -> bytes:
        directory = os.environ.get(MULTIPROC_ENV)
        if directory:
            return generate_latest(_Merged(self.registry, directory))
        return generate_latest(self.registry)
