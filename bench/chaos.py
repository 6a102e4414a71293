"""Chaos benchmark: load at 100 concurrent clients while upstream "regions" die and come back.

Three fake upstreams stand for two cloud regions (``eu``, ``us``) and a local fallback
(``backup``). Iatros routes ``assistant`` to eu, then us, then falls back to backup.
While 100 closed-loop clients send requests (a fifth of them streaming), a schedule
kills (SIGKILL) and restarts the regions. Reported: what the clients saw — errors for
non-streaming requests (target 0), and for streams whether every failure arrived as an
explicit error event (never a silent clean end) — and latency p50/p99 overall and in
the two seconds after each kill.

    python bench/chaos.py            # 60 s, results in bench/results/chaos-<date>.{json,md}
    python bench/chaos.py --smoke    # 8 s, results in a temporary directory
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Processes, Server, fake_upstream_command, free_port, raise_fd_limit, start_iatros

ADMIN_KEY = "sk-bench-chaos"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Outcome:
    started: float
    latency_s: float
    stream: bool
    ok: bool
    kind: str  # ok | http_error | error_event | silent_truncation | transport
    model: str = ""


@dataclass
class Chaos:
    procs: Processes
    ports: dict[str, int]
    servers: dict[str, Server] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)

    def start(self, name: str) -> None:
        port = self.ports[name]
        self.servers[name] = self.procs.start(
            f"upstream-{name}", fake_upstream_command(port, 50), port, "/v1/models", timeout_s=30
        )

    def kill(self, name: str, t0: float) -> None:
        server = self.servers.pop(name)
        server.popen.kill()
        server.popen.wait(5)
        self.procs.servers.remove(server)
        self.events.append((time.monotonic() - t0, f"kill {name}"))

    def restart(self, name: str, t0: float) -> None:
        self.start(name)
        self.events.append((time.monotonic() - t0, f"restart {name}"))


def schedule(duration: float) -> list[tuple[float, str, str]]:
    """(time, action, region): the primary dies, then the secondary, then both at once."""
    f = duration / 60
    return [
        (5 * f, "kill", "eu"),
        (20 * f, "restart", "eu"),
        (25 * f, "kill", "us"),
        (35 * f, "restart", "us"),
        (40 * f, "kill", "eu"),
        (40 * f, "kill", "us"),
        (50 * f, "restart", "eu"),
        (50 * f, "restart", "us"),
    ]


async def client(
    session: aiohttp.ClientSession,
    url: str,
    stop_at: float,
    t0: float,
    rng: random.Random,
    out: list[Outcome],
) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    while time.monotonic() < stop_at:
        stream = rng.random() < 0.2
        body = {
            "model": "assistant",
            "stream": stream,
            "messages": [{"role": "user", "content": f"question {rng.random()}"}],
        }
        started = time.monotonic()
        kind, model = "ok", ""
        try:
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                model = resp.headers.get("x-iatros-model", "")
                raw = await resp.read()
                if resp.status != 200:
                    kind = "http_error"
                elif stream:
                    lines = [ln for ln in raw.split(b"\n") if ln.startswith(b"data: ")]
                    if lines and lines[-1] == b"data: [DONE]":
                        kind = "ok"
                    elif lines and b'"error"' in lines[-1]:
                        kind = "error_event"
                    else:
                        kind = "silent_truncation"
        except (TimeoutError, aiohttp.ClientError):
            kind = "transport"
        out.append(
            Outcome(started - t0, time.monotonic() - started, stream, kind == "ok", kind, model)
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(outcomes: list[Outcome], events: list[tuple[float, str]]) -> dict[str, Any]:
    kills = [t for t, what in events if what.startswith("kill")]

    def block(items: list[Outcome]) -> dict[str, Any]:
        lat = [o.latency_s * 1000 for o in items]
        kinds: dict[str, int] = {}
        for o in items:
            kinds[o.kind] = kinds.get(o.kind, 0) + 1
        return {
            "requests": len(items),
            "outcomes": kinds,
            "p50_ms": round(percentile(lat, 0.5), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
        }

    non_stream = [o for o in outcomes if not o.stream]
    streams = [o for o in outcomes if o.stream]
    failover = [o for o in outcomes if any(k <= o.started < k + 2 for k in kills)]
    served_by: dict[str, int] = {}
    for o in outcomes:
        if o.ok:
            served_by[o.model] = served_by.get(o.model, 0) + 1
    ns_errors = sum(1 for o in non_stream if not o.ok)
    silent = sum(1 for o in streams if o.kind in ("silent_truncation", "transport", "http_error"))
    return {
        "non_streaming": block(non_stream),
        "streaming": block(streams),
        "failover_windows": block(failover),
        "served_by": served_by,
        "non_streaming_error_rate": round(ns_errors / max(len(non_stream), 1), 6),
        "stream_failures_not_explicit": silent,
        "events": [{"t_s": round(t, 2), "event": what} for t, what in events],
        "targets": {
            "non-streaming client-visible errors = 0": ns_errors == 0,
            "stream failures only as explicit error events": silent == 0,
        },
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = []
    for name in ("non_streaming", "streaming", "failover_windows"):
        b = s[name]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(b["outcomes"].items()))
        rows.append(
            f"| {name.replace('_', ' ')} | {b['requests']} | {outcomes} | "
            f"{b['p50_ms']} | {b['p99_ms']} |"
        )
    targets = "\n".join(f"- {k}: **{'met' if v else 'not met'}**" for k, v in s["targets"].items())
    events = ", ".join(f"{e['t_s']} s {e['event']}" for e in s["events"])
    return (
        f"# Chaos benchmark — {result['date']}\n\n"
        f"{result['clients']} closed-loop clients for {result['duration_s']} s (20 % streaming) "
        "against Iatros routing `assistant` to eu → us → backup (fake upstreams, 50 ms answers); "
        f"retries 2 per deployment, breaker after 3 failures, cooldown 2 s.\n\n"
        f"Events: {events}.\n\n{targets}\n\n"
        "| requests | count | outcomes | p50 (ms) | p99 (ms) |\n|---|---:|---|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nServed by: {s['served_by']}. Failover windows = the 2 s after each kill.\n\n"
        f"Command: `{result['command']}`\n"
    )


async def main_async(duration: float, clients: int, workdir: Path) -> dict[str, Any]:
    raise_fd_limit()
    with Processes(workdir) as procs:
        chaos = Chaos(procs, {name: free_port() for name in ("eu", "us", "backup")})
        for name in chaos.ports:
            chaos.start(name)
        config = {
            "providers": {
                n: {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{p}/v1",
                    "timeout_s": 10,
                    "connect_timeout_s": 1,
                }
                for n, p in chaos.ports.items()
            },
            "deployments": {n: {"provider": n, "model": "fake"} for n in chaos.ports},
            "models": {
                "assistant": {
                    "deployments": ["eu", "us"],
                    "fallbacks": ["backup"],
                    "retry": {"max_attempts": 2, "backoff_base_ms": 20, "backoff_max_ms": 200},
                    "attempt_timeout_s": 3,
                }
            },
            "embeddings": {"default_model": None},
            "routing": {"breaker": {"failure_threshold": 3, "cooldown_s": 2}},
            "cache": {"enabled": False},
        }
        iatros = start_iatros(procs, "iatros-chaos", config, ADMIN_KEY)
        outcomes: list[Outcome] = []
        t0 = time.monotonic()
        stop_at = t0 + duration
        rng = random.Random(7)

        async def run_schedule() -> None:
            for at, action, region in schedule(duration):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                if action == "kill":
                    chaos.kill(region, t0)
                else:
                    await asyncio.to_thread(chaos.restart, region, t0)

        connector = aiohttp.TCPConnector(limit=clients + 10)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(
                run_schedule(),
                *(
                    client(session, iatros.url, stop_at, t0, random.Random(rng.random()), outcomes)
                    for _ in range(clients)
                ),
            )
        return summarise(outcomes, chaos.events)


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos benchmark (routing and resilience).")
    parser.add_argument("--smoke", action="store_true", help="8 s, results in a temp directory")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    duration = 8.0 if args.smoke else args.duration
    out_dir = Path(tempfile.mkdtemp(prefix="iatros-chaos-")) if args.smoke else RESULTS
    with tempfile.TemporaryDirectory(prefix="iatros-chaos-work-") as work:
        summary = asyncio.run(main_async(duration, args.clients, Path(work)))
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    result = {
        "date": date,
        "duration_s": duration,
        "clients": args.clients,
        "command": " ".join(["python", "bench/chaos.py", *sys.argv[1:]]),
        "summary": summary,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"chaos-{date}.json").write_text(json.dumps(result, indent=2))
    (out_dir / "chaos-latest.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(summary["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
