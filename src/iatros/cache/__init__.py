"""Response cache: exact and semantic, in-process or on Redis, safe with clinical questions.

The pipeline builds a :class:`CacheRequest`, calls :meth:`ResponseCache.lookup` before
routing and :meth:`ResponseCache.store` after a successful answer. Everything else
(keys, TTL policy, the clinical guard, backends, metrics) is internal:

- ``keys``: keyed hashes of the normalised request; patient ids only as HMAC tags.
- ``request_type``: general / practice / patient, which picks the TTL (patient: never, by
  default).
- ``guard``: refuses a semantic hit unless numbers, units, population, laterality,
  negation, drugs... are identical (its docstring explains why and how).
- ``index``: exact vector search per scope, pruned with a projection bound.
- ``backends``: ``memory`` (LRU bounded by bytes, TTLs, tags) and ``redis`` (shared by
  every instance, with a local mirror of the vectors kept current from a stream).
"""

from iatros.cache.facade import CacheUnavailable, ResponseCache
from iatros.cache.guard import explain_guard
from iatros.cache.model import CachedResponse, CacheRequest, HitKind, RequestType
from iatros.cache.request_type import classify
from iatros.cache.settings import CacheSettings, TtlPolicy

__all__ = [
    "CacheRequest",
    "CacheSettings",
    "CacheUnavailable",
    "CachedResponse",
    "HitKind",
    "RequestType",
    "ResponseCache",
    "TtlPolicy",
    "classify",
    "explain_guard",
]
