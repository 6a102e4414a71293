"""Semantic-cache hits: paraphrases of a stored question, answered from Iatros's cache.

Iatros (one worker, in-process cache, semantic lookups with the local all-MiniLM-L6-v2)
answers one question once; then the clients ask a small fixed set of paraphrases of
it, again and again. Each lookup embeds the paraphrase and searches the index (a
semantic hit is not stored under the paraphrase's exact key), so this measures the
embedding on the request path. LiteLLM is not measured here: its semantic caches
(``redis-semantic``, ``qdrant-semantic``) need Redis Stack or Qdrant and an embedding
model behind an API; its local cache is exact-only.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

import aiohttp
import orjson

from loadgen import LoadSpec, run_load
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
from scenarios.passthrough import MODEL, iatros_config
from settings import ADMIN_KEY, UPSTREAM_DELAY_MS, BenchSettings

QUESTION = "What is the normal resting heart rate of an adult?"
PARAPHRASES = (
    "What is a normal resting heart rate for an adult?",
    "What's the normal resting heart rate for an adult?",
    "What is the usual resting heart rate of an adult?",
    "Normal resting heart rate of an adult?",
    "What is the normal resting heart rate in an adult?",
)
"""Cosine similarity to the question with MiniLM: 0.977 to 0.997 (threshold 0.95)."""


def semantic_config(upstream: Server) -> dict[str, Any]:
    """The pass-through config plus the local embedding model and semantic lookups."""
    config = iatros_config(upstream)
    config["providers"]["minilm"] = {"type": "sentence-transformers"}
    config["deployments"]["minilm"] = {
        "provider": "minilm",
        "model": "all-MiniLM-L6-v2",
        "kind": "embedding",
    }
    config["embeddings"] = {"default_model": "minilm"}
    config["cache"] = {"enabled": True, "backend": "memory", "semantic": True}
    return config


def _body(text: str) -> bytes:
    return orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    )


async def _ask(server: Server, text: str) -> str:
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.post(f"{server.url}/v1/chat/completions", data=_body(text), headers=headers) as r,
    ):
        await r.read()
        return f"{r.status} {r.headers.get('x-iatros-cache')}"


def start_servers(procs: Processes) -> tuple[Server, Server]:
    """The fake upstream and Iatros with MiniLM (slow to load: may be started ahead)."""
    upstream = start_fake_upstream(procs, UPSTREAM_DELAY_MS)
    return upstream, start_iatros(procs, "iatros-semantic", semantic_config(upstream), ADMIN_KEY)


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    upstream, server = await procs.take("semantic")
    try:
        try:
            await asyncio.to_thread(wait_settled, server.pid)
            idle = tree_memory(server.pid)
            primed = {QUESTION: await _ask(server, QUESTION)}
            for text in PARAPHRASES:
                primed[text] = await _ask(server, text)
            spec = LoadSpec(
                url=f"{server.url}/v1/chat/completions",
                body=_body(PARAPHRASES[0]),
                bodies=tuple(_body(t) for t in PARAPHRASES),
                concurrency=settings.semantic_concurrency,
                duration_s=settings.duration_s,
                warmup_s=settings.warmup_s,
                headers={
                    "authorization": f"Bearer {ADMIN_KEY}",
                    "content-type": "application/json",
                },
                timeout_s=settings.cell_timeout_s,
            )
            pids = {"loadgen": os.getpid(), "server": server.pid, "upstream": upstream.pid}
            meter = CpuMeter(pids)
            memory = MemorySampler({"server": server.pid})
            await asyncio.to_thread(settings.quiet.wait)
            summary = (await run_load(spec, Hooks(meter, memory))).summary()
        finally:
            procs.stop(server)
    finally:
        procs.stop(upstream)
    rps = summary["rps"] or math.nan
    row = {
        "scenario": "cache-semantic",
        "target": "iatros",
        "workers": 1,
        "label": "iatros-1w",
        **summary,
        "cpu_pct": meter.shares,
        "cpu_ms_per_request": {n: round(10 * meter.shares[n] / rps, 3) for n in pids if rps > 0},
        "memory": memory.result.get("server"),
    }
    hits = summary["cache_outcomes"].get("hit-semantic", 0)
    print(
        f"  cache-semantic iatros-1w c={row['concurrency']} {row['rps']:.1f} req/s "
        f"p50 {row['latency_ms']['p50']:.1f} p99 {row['latency_ms']['p99']:.1f} ms "
        f"outcomes {summary['cache_outcomes']} primed {primed}",
        flush=True,
    )
    return {
        "question": QUESTION,
        "paraphrases": list(PARAPHRASES),
        "primed": primed,
        "semantic_hit_share": round(hits / summary["completed"], 4) if summary["completed"] else 0,
        "idle_rss_mib": mib(idle["rss_bytes"]),
        "command": server.command,
        "started_during_soak": "semantic" in procs.started_ahead,
        "config": semantic_config(upstream),
        "litellm": "not measured: LiteLLM's semantic caches need Redis Stack (RediSearch) or "
        "Qdrant plus an embedding model behind an API; its local cache is exact-only",
        "rows": [row],
    }
