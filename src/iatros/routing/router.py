"""Route policies: for one request, the ordered deployments to try and why.

A logical model (``models.<name>`` in the config) orders its deployments by its
strategy — ``priority`` (as listed), ``complexity`` (small or large model by the
classifier's score), ``latency`` (lowest recent time to first token), ``weighted``
(random by weight) or ``cost`` (cheapest) — then appends its ``fallbacks``.
Deployments whose context window cannot hold the prompt are left out.

Deployments whose breaker refuses traffic go after the admitted ones (panic
routing, after Envoy's panic threshold): when the share of admitted deployments
falls under ``routing.panic_threshold`` (1.0 by default: as soon as one breaker
refuses) or nothing is admitted, the refused ones stay in the plan as a last
resort, ordered by their most recent success (a passing active probe counts),
then by the shortest remaining cooldown. The gateway tries them, one try each,
only after every admitted deployment has failed, within the request's deadline,
and says so (``; panic`` in ``x-iatros-route``). A breaker protects a failing
upstream from load; it must not turn a recovered one into an outage (issue #28).
The healthy path allocates nothing more than before. The gateway walks the
resulting plan with retries.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from iatros.config import DeploymentConfig, ModelRouteConfig, RetrySettings, Settings
from iatros.errors import InvalidRequest, ModelNotFound
from iatros.image_parts import has_images, image_tokens
from iatros.providers.base import ChatCall, Provider
from iatros.routing.classifier import Complexity, score
from iatros.routing.health import DeploymentHealth

LATENCY_EXPLORE = 0.05
"""Share of latency-routed requests sent to a random healthy deployment to refresh its estimate."""


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    config: DeploymentConfig
    provider: Provider


@dataclass(slots=True)
class Plan:
    model: str
    candidates: list[Deployment]
    decision: str
    """Why the first candidate was chosen (becomes ``x-iatros-route``)."""
    retry: RetrySettings = field(default_factory=RetrySettings)
    attempt_timeout_s: float | None = None
    deadline_s: float | None = None
    complexity: Complexity | None = None
    panic: bool = False
    """The plan holds deployments whose breakers refuse (after the admitted ones): panic
    routing may try them, once each, if every admitted one fails."""


class Selection(Protocol):
    """A release chosen for one request (``iatros.experiments.assignment.Selection``)."""

    @property
    def label(self) -> str:
        """For x-iatros-route: ``release=<id>``, or the experiment's variant and release."""
        ...

    @property
    def release_id(self) -> str: ...

    @property
    def unit(self) -> str | None:
        """An experiment's assignment unit, hashed with its salt (None for a canary)."""
        ...

    def apply(self, call: ChatCall) -> ModelRouteConfig:
        """Give ``call`` the release's parameters; the route policy to plan with."""
        ...


class ReleaseSelection(Protocol):
    """Experiments and the release registry (``iatros.experiments``) choose the policy a
    route serves, or None for the config's."""

    def choose(self, model: str, call: ChatCall) -> Selection | None: ...


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A conservative token estimate (about 3.5 characters a token, plus per-message framing)."""
    chars = 0
    images = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    images += image_tokens(part)
                else:
                    chars += len(str(part.get("text", "")))
    return int(chars / 3.5) + 4 * len(messages) + images


class Router:
    def __init__(
        self,
        settings: Settings,
        deployments: dict[str, Deployment],
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.deployments = deployments
        self.rng = rng or random.Random()
        self.health = {name: DeploymentHealth(settings.routing.breaker) for name in deployments}
        self.releases: ReleaseSelection | None = None
        """Set by the experiment service: the active release or experiment variant of a route."""

    # -- planning ---------------------------------------------------------------

    def plan(
        self,
        model: str,
        call: ChatCall,
        pin: str | None = None,
        selection: Selection | None = None,
    ) -> Plan:
        """The deployments to try, in order, and why. ``selection``: the release the chat
        service already chose for this request (before its cache lookup); else the
        selector is asked here."""
        route = self.settings.models.get(model)
        if route is None:
            deployment = self.deployments.get(model)
            if deployment is None or deployment.config.kind != "chat":
                raise ModelNotFound(
                    f"The model {model!r} does not exist or is not a chat model. "
                    "GET /v1/models lists the available ones.",
                    param="model",
                )
            self._check_context(self._vision_only([deployment], call, model), call, model)
            return Plan(model, [deployment], "direct")
        if pin is not None:
            if pin not in route.deployments:
                raise InvalidRequest(
                    f"deployment {pin!r} is not part of model {model!r} "
                    f"(choose from: {', '.join(route.deployments)})",
                    param="iatros.deployment",
                )
            pinned = [self.deployments[pin]]
            self._check_context(self._vision_only(pinned, call, model), call, model)
            return self._with_route(Plan(model, pinned, f"{model}; pinned={pin}"), route)

        release = ""
        if selection is None and self.releases is not None:
            selection = self.releases.choose(model, call)
        if selection is not None:
            route = selection.apply(call)
            release = f"; {selection.label}"
        ordered, why, complexity = self._order(route, call)
        chain = self._dedup(ordered + self._fallback_chain(route, {model}))
        fitting = self._check_context(self._vision_only(chain, call, model), call, model)
        usable = [d for d in fitting if self.health[d.name].available()]
        panic = len(usable) < len(fitting) and (
            not usable or len(usable) < self.settings.routing.panic_threshold * len(fitting)
        )
        candidates = self._with_refused(usable, fitting) if panic else usable
        detail = "" if why == route.strategy else f"; {why}"
        decision = f"{model}{release}; strategy={route.strategy}{detail}; pick={candidates[0].name}"
        if candidates[0] is not ordered[0]:
            skipped = ordered[0].name
            reason = self._skip_reason(ordered[0], fitting, has_images(call.messages))
            decision += f"; skipped={skipped}({reason})"
        plan = Plan(model, candidates, decision, complexity=complexity, panic=panic)
        return self._with_route(plan, route)

    def _with_refused(
        self, usable: list[Deployment], fitting: list[Deployment]
    ) -> list[Deployment]:
        """``usable``, then the deployments whose breakers refuse: the most recently
        successful first (a passing active probe counts), then the shortest remaining
        cooldown. Only reached when some breaker refuses, never on the healthy path."""
        health = self.health
        refused = [d for d in fitting if d not in usable]
        refused.sort(
            key=lambda d: (-health[d.name].last_ok_at, health[d.name].remaining_cooldown_s())
        )
        return usable + refused

    def retry_after_s(self, candidates: list[Deployment]) -> int:
        """When a refused request is worth retrying: the shortest remaining cooldown of
        ``candidates``, or the probe interval if shorter (a passing probe half-opens a
        breaker at once); at least 1 s."""
        wait = min(self.health[d.name].remaining_cooldown_s() for d in candidates)
        interval = self.settings.routing.breaker.probe_interval_s
        if interval is not None:
            wait = min(wait, interval)
        return max(1, math.ceil(wait))

    @staticmethod
    def _with_route(plan: Plan, route: ModelRouteConfig) -> Plan:
        plan.retry = route.retry
        plan.attempt_timeout_s = route.attempt_timeout_s
        plan.deadline_s = route.deadline_s
        return plan

    def _skip_reason(
        self, deployment: Deployment, fitting: list[Deployment], images: bool = False
    ) -> str:
        if deployment not in fitting:
            return "text-only" if images and not deployment.config.vision else "context"
        return f"breaker-{self.health[deployment.name].current_state().value}"

    def _order(
        self, route: ModelRouteConfig, call: ChatCall
    ) -> tuple[list[Deployment], str, Complexity | None]:
        pool = [self.deployments[name] for name in route.deployments]
        if route.strategy == "complexity" and route.complexity is not None:
            result = score(call.messages)
            settings = route.complexity
            large = result.score >= settings.threshold
            first = settings.large if large else settings.small
            second = settings.small if large else settings.large
            rest = [d for d in pool if d.name not in (first, second)]
            ordered = [self.deployments[first], self.deployments[second], *rest]
            comparison = ">=" if large else "<"
            why = (
                f"complexity={result.score:.2f}{comparison}{settings.threshold}"
                f"({','.join(result.reasons) or 'no-cues'})"
            )
            return ordered, why, result
        if route.strategy == "latency":
            healthy = [d for d in pool if self.health[d.name].available()]
            if len(healthy) > 1 and self.rng.random() < LATENCY_EXPLORE:
                pick = self.rng.choice(healthy)
                return [pick, *[d for d in pool if d is not pick]], "latency=explore", None

            def ewma(d: Deployment) -> float:
                value = self.health[d.name].ewma_ttft_s
                return -1.0 if value is None else value  # unmeasured first: get a sample

            ordered = sorted(pool, key=ewma)
            best = self.health[ordered[0].name].ewma_ttft_s
            label = "unmeasured" if best is None else f"{best * 1000:.0f}ms"
            return ordered, f"latency={label}", None
        if route.strategy == "weighted":
            weights = [max(route.weights.get(d.name, 1.0), 0.0) for d in pool]
            pick = self.rng.choices(pool, weights=weights)[0] if sum(weights) > 0 else pool[0]
            rest = sorted(
                (d for d in pool if d is not pick),
                key=lambda d: -route.weights.get(d.name, 1.0),
            )
            return [pick, *rest], "weighted", None
        if route.strategy == "cost":
            prompt = estimate_prompt_tokens(call.messages)

            def cost(d: Deployment) -> float:
                out = call.max_tokens or d.config.max_output_tokens
                return (
                    prompt * d.config.price_per_1k_input + out * d.config.price_per_1k_output
                ) / 1000

            ordered = sorted(pool, key=cost)
            return ordered, f"cost={cost(ordered[0]):.5f}", None
        return pool, "priority", None

    def _fallback_chain(self, route: ModelRouteConfig, seen: set[str]) -> list[Deployment]:
        chain: list[Deployment] = []
        for target in route.fallbacks:
            if target in self.settings.models:
                if target in seen:
                    continue
                sub = self.settings.models[target]
                chain += [self.deployments[name] for name in sub.deployments]
                chain += self._fallback_chain(sub, seen | {target})
            else:
                chain.append(self.deployments[target])
        return chain

    @staticmethod
    def _dedup(chain: list[Deployment]) -> list[Deployment]:
        seen: set[str] = set()
        out = []
        for deployment in chain:
            if deployment.name not in seen:
                seen.add(deployment.name)
                out.append(deployment)
        return out

    def _vision_only(
        self, chain: list[Deployment], call: ChatCall, model: str
    ) -> list[Deployment]:
        """With images in the request, the deployments that read images (``vision:
        true``); a 400 naming the model when none of its deployments does. Without images,
        ``chain`` as it is (one pass over the messages, no allocation)."""
        if not has_images(call.messages):
            return chain
        vision = [d for d in chain if d.config.vision]
        if vision:
            return vision
        names = ", ".join(d.name for d in chain)
        able = [
            name
            for name, route in self.settings.models.items()
            if any(self.deployments[d].config.vision for d in route.deployments)
        ]
        hint = (
            f"Models that can: {', '.join(able)}."
            if able
            else "No deployment declares 'vision: true' (deployments.<name>.vision)."
        )
        raise InvalidRequest(
            f"The model {model!r} cannot read images: none of its deployments ({names}) "
            f"is vision-capable. {hint}",
            param="model",
            code="model_not_vision_capable",
        )

    @staticmethod
    def _check_context(chain: list[Deployment], call: ChatCall, model: str) -> list[Deployment]:
        """Keep the deployments whose context window holds the prompt (and the asked-for answer)."""
        prompt = estimate_prompt_tokens(call.messages)
        needed = prompt + min(call.max_tokens or 1, 4096)
        fitting = [d for d in chain if d.config.context_window >= needed]
        if not fitting:
            largest = max(d.config.context_window for d in chain)
            raise InvalidRequest(
                f"The conversation is about {prompt} tokens (plus {needed - prompt} for the "
                f"answer); the largest context window available for {model!r} is {largest}. "
                "Shorten the conversation.",
                param="messages",
                code="context_length_exceeded",
            )
        return fitting

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "deployment": name,
                "provider": dep.config.provider,
                "model": dep.config.model,
                "region": dep.config.region,
                "kind": dep.config.kind,
                **self.health[name].snapshot(),
            }
            for name, dep in self.deployments.items()
        ]
