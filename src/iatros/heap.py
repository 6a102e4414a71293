"""Keep the garbage collector's full passes short on a long-running server.

CPython's cyclic collector now and then walks every object it tracks (a "generation 2"
collection), with the event loop stopped. A started gateway holds about 150,000 such
objects (modules, classes, settings, routes, clients); walking them took 80-110 ms on
the 2-core bench machine, every few seconds under load. Requests waited that long, and
Redis lookups ran past their budget and became paid model calls.

``gc.freeze()`` moves every object alive at that moment out of the collector's reach:
full passes then walk only what was made since (about 2 ms measured). What is frozen
lives as long as the process anyway; a collection first drops start-up garbage. At
shutdown :func:`thaw` hands the objects back to the collector (a process that starts
and stops several apps, such as a test run, then frees their cycles).

The young generation is collected less often (:func:`tune`): hundreds of in-flight
requests kept its default threshold crossed all the time.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("iatros.heap")

YOUNG_THRESHOLD = 10_000
"""Net allocations of tracked objects between young-generation collections (CPython: 700).

With hundreds of requests in flight, their live objects alone pass 700: the collector
then ran ~400 times a second, and what survived (in-flight requests' objects) moved up
and triggered 10 ms full passes. Paced at 3,000 Redis hits/s from 500 clients, side by
side in 3 runs: p99 203/368/192 ms -> 37/17/15 ms; GC time per 10 s cell 1.1 s -> 0.6 s
at capacity. A young pass now walks at most ~10,000 objects (about 3 ms)."""
_thresholds: list[tuple[int, int, int]] = []

pauses: deque[tuple[int, float]] = deque(maxlen=4096)
"""(generation, seconds) of recent collections, drained into ``/metrics`` by the gateway.

The collector's callback only appends here: it may run while any lock is held (a
collection starts on any allocation), so it must not take one, as metrics do."""
_started: list[float] = [0.0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        pauses.append((info["generation"], time.perf_counter() - _started[0]))


def watch() -> None:
    """Time every collection of this process from now on (idempotent)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def tune() -> None:
    """Collect the young generation less often (:data:`YOUNG_THRESHOLD`) until :func:`thaw`."""
    current = gc.get_threshold()
    if not _thresholds:
        _thresholds.append(current)
    gc.set_threshold(YOUNG_THRESHOLD, current[1], current[2])


def freeze(reason: str) -> int:
    """Collect, then freeze everything alive; returns how many objects are frozen."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "heap frozen",
        extra={
            "reason": reason,
            "objects": frozen,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return frozen


def thaw() -> None:
    """Give the frozen objects back to the collector and restore its thresholds (stopping)."""
    gc.unfreeze()
    if _thresholds:
        gc.set_threshold(*_thresholds.pop())
