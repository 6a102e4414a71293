"""Prometheus metrics of the cache, with label children resolved once (cheap to record)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from iatros.observability.tally import tally_for

HIT_LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
)


class _EntriesCollector(Collector):
    """``iatros_cache_entries`` read at scrape time, so storing an entry costs nothing extra."""

    def __init__(self, count: Callable[[], int | None]) -> None:
        self._count = count

    def collect(self) -> Iterable[GaugeMetricFamily]:
        value = self._count()
        if value is not None:
            yield GaugeMetricFamily(
                "iatros_cache_entries", "Entries held by the in-process cache backend", value
            )


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.tally = tally_for(registry)
        """Hits, misses, savings and hit latency go through it (the per-request ones)."""
        lookups = Counter(
            "iatros_cache_lookups",
            "Cache lookups by kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.exact_hit = lookups.labels("exact", "hit")
        self.exact_miss = lookups.labels("exact", "miss")
        self.semantic_hit = lookups.labels("semantic", "hit")
        self.semantic_miss = lookups.labels("semantic", "miss")
        self.errors = Counter(
            "iatros_cache_errors",
            "Cache backend failures (the request went on uncached)",
            ["backend", "op"],
            registry=registry,
        )
        self.decode_errors = Counter(
            "iatros_cache_decode_errors",
            "Cache entries that failed to decode (dropped, never served)",
            registry=registry,
        )
        tokens = Counter(
            "iatros_cache_tokens_saved",
            "Prompt and completion tokens not spent thanks to cache hits",
            ["kind"],
            registry=registry,
        )
        self.tokens_saved = {"exact": tokens.labels("exact"), "semantic": tokens.labels("semantic")}
        cost = Counter(
            "iatros_cache_cost_saved",
            "Cost not spent thanks to cache hits (deployment prices per 1k tokens)",
            ["kind"],
            registry=registry,
        )
        self.cost_saved = {"exact": cost.labels("exact"), "semantic": cost.labels("semantic")}
        latency = Histogram(
            "iatros_cache_hit_latency_seconds",
            "Time to serve a cache hit, from lookup start",
            ["kind"],
            buckets=HIT_LATENCY_BUCKETS,
            registry=registry,
        )
        self.hit_latency = {
            "exact": latency.labels("exact"),
            "semantic": latency.labels("semantic"),
        }
        refusals = Counter(
            "iatros_cache_guard_refusals",
            "Semantic candidates refused by the clinical guard, by first differing detail",
            ["detail"],
            registry=registry,
        )
        self.guard_refusals = refusals
        stores = Counter(
            "iatros_cache_stores",
            "Store attempts by outcome (stored, or why not)",
            ["outcome"],
            registry=registry,
        )
        self.stores = stores
        self.invalidated = Counter(
            "iatros_cache_invalidated",
            "Entries dropped by invalidation",
            registry=registry,
        )

    def watch_entries(self, count: Callable[[], int | None]) -> None:
        self.registry.register(_EntriesCollector(count))
