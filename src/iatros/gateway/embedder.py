"""Every embedding the gateway computes goes through one :class:`Embedder`.

``/v1/embeddings``, knowledge-base ingestion and retrieval, and the semantic cache all
embed through it, so each gets the deployment's breaker, the metrics, and (for the work
that is billed) a usage record — none calls ``provider.embed`` directly.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from iatros.auth import Principal
from iatros.errors import GatewayError, ModelNotFound
from iatros.gateway.context import RequestContext
from iatros.observability.metrics import Metrics
from iatros.providers.base import EmbedResult
from iatros.routing.health import DeploymentHealth
from iatros.routing.router import Deployment

EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]


def system_principal(purpose: str) -> Principal:
    """Who the gateway's own embeddings are accounted to (``system:knowledge``, ...)."""
    return Principal(tenant="system", key_id=f"system:{purpose}", role="service")


class Embedder:
    def __init__(
        self,
        deployments: dict[str, Deployment],
        health: dict[str, DeploymentHealth],
        metrics: Metrics,
        default_model: str | None,
        finish: Callable[[RequestContext], None],
    ) -> None:
        self.deployments = deployments
        self.health = health
        self.metrics = metrics
        self.default_model = default_model
        self._finish = finish

    def resolve(self, ctx: RequestContext, model: str) -> Deployment:
        ctx.model = model
        found = self.deployments.get(model)
        if found is None or found.config.kind != "embedding":
            raise ModelNotFound(
                f"The model {model!r} does not exist or is not an embedding model. "
                "GET /v1/models lists the available ones.",
                param="model",
            )
        ctx.route = "direct"
        ctx.deployment = found.name
        return found

    async def embed(
        self, ctx: RequestContext, deployment: Deployment, inputs: list[str]
    ) -> EmbedResult:
        """Embed ``inputs``; the time is the provider's, the outcome feeds the breaker.

        The breaker is told, never asked: an embedding model has one deployment, and a
        breaker that refused it would turn a recovered model into an outage.
        """
        health = self.health[deployment.name]
        started = time.perf_counter()
        try:
            result = await deployment.provider.embed(deployment.config, inputs)
        except GatewayError as exc:
            health.record_failure(exc.code or "error")
            self.metrics.count_failure(deployment.name, exc.code or "error")
            raise
        finally:
            elapsed = time.perf_counter() - started
            ctx.upstream_s += elapsed
        health.record_success(elapsed)
        ctx.usage = result.usage
        return result

    def internal(self, purpose: str, *, record: bool = True) -> EmbedFn | None:
        """An embedding function for the gateway's own work, with the default model.

        Each call is a request of endpoint ``embeddings`` by ``system:<purpose>``: metrics
        and the breaker always; the log line and usage record when ``record`` (ingestion:
        yes; the semantic cache's per-question embedding is part of a chat request: no).
        None when no embedding model is configured.
        """
        name = self.default_model
        deployment = self.deployments.get(name) if name else None
        if deployment is None:
            return None
        principal = system_principal(purpose)
        found = deployment

        async def embed(texts: list[str]) -> list[list[float]]:
            ctx = RequestContext(principal=principal, endpoint="embeddings")
            ctx.model = ctx.deployment = found.name
            ctx.route = f"internal:{purpose}"
            try:
                return (await self.embed(ctx, found, texts)).vectors
            except GatewayError as exc:
                ctx.status = exc.status
                raise
            finally:
                if record:
                    self._finish(ctx)
                else:
                    self.metrics.record(
                        endpoint="embeddings",
                        model=found.name,
                        status=ctx.status,
                        total_s=ctx.elapsed_s(),
                        overhead_s=ctx.overhead_s(),
                        ttft_s=None,
                        prompt_tokens=ctx.usage.prompt_tokens,
                        completion_tokens=0,
                    )

        return embed
