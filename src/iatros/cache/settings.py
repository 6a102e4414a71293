"""Cache settings: one validated object, with route-level overrides merged on top."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from iatros.plugins import CACHE_BACKENDS, check_registered

MiB = 1024 * 1024

ROUTE_FIELDS = frozenset(
    {
        "enabled",
        "semantic",
        "semantic_threshold",
        "semantic_max_turns",
        "semantic_max_chars",
        "ttl_s",
    }
)
"""Fields a route may override; the others describe the shared backend."""


class TtlPolicy(BaseModel):
    """Seconds to keep an answer, by request type (0 = never store it)."""

    model_config = ConfigDict(extra="forbid")

    general: int = Field(86400, ge=0)
    """General medical or dental knowledge: changes slowly."""
    practice: int = Field(3600, ge=0)
    """The practice's own information (hours, prices, appointments): changes during a day."""
    patient: int = Field(0, ge=0)
    """Anything about one patient: never cached unless a route opts in."""


class CacheSettings(BaseModel):
    """The response cache. ``tag_secret`` is required with Redis (see below)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: str = "memory"
    """An ``iatros.cache_backends`` entry point: ``memory``, ``redis`` or a plugin's."""
    redis_url: str | None = None
    """``redis://host:6379/0``; the caller fills it from ``IATROS_REDIS_URL``."""
    redis_timeout_ms: float = Field(5.0, gt=0)
    """Per-operation budget on the request path; a slower Redis means "uncached"."""
    redis_bulk_timeout_s: float = Field(10.0, gt=0)
    """Budget for background work: loading another instance's semantic entries."""
    redis_max_connections: int = Field(512, ge=1)
    """Connections each instance may open; a request waits (within its budget) for a free one."""
    redis_retry_after_s: float = Field(1.0, ge=0)
    """After a Redis failure, skip Redis for this long instead of timing out every request."""
    max_memory_bytes: int = Field(256 * MiB, ge=MiB)
    """In-process entries and vectors (memory backend), or vector mirrors (Redis backend)."""
    semantic: bool = False
    semantic_threshold: float = Field(0.95, gt=0.0, le=1.0)
    semantic_max_turns: int = Field(1, ge=1)
    """User turns a request may have and still be looked up semantically."""
    semantic_max_chars: int = Field(500, ge=1)
    """Longer questions are exact-only: MiniLM reads 256 tokens and would miss the rest."""
    embed_timeout_s: float = Field(2.0, gt=0)
    embedding_model: str = "all-minilm-l6-v2"
    """Names the embedder in every semantic scope: vectors of another model never compare."""
    ttl_s: TtlPolicy = Field(default_factory=TtlPolicy)
    key_prefix: str = Field("iatros:cache:", min_length=1)
    tag_secret: SecretStr | None = None
    """HMAC key for patient ids and tags in keys (nothing identifying is stored in clear).

    Every instance sharing a Redis must use the same secret, or they could neither share
    entries nor invalidate each other's; so it is required with ``backend: redis``.
    With the memory backend a random per-process secret is used when it is not set.
    """

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, name: str) -> str:
        return check_registered(CACHE_BACKENDS, name, "cache backend")

    @model_validator(mode="after")
    def _redis_needs_url_and_secret(self) -> CacheSettings:
        if self.backend == "redis":
            if not self.redis_url:
                raise ValueError("redis_url is required with backend 'redis' (IATROS_REDIS_URL)")
            if self.tag_secret is None:
                raise ValueError(
                    "tag_secret is required with backend 'redis': instances sharing a Redis "
                    "must hash patient ids with the same key"
                )
        if self.tag_secret is not None and len(self.tag_secret.get_secret_value()) < 16:
            raise ValueError("tag_secret must be at least 16 characters")
        return self

    def with_overrides(self, overrides: Mapping[str, Any]) -> CacheSettings:
        """These settings with a route's partial overrides (``ttl_s`` merges per type)."""
        unknown = set(overrides) - ROUTE_FIELDS
        if unknown:
            raise ValueError(
                f"cache settings {sorted(unknown)} cannot be set per route "
                f"(route-level: {sorted(ROUTE_FIELDS)})"
            )
        data = self.model_dump()
        for name, value in overrides.items():
            if name == "ttl_s" and isinstance(value, Mapping):
                data["ttl_s"] = {**data["ttl_s"], **value}
            else:
                data[name] = value
        if self.tag_secret is not None:
            data["tag_secret"] = self.tag_secret.get_secret_value()
        return CacheSettings.model_validate(data)
