"""The one seam between the knowledge base and an index engine.

A backend holds derived data only: the dense vectors and lexical postings of each
collection, keyed by the store's integer chunk keys. It learns about changes by
replaying the store's index log (:meth:`SearchBackend.apply`), which must be idempotent,
and remembers how far it got (:meth:`SearchBackend.applied_seq`), so a crash at any point
is repaired by replaying again. Methods are blocking: the knowledge base calls them from
worker threads. Writes are serialised by the caller; searches may run concurrently with
each other and with a write.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from iatros.knowledge.filters import Condition
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import ChunkRow, CollectionRef, Key, Keys, LogEntry, MetaStore

Hits = list[tuple[Key, float]]
Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Scope:
    """Where one search looks: a tenant's collection, narrowed by the request's filters.

    ``allowed`` is the filter resolved by the local store into chunk keys (for backends
    whose hits are checked against that store); ``conditions`` is the same filter for a
    :attr:`SearchBackend.shared` backend to apply to its own payload.
    """

    ref: CollectionRef
    allowed: Keys | None = None
    conditions: list[Condition] = field(default_factory=list)


class BackendFactory(Protocol):
    """What an ``iatros.knowledge_backends`` entry point names.

    Args:
        settings: the knowledge settings (a plugin reads its own options from them or
            from the environment).
        root: the knowledge directory (``<data_dir>/knowledge``) for local files.
    """

    def __call__(self, settings: KnowledgeSettings, root: Path) -> SearchBackend: ...


class SearchBackend(ABC):
    name: str = "backend"
    shared: bool = False
    """True when the index holds each chunk's text and metadata itself, so several
    instances (each with its own metadata database) can search each other's documents:
    results then come from :meth:`rows` and filters from :attr:`Scope.conditions`."""

    @abstractmethod
    def open(self, store: MetaStore) -> None:
        """Load persisted state and replay whatever the log has beyond it."""

    @abstractmethod
    def applied_seq(self) -> int:
        """The last log sequence number whose effect is durable in this backend."""

    @abstractmethod
    def apply(self, store: MetaStore, entries: list[LogEntry]) -> None:
        """Apply log entries in order (idempotently); vectors and texts come from ``store``."""

    def checkpoint(self, force: bool = False) -> None:  # noqa: B027 - optional hook
        """Make applied changes durable (a no-op for engines that persist on write)."""

    @abstractmethod
    def search_dense(self, scope: Scope, vector: Vector, k: int) -> Hits:
        """Top ``k`` keys by cosine similarity, best first."""

    @abstractmethod
    def search_lexical(self, scope: Scope, terms: list[str], k: int) -> Hits:
        """Top ``k`` keys by BM25, best first."""

    def rows(self, store: MetaStore, scope: Scope, keys: Sequence[Key]) -> dict[Key, ChunkRow]:
        """Text, vector and metadata of the hits ``keys`` that still exist.

        By default from the local store, which is the truth: an index that lags or kept
        an orphan never shows a deleted document. A shared backend reads its payload.
        """
        return dict(store.chunk_rows(scope.ref, [int(k) for k in keys]))

    def has_collection(self, tenant: str, name: str) -> bool:
        """Whether the index holds chunks of a collection this instance's store does not
        know (only a shared backend can)."""
        return False

    @abstractmethod
    def close(self) -> None: ...

    def sync(self, store: MetaStore, batch: int = 200) -> int:
        """Replay every log entry past :meth:`applied_seq`; returns how many were applied."""
        done = 0
        after = self.applied_seq()
        while True:
            entries = store.log_entries(after, limit=batch)
            if not entries:
                return done
            self.apply(store, entries)
            after = entries[-1].seq
            done += len(entries)


class ReadWriteLock:
    """Many concurrent readers or one writer (searches vs index mutation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
