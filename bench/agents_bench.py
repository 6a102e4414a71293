"""What an agent costs over a plain chat call, and how many workflow runs/s the store takes.

In one process, the gateway's services (as ``create_app`` builds them, SQLite store,
cache off so every call reaches the model) in front of the fake upstream running in a
*separate* process (answers at once), so the CPU time measured here is the gateway's
alone:

- **one-step agent overhead**: CPU per call of ``ChatService.ask`` (a plain chat call)
  against ``AgentService.call_agent`` (what ``model: "agent:<name>"`` runs: the stored
  template read, instructions rendered, the same chat call), interleaved over rounds;
- **5-step workflow**: runs/s and CPU per run of a workflow of 3 agent and 2 tool steps,
  every step persisted (the run row rewritten after each), at a fixed concurrency.

    .venv/bin/python bench/agents_bench.py [--calls 300] [--rounds 3] [--runs 60]

Writes ``bench/results/agents.json`` and ``agents.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

AGENT = """\
kind: agent
name: echo
model: assistant
instructions: "You answer questions from {{ practice }} patients briefly."
variables: {practice: the Rue Haute}
"""

WORKFLOW = """\
kind: workflow
name: five-steps
agents:
  a: {kind: agent, name: a, model: assistant, instructions: "Step about {{ topic }}.",
      input_schema: {type: object, properties: {topic: {type: string}}}}
steps:
  - {id: s1, tool: datetime_now, arguments: {timezone: Europe/Paris}}
  - {id: s2, agent: a, input: {topic: "${steps.s1.output.weekday}"}}
  - {id: s3, tool: dose_by_weight, arguments: {weight: 20, weight_unit: kg, dose_per_kg: 15,
                                                dose_unit: mg/kg}}
  - {id: s4, agent: a, input: {topic: "dose ${steps.s3.output.dose_mg}"}}
  - {id: s5, agent: a, input: {topic: "${steps.s4.output}"}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def measure(args: argparse.Namespace, upstream: str, data: Path) -> dict[str, Any]:
    from iatros.auth import Principal
    from iatros.config import load_settings
    from iatros.gateway.chat import ChatRequest
    from iatros.providers.base import ChatCall
    from iatros.services import Services

    settings = load_settings(overrides={
        "data_dir": str(data),
        "providers": {"fake": {"type": "openai", "base_url": upstream, "api_key": "k"},
                      "t": {"type": "test"}},
        "deployments": {"gpt": {"provider": "fake", "model": "gpt-fake"},
                        "t-embed": {"provider": "t", "model": "e", "kind": "embedding"}},
        "models": {"assistant": {"deployments": ["gpt"]}},
        "embeddings": {"default_model": "t-embed"},
        "cache": {"enabled": False},
        "log_level": "warning",
    })  # fmt: skip
    services = Services.build(settings)
    await services.start()
    principal = Principal(tenant="default", key_id="bench", role="admin")
    agents = services.agents
    await agents.templates.apply(principal, AGENT, "echo.yaml")
    await agents.templates.apply(principal, WORKFLOW, "five.yaml")
    counter = iter(range(10**9))

    def messages() -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"When are you open on day {next(counter)}?"}]

    async def plain() -> None:
        await services.chat.ask(principal, ChatRequest("assistant", ChatCall(messages())),
                                endpoint="chat")  # fmt: skip

    async def agent() -> None:
        await agents.call_agent(principal, "echo", messages(), "req_bench")

    async def timed(fn: Any, n: int) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(n):
            await fn()
        return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000

    for fn in (plain, agent):  # warm-up: connections, caches of compiled schemas
        await timed(fn, 30)
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        p_cpu, p_wall = await timed(plain, args.calls)
        a_cpu, a_wall = await timed(agent, args.calls)
        rounds.append({"plain_cpu_ms": p_cpu, "agent_cpu_ms": a_cpu, "plain_wall_ms": p_wall,
                       "agent_wall_ms": a_wall, "overhead_cpu_ms": a_cpu - p_cpu})  # fmt: skip
    # 5-step workflow runs at a fixed concurrency.
    sem = asyncio.Semaphore(args.concurrency)
    statuses: list[str] = []

    async def one() -> None:
        async with sem:
            run = await agents.start_run(principal, "five-steps", {}, wait_s=120)
            statuses.append(run["status"])

    await one()  # warm-up
    statuses.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(args.runs)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await services.close()
    return {
        "rounds": rounds,
        "overhead_cpu_ms_median": statistics.median(r["overhead_cpu_ms"] for r in rounds),
        "plain_cpu_ms_median": statistics.median(r["plain_cpu_ms"] for r in rounds),
        "agent_cpu_ms_median": statistics.median(r["agent_cpu_ms"] for r in rounds),
        "workflow": {
            "runs": args.runs,
            "concurrency": args.concurrency,
            "steps_per_run": 5,
            "succeeded": statuses.count("succeeded"),
            "wall_s": round(wall, 2),
            "runs_per_s": round(args.runs / wall, 1),
            "cpu_ms_per_run": round(cpu / args.runs * 1000, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "iatros.testing.fake_upstream", "--port", str(port),
         "--delay-ms", "0", "--no-record"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(measure(args, f"http://127.0.0.1:{port}/v1", Path(tmp)))
    finally:
        fake.terminate()
        fake.wait(10)
    result["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(),
                         "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    result["settings"] = vars(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agents.json").write_text(json.dumps(result, indent=2) + "\n")
    wf = result["workflow"]
    lines = [
        "# Agents: overhead of a one-step agent, runs/s of a 5-step workflow",
        "",
        f"Written by `bench/agents_bench.py` on {result['machine']['date']} "
        f"({result['machine']['cpus']} CPUs, shared); fake upstream in another process "
        "answering at once; SQLite store; cache off.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| gateway CPU per plain chat call (median of {args.rounds} rounds x {args.calls}) "
        f"| {result['plain_cpu_ms_median']:.3f} ms |",
        f"| gateway CPU per one-step agent call (`agent:<name>`) "
        f"| {result['agent_cpu_ms_median']:.3f} ms |",
        f"| **agent overhead (CPU)** | **{result['overhead_cpu_ms_median']:.3f} ms** |",
        f"| 5-step workflow (3 agent + 2 tool steps, persisted per step), {wf['runs']} runs at "
        f"concurrency {wf['concurrency']} | **{wf['runs_per_s']} runs/s**, "
        f"{wf['cpu_ms_per_run']} ms CPU per run, {wf['succeeded']}/{wf['runs']} succeeded |",
        "",
    ]
    (RESULTS / "agents.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
