"""The shared backend: Qdrant holds each chunk's vectors, text and metadata.

Every chunk is one point whose payload carries what a search result needs (tenant,
collection name, document id and name, content type, page, section, text, metadata),
so an instance answers from Qdrant alone and several instances on one Qdrant server
search each other's documents (:attr:`SearchBackend.shared`). Filters are applied to
the payload. Point ids are derived from this instance's store id and the chunk key, so
instances never overwrite each other's points and replaying the log is idempotent.

Every tenant's chunks live in one Qdrant collection partitioned by a ``tenant`` payload
(Qdrant's recommended multitenancy: a tenant-keyed payload index instead of one
collection per tenant); every query filters on tenant and collection. Lexical search
uses a sparse vector per chunk whose values are BM25's term-frequency part (k1=1.2,
b=0.75, fixed average length) and Qdrant's ``idf`` modifier supplies the IDF part,
computed over the whole Qdrant collection (so, unlike the embedded backend, BM25
statistics are shared across collections). With ``qdrant_url`` unset, qdrant-client's
local mode stores everything under the data directory: same code, no server, one
process only (it scans linearly: for tests and small sets).

What stays per instance: the metadata database (document lists, duplicate detection,
collection versions) and writes. An instance deletes only the points it wrote, and
lists only the documents it ingested; searching is what is shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from iatros.knowledge.backends.base import Hits, Scope, SearchBackend, Vector
from iatros.knowledge.filters import Condition
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import ChunkRecord, ChunkRow, Key, LogEntry, MetaStore
from iatros.knowledge.text import terms

log = logging.getLogger("iatros.knowledge.qdrant")

K1, B, AVG_LEN = 1.2, 0.75, 250.0
SEQ_KEY = "qdrant_applied_seq"
LAYOUT_KEY = "qdrant_layout"
LAYOUT = "2"
"""2: text and metadata in the payload, ids per store. Layout 1 (integer ids, ``cid``
only) is rebuilt from the store at start."""
_IDS = uuid.UUID("0b7c3a4e-5d1f-4c3e-9a59-6f1d2e8b9c10")
_FIELDS = {"document_id", "document", "content_type", "page", "section"}


def term_id(term: str) -> int:
    """A stable 32-bit id for a term (sparse-vector index)."""
    return int.from_bytes(hashlib.blake2b(term.encode(), digest_size=4).digest(), "little")


def sparse_document(text: str) -> models.SparseVector:
    words = terms(text)
    counts = Counter(term_id(w) for w in words)
    norm = K1 * (1 - B + B * len(words) / AVG_LEN)
    indices = list(counts)
    values = [tf * (K1 + 1) / (tf + norm) for tf in counts.values()]
    return models.SparseVector(indices=indices, values=values)


def sparse_query(words: list[str]) -> models.SparseVector:
    counts = Counter(term_id(w) for w in words)
    return models.SparseVector(indices=list(counts), values=[float(v) for v in counts.values()])


def payload_filter(conditions: Sequence[Condition]) -> list[Any]:
    """The request's filters as Qdrant conditions on the payload (all must hold)."""
    must: list[Any] = []
    for cond in conditions:
        key = (
            cond.field if cond.field in _FIELDS and not cond.metadata else f"metadata.{cond.field}"
        )
        if cond.kind == "null":
            must.append(models.IsEmptyCondition(is_empty=models.PayloadField(key=key)))
        elif cond.kind == "range":
            bounds = dict(cond.ranges)
            must.append(models.FieldCondition(key=key, range=models.Range(**bounds)))
        else:
            options = [_equals(key, v) for v in cond.values]
            must.append(options[0] if len(options) == 1 else models.Filter(should=options))
    return must


def _equals(key: str, value: object) -> Any:
    if isinstance(value, float) and not value.is_integer():
        return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    if isinstance(value, float):
        value = int(value)
    if value is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=key))
    assert isinstance(value, str | int | bool)
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


class QdrantBackend(SearchBackend):
    name = "qdrant"
    shared = True

    def __init__(
        self, *, url: str | None, api_key: str | None, path: Path, collection: str
    ) -> None:
        self.local = not url
        if url:
            self.client = QdrantClient(url=url, api_key=api_key, timeout=30)
        else:
            path.mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(path))
        self.collection = collection
        # Local mode is an in-process engine that is not thread-safe; a server client is.
        self._lock: Any = threading.Lock() if self.local else contextlib.nullcontext()
        self._applied = 0
        self._uid = ""
        self._ready = False

    def open(self, store: MetaStore) -> None:
        self._uid = store.uid
        self._applied = int(store.get_meta(SEQ_KEY) or 0)
        with self._lock:
            self._ready = self.client.collection_exists(self.collection)
        dim = store.get_meta("dim")
        if dim is not None:
            self._ensure(int(dim))
        if store.get_meta(LAYOUT_KEY) != LAYOUT:
            self._rebuild(store)
        self.sync(store)

    def applied_seq(self) -> int:
        return self._applied

    def point_id(self, key: int) -> str:
        return str(uuid.uuid5(_IDS, f"{self._uid}:{key}"))

    def _ensure(self, dim: int) -> None:
        if self._ready:
            return
        with self._lock:
            exists = self.client.collection_exists(self.collection)
            if not exists:
                self.client.create_collection(
                    self.collection,
                    vectors_config={
                        "dense": models.VectorParams(
                            size=dim, distance=models.Distance.COSINE, on_disk=True
                        )
                    },
                    sparse_vectors_config={
                        "bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                )
                if not self.local:  # local mode has no payload indexes
                    self.client.create_payload_index(
                        self.collection,
                        "tenant",
                        field_schema=models.KeywordIndexParams(
                            type=models.KeywordIndexType.KEYWORD, is_tenant=True
                        ),
                    )
                    for field in ("collection", "store"):
                        self.client.create_payload_index(
                            self.collection, field, field_schema=models.PayloadSchemaType.KEYWORD
                        )
        self._ready = True

    def _rebuild(self, store: MetaStore) -> None:
        """Re-upload every chunk of this store in the current layout (an upgrade)."""
        if self._ready:
            with self._lock:  # points of layout 1 have no ``store`` field
                self.client.delete(
                    self.collection,
                    points_selector=models.FilterSelector(
                        filter=models.Filter(
                            must=[
                                models.IsEmptyCondition(is_empty=models.PayloadField(key="store"))
                            ]
                        )
                    ),
                    wait=True,
                )
            for collection_id in store.collection_ids():
                self._upsert(store.chunk_records(store.collection_keys(collection_id)))
        store.set_meta(LAYOUT_KEY, LAYOUT)

    def _upsert(self, records: list[ChunkRecord]) -> None:
        if not records:
            return
        self._ensure(int(records[0].vector.shape[0]))
        for start in range(0, len(records), 256):
            points = [
                models.PointStruct(
                    id=self.point_id(r.key),
                    vector={
                        "dense": r.vector.tolist(),
                        "bm25": sparse_document(r.indexed_text),
                    },
                    payload={
                        "store": self._uid,
                        "cid": r.collection_id,
                        "key": r.key,
                        "tenant": r.tenant,
                        "collection": r.collection,
                        "document_id": r.document_id,
                        "document": r.document,
                        "content_type": r.content_type,
                        "page": r.page,
                        "section": r.section,
                        "text": r.text,
                        "metadata": r.metadata,
                    },
                )
                for r in records[start : start + 256]
            ]
            with self._lock:
                self.client.upsert(self.collection, points=points, wait=True)

    def apply(self, store: MetaStore, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.op == "add":
                self._upsert(store.chunk_records(entry.keys))
            elif not self._ready:
                continue
            elif entry.op == "delete":
                with self._lock:
                    self.client.delete(
                        self.collection,
                        points_selector=models.PointIdsList(
                            points=[self.point_id(int(k)) for k in entry.keys]
                        ),
                        wait=True,
                    )
            elif entry.op == "drop":
                own = models.Filter(
                    must=[
                        models.FieldCondition(
                            key="store", match=models.MatchValue(value=self._uid)
                        ),
                        models.FieldCondition(
                            key="cid", match=models.MatchValue(value=entry.collection_id)
                        ),
                    ]
                )
                with self._lock:
                    self.client.delete(
                        self.collection,
                        points_selector=models.FilterSelector(filter=own),
                        wait=True,
                    )
        if entries:
            self._applied = entries[-1].seq
            store.set_meta(SEQ_KEY, str(self._applied))
            store.trim_log(self._applied)

    def _filter(
        self, tenant: str, collection: str, conditions: Sequence[Condition]
    ) -> models.Filter:
        must: list[Any] = [
            models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
            models.FieldCondition(key="collection", match=models.MatchValue(value=collection)),
            *payload_filter(conditions),
        ]
        return models.Filter(must=must)

    def _query(self, scope: Scope, query: Any, using: str, k: int) -> Hits:
        if not self._ready:
            return []
        with self._lock:
            result = self.client.query_points(
                self.collection,
                query=query,
                using=using,
                limit=k,
                query_filter=self._filter(scope.ref.tenant, scope.ref.name, scope.conditions),
                with_payload=False,
            )
        return [(str(p.id), float(p.score)) for p in result.points]

    def search_dense(self, scope: Scope, vector: Vector, k: int) -> Hits:
        return self._query(scope, np.asarray(vector).tolist(), "dense", k)

    def search_lexical(self, scope: Scope, terms: list[str], k: int) -> Hits:
        if not terms:
            return []
        return self._query(scope, sparse_query(terms), "bm25", k)

    def rows(self, store: MetaStore, scope: Scope, keys: Sequence[Key]) -> dict[Key, ChunkRow]:
        """The hits' text and metadata from their payload (another instance's included).

        This instance's own points are still checked against its store, so a point whose
        deletion has not reached Qdrant yet (an index update deferred) never shows.
        """
        if not keys or not self._ready:
            return {}
        with self._lock:
            points = self.client.retrieve(
                self.collection,
                ids=[str(k) for k in keys],
                with_payload=True,
                with_vectors=["dense"],
            )
        own = [
            int(p.payload["key"])
            for p in points
            if p.payload and p.payload.get("store") == self._uid
        ]
        alive = set(store.chunk_rows(scope.ref, own)) if own and scope.ref.id >= 0 else set()
        out: dict[Key, ChunkRow] = {}
        for p in points:
            payload = p.payload or {}
            # The ids came from a query filtered on this tenant; checked again all the same.
            if (
                payload.get("tenant") != scope.ref.tenant
                or payload.get("collection") != scope.ref.name
            ):
                continue
            if payload.get("store") == self._uid and payload.get("key") not in alive:
                continue  # deleted here, not yet in Qdrant
            vectors = p.vector if isinstance(p.vector, dict) else {}
            out[str(p.id)] = ChunkRow(
                str(p.id),
                str(payload["document_id"]),
                str(payload["document"]),
                payload.get("page"),
                payload.get("section"),
                str(payload["text"]),
                np.asarray(vectors.get("dense", []), dtype=np.float32),
                dict(payload.get("metadata") or {}),
            )
        return out

    def has_collection(self, tenant: str, name: str) -> bool:
        if not self._ready:
            return False
        with self._lock:
            found = self.client.count(
                self.collection, count_filter=self._filter(tenant, name, ()), exact=False
            )
        return found.count > 0

    def close(self) -> None:
        self.client.close()


def factory(settings: KnowledgeSettings, root: Path) -> QdrantBackend:
    """The ``qdrant`` entry point of ``iatros.knowledge_backends``."""
    return QdrantBackend(
        url=settings.qdrant_url,
        api_key=settings.qdrant_api_key,
        path=Path(settings.qdrant_path) if settings.qdrant_path else root / "qdrant",
        collection=settings.qdrant_collection,
    )
