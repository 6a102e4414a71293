"""Retrieval: hybrid search (dense + BM25) fused into one ranking, then passages.

The dense and the lexical index each return their best ``candidates``; the two lists
are fused (z-score by default, reciprocal rank fusion on request) and the top keys are
turned into passages with their text, page, section and metadata. A passage's
``score`` is always the query-passage cosine (what ``min_score`` and escalation use),
whichever list found it, so the score means the same in every mode and backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from iatros.knowledge.backends.base import Hits, Scope
from iatros.knowledge.context import Context
from iatros.knowledge.filters import parse_filters
from iatros.knowledge.names import check_collection, check_tenant
from iatros.knowledge.store import CollectionRef, Key
from iatros.knowledge.text import snippet, terms
from iatros.knowledge.types import NotFound, Passage, SearchMode

RerankFn = Callable[[str, list[str]], Awaitable[list[float]]]


class Retriever:
    """Searches one tenant's collection (see the module docstring).

    Args:
        ctx: the shared store, backend and settings.
        rerank: optional async ``(query, texts) -> scores`` applied to the top hybrid
            hits (no cross-encoder ships offline with Iatros, so none is used by default).
    """

    def __init__(self, ctx: Context, rerank: RerankFn | None = None) -> None:
        self.ctx = ctx
        self.rerank = rerank

    async def search(
        self,
        tenant: str,
        collection: str,
        query: str,
        k: int | None = None,
        filters: dict[str, Any] | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Passage]:
        """The ``k`` best passages for ``query`` (raises NotFound for an unknown collection).

        Filters match document fields (``document_id``, ``document``, ``content_type``),
        chunk fields (``page``, ``section``) or keys of the metadata given at ingestion:
        a value, a list of values, or for numbers a range ``{"gte": 2, "lte": 5}``.
        """
        check_tenant(tenant)
        check_collection(collection)
        if mode not in ("hybrid", "dense", "lexical"):
            raise ValueError(f"unknown search mode {mode!r}")
        k = k or self.ctx.settings.top_k
        if not query.strip():
            return []
        scope = await self.ctx.run(self._scope, tenant, collection, filters or {})
        if scope is None:
            return []
        vector = None
        if mode != "lexical":
            vector = (await self.ctx.embed_texts([query]))[0]
        if self.rerank is None or mode != "hybrid":
            return await self.ctx.run(self._search_sync, scope, query, vector, k, mode)
        passages = await self.ctx.run(self._search_sync, scope, query, vector, max(k, 20), mode)
        scores = await self.rerank(query, [p.text for p in passages])
        order = sorted(range(len(passages)), key=lambda i: -scores[i])[:k]
        return [dataclasses.replace(passages[i], rank_score=float(scores[i])) for i in order]

    def _scope(self, tenant: str, collection: str, filters: dict[str, Any]) -> Scope | None:
        """The collection and its filters; None when the filters can match nothing."""
        store, backend = self.ctx.store, self.ctx.backend
        if backend.shared:
            conditions = parse_filters(filters)  # the same 400 for the same mistake
            ref = store.collection(tenant, collection)
            if ref is None:
                if not backend.has_collection(tenant, collection):
                    raise NotFound(f"no collection {collection!r}")
                ref = CollectionRef(-1, tenant, collection, "", 0)  # another instance's
            return Scope(ref, None, conditions)
        ref = store.require_collection(tenant, collection)
        if not filters:
            return Scope(ref)
        allowed = store.allowed_keys(ref, filters)
        return Scope(ref, allowed) if len(allowed) else None

    def _search_sync(
        self,
        scope: Scope,
        query: str,
        vector: npt.NDArray[np.float32] | None,
        k: int,
        mode: SearchMode,
    ) -> list[Passage]:
        settings, backend = self.ctx.settings, self.ctx.backend
        depth = max(settings.candidates, k)
        dense: Hits = []
        lexical: Hits = []
        if vector is not None:
            dense = backend.search_dense(scope, vector, depth)
        if mode != "dense":
            lexical = backend.search_lexical(scope, terms(query), depth)
        if mode == "hybrid" and settings.fusion == "rrf":
            ranked = reciprocal_rank_fusion([dense, lexical], settings.rrf_k)
        elif mode == "hybrid":
            weight = settings.dense_weight
            ranked = zscore_fusion([dense, lexical], [weight, 1.0 - weight])
        else:
            ranked = dense if mode == "dense" else lexical
        wanted = [key for key, _ in ranked[: k * 2 + 10]]
        rows = backend.rows(self.ctx.store, scope, wanted)
        passages: list[Passage] = []
        for key, rank_score in ranked:
            row = rows.get(key)
            if row is None:
                continue
            if vector is not None:
                norm = float(np.linalg.norm(row.vector)) or 1.0
                score = max(0.0, min(1.0, float(row.vector @ vector) / norm))
            else:
                score = rank_score / (rank_score + 10.0)
            passages.append(
                Passage(
                    document_id=row.document_id,
                    document=row.document,
                    page=row.page,
                    chunk_id=str(key),
                    text=row.text,
                    snippet=snippet(row.text, query),
                    score=round(score, 4),
                    rank_score=round(rank_score, 6),
                    section=row.section,
                    collection=scope.ref.name,
                    metadata=row.metadata,
                )
            )
            if len(passages) >= k:
                break
        return passages


def _tie_order(key: Key) -> tuple[int, int, str]:
    """Equal scores in key order (numeric for store keys), so results are reproducible."""
    return (0, key, "") if isinstance(key, int) else (1, 0, key)


def zscore_fusion(rankings: Sequence[Hits], weights: Sequence[float]) -> Hits:
    """Fuse scored lists: sum of weight * (score - mean) / std over each list's candidates.

    Unlike rank fusion this keeps how far ahead a hit is: a BM25 hit far above the rest
    is not outvoted by a dense list whose top scores are all alike. A key missing from
    a list counts as that list's average (0).
    """
    scores: dict[Key, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking or not weight:
            continue
        values = np.fromiter((s for _, s in ranking), dtype=np.float64, count=len(ranking))
        mean, std = float(values.mean()), float(values.std()) or 1.0
        for key, score in ranking:
            scores[key] = scores.get(key, 0.0) + weight * (score - mean) / std
    return sorted(scores.items(), key=lambda kv: (-kv[1], _tie_order(kv[0])))


def reciprocal_rank_fusion(rankings: Sequence[Hits], k: int = 60) -> Hits:
    """Fuse ranked lists: score(key) = sum over lists of 1 / (k + rank), rank from 1."""
    scores: dict[Key, float] = {}
    for ranking in rankings:
        for rank, (key, _) in enumerate(ranking, 1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], _tie_order(kv[0])))
