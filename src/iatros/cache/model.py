"""The data the cache exchanges with the pipeline: plain dataclasses, no transport types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RequestType = Literal["general", "practice", "patient"]
HitKind = Literal["exact", "semantic"]


@dataclass(slots=True)
class CacheRequest:
    """Everything that decides an answer, so equal requests may share one.

    Treat it as immutable once built: the cache derives its keys from it on each call.
    """

    tenant: str
    model: str
    """The logical model name the client asked for."""
    deployment_scope: str
    """The deployment choice that changes the answer (a pinned deployment), or ""."""
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    """Sampling parameters and passthrough extras that affect the output (not ``user``)."""
    patient_id: str | None = None
    collection: str | None = None
    collection_version: str | None = None
    ttl_override_s: int | None = None
    """Replaces the type's TTL; for patient requests it can only shorten it."""
    request_type: RequestType | None = field(default=None, init=False, repr=False, compare=False)
    """Memo of the cache's classification (a hit asks for it twice, a miss three times)."""


@dataclass(slots=True)
class CachedResponse:
    """A stored answer; ``kind`` and ``similarity`` describe the hit that returned it."""

    message: dict[str, Any]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    deployment: str
    created_at: float
    kind: HitKind = "exact"
    similarity: float | None = None
