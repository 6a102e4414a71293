"""What the origin guard (api/origin_guard.py) costs per request: a micro-benchmark.

Times ``OriginGuard.refusal`` on the headers real clients send (the OpenAI Python SDK's
chat request with a key, the web app's anonymous same-origin post, a GET) and the whole
ASGI wrapper around an app that does nothing, against calling that app directly. Writes
bench/results/origin-guard.json.

    .venv/bin/python bench/origin_guard_bench.py
"""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iatros.api.origin_guard import OriginGuard
from iatros.config import load_settings

RESULTS = Path(__file__).parent / "results" / "origin-guard.json"
ROUNDS = 7
CALLS = 200_000

SDK_HEADERS = {  # what openai 1.x sends for chat.completions.create
    "host": "127.0.0.1:8080",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 1.99.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "1.99.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.2",
    "authorization": "Bearer iat_0123456789abcdefghijklmnopqrstuvwxyz",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "content-length": "96",
}
WEB_HEADERS = {  # Chromium, the bundled web app, anonymous mode
    "host": "127.0.0.1:8080",
    "connection": "keep-alive",
    "content-length": "180",
    "sec-ch-ua-platform": '"Linux"',
    "user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0 Safari/537.36",
    "accept": "text/event-stream",
    "content-type": "application/json",
    "origin": "http://127.0.0.1:8080",
    "sec-fetch-site": "same-origin",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
    "referer": "http://127.0.0.1:8080/",
    "accept-encoding": "gzip, deflate, br",
    "accept-language": "en-US,en;q=0.9",
}


def scope(headers: dict[str, str], method: str) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "scheme": "http",
        "path": "/v1/chat/completions",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


def per_call_ns(fn: Any, arg: Any) -> list[float]:
    out = []
    for _ in range(ROUNDS):
        started = time.perf_counter_ns()
        for _ in range(CALLS):
            fn(arg)
        out.append((time.perf_counter_ns() - started) / CALLS)
    return out


async def _noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def asgi_overhead_ns(guard: OriginGuard, request: dict[str, Any]) -> dict[str, float]:
    """Median ns per request through the wrapper and directly, the event loop included."""

    async def run(app: Any) -> float:
        started = time.perf_counter_ns()
        for _ in range(CALLS):
            await app(request, None, None)
        return (time.perf_counter_ns() - started) / CALLS

    wrapped = OriginGuard(_noop_app, allowed_hosts=["127.0.0.1", "localhost"])
    direct, through = [], []
    for _ in range(ROUNDS):
        direct.append(asyncio.run(run(_noop_app)))
        through.append(asyncio.run(run(wrapped)))
    return {"direct_ns": statistics.median(direct), "wrapped_ns": statistics.median(through)}


def main() -> None:
    settings = load_settings(overrides={"server": {"host": "127.0.0.1"}})
    guard = OriginGuard.from_settings(settings)
    cases = {
        "sdk_post_with_key": scope(SDK_HEADERS, "POST"),
        "web_app_post_anonymous": scope(WEB_HEADERS, "POST"),
        "get": scope({k: v for k, v in SDK_HEADERS.items() if k != "content-length"}, "GET"),
    }
    figures: dict[str, Any] = {}
    for name, request in cases.items():
        assert guard.refusal(request) is None, name
        runs = per_call_ns(guard.refusal, request)
        figures[name] = {"median_ns": round(statistics.median(runs)), "runs_ns": runs}
    asgi = asgi_overhead_ns(guard, cases["sdk_post_with_key"])
    figures["asgi_wrapper_sdk_post"] = {
        "direct_ns": round(asgi["direct_ns"]),
        "wrapped_ns": round(asgi["wrapped_ns"]),
        "added_ns": round(asgi["wrapped_ns"] - asgi["direct_ns"]),
    }
    result = {
        "script": "bench/origin_guard_bench.py",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "calls_per_round": CALLS,
        "rounds": ROUNDS,
        "figures": figures,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, fig in figures.items():
        print(name, {k: v for k, v in fig.items() if k != "runs_ns"})


if __name__ == "__main__":
    main()
