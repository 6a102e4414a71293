"""The metric tally publishes exactly what direct prometheus_client updates would."""

from __future__ import annotations

import math
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

from iatros.observability.tally import Tally, tally_for

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 30.0, -1.0]


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_folded_histogram_and_counter_equal_direct_updates() -> None:
    direct, tallied = _pair()
    tally = tally_for(tallied)
    hist_d = Histogram("lat", "d", ["k"], buckets=BUCKETS, registry=direct).labels("a")
    hist_t = Histogram("lat", "d", ["k"], buckets=BUCKETS, registry=tallied).labels("a")
    count_d = Counter("req", "d", ["k"], registry=direct).labels("a")
    count_t = Counter("req", "d", ["k"], registry=tallied).labels("a")
    for value in VALUES:
        hist_d.observe(value)
        tally.observe(hist_t, value)
        count_d.inc(value + 2)
        tally.inc(count_t, value + 2)
    assert _samples(tallied) == _samples(direct)
    # more after a fold: only the difference is published, never twice
    for value in VALUES[:5]:
        hist_d.observe(value)
        tally.observe(hist_t, value)
        count_d.inc()
        tally.inc(count_t)
    tally.fold()
    tally.fold()
    assert _samples(tallied) == _samples(direct)


def test_non_finite_observations_keep_prometheus_semantics() -> None:
    direct, tallied = _pair()
    tally = tally_for(tallied)
    hist_d = Histogram("lat", "d", buckets=BUCKETS, registry=direct)
    hist_t = Histogram("lat", "d", buckets=BUCKETS, registry=tallied)
    for value in (0.5, math.inf, 0.002):
        hist_d.observe(value)
        tally.observe(hist_t, value)
    assert _samples(tallied) == _samples(direct)
    tally.observe(hist_t, math.nan)
    samples = _samples(tallied)
    assert math.isnan(samples[("lat_sum", ())])
    assert samples[("lat_count", ())] == 3


def test_nothing_is_published_before_a_fold_and_reads_fold_first() -> None:
    registry = CollectorRegistry()
    tally = tally_for(registry)
    counter = Counter("req", "d", registry=registry)
    tally.inc(counter, 3)
    assert counter._value.get() == 0  # the hot path did not touch the child
    assert registry.get_sample_value("req_total") == 3  # a read of the registry folds
    assert tally_for(registry) is tally


def test_a_fold_from_another_thread_loses_nothing() -> None:
    registry = CollectorRegistry()
    tally = tally_for(registry)
    counter = Counter("req", "d", registry=registry)
    hist = Histogram("lat", "d", buckets=BUCKETS, registry=registry)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            tally.fold()

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for i in range(50_000):
            tally.inc(counter)
            tally.observe(hist, (i % 7) / 100)
    finally:
        stop.set()
        reader.join()
    assert registry.get_sample_value("req_total") == 50_000
    assert registry.get_sample_value("lat_count") == 50_000
    assert registry.get_sample_value("lat_bucket", {"le": "+Inf"}) == 50_000


def test_direct_mode_updates_the_children_at_once() -> None:
    registry = CollectorRegistry()
    tally = Tally(direct=True)
    counter = Counter("req", "d", registry=registry)
    hist = Histogram("lat", "d", buckets=BUCKETS, registry=registry)
    tally.inc(counter, 2)
    tally.observe(hist, 0.05)
    assert counter._value.get() == 2
    assert registry.get_sample_value("lat_bucket", {"le": "0.1"}) == 1
