"""Gateway overhead: the same closed-loop load, straight to the fake upstream and through Iatros.

Both targets are measured in the same run with the same load generator, so the
difference between the two rows is what the gateway costs. Iatros reports its
own view of that cost in ``x-iatros-overhead-ms``; both are shown because the
header cannot see time spent before the handler starts (accept, parse, queueing).
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import orjson

from loadgen import LoadSpec, run_load
from procs import (
    CpuMeter,
    Processes,
    Server,
    start_fake_upstream,
    start_iatros,
)
from settings import ADMIN_KEY, UPSTREAM_DELAY_MS, BenchSettings

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


def iatros_config(upstream: Server) -> dict[str, Any]:
    """Only an OpenAI-type provider in front of the fake upstream: nothing heavy loads."""
    return {
        "log_level": "info",
        "providers": {
            "fake": {
                "type": "openai",
                "base_url": f"{upstream.url}/v1",
                "api_key": "sk-fake-upstream",
            }
        },
        "deployments": {"fake-gpt": {"provider": "fake", "model": UPSTREAM_MODEL}},
        "models": {"bench": {"description": "benchmark route", "deployments": ["fake-gpt"]}},
        "embeddings": {"default_model": None},
    }


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    """Every (stream, clients, target) combination; servers are stopped before returning."""
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    try:
        gateway = start_iatros(procs, "iatros-passthrough", iatros_config(upstream), ADMIN_KEY)
        try:
            rows = await _measure(settings, upstream, gateway)
            log_counts = _log_levels(gateway)
            shim_applied = "assertion bypassed" in upstream.log_tail(50)
        finally:
            procs.stop(gateway)
    finally:
        procs.stop(upstream)
    return {
        "upstream_delay_ms": UPSTREAM_DELAY_MS,
        "commands": {"fake-upstream": upstream.command, "iatros": gateway.command},
        "iatros_env": sorted(gateway.env),
        "iatros_config": iatros_config(upstream),
        "iatros_log_levels": log_counts,
        "fake_upstream_shim_applied": shim_applied,
        "rows": rows,
    }


async def _measure(
    settings: BenchSettings, upstream: Server, gateway: Server
) -> list[dict[str, Any]]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_KEY}"}
    targets = {
        "direct": (f"{upstream.url}/v1/chat/completions", UPSTREAM_MODEL),
        "iatros": (f"{gateway.url}/v1/chat/completions", MODEL),
    }
    pids = {"loadgen": os.getpid(), "iatros": gateway.pid, "upstream": upstream.pid}
    rows: list[dict[str, Any]] = []
    for stream in (False, True):
        duration = settings.stream_duration_s if stream else settings.duration_s
        for clients in settings.concurrency:
            for target, (url, model) in targets.items():
                spec = LoadSpec(
                    url=url,
                    body=request_body(model, stream),
                    concurrency=clients,
                    duration_s=duration,
                    warmup_s=settings.warmup_s,
                    stream=stream,
                    headers=headers,
                    unique_marker=UNIQUE,
                )
                busy_before = settings.quiet.wait()
                meter = CpuMeter(pids)
                result = await run_load(spec, meter)
                summary = result.summary()
                rps = summary["rps"] or math.nan
                row = {
                    "scenario": "chat-stream" if stream else "chat",
                    "target": target,
                    **summary,
                    "cpu_pct": meter.shares,
                    # CPU per answered request: unlike latency, barely moved by other load.
                    "cpu_ms_per_request": {
                        name: round(10 * meter.shares[name] / rps, 3) for name in pids
                    },
                    "machine_busy_pct_before": busy_before,
                }
                rows.append(row)
                print(_progress(row), flush=True)
                await asyncio.sleep(0.3)  # let closed connections drain between runs
    return rows


def _progress(row: dict[str, Any]) -> str:
    lat = row["latency_ms"]
    over = row["overhead_ms"] or {}
    return (
        f"  {row['scenario']:<11} {row['target']:<6} c={row['concurrency']:<4} "
        f"{row['rps']:>8.1f} req/s  p50 {lat['p50']:.1f}  p99 {lat['p99']:.1f} ms  "
        f"overhead p99 {over.get('p99', float('nan')):.2f} ms  errors {row['errors']}"
        f"+{row['warmup_errors']}  cpu% {row['cpu_pct']}  "
        f"iatros cpu {row['cpu_ms_per_request']['iatros']:.3f} ms/req"
    )


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
