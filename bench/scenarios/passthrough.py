"""Gateways side by side: the fake upstream direct, Iatros and LiteLLM, 1 and 2 workers each.

Every gateway sits in front of a fake upstream (same code, same 50 ms) and is driven by
the same load generator, one after another (the machine has two cores: nothing else
runs meanwhile). Each is started fresh, left to settle, its idle memory read, then it
gets every cell, lightest first: pass-through (a fresh word per request: a cache miss,
like most real traffic) at each client count, exact-cache hits (the same body again
and again after a first miss), streams (time to first byte), and 1,000 streams (held
for a minute on Iatros with one worker). *direct* is the load generator straight to
the fake upstream: the floor.

``run`` measures direct and Iatros; ``run_litellm`` measures LiteLLM, whose servers
(slow to start) may have been started ahead, during the soak.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from loadgen import LoadSpec, run_load
from peers import LITELLM_KEY, start_litellm
from procs import (
    CpuMeter,
    Hooks,
    MemorySampler,
    Processes,
    Server,
    mib,
    start_fake_upstream,
    start_iatros,
    tree_memory,
    wait_settled,
)
from settings import (
    ADMIN_KEY,
    CACHE_SECRET,
    REDIS_URL,
    UPSTREAM_DELAY_MS,
    BenchSettings,
)

MODEL = "bench"
UPSTREAM_MODEL = "fake-model"
UNIQUE = b"@@unique@@"
MESSAGES = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    # A fresh word per request: every request is a cache miss, as most real traffic is.
    {
        "role": "user",
        "content": f"What is the normal resting heart rate of an adult? {UNIQUE.decode()}",
    },
]
CACHED_MESSAGES = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "What is the normal resting heart rate of an adult?"},
]


def redis_ready(url: str = REDIS_URL) -> str | None:
    """Flush the benchmark's Redis DB; None if fine, else why Redis cannot be used."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.flushdb()
        client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def redis_pid(url: str = REDIS_URL) -> int | None:
    """The local redis-server's pid, so that its CPU is shown next to Iatros's."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        pid = int(client.info("server")["process_id"])
        client.close()
    except Exception:
        return None
    return pid if os.path.exists(f"/proc/{pid}") else None


def iatros_config(upstream: Server, redis: bool = False) -> dict[str, Any]:
    """Only an OpenAI-type provider in front of the fake upstream: nothing heavy loads.

    The response cache is on, as by default: in-process with one worker; with two, in
    Redis (each worker's own memory cache would halve the hit ratio).
    """
    config: dict[str, Any] = {
        "log_level": "info",
        "providers": {
            "fake": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": "sk-fake-upstream",
            }
        },
        "deployments": {"fake-gpt": {"provider": "fake", "model": UPSTREAM_MODEL}},
        "models": {MODEL: {"description": "benchmark route", "deployments": ["fake-gpt"]}},
        "embeddings": {"default_model": None},
        "cache": {"enabled": True, "backend": "memory"},
    }
    if redis:
        config["redis_url"] = REDIS_URL
        config["cache"] = {
            "enabled": True,
            "backend": "redis",
            "redis_url": REDIS_URL,
            "tag_secret": CACHE_SECRET,
            "key_prefix": "iatros-bench:",
        }
    return config


def request_body(
    model: str, stream: bool, *, cached: bool = False, extra: dict[str, Any] | None = None
) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": CACHED_MESSAGES if cached else MESSAGES,
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra or {})
    return orjson.dumps(body)


@dataclass
class Target:
    """One server under test and how to talk to it."""

    kind: str
    """``direct``, ``iatros`` or ``litellm``."""
    workers: int
    server: Server
    model: str
    key: str | None
    cache_extra: dict[str, Any] | None = None
    """What the body needs for a cache lookup (LiteLLM's cache is opt-in per request)."""
    notes: str = ""

    @property
    def label(self) -> str:
        return "direct" if self.kind == "direct" else f"{self.kind}-{self.workers}w"

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1/chat/completions"

    @property
    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        return headers


@dataclass(frozen=True)
class Cell:
    scenario: str
    """``chat``, ``chat-stream`` or ``cache-exact``."""
    concurrency: int
    duration_s: float

    @property
    def stream(self) -> bool:
        return self.scenario == "chat-stream"


def cells(settings: BenchSettings, target: Target) -> list[Cell]:
    """Every cell a server gets, lightest first."""
    out = [Cell("chat", c, settings.duration_s) for c in settings.concurrency]
    out += [Cell("chat-stream", c, settings.stream_duration_s) for c in settings.stream_concurrency]
    held = target.label == "iatros-1w"
    if held:
        out = [c for c in out if not (c.stream and c.concurrency == settings.hold_streams)]
    if held or settings.hold_streams not in settings.stream_concurrency:
        duration = settings.hold_s if held else settings.stream_duration_s
        out.append(Cell("chat-stream", settings.hold_streams, duration))
    if target.kind != "direct":
        out.append(Cell("cache-exact", settings.cache_concurrency, settings.duration_s))
    kinds = ("chat", "cache-exact", "chat-stream")
    return sorted(out, key=lambda c: (c.concurrency, kinds.index(c.scenario)))


def upstream_served(upstream: Server) -> int | None:
    """How many requests the fake upstream has answered (to prove cache hits are hits)."""
    try:
        with urllib.request.urlopen(upstream.url + "/_fake/stats", timeout=2) as resp:
            return int(orjson.loads(resp.read())["served"])
    except (OSError, ValueError, KeyError):
        return None


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    """Direct, then Iatros with each worker count, each stopped before the next starts."""
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    redis_problem = redis_ready()
    servers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    try:
        direct = Target("direct", 1, upstream, UPSTREAM_MODEL, None)
        await _measure_into(settings, procs, upstream, direct, servers, rows)
        for workers in settings.iatros_workers:
            target = _start_iatros(procs, upstream, workers, redis_problem)
            await _measure_into(settings, procs, upstream, target, servers, rows)
        shim_applied = "assertion bypassed" in upstream.log_tail(50)
    finally:
        procs.stop(upstream)
    return {
        "upstream_delay_ms": UPSTREAM_DELAY_MS,
        "upstream_command": upstream.command,
        "fake_upstream_shim_applied": shim_applied,
        "redis": {"url": REDIS_URL, "problem": redis_problem},
        "servers": servers,
        "rows": rows,
    }


def start_litellm_servers(settings: BenchSettings, procs: Processes) -> tuple[Server, list[Server]]:
    """A fake upstream and LiteLLM with each worker count, the LiteLLMs started in parallel."""
    peer = settings.litellm
    if peer is None:
        raise RuntimeError(f"LiteLLM is not installed ({settings.litellm_skipped})")
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    workers = settings.litellm_workers
    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [
            pool.submit(start_litellm, procs, peer, f"litellm-{w}w", upstream, MODEL, w)
            for w in workers
        ]
        return upstream, [f.result() for f in futures]


async def run_litellm(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    """LiteLLM with each worker count (started ahead if the soak ran), the same cells.

    Both servers are up at once, so the cells are ordered by what the targets need, not by
    server: every lighter cell first, then the 1,000-client cells, best configuration
    first, each only if it fits in the suite's time budget (a saturated
    LiteLLM takes ~clients / throughput seconds to answer the last wave).
    """
    assert settings.litellm is not None
    upstream, started = await procs.take("litellm")
    targets = [
        Target("litellm", w, server, MODEL, LITELLM_KEY, {"cache": {"use-cache": True}})
        for server, w in zip(started, settings.litellm_workers, strict=True)
    ]
    servers: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    try:
        for target in targets:
            servers.append(await _server_info(target))
            servers[-1]["primed"] = await _prime(settings, target)
        heavy = max(settings.concurrency)
        for target in targets:
            for cell in cells(settings, target):
                if cell.concurrency < heavy:
                    rows.append(await _measure_cell(settings, upstream, target, cell))
        for target in reversed(targets):  # the best configuration (most workers) first
            for kind in ("chat", "chat-stream"):
                for cell in cells(settings, target):
                    if cell.scenario != kind or cell.concurrency < heavy:
                        continue
                    need = _estimate_s(cell, rows, target.label)
                    left = _left_s(settings)
                    if need > left:
                        skipped.append(
                            {
                                "label": target.label,
                                "scenario": cell.scenario,
                                "concurrency": cell.concurrency,
                                "reason": f"time budget: needs ~{need:.0f} s, {left:.0f} s left",
                            }
                        )
                        print(f"  skipped {cell} on {target.label}: {skipped[-1]['reason']}")
                        continue
                    rows.append(await _measure_cell(settings, upstream, target, cell))
    finally:
        for server in [*started, upstream]:
            procs.stop(server)
    for info in servers:
        peaks = [
            r["memory"]["peak_rss_mib"]
            for r in rows
            if r["label"] == info["label"] and r.get("memory")
        ]
        info["load_peak_rss_mib"] = max(peaks) if peaks else None
    return {
        "upstream_delay_ms": UPSTREAM_DELAY_MS,
        "upstream_command": upstream.command,
        "peer": settings.litellm.as_dict(),
        "started_during_soak": "litellm" in procs.started_ahead,
        "servers": servers,
        "rows": rows,
        "skipped_cells": skipped,
    }


def _left_s(settings: BenchSettings) -> float:
    return math.inf if settings.deadline is None else settings.deadline - time.monotonic()


def _estimate_s(cell: Cell, rows: list[dict[str, Any]], label: str) -> float:
    """Warm-up, window, then the last wave: clients / the throughput seen at fewer clients."""
    seen = [
        r["rps"]
        for r in rows
        if r["label"] == label and r["scenario"] == cell.scenario and r["rps"]
    ]
    rate = max(seen, default=20.0)
    return 0.5 + cell.duration_s + cell.concurrency / rate + 3.0


def _start_iatros(
    procs: Processes, upstream: Server, workers: int, redis_problem: str | None
) -> Target:
    redis = workers > 1 and redis_problem is None
    notes = ""
    if workers > 1 and not redis:
        notes = f"Redis unavailable ({redis_problem}): per-worker memory cache"
    if redis:
        redis_ready()  # an empty cache: the first cache-exact request is a miss
    server = start_iatros(
        procs, f"iatros-{workers}w", iatros_config(upstream, redis), ADMIN_KEY, workers=workers
    )
    return Target("iatros", workers, server, MODEL, ADMIN_KEY, None, notes)


async def _measure_into(
    settings: BenchSettings,
    procs: Processes,
    upstream: Server,
    target: Target,
    servers: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> None:
    try:
        info, target_rows = await _measure_target(settings, upstream, target)
    finally:
        if target.server is not upstream:
            procs.stop(target.server)
    servers.append(info)
    rows += target_rows


async def _server_info(target: Target) -> dict[str, Any]:
    """Wait for every worker to finish starting, then read the idle memory."""
    server = target.server
    settled_s = await asyncio.to_thread(wait_settled, server.pid)
    idle = tree_memory(server.pid)
    return {
        "label": target.label,
        "kind": target.kind,
        "workers": target.workers,
        "command": server.command,
        "config": _config_text(server),
        "settled_after_ready_s": settled_s,
        "idle_rss_mib": mib(idle["rss_bytes"]),
        "idle_pss_mib": mib(idle["pss_bytes"]),
        "processes": idle["processes"],
        "notes": target.notes,
    }


async def _prime(settings: BenchSettings, target: Target) -> dict[str, Any]:
    """A few requests of each kind before the first cell: lazy imports, pools, caches of
    code paths (LiteLLM's first requests are several times slower than the next ones)."""
    primed = {}
    for stream in (False, True):
        spec = LoadSpec(
            url=target.url,
            body=request_body(target.model, stream),
            concurrency=10,
            duration_s=settings.prime_s,
            warmup_s=0,
            stream=stream,
            headers=target.headers,
            unique_marker=UNIQUE,
            timeout_s=settings.cell_timeout_s,
        )
        summary = (await run_load(spec)).summary()
        primed["chat-stream" if stream else "chat"] = {
            k: summary[k] for k in ("completed", "errors", "error_kinds")
        }
    return primed


async def _measure_target(
    settings: BenchSettings, upstream: Server, target: Target
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    info = await _server_info(target)
    info["primed"] = await _prime(settings, target)
    rows = [await _measure_cell(settings, upstream, target, c) for c in cells(settings, target)]
    peaks = [r["memory"]["peak_rss_mib"] for r in rows if r.get("memory")]
    info["load_peak_rss_mib"] = max(peaks) if peaks else None
    if target.kind == "iatros":
        info["log_levels"] = _log_levels(target.server)
    return info, rows


def _pids(target: Target, upstream: Server) -> dict[str, int]:
    """What the CPU meter watches: this process, the server's tree, the upstream, Redis."""
    pids = {"loadgen": os.getpid(), "server": target.server.pid}
    if target.kind != "direct":
        pids["upstream"] = upstream.pid
    if target.kind == "iatros" and target.workers > 1 and (rpid := redis_pid()) is not None:
        pids["redis"] = rpid
    return pids


async def _measure_cell(
    settings: BenchSettings, upstream: Server, target: Target, cell: Cell
) -> dict[str, Any]:
    pids = _pids(target, upstream)
    cached = cell.scenario == "cache-exact"
    body = request_body(
        target.model, cell.stream, cached=cached, extra=target.cache_extra if cached else None
    )
    spec = LoadSpec(
        url=target.url,
        body=body,
        concurrency=cell.concurrency,
        duration_s=cell.duration_s,
        warmup_s=settings.warmup_s,
        stream=cell.stream,
        headers=target.headers,
        unique_marker=None if cached else UNIQUE,
        timeout_s=settings.cell_timeout_s,
    )
    busy_before = await asyncio.to_thread(settings.quiet.wait)
    meter = CpuMeter(pids)
    memory = MemorySampler({"server": target.server.pid}, interval_s=0.5)
    served_before = upstream_served(upstream)
    result = await run_load(spec, Hooks(meter, memory))
    served_after = upstream_served(upstream)
    summary = result.summary()
    rps = summary["rps"] or math.nan
    row = {
        "scenario": cell.scenario,
        "target": target.kind,
        "workers": target.workers,
        "label": target.label,
        **summary,
        "cpu_pct": meter.shares,
        # CPU per answered request: unlike latency, barely moved by other load.
        "cpu_ms_per_request": {
            name: round(10 * meter.shares[name] / rps, 3) for name in pids if rps > 0
        },
        "memory": memory.result.get("server"),
        "machine_busy_pct_before": busy_before,
    }
    if served_before is not None and served_after is not None and target.kind != "direct":
        # Warm-up included: a cache cell should reach the upstream once (its first miss).
        row["upstream_calls"] = served_after - served_before
    print(_progress(row), flush=True)
    await asyncio.sleep(0.1)  # let closed connections go before the next cell
    return row


def _progress(row: dict[str, Any]) -> str:
    lat = row["latency_ms"]
    over = row["overhead_ms"] or {}
    ttfb = row["ttfb_ms"] or {}
    extra = f"  ttfb p50 {ttfb['p50']:.1f} p99 {ttfb['p99']:.1f}" if ttfb else ""
    if "upstream_calls" in row and row["scenario"] == "cache-exact":
        extra += f"  upstream calls {row['upstream_calls']}"
    return (
        f"  {row['scenario']:<11} {row['label']:<10} c={row['concurrency']:<5} "
        f"{row['rps']:>8.1f} req/s  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f} ms{extra}  "
        f"overhead p99 {over.get('p99', float('nan')):.2f} ms  errors {row['errors']}"
        f"+{row['warmup_errors']}  cpu% {row['cpu_pct']}  "
        f"rss peak {(row['memory'] or {}).get('peak_rss_mib')} MiB"
    )


def _config_text(server: Server) -> str | None:
    """The YAML the server was started with (it is in the work dir, which may be deleted)."""
    for arg_index, arg in enumerate(server.command):
        if arg == "--config" and arg_index + 1 < len(server.command):
            try:
                with open(server.command[arg_index + 1]) as fh:
                    return fh.read()
            except OSError:
                return None
    return None


def _log_levels(server: Server) -> dict[str, int]:
    """How many log lines of each level the gateway wrote (errors would be worth a look)."""
    counts: dict[str, int] = {}
    try:
        lines = server.log_path.read_bytes().splitlines()
    except FileNotFoundError:
        return counts
    for line in lines:
        try:
            level = str(orjson.loads(line).get("level", "?"))
        except (orjson.JSONDecodeError, AttributeError):
            level = "non-json"
        counts[level] = counts.get(level, 0) + 1
    return counts
