"""Storage behind the cache: one small async interface, an in-process and a Redis backend.

Backends are chosen by ``cache.backend`` among the ``iatros.cache_backends`` entry
points; the two built-in ones register there like a plugin would, through the
factories below (``(settings, hooks) -> Backend``). The Redis module is imported only
when it is chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from iatros.cache.backends.base import (
    Backend,
    BackendUnavailable,
    DecodeHook,
    ErrorHook,
    SemanticRow,
)
from iatros.cache.settings import CacheSettings

__all__ = [
    "Backend",
    "BackendFactory",
    "BackendHooks",
    "BackendUnavailable",
    "SemanticRow",
    "memory_backend",
    "redis_backend",
]


@dataclass(frozen=True, slots=True)
class BackendHooks:
    """What the cache gives a backend: where to report failures, and its clock."""

    on_error: ErrorHook
    on_decode_error: DecodeHook
    clock: Callable[[], float] = field(default=time.time)


class BackendFactory(Protocol):
    """What an ``iatros.cache_backends`` entry point names."""

    def __call__(self, settings: CacheSettings, hooks: BackendHooks) -> Backend: ...


def memory_backend(settings: CacheSettings, hooks: BackendHooks) -> Backend:
    """The in-process backend (one per process; nothing shared)."""
    from iatros.cache.backends.memory import MemoryBackend

    return MemoryBackend(settings.max_memory_bytes, clock=hooks.clock)


def redis_backend(settings: CacheSettings, hooks: BackendHooks) -> Backend:
    """The Redis backend, shared by every worker and instance on one Redis."""
    from iatros.cache.backends.redis import RedisBackend

    if settings.redis_url is None:
        raise ValueError("redis_url is required with backend 'redis' (IATROS_REDIS_URL)")
    return RedisBackend(
        settings.redis_url,
        prefix=settings.key_prefix,
        timeout_s=settings.redis_timeout_ms / 1000,
        bulk_timeout_s=settings.redis_bulk_timeout_s,
        retry_after_s=settings.redis_retry_after_s,
        max_connections=settings.redis_max_connections,
        max_mirror_bytes=settings.max_memory_bytes,
        on_error=hooks.on_error,
        on_decode_error=hooks.on_decode_error,
        clock=hooks.clock,
    )
