"""SQLite metadata: the source of truth for collections, documents, chunks and vectors.

This module is the one place where tenants are kept apart: every public method takes
the tenant and filters on it, and the search indexes are addressed only by an internal
collection id that callers obtain through :meth:`MetaStore.collection` (tenant-filtered).
A file's chunks, its vectors, the collection's version bump and the index log entries
telling the search backend what changed are written in one transaction, so a file is
either fully ingested or not at all. The backends replay the log (idempotently,
:mod:`iatros.knowledge.store_feed`) and every hit of a local backend is checked against
this store, so an index that lags or kept an orphan after a crash can never show a
deleted or half-written document. Upload jobs share the file
(:mod:`iatros.knowledge.jobstore`); filters are checked in :mod:`iatros.knowledge.filters`.

Plain ``sqlite3`` (WAL, one connection per thread) keeps this separate from the main
``iatros.db`` and its SQLAlchemy models.

Why this module is long: it is the tenant boundary of the knowledge base, and every
statement that reads or writes a collection's rows is here, next to the others, so a
reader checks the tenant filter and the transaction of each in one file.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from iatros.knowledge.chunking import Chunk
from iatros.knowledge.filters import parse_filters, sql_where
from iatros.knowledge.jobstore import JobStore
from iatros.knowledge.sqlite import SqliteFile
from iatros.knowledge.store_feed import ChunkRecord as ChunkRecord
from iatros.knowledge.store_feed import IndexFeed
from iatros.knowledge.store_feed import Key as Key
from iatros.knowledge.store_feed import Keys as Keys
from iatros.knowledge.store_feed import LogEntry as LogEntry
from iatros.knowledge.types import CollectionInfo, DocumentInfo, NotFound

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (tenant, name)
);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    pages INTEGER,
    chunks INTEGER NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    warnings TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (collection_id, name)
);
CREATE INDEX IF NOT EXISTS documents_hash ON documents (collection_id, content_hash);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    collection_id INTEGER NOT NULL,
    ord INTEGER NOT NULL,
    page INTEGER,
    page_end INTEGER,
    section TEXT,
    text TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_document ON chunks (document_id);
CREATE INDEX IF NOT EXISTS chunks_collection ON chunks (collection_id);
CREATE TABLE IF NOT EXISTS index_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'delete', 'drop')),
    keys BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS index_log_collection ON index_log (collection_id, seq);
"""


@dataclass(frozen=True, slots=True)
class CollectionRef:
    """A tenant's collection as the indexes know it (``id`` is internal)."""

    id: int
    tenant: str
    name: str
    uid: str
    version: int

    @property
    def version_token(self) -> str:
        return f"{self.uid}.{self.version}"


@dataclass(frozen=True, slots=True)
class ChunkRow:
    key: Key
    document_id: str
    document: str
    page: int | None
    section: str | None
    text: str
    vector: npt.NDArray[np.float32]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteResult:
    collection: CollectionRef
    document_id: str
    replaced: bool
    new_keys: Keys
    old_keys: Keys


def _keys_blob(keys: Sequence[int] | Keys) -> bytes:
    return np.asarray(keys, dtype=np.int64).tobytes()


class MetaStore(IndexFeed):
    """Collections, documents, chunks and the index log of one knowledge database.

    Upload jobs live in the same file, behind :attr:`jobs` (:mod:`iatros.knowledge.jobstore`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = SqliteFile(path)
        self._db = self._file.db
        self._tx = self._file.tx
        db = self._db()
        db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('store_uid', ?)",
                (uuid.uuid4().hex,),
            )
        self.jobs = JobStore(self._file)

    @property
    def uid(self) -> str:
        """This database's random id: tells its chunks from other instances' in a shared index."""
        return self.get_meta("store_uid") or ""

    def close(self) -> None:
        self._file.close()

    # --- meta ---------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- collections and documents (tenant-scoped) --------------------------------

    def collection(self, tenant: str, name: str) -> CollectionRef | None:
        row = (
            self._db()
            .execute(
                "SELECT id, uid, version FROM collections WHERE tenant = ? AND name = ?",
                (tenant, name),
            )
            .fetchone()
        )
        return None if row is None else CollectionRef(row[0], tenant, name, row[1], row[2])

    def require_collection(self, tenant: str, name: str) -> CollectionRef:
        ref = self.collection(tenant, name)
        if ref is None:
            raise NotFound(f"no collection {name!r}")
        return ref

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        rows = (
            self._db()
            .execute(
                """SELECT c.name, c.uid, c.version, c.created_at, c.updated_at,
                      COUNT(d.id), COALESCE(SUM(d.chunks), 0)
               FROM collections c LEFT JOIN documents d ON d.collection_id = c.id
               WHERE c.tenant = ? GROUP BY c.id ORDER BY c.name""",
                (tenant,),
            )
            .fetchall()
        )
        return [CollectionInfo(r[0], r[5], r[6], f"{r[1]}.{r[2]}", r[3], r[4]) for r in rows]

    def list_documents(self, tenant: str, collection: str) -> list[DocumentInfo]:
        ref = self.require_collection(tenant, collection)
        rows = (
            self._db()
            .execute(
                """SELECT id, name, content_type, content_hash, bytes, pages, chunks, created_at,
                      updated_at, metadata, warnings
               FROM documents WHERE collection_id = ? ORDER BY name""",
                (ref.id,),
            )
            .fetchall()
        )
        return [
            DocumentInfo(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                json.loads(r[9]),
                json.loads(r[10]),
            )
            for r in rows
        ]

    def find_document(
        self,
        tenant: str,
        collection: str,
        *,
        name: str | None = None,
        content_hash: str | None = None,
    ) -> tuple[str, str, str] | None:
        """(id, name, content_hash) of a document by name or content hash, if any."""
        ref = self.collection(tenant, collection)
        if ref is None:
            return None
        if name is not None:
            row = (
                self._db()
                .execute(
                    "SELECT id, name, content_hash FROM documents"
                    " WHERE collection_id = ? AND name = ?",
                    (ref.id, name),
                )
                .fetchone()
            )
        else:
            row = (
                self._db()
                .execute(
                    """SELECT id, name, content_hash FROM documents
                   WHERE collection_id = ? AND content_hash = ? LIMIT 1""",
                    (ref.id, content_hash),
                )
                .fetchone()
            )
        return None if row is None else (row[0], row[1], row[2])

    def write_document(
        self,
        tenant: str,
        collection: str,
        *,
        name: str,
        content_type: str,
        content_hash: str,
        size: int,
        pages: int | None,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
        metadata: dict[str, Any],
        warnings: list[str],
    ) -> WriteResult:
        """Create or replace one document with its chunks, all or nothing."""
        now = time.time()
        blobs = vectors.astype(np.float16)
        with self._tx() as db:
            row = db.execute(
                "SELECT id, uid, version FROM collections WHERE tenant = ? AND name = ?",
                (tenant, collection),
            ).fetchone()
            if row is None:
                uid = uuid.uuid4().hex[:12]
                cur = db.execute(
                    """INSERT INTO collections (tenant, name, uid, version, created_at, updated_at)
                       VALUES (?, ?, ?, 0, ?, ?)""",
                    (tenant, collection, uid, now, now),
                )
                collection_id, version = int(cur.lastrowid or 0), 0
            else:
                collection_id, uid, version = row
            existing = db.execute(
                "SELECT id FROM documents WHERE collection_id = ? AND name = ?",
                (collection_id, name),
            ).fetchone()
            old_keys = np.empty(0, dtype=np.int64)
            if existing is not None:
                document_id = str(existing[0])
                old_keys = _drop_chunks(db, document_id)
                db.execute(
                    """UPDATE documents SET content_type = ?, content_hash = ?, bytes = ?,
                       pages = ?, chunks = ?, metadata = ?, warnings = ?, updated_at = ?
                       WHERE id = ?""",
                    (
                        content_type,
                        content_hash,
                        size,
                        pages,
                        len(chunks),
                        json.dumps(metadata),
                        json.dumps(warnings),
                        now,
                        document_id,
                    ),
                )
            else:
                document_id = uuid.uuid4().hex
                db.execute(
                    """INSERT INTO documents (id, collection_id, name, content_type, content_hash,
                       bytes, pages, chunks, metadata, warnings, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        document_id,
                        collection_id,
                        name,
                        content_type,
                        content_hash,
                        size,
                        pages,
                        len(chunks),
                        json.dumps(metadata),
                        json.dumps(warnings),
                        now,
                        now,
                    ),
                )
            new_keys = np.empty(len(chunks), dtype=np.int64)
            for i, chunk in enumerate(chunks):
                cur = db.execute(
                    """INSERT INTO chunks (document_id, collection_id, ord, page, page_end,
                       section, text, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        document_id,
                        collection_id,
                        chunk.ord,
                        chunk.page,
                        chunk.page_end,
                        chunk.section,
                        chunk.text,
                        blobs[i].tobytes(),
                    ),
                )
                new_keys[i] = int(cur.lastrowid or 0)
            if len(old_keys):
                db.execute(
                    "INSERT INTO index_log (collection_id, op, keys) VALUES (?, 'delete', ?)",
                    (collection_id, _keys_blob(old_keys)),
                )
            if len(new_keys):
                db.execute(
                    "INSERT INTO index_log (collection_id, op, keys) VALUES (?, 'add', ?)",
                    (collection_id, _keys_blob(new_keys)),
                )
            version += 1
            db.execute(
                "UPDATE collections SET version = ?, updated_at = ? WHERE id = ?",
                (version, now, collection_id),
            )
        ref = CollectionRef(collection_id, tenant, collection, uid, version)
        return WriteResult(ref, document_id, existing is not None, new_keys, old_keys)

    def delete_document(
        self, tenant: str, collection: str, document_id: str
    ) -> tuple[CollectionRef, int]:
        with self._tx() as db:
            row = db.execute(
                """SELECT c.id, c.uid, c.version FROM documents d
                   JOIN collections c ON c.id = d.collection_id
                   WHERE c.tenant = ? AND c.name = ? AND d.id = ?""",
                (tenant, collection, document_id),
            ).fetchone()
            if row is None:
                raise NotFound(f"no document {document_id!r} in collection {collection!r}")
            collection_id, uid, version = row
            keys = _drop_chunks(db, document_id)
            db.execute("DELETE FROM documents WHERE id = ?", (document_id,))
            if len(keys):
                db.execute(
                    "INSERT INTO index_log (collection_id, op, keys) VALUES (?, 'delete', ?)",
                    (collection_id, _keys_blob(keys)),
                )
            db.execute(
                "UPDATE collections SET version = ?, updated_at = ? WHERE id = ?",
                (version + 1, time.time(), collection_id),
            )
        return CollectionRef(collection_id, tenant, collection, uid, version + 1), len(keys)

    def create_collection(self, tenant: str, collection: str) -> bool:
        """An empty collection, kept until deleted; False if it exists (so twice is harmless)."""
        now, uid = time.time(), uuid.uuid4().hex[:12]
        with self._tx() as db:
            return (
                db.execute(
                    """INSERT INTO collections (tenant, name, uid, version, created_at, updated_at)
                   VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (tenant, name) DO NOTHING""",
                    (tenant, collection, uid, now, now),
                ).rowcount
                == 1
            )

    def delete_collection(self, tenant: str, collection: str) -> tuple[CollectionRef, int]:
        with self._tx() as db:
            row = db.execute(
                "SELECT id, uid, version FROM collections WHERE tenant = ? AND name = ?",
                (tenant, collection),
            ).fetchone()
            if row is None:
                raise NotFound(f"no collection {collection!r}")
            collection_id = int(row[0])
            count = db.execute(
                "SELECT COUNT(*) FROM documents WHERE collection_id = ?", (collection_id,)
            ).fetchone()[0]
            db.execute("DELETE FROM chunks WHERE collection_id = ?", (collection_id,))
            db.execute("DELETE FROM documents WHERE collection_id = ?", (collection_id,))
            db.execute("DELETE FROM collections WHERE id = ?", (collection_id,))
            db.execute("DELETE FROM index_log WHERE collection_id = ?", (collection_id,))
            db.execute(
                "INSERT INTO index_log (collection_id, op, keys) VALUES (?, 'drop', ?)",
                (collection_id, b""),
            )
        return CollectionRef(collection_id, tenant, collection, row[1], row[2] + 1), int(count)

    # --- search support -----------------------------------------------------------

    def allowed_keys(self, ref: CollectionRef, filters: dict[str, Any]) -> Keys:
        """Chunk keys of ``ref`` matching ``filters`` (see :mod:`iatros.knowledge.filters`)."""
        terms, params = sql_where(parse_filters(filters))
        where = ["d.collection_id = ?", *terms]
        params = [ref.id, *params]
        # CROSS JOIN makes SQLite walk documents first (by their (collection, name) index),
        # then each document's chunks: a one-document filter never scans the collection.
        sql = (
            "SELECT c.id FROM documents d CROSS JOIN chunks c ON c.document_id = d.id WHERE "
            + " AND ".join(where)
        )
        return np.fromiter((r[0] for r in self._db().execute(sql, params)), dtype=np.int64)

    def chunk_rows(self, ref: CollectionRef, keys: Sequence[int]) -> dict[Key, ChunkRow]:
        """Rows for ``keys`` that still exist in ``ref`` (orphans simply do not come back)."""
        if not keys:
            return {}
        out: dict[Key, ChunkRow] = {}
        keys = list(dict.fromkeys(int(k) for k in keys))
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows = (
                self._db()
                .execute(
                    f"""SELECT c.id, d.id, d.name, c.page, c.section, c.text, c.vector, d.metadata
                    FROM chunks c JOIN documents d ON d.id = c.document_id
                    JOIN collections k ON k.id = c.collection_id
                    WHERE k.tenant = ? AND c.collection_id = ?
                      AND c.id IN ({", ".join("?" * len(part))})""",
                    (ref.tenant, ref.id, *part),
                )
                .fetchall()
            )
            for r in rows:
                out[int(r[0])] = ChunkRow(
                    int(r[0]),
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    r[5],
                    np.frombuffer(r[6], dtype=np.float16).astype(np.float32),
                    json.loads(r[7]),
                )
        return out


def _drop_chunks(db: sqlite3.Connection, document_id: str) -> Keys:
    """Delete a document's chunks; return their keys (the indexes must drop them too)."""
    keys = np.fromiter(
        (r[0] for r in db.execute("SELECT id FROM chunks WHERE document_id = ?", (document_id,))),
        dtype=np.int64,
    )
    db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
    return keys
