"""The backend seam: what the cache facade needs from a store, and nothing more.

Backends store opaque entry bytes under an entry id with a TTL and invalidation tags,
and keep the semantic vectors of each scope searchable. They raise on failure; the
facade turns failures into misses and metrics, so a backend never has to guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from iatros.cache.index import Candidate, Vector


class BackendUnavailable(Exception):
    """The backend is known to be down (circuit open): fail fast instead of waiting."""


@dataclass(frozen=True, slots=True)
class SemanticRow:
    """What makes an entry findable by meaning, stored next to it."""

    scope: str
    vector: Vector
    signature: bytes


ErrorHook = Callable[[str, BaseException], None]
"""Called with (operation, error) for failures in background work."""
DecodeHook = Callable[[], None]
"""Called once per stored item that failed to decode and was dropped."""


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, entry_id: str) -> bytes | None: ...

    async def put(
        self,
        entry_id: str,
        value: bytes,
        ttl_s: int,
        tags: Sequence[str],
        row: SemanticRow | None,
    ) -> None: ...

    async def delete(self, entry_id: str) -> None: ...

    async def invalidate(self, tags: Sequence[str]) -> int:
        """Drop every entry carrying *all* of ``tags``; return how many were dropped."""
        ...

    async def search(
        self, scope: str, vector: Vector, threshold: float, k: int
    ) -> list[Candidate]: ...

    def entry_count(self) -> int | None:
        """Entries held in this process (None when they live elsewhere)."""
        ...
