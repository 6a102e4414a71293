"""Storage behind the cache: one small async interface, an in-process and a Redis backend."""

from iatros.cache.backends.base import Backend, BackendUnavailable, SemanticRow

__all__ = ["Backend", "BackendUnavailable", "SemanticRow"]
