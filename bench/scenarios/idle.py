"""20,000 idle keep-alive connections held open by Iatros, while it keeps answering.

Client processes (``idle_holder.py``) open the connections and make one request on each,
so that each is an established keep-alive connection; they then stay silent for
``idle_hold_s`` while ten clients send pass-through requests on other connections
(does the server stay responsive?), and finally every idle connection is used once
more (did the server keep it?). The hold is shorter than Iatros's 30 s keep-alive
timeout, which closes idle connections on purpose.

A process cannot hold more descriptors than its open-files limit. When the limit
cannot be raised above the connection count, Iatros runs with enough workers for
each to stay under it (the kernel spreads accepted connections over them), and the
report says so.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

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
    tree_pids,
    wait_settled,
)
from scenarios.passthrough import MODEL, UNIQUE, iatros_config, request_body
from settings import ADMIN_KEY, UPSTREAM_DELAY_MS, BenchSettings

HOLDER = Path(__file__).resolve().parent.parent / "idle_holder.py"
FD_MARGIN = 1000
"""Descriptors a process needs besides the connections (libraries, pipes, upstream pool)."""


def plan(connections: int) -> dict[str, Any]:
    """How many server workers and holder processes the open-files limit allows."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = max(soft - FD_MARGIN, 1)
    workers = 1 if connections <= per_process else min(math.ceil(connections / per_process), 4)
    holders = max(math.ceil(connections / min(per_process, 10_000)), 1)
    return {
        "fd_limit": [soft, hard],
        "fd_limit_enough_for_one_process": connections + FD_MARGIN <= soft,
        "workers": workers,
        "holders": holders,
    }


def _socket_count(pid: int) -> int:
    count = 0
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(entry.path).startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        return 0
    return count


def _spawn_holders(
    procs: Processes, port: int, total: int, count: int
) -> list[subprocess.Popen[bytes]]:
    """``count`` holder processes sharing ``total`` connections (they start opening now)."""
    shares = [total // count] * count
    shares[0] += total - sum(shares)
    holders = []
    with (procs.workdir / "idle-holders.log").open("ab") as log:
        for share in shares:
            holders.append(
                subprocess.Popen(
                    [sys.executable, str(HOLDER), "--port", str(port), "--count", str(share)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            )
    return holders


def _read_json_line(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """One line from a holder (blocking: called in a thread)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"idle holder {proc.pid} exited with {proc.poll()} before answering")
    result: dict[str, Any] = orjson.loads(line)
    return result


async def _tell_all(
    holders: list[subprocess.Popen[bytes]], message: bytes | None, timeout_s: float
) -> list[dict[str, Any]]:
    for proc in holders:
        if message is not None:
            assert proc.stdin is not None
            proc.stdin.write(message + b"\n")
            proc.stdin.flush()
    return await asyncio.wait_for(
        asyncio.gather(*(asyncio.to_thread(_read_json_line, p, timeout_s) for p in holders)),
        timeout_s,
    )


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    total = settings.idle_connections
    layout = plan(total)
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    holders: list[subprocess.Popen[bytes]] = []
    try:
        server = start_iatros(
            procs, "iatros-idle", iatros_config(upstream), ADMIN_KEY, workers=layout["workers"]
        )
        try:
            await asyncio.to_thread(wait_settled, server.pid)
            before = tree_memory(server.pid)
            holders += _spawn_holders(procs, server.port, total, layout["holders"])
            opened = await _tell_all(holders, None, 180)
            # The last accepts may still be in flight: measure an idle server.
            await asyncio.to_thread(wait_settled, server.pid, max_s=10.0)
            held_memory = tree_memory(server.pid)
            per_process = {
                str(pid): _socket_count(pid) for pid in tree_pids(server.pid) if pid != server.pid
            } or {str(server.pid): _socket_count(server.pid)}
            probe = LoadSpec(
                url=f"{server.url}/v1/chat/completions",
                body=request_body(MODEL, False),
                concurrency=10,
                duration_s=settings.idle_hold_s,
                warmup_s=min(settings.warmup_s, 0.5),
                headers={
                    "authorization": f"Bearer {ADMIN_KEY}",
                    "content-type": "application/json",
                },
                unique_marker=UNIQUE,
            )
            pids = {"loadgen": os.getpid(), "server": server.pid, "upstream": upstream.pid}
            meter = CpuMeter(pids)
            memory = MemorySampler({"server": server.pid})
            probe_summary = (await run_load(probe, Hooks(meter, memory))).summary()
            checked = await _tell_all(holders, b"check", 180)
            after = tree_memory(server.pid)
            await _tell_all_close(holders)
        finally:
            for proc in holders:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
            procs.stop(server)
    finally:
        procs.stop(upstream)
    opened_n = sum(o["opened"] for o in opened)
    held_n = sum(c["held"] for c in checked)
    errors: dict[str, int] = {}
    for part in [*opened, *checked]:
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    added = held_memory["rss_bytes"] - before["rss_bytes"]
    result = {
        "target_connections": total,
        **layout,
        "opened": opened_n,
        "held": held_n,
        "dropped": opened_n - held_n,
        "errors": errors,
        "open_s": max(o["open_s"] for o in opened),
        "check_s": max(c["check_s"] for c in checked),
        "hold_s": settings.idle_hold_s,
        "sockets_per_server_process": per_process,
        "rss_before_mib": mib(before["rss_bytes"]),
        "rss_held_mib": mib(held_memory["rss_bytes"]),
        "rss_after_check_mib": mib(after["rss_bytes"]),
        "kib_per_connection": round(added / 1024 / max(opened_n, 1), 2),
        "probe": {
            **probe_summary,
            "cpu_pct": meter.shares,
            "memory": memory.result.get("server"),
        },
        "command": server.command,
        "litellm": "not measured: LiteLLM runs uvicorn with its default 5 s keep-alive timeout, "
        "so idle connections are closed by design after 5 s",
    }
    lat = probe_summary["latency_ms"]
    print(
        f"  idle: {opened_n}/{total} opened in {result['open_s']} s, {held_n} held after "
        f"{settings.idle_hold_s:g} s, errors {errors}, rss {result['rss_before_mib']} -> "
        f"{result['rss_held_mib']} MiB, sockets per worker {per_process}; probe "
        f"{probe_summary['rps']} req/s p50 {lat['p50']} p99 {lat['p99']} ms "
        f"errors {probe_summary['errors']} {probe_summary['error_kinds']}",
        flush=True,
    )
    return result


async def _tell_all_close(holders: list[subprocess.Popen[bytes]]) -> None:
    for proc in holders:
        assert proc.stdin is not None
        proc.stdin.write(b"close\n")
        proc.stdin.close()
    await asyncio.gather(*(asyncio.to_thread(proc.wait, 30) for proc in holders))
