"""A closed-loop HTTP load generator for loopback benchmarks.

It sends with Iatros's own HTTP/1.1 client (``iatros.providers.http``, built on
httptools), not aiohttp: on the same box as the server, every millisecond of CPU the
generator spends is taken from the server under test. Measured side by side against
the fake upstream at 500 clients, aiohttp spent about 0.15 ms of CPU per request and
this client 0.04 ms (0.15 and 0.07 ms on exact-cache hits through Iatros).

N clients each keep one keep-alive connection and send the next request as soon
as the previous one has been answered, for a warm-up and then a fixed measured
window. Per request it records the start, total latency, status, errors, the
``x-iatros-overhead-ms`` header when present and, for streams, the time to the
first body bytes. Only requests *started* inside the measured window count for
latency (paced: those whose slot fell inside it, even if sent late); only requests
*finished* inside it count for throughput.

Paced runs (``rate_per_s``) also report the latency from each request's *intended*
send time (its slot in the schedule), as wrk2 does: a request that went out late,
because every client was busy or the generator itself ran late, is charged for the
wait (no coordinated omission).

The generator also watches its own event loop (a 10 ms ticker) and reports how late it
ran during the window (``generator_lag_ms``): a late generator reads answers late, and
without that figure a stall of the client would be charged to the server.

Python's cyclic garbage collector is off while any run goes on (runs may overlap, as
in the soak), with a collection before and after: a full collection in the generator,
with tens of thousands of samples alive, paused it for 40-100 ms, and the server was
then charged for the burst of late requests. The generator makes almost no cyclic
garbage (about 1,000 objects in 30,000 requests), so memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from iatros.providers.http import HttpClient, HttpError

OVERHEAD_HEADER = "x-iatros-overhead-ms"
CACHE_HEADER = "x-iatros-cache"
_DONE = b"data: [DONE]"
_ERROR_EVENT = b'data: {"error"'


@dataclass(frozen=True)
class LoadSpec:
    """What to send, how many clients and for how long."""

    url: str
    body: bytes
    concurrency: int
    duration_s: float
    warmup_s: float = 2.0
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    unique_marker: bytes | None = None
    """Replaced in ``body`` by a fresh token per request, so that no answer is cached."""
    bodies: tuple[bytes, ...] = ()
    """When set, requests cycle through these bodies instead of ``body`` (paraphrases)."""
    rate_per_s: float | None = None
    """Pace the clients to this many requests per second in all (a soak's steady rate);
    the clients still bound how many are in flight."""
    grace_s: float | None = None
    """After the window closes, wait at most this long for the requests in flight; the
    rest are abandoned and reported as *unfinished*, their age counting as their latency
    (the percentiles are then lower bounds). None: wait for all, up to ``timeout_s``.
    A saturated server with 1,000 clients queued would otherwise hold the run for as
    long as it takes to drain them."""

    def __post_init__(self) -> None:
        host = urlsplit(self.url).hostname
        if host != "127.0.0.1":  # a benchmark must never load someone else's server
            raise ValueError(f"the load generator only targets 127.0.0.1, not {host!r}")
        if not 0 < self.duration_s <= 600 or not 0 <= self.warmup_s <= 60:
            raise ValueError("durations must be bounded (0 < duration <= 600 s, warm-up <= 60 s)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.rate_per_s is not None and not 0 < self.rate_per_s <= 50_000:
            raise ValueError("rate_per_s must be in (0, 50000]")


class WindowHook(Protocol):
    """Told when the measured window opens and closes (e.g. to read CPU counters)."""

    def start(self) -> None: ...

    def stop(self) -> object: ...


@dataclass(slots=True)
class Sample:
    start: float
    latency_s: float
    status: int
    ok: bool
    overhead_ms: float | None = None
    ttfb_s: float | None = None
    error: str | None = None
    cache: str | None = None
    unfinished: bool = False
    late_s: float = 0.0
    """How long after its slot in a paced schedule the request went out (0 unpaced)."""


_tokens = itertools.count(int(time.time() * 1000) % 10**9)


def unique_token() -> bytes:
    """Letters only (digits could look like a patient identifier to a cache classifier)."""
    n = next(_tokens)
    letters = bytearray()
    while True:
        n, r = divmod(n, 26)
        letters.append(97 + r)
        if not n:
            return bytes(letters)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def distribution(values: Sequence[float], scale: float = 1.0) -> dict[str, float]:
    """p50/p95/p99/mean/max of ``values`` times ``scale`` (rounded for the report)."""
    ordered = sorted(v * scale for v in values)
    if not ordered:
        return {
            "p50": math.nan,
            "p95": math.nan,
            "p99": math.nan,
            "mean": math.nan,
            "max": math.nan,
        }
    return {
        "p50": round(percentile(ordered, 50), 3),
        "p95": round(percentile(ordered, 95), 3),
        "p99": round(percentile(ordered, 99), 3),
        "mean": round(sum(ordered) / len(ordered), 3),
        "max": round(ordered[-1], 3),
    }


def histogram(values: Sequence[float], scale: float = 1.0) -> dict[str, int]:
    """Log-spaced buckets (upper bounds, in the scaled unit): the raw shape, kept small."""
    bounds = [b * m for b in (0.1, 1.0, 10.0, 100.0, 1000.0) for m in (1, 2, 5)]
    counts = dict.fromkeys(bounds, 0)
    over = 0
    for raw in values:
        v = raw * scale
        for b in bounds:
            if v <= b:
                counts[b] += 1
                break
        else:
            over += 1
    out = {f"<={b:g}": c for b, c in counts.items() if c}
    if over:
        out[f">{bounds[-1]:g}"] = over
    return out


@dataclass
class LoadResult:
    spec: LoadSpec
    samples: list[Sample]
    warmup_errors: int
    window_start: float
    window_end: float
    error_kinds: dict[str, int]
    lags: list[tuple[float, float]] = field(default_factory=list)
    """(when, how late) of each tick of the generator's own loop-lag ticker."""

    def measured(self) -> list[Sample]:
        """Requests due in the window: sent in it, or (paced) whose slot fell in it."""
        return [
            s for s in self.samples if self.window_start <= s.start - s.late_s < self.window_end
        ]

    def summary(self) -> dict[str, Any]:
        """The figures the report shows, plus small histograms as the raw shape."""
        measured = self.measured()
        ok = [s for s in measured if s.ok]
        unfinished = [s for s in measured if s.unfinished]
        errors = len(measured) - len(ok) - len(unfinished)
        scope = "window"
        if not ok and not unfinished:
            # A saturated server with many clients may answer nothing that was sent inside
            # a short window (its first wave comes later): then every answer of the cell.
            ok = [s for s in self.samples if s.ok]
            scope = "cell"
        finished = sum(
            1
            for s in self.samples
            if s.ok and self.window_start <= s.start + s.latency_s < self.window_end
        )
        window = self.window_end - self.window_start
        # Throughput over the whole cell, from the first request sent to the last answer:
        # a saturated server that shares its CPU between all queued requests answers them
        # in waves (1,000 clients: one wave every several seconds), so a short window
        # could catch 0 or 2 waves; the whole cell always holds complete waves.
        answered = [s for s in self.samples if s.ok]
        span = (
            max(s.start + s.latency_s for s in answered) - min(s.start for s in self.samples)
            if answered
            else 0.0
        )
        overheads = [s.overhead_ms for s in ok if s.overhead_ms is not None]
        ttfbs = [s.ttfb_s for s in ok if s.ttfb_s is not None]
        cache: dict[str, int] = {}
        for s in ok:
            if s.cache is not None:
                cache[s.cache] = cache.get(s.cache, 0) + 1
        latencies = [s.latency_s for s in ok] + [s.latency_s for s in unfinished]
        from_slot = [s.latency_s + s.late_s for s in ok] + [
            s.latency_s + s.late_s for s in unfinished
        ]
        return {
            "concurrency": self.spec.concurrency,
            "duration_s": round(window, 3),
            "warmup_s": self.spec.warmup_s,
            "stream": self.spec.stream,
            "started": len(measured),
            "completed": len(ok),
            "errors": errors,
            "unfinished": len(unfinished),
            "unfinished_total": sum(1 for s in self.samples if s.unfinished),
            "latency_lower_bound": bool(unfinished),
            "latency_scope": scope,
            "warmup_errors": self.warmup_errors,
            "error_kinds": self.error_kinds,
            "rps": round(len(answered) / span, 1) if span > 0 else 0.0,
            "rps_window": round(finished / window, 1) if window > 0 else math.nan,
            "cell_s": round(span, 2),
            "latency_ms": distribution(latencies, 1000),
            "latency_from_schedule_ms": (
                distribution(from_slot, 1000) if self.spec.rate_per_s is not None else None
            ),
            "overhead_ms": distribution(overheads) if overheads else None,
            "ttfb_ms": distribution(ttfbs, 1000) if ttfbs else None,
            "cache_outcomes": cache,
            "latency_hist_ms": histogram(latencies, 1000),
            "generator_lag_ms": distribution(
                [late for when, late in self.lags if self.window_start <= when < self.window_end],
                1000,
            ),
            "overhead_hist_ms": histogram(overheads) if overheads else None,
        }


async def _one(
    client: HttpClient, target: str, spec: LoadSpec, body: bytes, start: float
) -> Sample:
    if spec.unique_marker is not None:
        body = body.replace(spec.unique_marker, unique_token())
    ttfb: float | None = None
    try:
        async with client.stream("POST", target, body) as resp:
            overhead_raw = resp.headers.get(OVERHEAD_HEADER)
            cache = resp.headers.get(CACHE_HEADER)
            parts: list[bytes] = []
            async for part in resp.iter_chunks():
                if ttfb is None:
                    ttfb = time.perf_counter() - start
                parts.append(part)
            answer = b"".join(parts)
            if spec.stream:
                ok = resp.status == 200 and _DONE in answer and _ERROR_EVENT not in answer
                error = None if ok else _stream_error(resp.status, answer)
            else:
                ttfb = None
                ok = resp.status == 200 and b'"choices"' in answer
                error = None if ok else f"http {resp.status}"
        latency = time.perf_counter() - start
        overhead = float(overhead_raw) if overhead_raw is not None else None
        return Sample(start, latency, resp.status, ok, overhead, ttfb, error, cache)
    except (HttpError, OSError, TimeoutError, ValueError) as exc:
        return Sample(start, time.perf_counter() - start, 0, False, error=type(exc).__name__)


def _stream_error(status: int, body: bytes) -> str:
    if status != 200:
        return f"http {status}"
    if _ERROR_EVENT in body:
        return "stream error event"
    return "stream ended without [DONE]"


_LAG_TICK_S = 0.01
_gc_holders = 0
_gc_was_enabled = True


def _gc_off() -> None:
    """Collect, then turn the collector off while any run is going on (runs may overlap)."""
    global _gc_holders, _gc_was_enabled
    if _gc_holders == 0:
        _gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
    _gc_holders += 1


def _gc_back() -> None:
    """The last run to end turns the collector back on (if it was) and collects."""
    global _gc_holders
    _gc_holders -= 1
    if _gc_holders == 0 and _gc_was_enabled:
        gc.enable()
        gc.collect()


async def run_load(spec: LoadSpec, hook: WindowHook | None = None) -> LoadResult:
    """Run the closed loop: warm-up, then the measured window; wait for stragglers."""
    parts = urlsplit(spec.url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"content-type": "application/json", **spec.headers}
    # One connection per client, as N real clients would have: a pool shared by all of
    # them hands out its most recently used connection first, so at a paced rate a few
    # hot connections carried nearly every request, all served by whichever worker had
    # accepted them (one worker of two at 79 % CPU, the other at 34 %).
    clients = [
        HttpClient(
            f"{parts.scheme}://{parts.netloc}",
            headers=headers,
            max_connections=1,
            timeout_s=spec.timeout_s,
            idle_timeout_s=max(spec.timeout_s, 60.0),
        )
        for _ in range(spec.concurrency)
    ]
    samples: list[Sample] = []
    t0 = time.perf_counter()
    window_start = t0 + spec.warmup_s
    window_end = window_start + spec.duration_s

    async def window() -> None:
        if hook is None:
            return
        await asyncio.sleep(max(window_start - time.perf_counter(), 0))
        hook.start()
        await asyncio.sleep(max(window_end - time.perf_counter(), 0))
        hook.stop()

    lags: list[tuple[float, float]] = []

    async def watch_lag() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_LAG_TICK_S)
            lags.append((before, time.perf_counter() - before - _LAG_TICK_S))

    bodies = itertools.cycle(spec.bodies or (spec.body,))
    slots = itertools.count()

    async def client_loop(client: HttpClient) -> None:
        while True:
            slot = None
            if spec.rate_per_s is not None:
                slot = t0 + next(slots) / spec.rate_per_s
                if slot >= window_end:
                    break
                delay = slot - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # A slot of the window still goes out if late, and is charged for it.
            elif time.perf_counter() >= window_end:
                break
            start = time.perf_counter()
            late = max(start - slot, 0.0) if slot is not None else 0.0
            try:
                sample = await _one(client, target, spec, next(bodies), start)
            except asyncio.CancelledError:
                age = time.perf_counter() - start
                samples.append(
                    Sample(start, age, 0, False, error="unfinished", unfinished=True, late_s=late)
                )
                raise
            sample.late_s = late
            samples.append(sample)
            if not sample.ok and sample.status == 0:
                await asyncio.sleep(0.01)  # no tight loop against a dead server

    tasks = [asyncio.create_task(client_loop(client)) for client in clients]
    tasks.append(asyncio.create_task(window()))
    watcher = asyncio.create_task(watch_lag())
    wait_s = spec.timeout_s + 5 if spec.grace_s is None else spec.grace_s
    _gc_off()
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), spec.warmup_s + spec.duration_s + wait_s)
    except TimeoutError:
        if spec.grace_s is None:
            raise
    finally:
        watcher.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
        for client in clients:
            await client.close()
        _gc_back()
    warmup_errors = sum(
        1 for s in samples if s.start < window_start and not s.ok and not s.unfinished
    )
    kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok and not s.unfinished:
            key = s.error or f"http {s.status}"
            kinds[key] = kinds.get(key, 0) + 1
    return LoadResult(spec, samples, warmup_errors, window_start, window_end, kinds, lags)
