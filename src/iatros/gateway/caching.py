"""The cache step of the pipeline: build the cache request, look up, store, replay.

The cache library (:mod:`iatros.cache`) knows keys, policy and backends; this
module knows the gateway's request and response shapes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry

from iatros.cache import CachedResponse, CacheRequest, ResponseCache
from iatros.config import Settings
from iatros.gateway.context import RequestContext
from iatros.observability.spans import span
from iatros.providers.base import ChatCall, ChatResult, StreamDelta, Usage

EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]
CacheMode = Literal["default", "no-cache", "no-store", "refresh"]
_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed")


class CacheStep:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry,
        embed: EmbedFn | None,
    ) -> None:
        semantic = settings.cache.semantic or any(
            route.cache.get("semantic") for route in settings.models.values()
        )
        if not semantic:
            embed = None
        self.root = ResponseCache(settings.cache, embed=embed, metrics_registry=registry)
        self.root.set_prices(
            {
                name: (dep.price_per_1k_input, dep.price_per_1k_output)
                for name, dep in settings.deployments.items()
            }
        )
        self._views = {
            name: self.root.with_overrides(route.cache) if route.cache else self.root
            for name, route in settings.models.items()
        }

    async def start(self) -> None:
        await self.root.start()

    async def close(self) -> None:
        await self.root.close()

    async def invalidate(
        self,
        *,
        tenant: str | None = None,
        patient_id: str | None = None,
        model: str | None = None,
        collection: str | None = None,
    ) -> int:
        """Drop the entries matching all the given filters (at least one); how many went.

        The one way callers outside the cache forget answers (a document changed, an
        admin's purge), so none reaches into the cache's internals.
        """
        return await self.root.invalidate(
            tenant=tenant, patient_id=patient_id, model=model, collection=collection
        )

    def for_model(self, model: str) -> ResponseCache:
        return self._views.get(model, self.root)

    @staticmethod
    def request(
        ctx: RequestContext,
        call: ChatCall,
        *,
        pin: str | None,
        ttl_s: int | None,
        collection: str | None = None,
        collection_version: str | None = None,
        release_id: str | None = None,
    ) -> CacheRequest:
        """``release_id``: the release chosen for the request (an experiment's variant);
        it scopes the entry, so variants whose model, parameters or system prompt differ
        never serve each other's answers (and a promoted release starts afresh)."""
        params: dict[str, Any] = {k: getattr(call, k) for k in _PARAMS}
        params.update(call.extra)
        scope = pin or (f"release={release_id}" if release_id else "")
        return CacheRequest(
            tenant=ctx.principal.tenant,
            model=ctx.model,
            deployment_scope=scope,
            messages=call.messages,
            params=params,
            patient_id=ctx.patient_id,
            collection=collection,
            collection_version=collection_version,
            ttl_override_s=ttl_s,
        )

    async def lookup(
        self, ctx: RequestContext, req: CacheRequest, mode: CacheMode
    ) -> CachedResponse | None:
        cache = self.for_model(req.model)
        if mode == "no-cache" or not cache.settings.enabled or cache.ttl_for(req) <= 0:
            ctx.cache = "bypass"
            return None
        if mode == "refresh":
            ctx.cache = "miss"
            return None
        with span(ctx.trace, "cache.lookup") as traced:
            hit = await cache.lookup(req)
            traced.set("iatros.cache", "miss" if hit is None else f"hit-{hit.kind}")
        if hit is None:
            ctx.cache = "miss"
            return None
        ctx.cache = f"hit-{hit.kind}"
        ctx.deployment = hit.deployment
        release = f"; {ctx.release}" if ctx.release else ""
        ctx.route = f"{req.model}{release}; cache={hit.kind}"
        if hit.similarity is not None:
            ctx.route += f"; similarity={hit.similarity:.3f}"
        ctx.usage = Usage(hit.prompt_tokens, hit.completion_tokens)
        return hit

    async def store(
        self, ctx: RequestContext, req: CacheRequest, mode: CacheMode, result: ChatResult
    ) -> None:
        if mode in ("no-cache", "no-store") or ctx.cache == "bypass":
            return
        if result.finish_reason not in ("stop", "length") or result.message.get("tool_calls"):
            return
        await self.for_model(req.model).store(
            req,
            CachedResponse(
                message=result.message,
                finish_reason=result.finish_reason,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                deployment=ctx.deployment,
                created_at=time.time(),
            ),
        )


def replay(hit: CachedResponse) -> Iterator[StreamDelta]:
    """A cached answer as a stream: the same chunk shapes a live answer has."""
    content = str(hit.message.get("content") or "")
    words = content.split(" ")
    for i in range(0, len(words), 4):
        piece = " ".join(words[i : i + 4])
        if i:
            piece = " " + piece
        delta: dict[str, Any] = {"content": piece}
        if i == 0:
            delta["role"] = "assistant"
        yield StreamDelta(delta=delta)
    yield StreamDelta(
        delta={},
        finish_reason=hit.finish_reason,
        usage=Usage(hit.prompt_tokens, hit.completion_tokens),
    )
