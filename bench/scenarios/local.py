"""Local-model tokens/s: llama-cpp-python called directly vs the same model through Iatros.

The direct side mirrors what ``LocalProvider`` does (same GGUF, prompt, sampling
parameters, token counting), so the ratio is the cost of the gateway around
the model: queueing, thread hand-off, HTTP and SSE. The modes take turns, round
after round, and never overlap: the machine has two cores and both generate.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson

from procs import (
    Processes,
    Server,
    cpu_seconds,
    machine_busy_seconds,
    start_iatros,
)
from settings import ADMIN_KEY, BenchSettings, iatros_has_setting

DEPLOYMENT = "gemma-3-270m"
MODEL = "assistant"
MODES = ("direct", "iatros-stream", "iatros-nonstream")


@dataclass
class Generation:
    round: int
    mode: str
    question: int
    completion_tokens: int
    wall_s: float
    ttft_s: float | None
    answer: str

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0


def iatros_config(settings: BenchSettings) -> dict[str, Any]:
    """Only the local provider, with the provider's own defaults (n_ctx, n_batch, penalty).

    The response cache is off: the same questions come back every round and must be
    generated every time.
    """
    config: dict[str, Any] = {
        "log_level": "info",
        "providers": {
            "local": {"type": "local", "models_dir": str(settings.models_dir), "max_queue": 8}
        },
        "deployments": {
            DEPLOYMENT: {
                "provider": "local",
                "model": DEPLOYMENT,
                "context_window": 2048,
                "max_output_tokens": 256,
            }
        },
        "models": {MODEL: {"deployments": [DEPLOYMENT]}},
        "embeddings": {"default_model": None},
    }
    if iatros_has_setting("cache"):
        config["cache"] = {"enabled": False}
    return config


class DirectLlama:
    """llama-cpp-python in this process, called the way ``LocalProvider._generate`` calls it.

    Iatros is imported here, not at module level, so that ``run.py --rev`` can put
    another revision's sources on the path first.
    """

    def __init__(self, settings: BenchSettings) -> None:
        from llama_cpp import Llama

        from iatros.providers.local import LocalOptions, default_model_path
        from iatros.providers.prompt import STOP_SEQUENCES, build_prompt

        self.defaults = LocalOptions()
        self.stop = list(STOP_SEQUENCES)
        self.build_prompt = build_prompt
        self.path = default_model_path(settings.models_dir)
        self.params: dict[str, Any] = {
            "n_ctx": self.defaults.n_ctx,
            "n_threads": os.cpu_count() or 1,
            "n_batch": self.defaults.n_batch,
        }
        self.sampling: dict[str, Any] = {
            "temperature": 0.0,
            "top_p": 1.0,
            "repeat_penalty": self.defaults.repeat_penalty,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "stop": self.stop,
        }
        self.llm: Any = Llama(model_path=str(self.path), verbose=False, **self.params)

    def close(self) -> None:
        self.llm.close()

    def generate(self, question: str, max_tokens: int) -> tuple[int, float, float | None, str]:
        """(completion tokens, wall seconds, time to first token, answer), streaming."""
        llm = self.llm
        started = time.perf_counter()
        prompt = self.build_prompt([{"role": "user", "content": question}])
        prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True)
        stream = llm.create_completion(
            prompt_tokens,
            max_tokens=min(max_tokens, self.defaults.n_ctx - len(prompt_tokens)),
            seed=None,
            stream=True,
            **self.sampling,
        )
        pieces: list[str] = []
        ttft: float | None = None
        for out in stream:
            text = out["choices"][0]["text"]
            if text:
                if ttft is None:
                    ttft = time.perf_counter() - started
                pieces.append(text)
        completion = "".join(pieces)
        # Counted as the provider counts them (re-tokenised), so both sides agree.
        tokens = len(llm.tokenize(completion.encode("utf-8"), add_bos=False)) if completion else 0
        return tokens, time.perf_counter() - started, ttft, completion.strip()


async def _through_gateway(
    session: aiohttp.ClientSession, url: str, question: str, max_tokens: int, stream: bool
) -> tuple[int, float, float | None, str]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    ttft: float | None = None
    async with session.post(url, data=orjson.dumps(body)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"gateway answered {resp.status}: {(await resp.text())[:300]}")
        if not stream:
            data = orjson.loads(await resp.read())
            answer = str(data["choices"][0]["message"]["content"] or "")
            return (
                int(data["usage"]["completion_tokens"]),
                time.perf_counter() - started,
                None,
                answer.strip(),
            )
        pieces: list[str] = []
        tokens: int | None = None
        done = False
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: "):
                continue
            if line == b"data: [DONE]":
                done = True
                break
            chunk = orjson.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error event: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                content = choice.get("delta", {}).get("content")
                if content:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    pieces.append(content)
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    if not done or tokens is None:
        raise RuntimeError("stream ended without usage or [DONE]")
    return tokens, time.perf_counter() - started, ttft, "".join(pieces).strip()


async def run(settings: BenchSettings, procs: Processes) -> dict[str, Any]:
    """Alternate direct / gateway-stream / gateway-non-stream rounds; report medians, ratios."""
    gateway = start_iatros(procs, "iatros-local", iatros_config(settings), ADMIN_KEY)
    direct: DirectLlama | None = None
    try:
        direct = DirectLlama(settings)
        generations, cpu = await _rounds(settings, gateway, direct)
        direct_info = {
            "model_path": str(direct.path),
            "params": direct.params,
            "sampling": {**direct.sampling, "stream": True},
        }
    finally:
        if direct is not None:
            direct.close()
        procs.stop(gateway)
    summary = _summarise(generations)
    return {
        "commands": {"iatros": gateway.command},
        "iatros_config": iatros_config(settings),
        "direct": direct_info,
        "max_tokens": settings.local_max_tokens,
        "questions": list(settings.local_questions),
        "rounds": len({g.round for g in generations}),
        "rounds_planned": settings.local_rounds,
        "cpu_pct": cpu,
        **summary,
        "generations": [
            asdict(g) | {"tokens_per_s": round(g.tokens_per_s, 2)} for g in generations
        ],
    }


async def _rounds(
    settings: BenchSettings, gateway: Server, direct: DirectLlama
) -> tuple[list[Generation], dict[str, dict[str, float]]]:
    url = f"{gateway.url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
    pids = {"bench": os.getpid(), "iatros": gateway.pid}
    cpu_used = {mode: dict.fromkeys([*pids, "others"], 0.0) for mode in MODES}
    wall_used = dict.fromkeys(MODES, 0.0)
    generations: list[Generation] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:

        async def once(mode: str, question: str) -> tuple[int, float, float | None, str]:
            if mode == "direct":
                return direct.generate(question, settings.local_max_tokens)
            return await _through_gateway(
                session, url, question, settings.local_max_tokens, mode == "iatros-stream"
            )

        # Warm-up (not counted): caches, first-call allocations, the connection.
        for mode in MODES:
            await once(mode, settings.local_questions[-1])
        started = time.perf_counter()
        for rnd in range(settings.local_rounds):
            if rnd >= 2 and time.perf_counter() - started > settings.local_budget_s:
                # A busy machine slows llama.cpp down many times over: keep the run bounded.
                print(f"  local: time budget spent, stopping after {rnd} rounds", flush=True)
                break
            order = MODES[rnd % len(MODES) :] + MODES[: rnd % len(MODES)]
            for mode in order:
                settings.quiet.wait()
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                busy_before = machine_busy_seconds()[0]
                t0 = time.perf_counter()
                for qi, question in enumerate(settings.local_questions):
                    tokens, wall, ttft, answer = await once(mode, question)
                    generations.append(Generation(rnd, mode, qi, tokens, wall, ttft, answer))
                wall_used[mode] += time.perf_counter() - t0
                ours = 0.0
                for name, pid in pids.items():
                    used = cpu_seconds(pid) - before[name]
                    cpu_used[mode][name] += used
                    ours += used
                cpu_used[mode]["others"] += max(machine_busy_seconds()[0] - busy_before - ours, 0)
            print(f"  local round {rnd + 1}/{settings.local_rounds} done", flush=True)
    cpu = {
        mode: {
            name: round(100 * used / max(wall_used[mode], 1e-9), 1)
            for name, used in cpu_used[mode].items()
        }
        for mode in MODES
    }
    return generations, cpu


def _summarise(generations: list[Generation]) -> dict[str, Any]:
    """Per round and mode: total tokens / total wall time; then medians across rounds."""
    per_round: dict[str, list[float]] = {mode: [] for mode in MODES}
    ttfts: dict[str, list[float]] = {mode: [] for mode in MODES}
    rounds = sorted({g.round for g in generations})
    for mode in MODES:
        for rnd in rounds:
            gens = [g for g in generations if g.mode == mode and g.round == rnd]
            wall = sum(g.wall_s for g in gens)
            if gens and wall > 0:
                per_round[mode].append(sum(g.completion_tokens for g in gens) / wall)
        ttfts[mode] = [g.ttft_s for g in generations if g.mode == mode and g.ttft_s is not None]
    medians = {m: statistics.median(v) if v else 0.0 for m, v in per_round.items()}
    direct = medians["direct"]
    direct_answers = {(g.round, g.question): g.answer for g in generations if g.mode == "direct"}
    modes: dict[str, Any] = {}
    for mode in MODES:
        gens = [g for g in generations if g.mode == mode]
        same = sum(1 for g in gens if direct_answers.get((g.round, g.question)) == g.answer)
        paired = [gw / d for gw, d in zip(per_round[mode], per_round["direct"], strict=False) if d]
        modes[mode] = {
            "median_tokens_per_s": round(medians[mode], 2),
            "tokens_per_s_per_round": [round(v, 2) for v in per_round[mode]],
            "ratio_vs_direct": round(medians[mode] / direct, 4) if direct else None,
            "median_paired_ratio": round(statistics.median(paired), 4) if paired else None,
            "median_ttft_ms": round(1000 * statistics.median(ttfts[mode]), 1)
            if ttfts[mode]
            else None,
            "completion_tokens": sum(g.completion_tokens for g in gens),
            "generations": len(gens),
            "same_answer_as_direct": f"{same}/{len(gens)}",
        }
    return {"modes": modes}
