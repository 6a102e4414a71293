"""Cache benchmark: exact hits through the HTTP API, semantic lookups at 100k entries, hit ratio.

1. **Exact hits**: Iatros (one worker; in-process cache, then Redis) in front of the fake
   upstream; one question is answered once, then 100 and 500 clients ask it again and
   again, as fast as answered (closed loop) and paced to 3,000 req/s in all.
2. **Semantic lookup at 100k entries, embedding included**: a ResponseCache holds 100,000
   semantic entries (random unit vectors, the index's worst case: no structure to exploit);
   each lookup embeds a real question with the local MiniLM and searches the index.
3. **Hit ratio on a replayed workload**: 5,000 questions drawn from 1,000 distinct ones
   with a Zipf law (s = 1.1: a few questions are asked very often, most rarely), looked up
   and stored as the gateway does.

    python bench/cache_bench.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from iatros.cache import CachedResponse, CacheRequest, CacheSettings, ResponseCache
from loadgen import LoadSpec, distribution, run_load
from procs import Processes, raise_fd_limit, start_fake_upstream, start_iatros
from scenarios.passthrough import CACHE_SECRET, REDIS_URL, redis_ready

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "sk-bench-cache-0123456789abcdefghijk"
TARGET_RPS = 3000.0
"""The exact-hit throughput target; the paced cells offer this rate."""


async def exact_hits(
    workdir: Path, durations: tuple[float, float], backend: str
) -> list[dict[str, Any]]:
    """One Iatros worker with the given cache backend (Redis: the local server, flushed)."""
    rows = []
    with Processes(workdir) as procs:
        upstream = start_fake_upstream(procs, 50)
        config: dict[str, Any] = {
            "providers": {"fake": {"type": "openai", "base_url": upstream.url + "/v1"}},
            "deployments": {"fake": {"provider": "fake", "model": "fake"}},
            "models": {"assistant": {"deployments": ["fake"]}},
            "embeddings": {"default_model": None},
        }
        if backend == "redis":
            config["cache"] = {
                "backend": "redis",
                "redis_url": REDIS_URL,
                "tag_secret": CACHE_SECRET,
                "key_prefix": "iatros-bench:",
            }
        iatros = start_iatros(procs, f"iatros-cache-{backend}", config, KEY)
        body = orjson.dumps(
            {
                "model": "assistant",
                "messages": [{"role": "user", "content": "What is a dental crown?"}],
            }
        )
        # Closed loop (each client sends again as soon as answered): the capacity, with
        # latency ~ clients / throughput (Little's law). Then the same clients paced to
        # the target rate: the latency a client sees at that throughput.
        for clients in (100, 500):
            for rate in (None, TARGET_RPS):
                spec = LoadSpec(
                    iatros.url + "/v1/chat/completions",
                    body,
                    clients,
                    durations[0],
                    warmup_s=durations[1],
                    headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
                    rate_per_s=rate,
                )
                logged = iatros.log_path.stat().st_size
                summary = (await run_load(spec)).summary()
                row = {
                    k: summary[k]
                    for k in (
                        "concurrency",
                        "rps",
                        "latency_ms",
                        "latency_from_schedule_ms",
                        "overhead_ms",
                        "errors",
                        "cache_outcomes",
                        "generator_lag_ms",
                    )
                }
                stalls = _stalls_logged(iatros.log_path, logged)
                rows.append({**row, "offered_rps": rate, "backend": backend, "stalls": stalls})
    return rows


def _stalls_logged(log_path: Path, offset: int) -> list[dict[str, Any]]:
    """The server's "event loop stalled" reports written since ``offset`` (its watchdog)."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    stalls = []
    for line in text.splitlines():
        if '"event loop stalled"' not in line:
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(line[line.index("{") :])
            stalls.append(
                {
                    "silent_ms": event.get("silent_ms"),
                    "watchdog_late_ms": event.get("watchdog_late_ms"),
                    "stack": event.get("stack", ""),
                }
            )
    return stalls


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def semantic_lookups(entries: int, lookups: int) -> dict[str, Any]:
    """Lookups embed through the gateway's own embedding provider (its runtimes, its thread)."""
    from iatros.providers.embeddings import EmbeddingOptions, SentenceTransformerProvider

    provider = SentenceTransformerProvider("minilm", EmbeddingOptions())
    await provider.start()
    await provider.wait_ready(timeout_s=300)
    rng = np.random.default_rng(3)
    vectors = iter(_unit(rng, entries))
    use_real = False

    async def real(texts: list[str]) -> list[list[float]]:
        return (await provider.embed(None, texts)).vectors  # type: ignore[arg-type]

    async def embed(texts: list[str]) -> list[list[float]]:
        if use_real:
            return await real(texts)
        return [next(vectors).tolist() for _ in texts]

    settings = CacheSettings(semantic=True, max_memory_bytes=2 * 1024**3)
    cache = ResponseCache(settings, embed=embed)
    await cache.start()
    answer = CachedResponse(
        {"role": "assistant", "content": "ok"}, "stop", 5, 5, "fake", time.time()
    )
    started = time.perf_counter()
    for i in range(entries):
        req = CacheRequest("bench", "assistant", "", [{"role": "user", "content": f"q{i}"}])
        await cache.store(req, answer)
    fill_s = time.perf_counter() - started
    use_real = True
    for i in range(20):  # warm up the kernels for these input shapes, as a server would be
        await real([f"Warm-up question number {i} about fillings?"])
    questions = [
        f"How long should I wait to eat after a filling number {i}?" for i in range(lookups)
    ]
    times = []
    for text in questions:
        req = CacheRequest("bench", "assistant", "", [{"role": "user", "content": text}])
        t = time.perf_counter()
        await cache.lookup(req)
        times.append(time.perf_counter() - t)
    embed_times = []
    for text in questions[:50]:
        t = time.perf_counter()
        await real([text])
        embed_times.append(time.perf_counter() - t)
    runtime = "onnxruntime" if provider._onnx is not None else "pytorch"
    await cache.close()
    await provider.close()
    # The same questions on PyTorch alone, side by side (onnx_max_tokens=0 turns ONNX off).
    torch_only = SentenceTransformerProvider("minilm", EmbeddingOptions(onnx_max_tokens=0))
    await torch_only.start()
    await torch_only.wait_ready(timeout_s=300)
    torch_times = []
    for i, text in enumerate(questions[:70]):
        t = time.perf_counter()
        await torch_only.embed(None, [text])  # type: ignore[arg-type]
        if i >= 20:  # the first ones warm the kernels up
            torch_times.append(time.perf_counter() - t)
    await torch_only.close()
    return {
        "entries": entries,
        "fill_s": round(fill_s, 1),
        "embedding_runtime": runtime,
        "lookup_ms_including_embedding": distribution(times, 1000),
        "embedding_alone_ms": distribution(embed_times, 1000),
        "embedding_alone_ms_pytorch_only": distribution(torch_times, 1000),
    }


async def zipf_hit_ratio(requests: int, distinct: int) -> dict[str, Any]:
    rng = random.Random(5)
    weights = [1 / (rank**1.1) for rank in range(1, distinct + 1)]
    questions = [f"Question number {i} about dental care?" for i in range(distinct)]
    cache = ResponseCache(CacheSettings())
    await cache.start()
    hits = 0
    answer = CachedResponse(
        {"role": "assistant", "content": "ok"}, "stop", 10, 20, "fake", time.time()
    )
    asked = rng.choices(questions, weights=weights, k=requests)
    for text in asked:
        req = CacheRequest("bench", "assistant", "", [{"role": "user", "content": text}])
        if await cache.lookup(req) is not None:
            hits += 1
        else:
            await cache.store(req, answer)
    await cache.close()
    seen = len(set(asked))
    return {
        "requests": requests,
        "distinct": distinct,
        "zipf_s": 1.1,
        "hit_ratio": round(hits / requests, 4),
        "best_possible": round((requests - seen) / requests, 4),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Cache benchmark — {result['date']}",
        "",
        "## Exact hits through the HTTP API (one Iatros worker)",
        "",
        "Closed loop: each client sends again as soon as it is answered (the capacity; "
        "latency is then about clients / throughput, by Little's law). Paced: the same "
        f"clients together offer {TARGET_RPS:,.0f} req/s (the throughput target), and the "
        "latency is what a client sees at that rate; the last latency column counts from "
        "each request's slot in the schedule, so a request sent late is charged for it "
        "(no coordinated omission). The load generator runs on the same two cores, with "
        "its garbage collector off during a cell (its pauses would be charged to the "
        "server). The generator's own lateness (its event loop, ticked every 10 ms) is "
        "in the last column: a late generator reads answers late, which is not the "
        "server's doing.",
        "",
        "| cache | clients | load | req/s | latency p50 / p95 / p99 (ms) "
        "| overhead header p99 (ms) | errors | outcomes | from the schedule p50 / p99 (ms) "
        "| generator late p99 / max (ms) |",
        "|---|---:|---|---:|---|---:|---:|---|---|---|",
    ]
    for row in result["exact"]:
        lat = row["latency_ms"]
        over = row["overhead_ms"] or {}
        offered = row.get("offered_rps")
        load = "closed loop" if offered is None else f"paced, {offered:,.0f} req/s"
        sched = row.get("latency_from_schedule_ms")
        from_slot = f"{sched['p50']} / {sched['p99']}" if sched else "-"
        backend = "Redis" if row.get("backend") == "redis" else "in-process"
        gen = row.get("generator_lag_ms") or {}
        lines.append(
            f"| {backend} | {row['concurrency']} | {load} | {row['rps']} | "
            f"{lat['p50']} / {lat['p95']} / "
            f"{lat['p99']} | {over.get('p99', '-')} | {row['errors']} | "
            f"{row['cache_outcomes']} | {from_slot} | "
            f"{gen.get('p99', '-')} / {gen.get('max', '-')} |"
        )
    stalled = [row for row in result["exact"] if row.get("stalls")]
    if stalled:
        lines += [
            "",
            "Stalls the server's watchdog logged (the event loop ran nothing for 500 ms or "
            "more), with where the loop was stuck at the first one of each cell:",
            "",
        ]
        for row in stalled:
            first = row["stalls"][0]
            where = " <- ".join(
                frame.strip().splitlines()[0]
                for frame in reversed(first["stack"].split("  File ")[-3:])
                if frame.strip()
            )
            lines.append(
                f"- {row.get('backend')}, {row['concurrency']} clients, "
                f"{'closed loop' if row.get('offered_rps') is None else 'paced'}: "
                f"{len(row['stalls'])} stall(s), the first {first['silent_ms']} ms "
                f"(watchdog {first['watchdog_late_ms']} ms late) in {where}"
            )
    if result.get("redis_problem"):
        lines += ["", f"Redis rows skipped: {result['redis_problem']}."]
    sem = result["semantic"]
    lat = sem["lookup_ms_including_embedding"]
    emb = sem["embedding_alone_ms"]
    torch_emb = sem["embedding_alone_ms_pytorch_only"]
    zipf = result["zipf"]
    lines += [
        "",
        "## Semantic lookup",
        "",
        f"{sem['entries']:,} entries (random unit vectors); a lookup embeds a real question "
        f"with MiniLM (through the gateway's embedding provider, on "
        f"{sem.get('embedding_runtime', 'pytorch')}) and searches: p50 {lat['p50']} ms, "
        f"p95 {lat['p95']} ms, p99 "
        f"{lat['p99']} ms (the embedding alone: p50 {emb['p50']} ms, p99 {emb['p99']} ms; "
        f"on PyTorch alone, measured in the same run: p50 {torch_emb['p50']} ms, "
        f"p99 {torch_emb['p99']} ms).",
        "",
        "## Hit ratio on a replayed workload",
        "",
        f"{zipf['requests']:,} requests over {zipf['distinct']:,} distinct questions "
        f"(Zipf s = {zipf['zipf_s']}): hit ratio **{zipf['hit_ratio']:.1%}** (the most "
        f"an exact cache can reach here: {zipf['best_possible']:.1%}).",
        "",
        "Targets: exact hits >= 3,000 req/s and p99 < 10 ms at 100 and 500 clients; "
        "semantic lookup p99 < 15 ms at 100k entries including the embedding.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Cache benchmark.")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    raise_fd_limit()
    entries, lookups = (2_000, 20) if args.smoke else (100_000, 2_000)
    durations = (1.0, 0.5) if args.smoke else (8.0, 2.0)
    with tempfile.TemporaryDirectory(prefix="iatros-cache-bench-") as work:
        exact = asyncio.run(exact_hits(Path(work), durations, "memory"))
    redis_problem = redis_ready()
    if redis_problem is None:
        with tempfile.TemporaryDirectory(prefix="iatros-cache-bench-") as work:
            exact += asyncio.run(exact_hits(Path(work), durations, "redis"))
    else:
        print(f"Redis rows skipped: {redis_problem}")
    semantic = asyncio.run(semantic_lookups(entries, lookups))
    zipf = asyncio.run(
        zipf_hit_ratio(1_000 if args.smoke else 5_000, 1_000 if not args.smoke else 200)
    )
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    result = {
        "date": date,
        "command": " ".join(["python", "bench/cache_bench.py", *sys.argv[1:]]),
        "exact": exact,
        "redis_problem": redis_problem,
        "semantic": semantic,
        "zipf": zipf,
    }
    out = Path(tempfile.mkdtemp(prefix="iatros-cache-")) if args.smoke else RESULTS
    (out / f"cache-{date}.json").write_text(json.dumps(result, indent=2))
    (out / "cache-latest.md").write_text(markdown(result))
    print(markdown(result))
    errors = sum(row["errors"] for row in exact)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
