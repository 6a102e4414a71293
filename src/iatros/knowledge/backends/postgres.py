"""A shared backend on PostgreSQL: the database the instances already share.

Like the Qdrant backend (:attr:`SearchBackend.shared`), every chunk is a row carrying
what a search result needs (tenant, collection, document, page, section, text,
metadata, vector), so an instance answers from the table alone and every instance on
one database searches every other's documents. Ids are derived from the instance's
store id and the chunk key: instances never overwrite each other's rows, and replaying
the index log is idempotent.

What it is for: a cluster without a vector database (PostgreSQL is already the shared
store of keys, usage and audit). What it is not: an ANN index. Dense search is exact
(a dot product over the collection's rows, computed in SQL: no pgvector needed) and
lexical search is PostgreSQL full text (``simple`` configuration, ``ts_rank_cd``), not
BM25; both are fine for thousands of chunks per collection, and Qdrant
(``knowledge.backend: qdrant``) is the choice beyond that.

Settings: ``knowledge.backend: postgres`` and ``knowledge.postgres_url`` (a YAML value
may be ``${IATROS_DATABASE_URL}``).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from iatros.knowledge.backends.base import Hits, Scope, SearchBackend, Vector
from iatros.knowledge.filters import Condition
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import ChunkRecord, ChunkRow, Key, LogEntry, MetaStore

SEQ_KEY = "postgres_applied_seq"
TABLE = "iatros_knowledge_chunks"
_IDS = uuid.UUID("5f0f9a0e-3c44-4a7d-8a2b-1b6f0f3b7c21")
_FIELDS = {"document_id", "document", "content_type", "page", "section"}
_WORD = re.compile(r"^\w+$")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id text PRIMARY KEY,
    store text NOT NULL,
    cid bigint NOT NULL,
    key bigint NOT NULL,
    tenant text NOT NULL,
    collection text NOT NULL,
    document_id text NOT NULL,
    document text NOT NULL,
    content_type text NOT NULL,
    page integer,
    section text,
    text text NOT NULL,
    metadata jsonb NOT NULL,
    vector real[] NOT NULL,
    lexical tsvector NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_scope ON {TABLE} (tenant, collection);
CREATE INDEX IF NOT EXISTS {TABLE}_store ON {TABLE} (store, cid);
CREATE INDEX IF NOT EXISTS {TABLE}_lexical ON {TABLE} USING gin (lexical);
"""


class PostgresBackend(SearchBackend):
    name = "postgres"
    shared = True

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._applied = 0
        self._uid = ""

    def _conn(self) -> psycopg.Connection[Any]:
        """One autocommit connection per thread (searches run on several threads)."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.url, autocommit=True)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def open(self, store: MetaStore) -> None:
        self._uid = store.uid
        self._applied = int(store.get_meta(SEQ_KEY) or 0)
        conn = self._conn()
        with conn.transaction():
            # One creator at a time when several instances start together.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
            conn.execute(_SCHEMA)
        self.sync(store)

    def applied_seq(self) -> int:
        return self._applied

    def point_id(self, key: int) -> str:
        return str(uuid.uuid5(_IDS, f"{self._uid}:{key}"))

    def _upsert(self, records: list[ChunkRecord]) -> None:
        rows = [
            (
                self.point_id(r.key),
                self._uid,
                r.collection_id,
                r.key,
                r.tenant,
                r.collection,
                r.document_id,
                r.document,
                r.content_type,
                r.page,
                r.section,
                r.text,
                json.dumps(r.metadata),
                [float(x) for x in r.vector],
                r.indexed_text,
            )
            for r in records
        ]
        if not rows:
            return
        with self._conn().cursor() as cur:
            cur.executemany(
                f"""INSERT INTO {TABLE} (id, store, cid, key, tenant, collection, document_id,
                       document, content_type, page, section, text, metadata, vector, lexical)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb,
                       %s::real[], to_tsvector('simple', %s))
                   ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text,
                       metadata = EXCLUDED.metadata, vector = EXCLUDED.vector,
                       lexical = EXCLUDED.lexical, document = EXCLUDED.document""",
                rows,
            )

    def apply(self, store: MetaStore, entries: list[LogEntry]) -> None:
        conn = self._conn()
        for entry in entries:
            if entry.op == "add":
                self._upsert(store.chunk_records(entry.keys))
            elif entry.op == "delete":
                ids = [self.point_id(int(k)) for k in entry.keys]
                conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (ids,))
            elif entry.op == "drop":
                conn.execute(
                    f"DELETE FROM {TABLE} WHERE store = %s AND cid = %s",
                    (self._uid, entry.collection_id),
                )
        if entries:
            self._applied = entries[-1].seq
            store.set_meta(SEQ_KEY, str(self._applied))
            store.trim_log(self._applied)

    def _where(self, scope: Scope) -> tuple[str, list[Any]]:
        """The scope (tenant, collection) and the request's filters as SQL."""
        sql = ["tenant = %s", "collection = %s"]
        params: list[Any] = [scope.ref.tenant, scope.ref.name]
        for cond in scope.conditions:
            clause, values = _condition(cond)
            sql.append(clause)
            params += values
        return " AND ".join(sql), params

    def search_dense(self, scope: Scope, vector: Vector, k: int) -> Hits:
        where, params = self._where(scope)
        query = [float(x) for x in np.asarray(vector, dtype=np.float32)]
        rows = (
            self._conn()
            .execute(
                f"""SELECT id, (SELECT sum(a * b) FROM unnest(vector, %s::real[]) AS t(a, b))
                   AS score FROM {TABLE} WHERE {where} ORDER BY score DESC NULLS LAST LIMIT %s""",
                [query, *params, k],
            )
            .fetchall()
        )
        return [(str(r[0]), float(r[1] or 0.0)) for r in rows]

    def search_lexical(self, scope: Scope, terms: list[str], k: int) -> Hits:
        words = sorted({t for t in terms if _WORD.match(t)})
        if not words:
            return []
        where, params = self._where(scope)
        rows = (
            self._conn()
            .execute(
                f"""SELECT id, ts_rank_cd(lexical, q) AS score
                FROM {TABLE}, to_tsquery('simple', %s) AS q
                WHERE lexical @@ q AND {where} ORDER BY score DESC LIMIT %s""",
                [" | ".join(words), *params, k],
            )
            .fetchall()
        )
        return [(str(r[0]), float(r[1])) for r in rows]

    def rows(self, store: MetaStore, scope: Scope, keys: Sequence[Key]) -> dict[Key, ChunkRow]:
        """The hits' rows (another instance's included); this instance's own are checked
        against its store, so a deletion not yet applied here never shows."""
        if not keys:
            return {}
        found = (
            self._conn()
            .execute(
                f"""SELECT id, store, key, document_id, document, page, section, text, vector,
                   metadata FROM {TABLE} WHERE id = ANY(%s) AND tenant = %s AND collection = %s""",
                ([str(k) for k in keys], scope.ref.tenant, scope.ref.name),
            )
            .fetchall()
        )
        own = [int(r[2]) for r in found if r[1] == self._uid]
        alive = set(store.chunk_rows(scope.ref, own)) if own and scope.ref.id >= 0 else set()
        out: dict[Key, ChunkRow] = {}
        for r in found:
            if r[1] == self._uid and int(r[2]) not in alive:
                continue
            out[str(r[0])] = ChunkRow(
                str(r[0]),
                str(r[3]),
                str(r[4]),
                r[5],
                r[6],
                str(r[7]),
                np.asarray(r[8], dtype=np.float32),
                dict(r[9] or {}),
            )
        return out

    def has_collection(self, tenant: str, name: str) -> bool:
        row = (
            self._conn()
            .execute(
                f"SELECT 1 FROM {TABLE} WHERE tenant = %s AND collection = %s LIMIT 1",
                (tenant, name),
            )
            .fetchone()
        )
        return row is not None

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


def _condition(cond: Condition) -> tuple[str, list[Any]]:
    """One filter on a column or a metadata key (all conditions must hold)."""
    column = cond.field in _FIELDS and not cond.metadata
    if cond.kind == "null":
        if column:
            return f"{cond.field} IS NULL", []
        return "(metadata -> %s IS NULL OR metadata -> %s = 'null'::jsonb)", [cond.field] * 2
    if cond.kind == "range":
        sql: list[str] = []
        params: list[Any] = []
        ops = {"gte": ">=", "gt": ">", "lte": "<=", "lt": "<"}
        for op, bound in cond.ranges:
            if column:
                sql.append(f"{cond.field} {ops[op]} %s")
                params.append(bound)
            else:
                sql.append(
                    f"(jsonb_typeof(metadata -> %s) = 'number' "
                    f"AND (metadata ->> %s)::float8 {ops[op]} %s)"
                )
                params += [cond.field, cond.field, bound]
        return "(" + " AND ".join(sql) + ")", params
    if column:
        texts = [
            str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in cond.values
        ]
        return f"{cond.field}::text = ANY(%s)", [texts]
    return "metadata -> %s = ANY(%s::jsonb[])", [cond.field, [json.dumps(v) for v in cond.values]]


def factory(settings: KnowledgeSettings, root: Path) -> PostgresBackend:
    """The ``postgres`` entry point of ``iatros.knowledge_backends``."""
    url = settings.postgres_url
    if not url:
        raise ValueError("knowledge.backend: postgres needs knowledge.postgres_url")
    return PostgresBackend(url)
