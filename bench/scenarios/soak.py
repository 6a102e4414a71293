"""Soak: Iatros (one worker) under a steady mixed load for 10 minutes; does its memory grow?

The mix, paced to ``soak_rate_per_s`` in all: 60 % pass-through chat (a fresh word each,
so a cache miss that is then stored), 25 % streams (likewise), 15 % exact-cache hits.
The response cache is bounded to 1 MiB so that it is full (and evicting) before the
measured window opens: what remains is growth that nothing bounds, i.e. a leak. Memory
is the RSS of the server process tree, sampled every ``soak_sample_s``; start = when the
measured window opens (after the warm-up), end = when it closes.

The soak leaves most of the two cores idle, so ``start_ahead_s`` before its end it lets
the suite start the servers that are slow to start (LiteLLM: ``Processes.ahead``); the
CPU they use shows as *others* in the soak's figures.
"""

from __future__ import annotations

import asyncio
import math
import os
import urllib.request
from typing import Any

from loadgen import LoadSpec, run_load
from procs import (
    CpuMeter,
    Hooks,
    MemorySampler,
    Processes,
    mib,
    start_fake_upstream,
    start_iatros,
    tree_memory,
    wait_settled,
)
from scenarios.passthrough import MODEL, UNIQUE, iatros_config, request_body
from settings import ADMIN_KEY, UPSTREAM_DELAY_MS, BenchSettings

CACHE_BYTES = 1024 * 1024
"""The smallest bound Iatros accepts: full after ~700 misses, well within the warm-up."""
MIX = (("chat", 0.60), ("chat-stream", 0.25), ("cache-exact", 0.15))
LATENCY_S = UPSTREAM_DELAY_MS / 1000 + 0.01


def _specs(settings: BenchSettings, url: str) -> dict[str, LoadSpec]:
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    specs = {}
    for name, share in MIX:
        rate = settings.soak_rate_per_s * share
        cached = name == "cache-exact"
        specs[name] = LoadSpec(
            url=url,
            body=request_body(MODEL, name == "chat-stream", cached=cached),
            concurrency=math.ceil(rate * LATENCY_S * 3) + 2,  # in flight: rate x latency
            duration_s=settings.soak_s,
            warmup_s=settings.soak_warmup_s,
            stream=name == "chat-stream",
            headers=headers,
            unique_marker=None if cached else UNIQUE,
            rate_per_s=rate,
        )
    return specs


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    try:
        config = iatros_config(upstream)
        config["cache"] = {"enabled": True, "backend": "memory", "max_memory_bytes": CACHE_BYTES}
        server = start_iatros(procs, "iatros-soak", config, ADMIN_KEY)
        try:
            await asyncio.to_thread(wait_settled, server.pid)
            idle = tree_memory(server.pid)
            specs = _specs(settings, f"{server.url}/v1/chat/completions")
            pids = {"loadgen": os.getpid(), "server": server.pid, "upstream": upstream.pid}
            meter = CpuMeter(pids)
            memory = MemorySampler(
                {"server": server.pid}, interval_s=settings.soak_sample_s, keep_series=True
            )
            await asyncio.to_thread(settings.quiet.wait)
            hooked = "chat"
            total_s = settings.soak_warmup_s + settings.soak_s
            ahead = asyncio.create_task(_start_ahead(procs, total_s - settings.start_ahead_s))
            entries_start = asyncio.create_task(_entries_after(server.url, settings.soak_warmup_s))
            try:
                results = await asyncio.gather(
                    *(
                        run_load(spec, Hooks(meter, memory) if name == hooked else None)
                        for name, spec in specs.items()
                    )
                )
            finally:
                ahead.cancel()
            end = tree_memory(server.pid)
            entries = [await entries_start, await asyncio.to_thread(cache_entries, server.url)]
        finally:
            procs.stop(server)
    finally:
        procs.stop(upstream)
    summaries = {name: r.summary() for name, r in zip(specs, results, strict=True)}
    mem = memory.result["server"]
    start_rss = float(mem["start_rss_mib"])  # type: ignore[arg-type]
    end_rss = float(mem["end_rss_mib"])  # type: ignore[arg-type]
    growth = round(100 * (end_rss - start_rss) / start_rss, 2) if start_rss else math.nan
    errors = sum(s["errors"] + s["warmup_errors"] for s in summaries.values())
    result = {
        "duration_s": settings.soak_s,
        "warmup_s": settings.soak_warmup_s,
        "rate_per_s": settings.soak_rate_per_s,
        "mix": dict(MIX),
        "cache_max_memory_bytes": CACHE_BYTES,
        "cache_entries_start_end": entries,
        "idle_rss_mib": mib(idle["rss_bytes"]),
        "start_rss_mib": start_rss,
        "end_rss_mib": end_rss,
        "peak_rss_mib": mem["peak_rss_mib"],
        "start_pss_mib": mem["start_pss_mib"],
        "end_pss_mib": mem["end_pss_mib"],
        "after_rss_mib": mib(end["rss_bytes"]),
        "growth_pct": growth,
        "rss_series": mem.get("series"),
        "errors": errors,
        "completed": sum(s["completed"] for s in summaries.values()),
        "rps": round(sum(s["rps"] for s in summaries.values()), 1),
        "cpu_pct": meter.shares,
        "streams": {
            name: {
                k: s[k]
                for k in (
                    "concurrency",
                    "completed",
                    "errors",
                    "warmup_errors",
                    "error_kinds",
                    "rps",
                    "latency_ms",
                    "overhead_ms",
                    "ttfb_ms",
                    "cache_outcomes",
                )
            }
            for name, s in summaries.items()
        },
        "command": server.command,
        "config": config,
    }
    print(
        f"  soak {settings.soak_s:g} s at {result['rps']} req/s: rss {start_rss} -> {end_rss} MiB "
        f"({growth:+.2f} %), peak {mem['peak_rss_mib']} MiB, errors {errors}, "
        f"cpu {meter.shares}",
        flush=True,
    )
    return result


def cache_entries(url: str) -> int | None:
    """``iatros_cache_entries`` from /metrics: constant once the cache is at its bound."""
    request = urllib.request.Request(
        url + "/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("iatros_cache_entries "):
                    return int(float(line.split()[1]))
    except (OSError, ValueError):
        return None
    return None


async def _entries_after(url: str, delay_s: float) -> int | None:
    await asyncio.sleep(delay_s)
    return await asyncio.to_thread(cache_entries, url)


async def _start_ahead(procs: Processes, after_s: float) -> None:
    await asyncio.sleep(max(after_s, 0.0))
    procs.start_ahead()
