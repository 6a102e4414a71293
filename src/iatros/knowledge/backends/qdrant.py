"""The scale-out backend: Qdrant holds dense vectors and BM25-style sparse vectors.

Every tenant's chunks live in one Qdrant collection partitioned by a ``cid`` payload
(Qdrant's recommended multitenancy: a tenant-keyed payload index instead of one
collection per tenant); the point id is the store's chunk key, so replaying the log is
idempotent. Lexical search uses a sparse vector per chunk whose values are BM25's
term-frequency part (k1=1.2, b=0.75, fixed average length) and Qdrant's ``idf`` modifier
supplies the IDF part, computed over the whole Qdrant collection (so, unlike the
embedded backend, BM25 statistics are shared across collections). With ``qdrant_url``
unset, qdrant-client's local mode stores everything under the data directory: same
code, no server (it scans linearly: for tests and small sets only).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient, models

from iatros.knowledge.backends.base import Hits, SearchBackend, Vector
from iatros.knowledge.store import Keys, LogEntry, MetaStore
from iatros.knowledge.text import terms

log = logging.getLogger("iatros.knowledge.qdrant")

K1, B, AVG_LEN = 1.2, 0.75, 250.0
ID_FILTER_BELOW = 50_000
SEQ_KEY = "qdrant_applied_seq"


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


class QdrantBackend(SearchBackend):
    name = "qdrant"

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
        self._store: MetaStore | None = None
        self._ready = False

    def open(self, store: MetaStore) -> None:
        self._store = store
        self._applied = int(store.get_meta(SEQ_KEY) or 0)
        dim = store.get_meta("dim")
        if dim is not None:
            self._ensure(int(dim))
        self.sync(store)

    def applied_seq(self) -> int:
        return self._applied

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
                    "cid",
                    field_schema=models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD, is_tenant=True
                    ),
                )
        self._ready = True

    def apply(self, store: MetaStore, entries: list[LogEntry]) -> None:
        for entry in entries:
            if entry.op == "add":
                found, vectors, texts = store.vectors_and_texts(entry.keys)
                if not len(found):
                    continue
                self._ensure(int(vectors.shape[1]))
                for start in range(0, len(found), 256):
                    points = [
                        models.PointStruct(
                            id=int(key),
                            vector={
                                "dense": vectors[start + i].tolist(),
                                "bm25": sparse_document(texts[start + i]),
                            },
                            payload={"cid": str(entry.collection_id)},
                        )
                        for i, key in enumerate(found[start : start + 256])
                    ]
                    with self._lock:
                        self.client.upsert(self.collection, points=points, wait=True)
            elif not self._ready:
                continue
            elif entry.op == "delete":
                with self._lock:
                    self.client.delete(
                        self.collection,
                        points_selector=models.PointIdsList(points=[int(k) for k in entry.keys]),
                        wait=True,
                    )
            elif entry.op == "drop":
                with self._lock:
                    self.client.delete(
                        self.collection,
                        points_selector=models.FilterSelector(
                            filter=self._filter(entry.collection_id, None)
                        ),
                        wait=True,
                    )
        if entries:
            self._applied = entries[-1].seq
            store.set_meta(SEQ_KEY, str(self._applied))
            store.trim_log(self._applied)

    def _filter(self, collection_id: int, allowed: Keys | None) -> models.Filter:
        must: list[Any] = [
            models.FieldCondition(key="cid", match=models.MatchValue(value=str(collection_id)))
        ]
        if allowed is not None and len(allowed) <= ID_FILTER_BELOW:
            must.append(models.HasIdCondition(has_id=[int(k) for k in allowed]))
        return models.Filter(must=must)

    def _query(
        self, collection_id: int, query: Any, using: str, k: int, allowed: Keys | None
    ) -> Hits:
        if not self._ready:
            return []
        post = allowed is not None and len(allowed) > ID_FILTER_BELOW
        with self._lock:
            result = self.client.query_points(
                self.collection,
                query=query,
                using=using,
                limit=k * 10 if post else k,
                query_filter=self._filter(collection_id, allowed),
                with_payload=False,
            )
        hits = [(int(p.id), float(p.score)) for p in result.points]
        if post and allowed is not None:
            allowed_set = set(allowed.tolist())
            hits = [h for h in hits if h[0] in allowed_set]
        return hits[:k]

    def search_dense(
        self, collection_id: int, vector: Vector, k: int, allowed: Keys | None
    ) -> Hits:
        return self._query(collection_id, np.asarray(vector).tolist(), "dense", k, allowed)

    def search_lexical(
        self, collection_id: int, terms: list[str], k: int, allowed: Keys | None
    ) -> Hits:
        if not terms:
            return []
        return self._query(collection_id, sparse_query(terms), "bm25", k, allowed)

    def close(self) -> None:
        self.client.close()
