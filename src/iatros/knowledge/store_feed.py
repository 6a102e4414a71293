"""What the search backends read from the metadata store: the index log and chunk data.

A backend is derived data: it learns what changed by replaying the log (``index_log``,
written in the same transaction as the chunks) and reads the vectors and texts it
indexes from here. Kept apart from :mod:`iatros.knowledge.store` (tenant-scoped
reads and writes) because these reads are internal, by collection id, and only the
backends use them; :class:`IndexFeed` is mixed into ``MetaStore``, which supplies the
connection.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Keys = npt.NDArray[np.int64]
Key = int | str
"""A chunk's key in a search index: the store's integer key, or a shared backend's id."""


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """Everything about one chunk, for a backend that keeps it all (a shared index)."""

    key: int
    collection_id: int
    tenant: str
    collection: str
    document_id: str
    document: str
    content_type: str
    page: int | None
    section: str | None
    text: str
    vector: npt.NDArray[np.float32]
    metadata: dict[str, Any]

    @property
    def indexed_text(self) -> str:
        return f"{self.section}\n{self.text}" if self.section else self.text


@dataclass(frozen=True, slots=True)
class LogEntry:
    seq: int
    collection_id: int
    op: str
    keys: Keys


def _blob_keys(blob: bytes) -> Keys:
    return np.frombuffer(blob, dtype=np.int64).copy()


class IndexFeed:
    """Index-log and chunk reads for the backends (mixed into ``MetaStore``)."""

    _db: Callable[[], sqlite3.Connection]
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]

    def log_entries(
        self, after_seq: int, collection_id: int | None = None, limit: int = 1000
    ) -> list[LogEntry]:
        if collection_id is None:
            rows = (
                self._db()
                .execute(
                    "SELECT seq, collection_id, op, keys FROM index_log WHERE seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (after_seq, limit),
                )
                .fetchall()
            )
        else:
            rows = (
                self._db()
                .execute(
                    "SELECT seq, collection_id, op, keys FROM index_log "
                    "WHERE collection_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (collection_id, after_seq, limit),
                )
                .fetchall()
            )
        return [LogEntry(r[0], r[1], r[2], _blob_keys(r[3])) for r in rows]

    def last_seq(self) -> int:
        row = self._db().execute("SELECT MAX(seq) FROM index_log").fetchone()
        return int(row[0] or 0)

    def trim_log(self, upto_seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM index_log WHERE seq <= ?", (upto_seq,))

    def chunk_records(self, keys: Keys) -> list[ChunkRecord]:
        """Existing chunks among ``keys`` with their document and collection, by key."""
        out: list[ChunkRecord] = []
        key_list = [int(k) for k in keys]
        for start in range(0, len(key_list), 500):
            part = key_list[start : start + 500]
            rows = (
                self._db()
                .execute(
                    f"""SELECT c.id, c.collection_id, k.tenant, k.name, d.id, d.name,
                          d.content_type, c.page, c.section, c.text, c.vector, d.metadata
                    FROM chunks c JOIN documents d ON d.id = c.document_id
                    JOIN collections k ON k.id = c.collection_id
                    WHERE c.id IN ({", ".join("?" * len(part))}) ORDER BY c.id""",
                    part,
                )
                .fetchall()
            )
            out.extend(
                ChunkRecord(
                    key=int(r[0]),
                    collection_id=int(r[1]),
                    tenant=r[2],
                    collection=r[3],
                    document_id=r[4],
                    document=r[5],
                    content_type=r[6],
                    page=r[7],
                    section=r[8],
                    text=r[9],
                    vector=np.frombuffer(r[10], dtype=np.float16).astype(np.float32),
                    metadata=json.loads(r[11]),
                )
                for r in rows
            )
        return out

    def vectors_and_texts(self, keys: Keys) -> tuple[Keys, npt.NDArray[np.float32], list[str]]:
        """Existing chunks among ``keys``: their keys, vectors and indexed texts."""
        found: list[int] = []
        vectors: list[npt.NDArray[np.float16]] = []
        texts: list[str] = []
        key_list = [int(k) for k in keys]
        for start in range(0, len(key_list), 500):
            part = key_list[start : start + 500]
            rows = (
                self._db()
                .execute(
                    f"SELECT id, vector, section, text FROM chunks "
                    f"WHERE id IN ({', '.join('?' * len(part))}) ORDER BY id",
                    part,
                )
                .fetchall()
            )
            for r in rows:
                found.append(int(r[0]))
                vectors.append(np.frombuffer(r[1], dtype=np.float16))
                texts.append(f"{r[2]}\n{r[3]}" if r[2] else r[3])
        matrix = (
            np.vstack(vectors).astype(np.float32) if vectors else np.empty((0, 0), dtype=np.float32)
        )
        return np.asarray(found, dtype=np.int64), matrix, texts

    def collection_keys(self, collection_id: int) -> Keys:
        return np.fromiter(
            (
                r[0]
                for r in self._db().execute(
                    "SELECT id FROM chunks WHERE collection_id = ?", (collection_id,)
                )
            ),
            dtype=np.int64,
        )

    def has_chunks(self, collection_id: int) -> bool:
        row = (
            self._db()
            .execute("SELECT 1 FROM chunks WHERE collection_id = ? LIMIT 1", (collection_id,))
            .fetchone()
        )
        return row is not None

    def collection_ids(self) -> list[int]:
        return [int(r[0]) for r in self._db().execute("SELECT id FROM collections")]
