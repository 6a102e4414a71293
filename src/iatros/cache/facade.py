"""The response cache as the pipeline sees it: lookup, store, invalidate, and nothing fails.

Lookups go exact first (a keyed hash of the normalised request), then, when the route
opts in, semantic: the last user question is embedded and compared with earlier
questions of the same *scope* (tenant, model, deployment choice, system prompt and
earlier turns, parameters, patient, knowledge collection and version). A candidate is
served only if it is above the similarity threshold *and* the clinical guard finds the
same decisive details in both questions (:mod:`iatros.cache.guard`).

Backend trouble never reaches the client: a failing or slow backend makes lookups miss
and stores no-ops, counted in ``iatros_cache_errors_total``. Invalidation is the one
exception: it raises :class:`CacheUnavailable`, because an invalidation that silently
did nothing would leave patient data in the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry

from iatros.cache.backends import BackendFactory, BackendHooks
from iatros.cache.backends.base import Backend, SemanticRow
from iatros.cache.codec import DecodeError, decode_entry, encode_entry
from iatros.cache.guard import CATEGORIES, explain_guard, signature
from iatros.cache.index import Candidate, Vector, unit_vector, use_one_blas_thread
from iatros.cache.keys import KeyMaker
from iatros.cache.metrics import CacheMetrics
from iatros.cache.model import CachedResponse, CacheRequest, HitKind, RequestType
from iatros.cache.request_type import classify as classify_request
from iatros.cache.settings import CacheSettings
from iatros.errors import ServiceUnavailable
from iatros.plugins import CACHE_BACKENDS, load_one

log = logging.getLogger("iatros.cache")

T = TypeVar("T")
EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]

SEMANTIC_CANDIDATES = 4
"""Candidates above the threshold checked by the guard before giving up."""
_EMBED_MEMO = 1024
"""Recent question embeddings kept, so the store after a miss does not embed again."""
_WARN_EVERY_S = 10.0


class CacheUnavailable(ServiceUnavailable):
    """The cache backend could not carry out an invalidation (retry it)."""


class _Failed:
    """Marker for a backend call that failed (already counted and logged)."""


_FAILED = _Failed()


def _backend_factory(obj: object) -> BackendFactory:
    if not callable(obj):
        raise TypeError("a cache backend entry point must name a factory")
    return obj


class _Core:
    """What every route view of one cache shares: backend, keys, metrics, embeddings."""

    def __init__(
        self,
        settings: CacheSettings,
        embed: EmbedFn | None,
        registry: CollectorRegistry,
        clock: Callable[[], float],
    ) -> None:
        secret = (
            settings.tag_secret.get_secret_value().encode()
            if settings.tag_secret is not None
            else os.urandom(32)
        )
        self.keys = KeyMaker(secret)
        self.metrics = CacheMetrics(registry)
        self.embed = embed
        self.clock = clock
        self.prices: dict[str, tuple[float, float]] = {}
        self.memo: OrderedDict[str, Vector] = OrderedDict()
        self.warned: dict[tuple[str, str], float] = {}
        # Chosen among the iatros.cache_backends entry points, built-ins included.
        factory = load_one(CACHE_BACKENDS, settings.backend, _backend_factory)
        hooks = BackendHooks(self.background_error, self.metrics.decode_errors.inc, clock)
        self.backend: Backend = factory(settings, hooks)
        self.metrics.watch_entries(self.backend.entry_count)

    def background_error(self, op: str, exc: BaseException) -> None:
        self.metrics.errors.labels(self.backend.name, op).inc()
        self.warn(self.backend.name, op, exc)

    def warn(self, backend: str, op: str, exc: BaseException) -> None:
        """Log a failure without content, at most every few seconds per operation."""
        now = time.monotonic()
        if now - self.warned.get((backend, op), -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self.warned[(backend, op)] = now
            log.warning(
                "cache %s failed during %s; continuing uncached",
                backend,
                op,
                extra={"backend": backend, "op": op, "error": type(exc).__name__},
            )


class ResponseCache:
    """Exact and semantic response cache (see the module docstring).

    Args:
        settings: backend and default policy. Route policies come from
            :meth:`with_overrides`, which shares this cache's backend.
        embed: async text embedder (the local MiniLM); without it the cache is exact-only.
        metrics_registry: where the ``iatros_cache_*`` metrics are registered (a private
            registry when None).
        clock: wall-clock seconds, for TTLs (tests may pass a fake one).
    """

    def __init__(
        self,
        settings: CacheSettings,
        *,
        embed: EmbedFn | None = None,
        metrics_registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._core = _Core(settings, embed, metrics_registry or CollectorRegistry(), clock)

    @classmethod
    def _view(cls, core: _Core, settings: CacheSettings) -> ResponseCache:
        view = cls.__new__(cls)
        view.settings = settings
        view._core = core
        return view

    def with_overrides(self, overrides: Mapping[str, Any]) -> ResponseCache:
        """This cache under a route's policy (``semantic``, ``ttl_s``, threshold...).

        The view shares the backend, metrics and embedder; build it once per route at
        start-up. Only the original cache needs :meth:`start` and :meth:`close`.
        """
        return self._view(self._core, self.settings.with_overrides(overrides))

    @property
    def metrics_registry(self) -> CollectorRegistry:
        return self._core.metrics.registry

    @property
    def backend(self) -> Backend:
        return self._core.backend

    async def start(self) -> None:
        if self._core.embed is not None and not use_one_blas_thread():
            log.info("threadpoolctl is missing: vector search may have latency spikes")
        await self._core.backend.start()

    async def close(self) -> None:
        await self._core.backend.close()

    def set_prices(self, prices: Mapping[str, tuple[float, float]]) -> None:
        """Prices per 1k (prompt, completion) tokens by deployment, for the cost saved."""
        self._core.prices = dict(prices)

    # -- policy ---------------------------------------------------------------------------

    def classify(self, req: CacheRequest) -> RequestType:
        """The request type that picks the TTL: ``patient``, ``practice`` or ``general``."""
        kind = req.request_type
        if kind is None:
            kind = req.request_type = classify_request(req)
        return kind

    def ttl_for(self, req: CacheRequest) -> int:
        """Seconds an answer to ``req`` would be kept; 0 means it is never cached (bypass)."""
        return self._ttl(req, self.classify(req))

    def _ttl(self, req: CacheRequest, kind: RequestType) -> int:
        policy: int = getattr(self.settings.ttl_s, kind)
        override = req.ttl_override_s
        if override is None:
            return policy
        if kind == "patient":
            return min(policy, max(0, override))  # a request can shorten, never enable
        return max(0, override)

    def explain_guard(self, q1: str, q2: str) -> tuple[bool, str]:
        """Whether the clinical guard lets one question's answer serve the other, and why."""
        return explain_guard(q1, q2)

    # -- lookup ---------------------------------------------------------------------------

    async def lookup(
        self, req: CacheRequest, *, semantic: bool | None = None
    ) -> CachedResponse | None:
        """The cached answer for ``req``, or None (a miss, a bypass or a backend failure)."""
        settings = self.settings
        if not settings.enabled:
            return None
        started = time.perf_counter()
        core = self._core
        try:
            kind = self.classify(req)
            if self._ttl(req, kind) <= 0:
                return None
            key = core.keys.exact_key(req)
        except Exception as exc:  # a malformed request is uncached, not an error
            core.warn("cache", "key", exc)
            return None
        if key is None:
            return None
        raw = await self._call("get", core.backend.get(key))
        if isinstance(raw, bytes):
            found = await self._decode(key, raw)
            if found is not None:
                core.metrics.tally.inc(core.metrics.exact_hit)
                return self._hit(found, "exact", None, started)
        core.metrics.tally.inc(core.metrics.exact_miss)
        if raw is _FAILED:
            return None
        use_semantic = settings.semantic if semantic is None else semantic
        if not use_semantic or core.embed is None or kind == "patient":
            return None  # one patient's details never answer another's question by meaning
        try:
            semantic_hit = await self._semantic_lookup(req)
        except Exception as exc:  # a bug or an odd request must not fail the request
            core.metrics.errors.labels("cache", "semantic").inc()
            core.warn("cache", "semantic", exc)
            semantic_hit = None
        if semantic_hit is None:
            core.metrics.tally.inc(core.metrics.semantic_miss)
            return None
        core.metrics.tally.inc(core.metrics.semantic_hit)
        return self._hit(semantic_hit[0], "semantic", semantic_hit[1], started)

    async def _question_vector(self, req: CacheRequest) -> tuple[Any, Vector] | None:
        """The semantic parts of ``req`` and their embedding; None when it has none."""
        settings = self.settings
        parts = self._core.keys.semantic_parts(
            req,
            max_turns=settings.semantic_max_turns,
            max_chars=settings.semantic_max_chars,
            embedding_model=settings.embedding_model,
        )
        if parts is None:
            return None
        vector = await self._embedding(parts.embed_text)
        return None if vector is None else (parts, vector)

    async def _semantic_lookup(self, req: CacheRequest) -> tuple[CachedResponse, float] | None:
        settings, core = self.settings, self._core
        question = await self._question_vector(req)
        if question is None:
            return None
        parts, vector = question
        candidates = await self._call(
            "search",
            core.backend.search(
                parts.scope, vector, settings.semantic_threshold, SEMANTIC_CANDIDATES
            ),
        )
        if not isinstance(candidates, list) or not candidates:
            return None
        wanted = signature(parts.question).encode()
        for candidate in candidates:
            if candidate.signature != wanted:
                self._count_refusal(wanted, candidate)
                continue
            raw = await self._call("get", core.backend.get(candidate.entry_id))
            if raw is _FAILED:
                return None
            if isinstance(raw, bytes):
                found = await self._decode(candidate.entry_id, raw)
                if found is not None:
                    return found, candidate.similarity
        return None

    def _count_refusal(self, wanted: bytes, candidate: Candidate) -> None:
        detail = "version"
        try:
            mine, theirs = orjson.loads(wanted), orjson.loads(candidate.signature)
            if mine[0] == theirs[0]:
                for name, a, b in zip(CATEGORIES, mine[1:], theirs[1:], strict=True):
                    if a != b:
                        detail = name
                        break
        except (orjson.JSONDecodeError, TypeError, ValueError, IndexError):
            detail = "unreadable"
        self._core.metrics.guard_refusals.labels(detail).inc()

    def _hit(
        self, found: CachedResponse, kind: HitKind, similarity: float | None, started: float
    ) -> CachedResponse:
        metrics = self._core.metrics
        tally = metrics.tally
        found.kind = kind
        found.similarity = similarity
        tally.inc(metrics.tokens_saved[kind], found.prompt_tokens + found.completion_tokens)
        price = self._core.prices.get(found.deployment)
        if price is not None:
            cost = (found.prompt_tokens * price[0] + found.completion_tokens * price[1]) / 1000
            tally.inc(metrics.cost_saved[kind], cost)
        tally.observe(metrics.hit_latency[kind], time.perf_counter() - started)
        return found

    async def _decode(self, entry_id: str, raw: bytes) -> CachedResponse | None:
        """Decode an entry; a corrupt one is deleted and counted, never served."""
        try:
            return decode_entry(raw)
        except DecodeError:
            self._core.metrics.decode_errors.inc()
            await self._call("delete", self._core.backend.delete(entry_id))
            return None

    # -- store ----------------------------------------------------------------------------

    async def store(
        self, req: CacheRequest, resp: CachedResponse, *, semantic: bool | None = None
    ) -> bool:
        """Keep ``resp`` as the answer to ``req``; False when policy or the backend said no."""
        settings, core = self.settings, self._core
        if not settings.enabled:
            return False
        try:
            kind = self.classify(req)
            ttl = self._ttl(req, kind)
            key = core.keys.exact_key(req) if ttl > 0 else None
            tags = core.keys.tags(req)
            value = encode_entry(resp)
        except Exception as exc:
            core.warn("cache", "key", exc)
            core.metrics.stores.labels("unkeyable").inc()
            return False
        if ttl <= 0:
            core.metrics.stores.labels("not_cacheable").inc()
            return False
        if key is None:
            core.metrics.stores.labels("unkeyable").inc()
            return False
        use_semantic = settings.semantic if semantic is None else semantic
        row = None
        if use_semantic and core.embed is not None and kind != "patient":
            row = await self._semantic_row(req)
        done = await self._call("put", core.backend.put(key, value, ttl, tags, row))
        if done is _FAILED:
            core.metrics.stores.labels("error").inc()
            return False
        core.metrics.stores.labels("stored").inc()
        return True

    async def _semantic_row(self, req: CacheRequest) -> SemanticRow | None:
        """What makes this answer findable by meaning; None when it should not be."""
        core = self._core
        try:
            found = await self._question_vector(req)
            if found is None:
                return None
            parts, vector = found
            return SemanticRow(parts.scope, vector, signature(parts.question).encode())
        except Exception as exc:  # store exact-only rather than not at all
            core.metrics.errors.labels("cache", "semantic").inc()
            core.warn("cache", "semantic", exc)
            return None

    # -- invalidation -----------------------------------------------------------------------

    async def invalidate(
        self,
        *,
        tenant: str | None = None,
        patient_id: str | None = None,
        model: str | None = None,
        collection: str | None = None,
    ) -> int:
        """Drop every entry matching *all* the given filters; return how many were dropped.

        Raises:
            ValueError: no filter given (a cache-wide flush is not an invalidation).
            CacheUnavailable: the backend failed; the entries may still be there.
        """
        core = self._core
        tags = core.keys.filter_tags(
            tenant=tenant, patient_id=patient_id, model=model, collection=collection
        )
        if not tags:
            raise ValueError("invalidate needs tenant, patient_id, model or collection")
        try:
            dropped = await core.backend.invalidate(tags)
        except Exception as exc:
            core.metrics.errors.labels(core.backend.name, "invalidate").inc()
            core.warn(core.backend.name, "invalidate", exc)
            raise CacheUnavailable("the cache could not be invalidated; retry") from exc
        core.metrics.invalidated.inc(dropped)
        return dropped

    # -- helpers ----------------------------------------------------------------------------

    async def _call(self, op: str, call: Awaitable[T]) -> T | _Failed:
        """Await a backend call; a failure is counted, logged without content, and absorbed."""
        core = self._core
        try:
            return await call
        except Exception as exc:
            core.metrics.errors.labels(core.backend.name, op).inc()
            core.warn(core.backend.name, op, exc)
            return _FAILED

    async def _embedding(self, text: str) -> Vector | None:
        core = self._core
        memo = core.memo
        vector = memo.get(text)
        if vector is not None:
            memo.move_to_end(text)
            return vector
        if core.embed is None:
            return None
        try:
            async with asyncio.timeout(self.settings.embed_timeout_s):
                vectors = await core.embed([text])
            vector = unit_vector(vectors[0]) if len(vectors) == 1 else None
        except Exception as exc:
            core.metrics.errors.labels("embed", "embed").inc()
            core.warn("embed", "embed", exc)
            return None
        if vector is None:
            core.metrics.errors.labels("embed", "bad_vector").inc()
            return None
        memo[text] = vector
        if len(memo) > _EMBED_MEMO:
            memo.popitem(last=False)
        return vector
