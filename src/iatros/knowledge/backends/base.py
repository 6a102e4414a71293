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
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from iatros.knowledge.store import Keys, LogEntry, MetaStore

Hits = list[tuple[int, float]]
Vector = npt.NDArray[np.float32]


class SearchBackend(ABC):
    name: str = "backend"

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
    def search_dense(
        self, collection_id: int, vector: Vector, k: int, allowed: Keys | None
    ) -> Hits:
        """Top ``k`` keys by cosine similarity, best first."""

    @abstractmethod
    def search_lexical(
        self, collection_id: int, terms: list[str], k: int, allowed: Keys | None
    ) -> Hits:
        """Top ``k`` keys by BM25, best first."""

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
