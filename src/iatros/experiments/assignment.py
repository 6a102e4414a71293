"""Which release serves a request: the route's active release, or an experiment's variant.

The router asks :class:`ReleaseSelector` once per planned request; the answer comes from
an in-memory snapshot (no database work on the request path), replaced whole by the
experiment service whenever releases or experiments change here, and every
``experiments.refresh_s`` from the shared database (other instances' changes).

Assignment is sticky and stateless: the unit (API key, end user, or conversation) is
hashed with the experiment's salt into a bucket in [0, 100), and the variants' shares
cut that range in order. The same unit always lands in the same variant while the
experiment runs; a new salt reshuffles everyone. SHA-256 rather than Python's
``hash``: stable across processes and restarts, so several instances agree.
"""

from __future__ import annotations

import hashlib
import random
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from iatros.config import ModelRouteConfig
from iatros.providers.base import ChatCall

_UNITS: ContextVar[tuple[str, str | None, str | None] | None] = ContextVar(
    "iatros_experiment_units", default=None
)


def bind_units(key_id: str, user: str | None, conversation_id: str | None) -> None:
    """Tell the selector who is asking (called by the chat service before planning)."""
    _UNITS.set((key_id, user, conversation_id))


def unit_value(unit: str, call: ChatCall) -> str:
    """The value hashed for ``unit``; a missing user or conversation falls back to the key
    (a request without a conversation is its own asker's), then to the fairness key."""
    bound = _UNITS.get()
    key = bound[0] if bound else call.fairness_key
    if unit == "user":
        return (bound[1] if bound else None) or call.user or key
    if unit == "conversation":
        return (bound[2] if bound else None) or key
    return key


def bucket(salt: str, value: str) -> float:
    """A uniform position in [0, 100) for ``value`` under ``salt``."""
    return placed(salt, value)[0]


def placed(salt: str, value: str) -> tuple[float, str]:
    """The bucket of ``value`` and a pseudonymous id of it (the digest's next 64 bits: the
    usage record keeps it for the per-unit analysis, never the user or conversation)."""
    digest = hashlib.sha256(f"{salt}\x1f{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 * 100.0, digest[8:16].hex()


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    release_id: str
    upper: float
    """The variant takes buckets below this (cumulative share)."""
    route: ModelRouteConfig
    call: dict[str, Any] = field(default_factory=dict)
    """Model parameters the release sets (``registry.call_overrides``)."""


@dataclass(frozen=True, slots=True)
class RouteState:
    release_id: str | None = None
    route: ModelRouteConfig | None = None
    call: dict[str, Any] = field(default_factory=dict)
    experiment_id: str | None = None
    unit: str = "key"
    salt: str = ""
    arms: tuple[Arm, ...] = field(default_factory=tuple)
    kind: str = "experiment"
    """``experiment`` (sticky by unit) or ``rollout`` (a canary: each request drawn anew,
    so the canary's share of traffic is exact whoever sends it)."""


class ReleaseSelector:
    """The router's view of the registry: route name -> what to serve."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteState] = {}

    def replace(self, routes: dict[str, RouteState]) -> None:
        self._routes = routes

    def state(self, model: str) -> RouteState | None:
        return self._routes.get(model)

    def choose(self, model: str, call: ChatCall) -> Selection | None:
        """The release serving this request (its variant, in an experiment or a rollout),
        without touching ``call``: the chat service asks before the cache lookup (the
        release is part of the cache key), the router applies it when planning."""
        state = self._routes.get(model)
        if state is None:
            return None
        if state.arms:
            unit: str | None = None
            if state.kind == "rollout":
                position = random.random() * 100.0  # a traffic split, not a secret
            else:
                position, unit = placed(state.salt, unit_value(state.unit, call))
            for arm in state.arms:
                if position < arm.upper:
                    break
            label = f"{state.kind}={state.experiment_id}:{arm.name}; release={arm.release_id}"
            return Selection(arm.route, label, arm.release_id, arm.call, unit)
        if state.route is None or state.release_id is None:
            return None
        return Selection(state.route, f"release={state.release_id}", state.release_id, state.call)

    def select(self, model: str, call: ChatCall) -> tuple[ModelRouteConfig, str] | None:
        """:meth:`choose`, applied to ``call`` (the release's system prompt, parameters)."""
        chosen = self.choose(model, call)
        if chosen is None:
            return None
        return chosen.apply(call), chosen.label


@dataclass(frozen=True, slots=True)
class Selection:
    """What :meth:`ReleaseSelector.choose` decided for one request."""

    route: ModelRouteConfig
    label: str
    """The routing decision's part: ``experiment=<id>:<variant>; release=<id>`` (the
    analysis finds a variant's requests, cache hits included, by it)."""
    release_id: str
    call: dict[str, Any] = field(default_factory=dict)
    unit: str | None = None
    """The experiment's assignment unit, pseudonymised (:func:`placed`); None otherwise."""

    def apply(self, call: ChatCall) -> ModelRouteConfig:
        apply_call(call, self.call)
        return self.route


def apply_call(call: ChatCall, overrides: dict[str, Any]) -> None:
    """Give the request the release's model parameters (its system prompt first)."""
    if not overrides:
        return
    prompt = overrides.get("system_prompt")
    if prompt is not None:
        call.messages = [{"role": "system", "content": prompt}, *call.messages]
    if "temperature" in overrides:
        call.temperature = overrides["temperature"]
    if "max_tokens" in overrides:
        call.max_tokens = overrides["max_tokens"]
