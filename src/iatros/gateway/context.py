"""The one object a request carries from step to step."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from iatros.auth import Principal
from iatros.observability.spans import RequestTrace
from iatros.providers.base import Usage


def new_request_id() -> str:
    """96 random bits: unique enough to correlate logs, cheap enough for every request."""
    return f"req_{_random.getrandbits(96):024x}"


_random = random.Random()


@dataclass(slots=True)
class RequestContext:
    principal: Principal
    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    """The model name the client asked for."""
    deployment: str = ""
    """The deployment that answered (``x-iatros-model``)."""
    route: str = ""
    """Why that deployment (``x-iatros-route``)."""
    cache: str = "bypass"
    release: str = ""
    """The release chosen for the request (``release=<id>``, or an experiment's or a
    canary's arm): kept so that a cache hit's route names its variant too."""
    unit: str | None = None
    """In an experiment: the salted hash of the unit it was assigned by (usage record)."""
    grounding: str = ""
    """For grounded answers: ``supported``, ``no-details``, ``flagged``, ``withheld``,
    ``escalated`` or ``reviewed`` (journaled with the usage record)."""
    patient_id: str | None = None
    upstream_s: float = 0.0
    """Time spent waiting on providers; everything else is gateway overhead."""
    ttft_s: float | None = None
    usage: Usage = field(default_factory=Usage)
    status: int = 200
    content: dict[str, object] | None = None
    """Prompt and answer, kept only when ``log_content`` is on (they may hold patient data)."""
    extra_headers: dict[str, str] = field(default_factory=dict)
    """Headers added by pipeline steps (rate-limit state, ...)."""
    trace: RequestTrace | None = None
    """The request's spans while tracing is on (``observability/spans.py``); else None."""

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def overhead_s(self) -> float:
        return max(self.elapsed_s() - self.upstream_s, 0.0)

    def headers(self) -> dict[str, str]:
        return {
            **self.extra_headers,
            "x-iatros-request-id": self.request_id,
            "x-iatros-model": self.deployment,
            "x-iatros-route": self.route,
            "x-iatros-cache": self.cache,
            "x-iatros-overhead-ms": f"{self.overhead_s() * 1000:.3f}",
        }
