"""The gateway: turns a validated request into provider calls and accounts for it.

Transport-free on purpose: the HTTP API, the CLI's in-process mode and tests all
drive the same :class:`Gateway`. Each step is a method that can be tested alone:
``plan`` (routing), ``chat`` / ``open_stream`` (calls with retries and fallback),
``finish`` (metrics and the request log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from iatros import heap
from iatros.config import Settings
from iatros.errors import (
    GatewayError,
    Overloaded,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from iatros.gateway.caching import CacheStep
from iatros.gateway.context import RequestContext
from iatros.gateway.embedder import Embedder
from iatros.observability.logging import log_request
from iatros.observability.looplag import LoopLag, loop_lag
from iatros.observability.metrics import Metrics
from iatros.observability.outcomes import Outcomes
from iatros.observability.spans import attempt as trace_attempt
from iatros.observability.spans import attempt_done
from iatros.observability.stalls import StallWatch
from iatros.observability.tracing import Tracing, deployment_infos
from iatros.providers.base import ChatCall, ChatResult, Provider, StreamDelta
from iatros.providers.registry import build_provider
from iatros.routing.health import DeploymentHealth, State
from iatros.routing.probes import Prober
from iatros.routing.router import Deployment, Plan, Router, Selection

log = logging.getLogger("iatros.gateway")
DEFAULT_DEADLINE_S = 300.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    kind: str
    owned_by: str
    description: str


def _fault(exc: GatewayError) -> str:
    """Whose fault a failure is: the ``client``'s, one ``deployment``'s, or ``transient``."""
    if isinstance(exc, UpstreamError):
        return "transient" if exc.retryable else "deployment"
    if isinstance(exc, Overloaded | ServiceUnavailable):
        return "transient"
    if exc.code == "context_length_exceeded":
        return "context"
    return "client"


class Gateway:
    def __init__(
        self, settings: Settings, providers: dict[str, Provider], metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.providers = providers
        self.metrics = metrics or Metrics()
        self.deployments = {
            name: Deployment(name, cfg, providers[cfg.provider])
            for name, cfg in settings.deployments.items()
        }
        self.router = Router(settings, self.deployments)
        breaker = settings.routing.breaker
        self.prober = Prober(
            self.deployments,
            self.router.health,
            breaker.probe_interval_s,
            breaker.probe_timeout_s,
            self.metrics.count_probe,
        )
        self.embedder = Embedder(
            self.deployments,
            self.router.health,
            self.metrics,
            settings.embeddings.default_model,
            self.finish,
        )
        self.cache = CacheStep(
            settings, self.metrics.registry, self.embedder.internal("cache", record=False)
        )
        self.metrics.watch_providers(self.readiness)
        self.metrics.watch_deployments(lambda: self.router.health)
        self.tracing = Tracing.from_settings(
            settings.tracing,
            deployments=deployment_infos(settings),
            log_content=settings.log_content,
        )
        self.sinks: list[Callable[[RequestContext], None]] = []
        """Called with every finished request (usage records, audit)."""
        deps = settings.deployments
        prices = {n: (d.price_per_1k_input, d.price_per_1k_output) for n, d in deps.items()}
        self.sinks.append(Outcomes(self.metrics, prices).record)  # cost and tokens per tenant
        self._started = False
        self._health_task: asyncio.Task[None] | None = None
        self._lag: LoopLag | None = None
        self._stalls: StallWatch | None = None

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
        self._lag = loop_lag()
        self._lag.listeners.append(self.metrics.loop_lag.set)
        heap.watch()
        self._lag.listeners.append(self._record_gc_pauses)
        threshold_ms = self.settings.server.stall_log_ms
        if threshold_ms > 0:
            stalls = self.metrics.loop_stalls
            self._stalls = StallWatch(self._lag, threshold_ms / 1000, lambda _s: stalls.inc())
            self._stalls.start()
        for provider in self.providers.values():
            await provider.start()
        await self.cache.start()
        self.prober.start()
        interval = self.settings.routing.health_check_interval_s
        if interval:
            self._health_task = asyncio.create_task(self._health_checks(interval))

    async def close(self) -> None:
        if self._lag is not None:
            for listener in (self.metrics.loop_lag.set, self._record_gc_pauses):
                with contextlib.suppress(ValueError):
                    self._lag.listeners.remove(listener)
        if self._stalls is not None:
            self._stalls.stop()
        await self.prober.close()
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        self.metrics.tally.fold()
        await asyncio.to_thread(self.tracing.close)
        with contextlib.suppress(Exception):
            await self.cache.close()
        for provider in self.providers.values():
            with contextlib.suppress(Exception):
                await provider.close()

    def _record_gc_pauses(self, _lag: float) -> None:
        """Move the collections timed since the last tick (every 20 ms) into the metrics."""
        pauses = heap.pauses
        while pauses:
            generation, seconds = pauses.popleft()
            self.metrics.gc_pauses.labels(str(generation)).observe(seconds)

    async def loaded(self) -> bool:
        """Wait until every provider's background loading (models) has ended.

        True if some provider had something to load.
        """
        return any(
            await asyncio.gather(*(provider.loaded() for provider in self.providers.values()))
        )

    def readiness(self) -> dict[str, bool]:
        return {name: provider.ready() for name, provider in self.providers.items()}

    async def _health_checks(self, interval: float) -> None:
        """Active checks: a failing provider trips its deployments' breakers before users do."""
        while True:
            await asyncio.sleep(interval)
            for name, provider in self.providers.items():
                try:
                    ok = await asyncio.wait_for(provider.health_check(), timeout=min(interval, 5))
                except Exception:
                    ok = False
                for dep in self.deployments.values():
                    if dep.config.provider != name:
                        continue
                    health = self.router.health[dep.name]
                    if ok:
                        health.record_check_ok()
                    else:
                        health.record_failure("health_check")

    # -- step: choose the deployments -----------------------------------------

    def choose_release(
        self, ctx: RequestContext, model: str, call: ChatCall, *, pin: str | None = None
    ) -> Selection | None:
        """The release (an experiment's variant, a canary's arm) serving this request,
        chosen before the cache lookup so that the release is part of the cache key and a
        hit is counted for its variant; None without releases or for a pinned deployment."""
        selector = self.router.releases
        if pin is not None or selector is None or model not in self.settings.models:
            return None
        chosen = selector.choose(model, call)
        if chosen is not None:
            ctx.release = chosen.label
            ctx.unit = chosen.unit
        return chosen

    def plan(
        self,
        ctx: RequestContext,
        model: str,
        call: ChatCall,
        *,
        pin: str | None = None,
        selection: Selection | None = None,
    ) -> Plan:
        ctx.model = model
        plan = self.router.plan(model, call, pin, selection)
        ctx.route = plan.decision
        ctx.deployment = plan.candidates[0].name
        return plan

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

    # -- step: call, with retries and fallback ---------------------------------

    async def _attempts(
        self, ctx: RequestContext, plan: Plan
    ) -> AsyncGenerator[tuple[Deployment, DeploymentHealth, float, bool], GatewayError | None]:
        """Yield (deployment, health, timeout, probe) for each try; the caller sends back its
        failure. ``probe``: the try holds a half-open probe slot (to release if it ends
        without an outcome).

        Transient failures are retried on the same deployment with capped exponential
        backoff and full jitter, then the next deployment is tried; a deployment-level
        failure (e.g. rejected credentials) moves on at once; a client error stops.

        Panic routing: a deployment whose breaker refuses the try (open, or half-open with
        every probe slot taken; in a panic plan the router appended the open ones) is not
        skipped for good but kept for the end; once every admitted deployment has failed,
        each kept one gets one try, in plan order (the router put the most recently
        successful first), within the deadline; ``; panic`` in the route says it happened.
        If every try failed and none went through a closed breaker (each was refused or a
        half-open probe): 503 with ``Retry-After``; otherwise the last upstream error is
        relayed as before (it says more, e.g. rejected credentials). The healthy path
        allocates nothing more than before.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (plan.deadline_s or DEFAULT_DEADLINE_S)
        retry = plan.retry
        last: GatewayError | None = None
        tried: list[str] = []
        queue = plan.candidates
        refused: list[Deployment] | None = None
        panicking = False
        closed_try = False
        index = 0
        while True:
            if index == len(queue):
                if not refused:
                    break
                queue, refused, index, panicking = refused, None, 0, True
                ctx.route += "; panic"
                self.metrics.count_panic(plan.model)
            deployment = queue[index]
            index += 1
            health = self.router.health[deployment.name]
            for attempt in range(1 if panicking else retry.max_attempts):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise UpstreamTimeout(
                        f"no deployment of {plan.model!r} answered within the request deadline",
                        code="deadline_exceeded",
                        retryable=False,
                    )
                admitted = health.acquire()
                if not admitted:
                    if not panicking:
                        if attempt == 0:
                            if refused is None:
                                refused = []
                            refused.append(deployment)
                        break
                    health.panic_tries += 1
                probe = admitted and health.state is State.HALF_OPEN
                closed_try = closed_try or (admitted and not probe)
                timeout = deployment.config.timeout_s or plan.attempt_timeout_s or math.inf
                if deployment.name not in tried:
                    tried.append(deployment.name)
                failure = yield deployment, health, min(timeout, remaining), probe
                if failure is None:
                    if len(tried) > 1 or attempt:
                        ctx.route += f"; tried={'>'.join(tried)}"
                    return
                last = failure
                fault = _fault(failure)
                if fault == "client":
                    if probe:
                        health.release_probe()
                    raise failure
                if fault == "context":
                    if probe:
                        health.release_probe()
                    break
                health.record_failure(failure.code or "error", probe=probe)
                self.metrics.count_failure(deployment.name, failure.code or "error")
                if fault == "deployment" or attempt + 1 >= retry.max_attempts:
                    break
                cap = min(retry.backoff_max_ms, retry.backoff_base_ms * 2**attempt) / 1000
                pause = self.router.rng.uniform(0, cap)
                if loop.time() + pause >= deadline:
                    break
                self.metrics.count_retry(deployment.name)
                await asyncio.sleep(pause)
            if index < len(queue) or refused:
                self.metrics.count_fallback(plan.model, deployment.name)
        ctx.route += f"; tried={'>'.join(tried) or 'none'}"
        if last is None or not closed_try:  # each try was refused or a probe: all failing
            after = self.router.retry_after_s(plan.candidates)
            reason = "" if last is None else f" (last error: {last.code})"
            raise ServiceUnavailable(
                f"every deployment of model {plan.model!r} is failing{reason}; retry in {after} s",
                code="no_healthy_deployment",
                headers={"retry-after": str(after)},
            )
        raise last

    async def chat(self, ctx: RequestContext, plan: Plan, call: ChatCall) -> ChatResult:
        attempts = self._attempts(ctx, plan)
        step = await anext(attempts)
        while True:
            deployment, health, timeout, probe = step
            ctx.deployment = deployment.name
            span = trace_attempt(ctx.trace, deployment.name, call)
            started = time.perf_counter()
            try:
                if math.isinf(timeout):
                    result = await deployment.provider.chat(deployment.config, call)
                else:
                    async with asyncio.timeout(timeout):
                        result = await deployment.provider.chat(deployment.config, call)
            except TimeoutError:
                failure: GatewayError = UpstreamTimeout(
                    f"deployment {deployment.name!r} did not answer within {timeout:.1f} s"
                )
            except GatewayError as exc:
                failure = exc
            except asyncio.CancelledError:
                if probe:
                    health.release_probe()
                raise
            else:
                elapsed = time.perf_counter() - started
                ctx.upstream_s += elapsed
                health.record_success(elapsed)
                ctx.usage = result.usage
                attempt_done(span)
                with contextlib.suppress(StopAsyncIteration):
                    await attempts.asend(None)
                return result
            ctx.upstream_s += time.perf_counter() - started
            attempt_done(span, failure)
            step = await attempts.asend(failure)

    async def open_stream(
        self, ctx: RequestContext, plan: Plan, call: ChatCall
    ) -> tuple[StreamDelta | None, AsyncGenerator[StreamDelta, None]]:
        """Start a stream; failures before the first delta fall back transparently."""
        attempts = self._attempts(ctx, plan)
        step = await anext(attempts)
        while True:
            deployment, health, timeout, probe = step
            ctx.deployment = deployment.name
            span = trace_attempt(ctx.trace, deployment.name, call)  # ends with the request
            deltas = self._stream(ctx, deployment, health, call)
            try:
                async with asyncio.timeout(None if math.isinf(timeout) else timeout):
                    first = await anext(deltas)
            except (TimeoutError, StopAsyncIteration, GatewayError) as exc:
                await deltas.aclose()
                if isinstance(exc, GatewayError):
                    failure: GatewayError = exc
                elif isinstance(exc, TimeoutError):
                    failure = UpstreamTimeout(
                        f"deployment {deployment.name!r} sent no token within {timeout:.1f} s"
                    )
                else:
                    failure = UpstreamError(f"deployment {deployment.name!r} sent an empty stream")
                attempt_done(span, failure)
                step = await attempts.asend(failure)
                continue
            except asyncio.CancelledError:
                if probe:
                    health.release_probe()
                await asyncio.shield(deltas.aclose())
                raise
            health.record_success(ctx.ttft_s)
            with contextlib.suppress(StopAsyncIteration):
                await attempts.asend(None)
            return first, deltas

    async def _stream(
        self, ctx: RequestContext, deployment: Deployment, health: DeploymentHealth, call: ChatCall
    ) -> AsyncGenerator[StreamDelta, None]:
        """Provider deltas, timed (waiting on the provider is not gateway overhead)."""
        upstream = deployment.provider.stream(deployment.config, call)
        started = ctx.elapsed_s()
        first = True
        try:
            while True:
                waited = time.perf_counter()
                try:
                    delta = await anext(upstream)
                except StopAsyncIteration:
                    return
                except GatewayError as exc:
                    if not first:  # the breaker hears of mid-stream failures too
                        health.record_failure(exc.code or "stream_error")
                    raise
                finally:
                    ctx.upstream_s += time.perf_counter() - waited
                if first:
                    first = False
                    ctx.ttft_s = ctx.elapsed_s()
                    health.observe_latency(ctx.ttft_s - started)
                if delta.usage is not None:
                    ctx.usage = delta.usage
                yield delta
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                # Shielded so a cancelled client still releases the provider's resources.
                with contextlib.suppress(Exception):
                    await asyncio.shield(aclose())

    # -- step: account for the request --------------------------------------

    def finish(self, ctx: RequestContext) -> None:
        """Record metrics, the request log line and the sinks' records from the context."""
        if ctx.trace is not None:
            ctx.trace.finish(ctx)
        for sink in self.sinks:
            sink(ctx)
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
        if ctx.grounding:
            self.metrics.grounded_answer(ctx.model, ctx.grounding)
        if log.isEnabledFor(logging.INFO):
            log_request(
                "iatros.gateway",
                {
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
                    **({"content": ctx.content} if ctx.content is not None else {}),
                },
            )
