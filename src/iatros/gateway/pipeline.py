"""The gateway: turns a validated request into a provider call and accounts for it.

Transport-free on purpose: the HTTP API, the CLI's in-process mode and tests all
drive the same :class:`Gateway`. Each step is a method that can be tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from iatros.config import DeploymentConfig, Settings
from iatros.errors import InvalidRequest, ModelNotFound
from iatros.gateway.context import RequestContext
from iatros.observability.metrics import Metrics
from iatros.providers.base import ChatCall, ChatResult, EmbedResult, Provider, StreamDelta
from iatros.providers.registry import build_provider

log = logging.getLogger("iatros.gateway")


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    config: DeploymentConfig
    provider: Provider


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    kind: str
    owned_by: str
    description: str


class Gateway:
    def __init__(
        self, settings: Settings, providers: dict[str, Provider], metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.metrics = metrics or Metrics()
        self.metrics.watch_providers(self.readiness)
        self.deployments = {
            name: Deployment(name, cfg, providers[cfg.provider])
            for name, cfg in settings.deployments.items()
        }
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Gateway:
        providers = {
            name: build_provider(name, cfg.type, cfg.options())
            for name, cfg in settings.providers.items()
        }
        return cls(settings, providers, metrics)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for provider in self.providers.values():
            await provider.start()

    async def close(self) -> None:
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()

    def readiness(self) -> dict[str, bool]:
        return {name: provider.ready() for name, provider in self.providers.items()}

    # -- step: resolve the model --------------------------------------------

    def resolve(
        self, ctx: RequestContext, model: str, *, kind: str = "chat", pin: str | None = None
    ) -> Deployment:
        """Map the requested name (a logical model or a deployment) to a deployment."""
        ctx.model = model
        route = self.settings.models.get(model)
        if route is not None and kind == "chat":
            if pin is not None:
                if pin not in route.deployments:
                    raise InvalidRequest(
                        f"deployment {pin!r} is not part of model {model!r} "
                        f"(choose from: {', '.join(route.deployments)})",
                        param="iatros.deployment",
                    )
                chosen, reason = pin, "pinned"
            else:
                chosen, reason = route.deployments[0], "primary"
            deployment = self.deployments[chosen]
            ctx.route = f"{model}:{reason}"
        else:
            found = self.deployments.get(model)
            if found is None or found.config.kind != kind:
                raise ModelNotFound(
                    f"The model {model!r} does not exist or is not a {kind} model. "
                    "GET /v1/models lists the available ones.",
                    param="model",
                )
            deployment = found
            ctx.route = "direct"
        ctx.deployment = deployment.name
        return deployment

    def default_embedding_model(self) -> str | None:
        return self.settings.embeddings.default_model

    def models(self) -> list[ModelInfo]:
        infos = [
            ModelInfo(name, "chat", "iatros", route.description)
            for name, route in self.settings.models.items()
        ]
        infos += [
            ModelInfo(name, dep.config.kind, dep.config.provider, dep.config.model)
            for name, dep in self.deployments.items()
        ]
        return infos

    # -- step: call the provider --------------------------------------------

    async def chat(self, ctx: RequestContext, deployment: Deployment, call: ChatCall) -> ChatResult:
        started = time.perf_counter()
        try:
            result = await deployment.provider.chat(deployment.config, call)
        finally:
            ctx.upstream_s += time.perf_counter() - started
        ctx.usage = result.usage
        return result

    async def stream(
        self, ctx: RequestContext, deployment: Deployment, call: ChatCall
    ) -> AsyncGenerator[StreamDelta, None]:
        """Provider deltas, timed: waiting on the provider is not gateway overhead."""
        upstream = deployment.provider.stream(deployment.config, call)
        try:
            while True:
                waited = time.perf_counter()
                try:
                    delta = await anext(upstream)
                except StopAsyncIteration:
                    return
                finally:
                    ctx.upstream_s += time.perf_counter() - waited
                if ctx.ttft_s is None and delta.delta:
                    ctx.ttft_s = ctx.elapsed_s()
                if delta.usage is not None:
                    ctx.usage = delta.usage
                yield delta
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                # Shielded so a cancelled client still releases the provider's resources.
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose())

    async def embed(
        self, ctx: RequestContext, deployment: Deployment, inputs: list[str]
    ) -> EmbedResult:
        started = time.perf_counter()
        try:
            result = await deployment.provider.embed(deployment.config, inputs)
        finally:
            ctx.upstream_s += time.perf_counter() - started
        ctx.usage = result.usage
        return result

    # -- step: account for the request --------------------------------------

    def finish(self, ctx: RequestContext) -> None:
        """Record metrics and the request log line from the context."""
        total = ctx.elapsed_s()
        overhead = max(total - ctx.upstream_s, 0.0)
        self.metrics.record(
            endpoint=ctx.endpoint,
            model=ctx.deployment or "-",
            status=ctx.status,
            total_s=total,
            overhead_s=overhead,
            ttft_s=ctx.ttft_s,
            prompt_tokens=ctx.usage.prompt_tokens,
            completion_tokens=ctx.usage.completion_tokens,
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request",
                extra={
                    "request_id": ctx.request_id,
                    "endpoint": ctx.endpoint,
                    "tenant": ctx.principal.tenant,
                    "key_id": ctx.principal.key_id,
                    "model": ctx.model,
                    "deployment": ctx.deployment,
                    "route": ctx.route,
                    "status": ctx.status,
                    "latency_ms": round(total * 1000, 2),
                    "overhead_ms": round(overhead * 1000, 3),
                    "prompt_tokens": ctx.usage.prompt_tokens,
                    "completion_tokens": ctx.usage.completion_tokens,
                },
            )
