"""The in-process backend: a byte-bounded LRU with TTLs, tags and per-scope vector indexes.

Everything lives in one event loop's memory, so there is no locking and no I/O: a
lookup is a dictionary access. Each process has its own cache (with several workers,
use Redis for sharing and for invalidation that reaches every worker).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from iatros.cache.backends.base import SemanticRow
from iatros.cache.index import RANK, Candidate, SemanticIndex, Vector

_ENTRY_OVERHEAD = 240
"""Approximate bytes of bookkeeping per entry (dict slots, dataclass, heap item)."""


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    tags: tuple[str, ...]
    scope: str | None
    size: int


class MemoryBackend:
    name = "memory"

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_tag: dict[str, set[str]] = {}
        self._indexes: dict[str, SemanticIndex] = {}
        self._expiries: list[tuple[float, str]] = []
        self._bytes = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._entries.clear()
        self._by_tag.clear()
        self._indexes.clear()
        self._expiries.clear()
        self._bytes = 0

    def entry_count(self) -> int | None:
        return len(self._entries)

    async def get(self, entry_id: str) -> bytes | None:
        entry = self._entries.get(entry_id)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(entry_id)
            return None
        self._entries.move_to_end(entry_id)
        return entry.value

    async def put(
        self,
        entry_id: str,
        value: bytes,
        ttl_s: int,
        tags: Sequence[str],
        row: SemanticRow | None,
    ) -> None:
        now = self._clock()
        self._expire(now)
        if entry_id in self._entries:
            self._drop(entry_id)
        size = len(value) + len(entry_id) + sum(len(t) + 48 for t in tags) + _ENTRY_OVERHEAD
        scope = None
        if row is not None:
            index = self._indexes.get(row.scope)
            if index is None:
                index = self._indexes[row.scope] = SemanticIndex(row.vector.size)
            if index.dim == row.vector.size:
                scope = row.scope
                size += (index.dim + RANK + 4) * 4 + len(row.signature) + 64
        if size > self.max_bytes:
            return
        expires_at = now + ttl_s
        self._entries[entry_id] = _Entry(value, expires_at, tuple(tags), scope, size)
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(entry_id)
        if scope is not None and row is not None:
            self._indexes[scope].add(entry_id, row.vector, expires_at, row.signature)
        heapq.heappush(self._expiries, (expires_at, entry_id))
        self._bytes += size
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    async def delete(self, entry_id: str) -> None:
        if entry_id in self._entries:
            self._drop(entry_id)

    async def invalidate(self, tags: Sequence[str]) -> int:
        if not tags:
            raise ValueError("invalidate needs at least one tag")
        groups = [self._by_tag.get(tag, set()) for tag in tags]
        smallest = min(groups, key=len)
        doomed = [e for e in smallest if all(e in group for group in groups)]
        for entry_id in doomed:
            self._drop(entry_id)
        return len(doomed)

    async def search(self, scope: str, vector: Vector, threshold: float, k: int) -> list[Candidate]:
        index = self._indexes.get(scope)
        if index is None or index.dim != vector.size:
            return []
        return index.search(vector, threshold, k, self._clock())

    def _drop(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id)
        self._bytes -= entry.size
        for tag in entry.tags:
            group = self._by_tag.get(tag)
            if group is not None:
                group.discard(entry_id)
                if not group:
                    del self._by_tag[tag]
        if entry.scope is not None:
            index = self._indexes.get(entry.scope)
            if index is not None:
                index.remove(entry_id)
                if not len(index):
                    del self._indexes[entry.scope]

    def _expire(self, now: float) -> None:
        """Drop entries whose TTL passed (heap items of replaced entries are skipped)."""
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, entry_id = heapq.heappop(heap)
            entry = self._entries.get(entry_id)
            if entry is not None and entry.expires_at == expires_at:
                self._drop(entry_id)
        if len(heap) > 2 * len(self._entries) + 1024:
            self._expiries = [(e.expires_at, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiries)
