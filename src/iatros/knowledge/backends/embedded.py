"""The embedded default: tantivy (BM25) and usearch (HNSW) files, one pair per collection.

Chosen by measurement (bench/results/knowledge-libs-100000.json): at 100k passages
tantivy answers a BM25 query in about 1 ms at the median where SQLite FTS5 ``bm25()``
needs about 80 ms (FTS5 scores every matching row; tantivy prunes with block-max WAND),
and bm25s cannot take incremental updates. At 100k vectors usearch HNSW with
half-precision vectors answers in about 0.5 ms at the median where exact numpy search
needs about 12 ms; it supports removal by key and saves to one file. Through this whole
backend, a dense search at 1M chunks took 2.7 ms at the median and 3.4 ms at p95, a
hybrid one 5.9 and 12.5 ms (bench/results/knowledge-scale-embedded.json).

One index pair per collection keeps BM25 statistics per collection (no tenant's
documents influence another tenant's scores) and makes dropping a collection a
directory removal. Tantivy commits on every :meth:`apply` (durable at once); usearch is
saved by :meth:`checkpoint`, after which ``state.json`` records the log position both
indexes have reached, so recovery after a crash is a replay from there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# onnxruntime must be loaded before usearch. usearch loads NumKong's library with
# RTLD_GLOBAL, which exports its own static copy of libstdc++'s locale facets;
# onnxruntime loaded after it binds to those and crashes in its native initialisation
# (SIGSEGV in std::codecvt, every time). Loaded first, both work. Kept above usearch
# by the import sorter (alphabetical); tests/knowledge/test_native_order.py guards it.
import onnxruntime  # noqa: F401
import tantivy
from usearch.index import Index

from iatros.knowledge.backends.base import Hits, ReadWriteLock, Scope, SearchBackend, Vector
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import Keys, LogEntry, MetaStore
from iatros.knowledge.text import terms

log = logging.getLogger("iatros.knowledge.embedded")

EXACT_BELOW = 20_000
"""Filtered dense searches over fewer allowed chunks than this are exact."""
TERM_SET_BELOW = 100_000
"""Filtered lexical searches over fewer allowed chunks than this filter inside tantivy."""
CHECKPOINT_EVERY_S = 30.0


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_integer_field("key", stored=False, indexed=True, fast=True)
    builder.add_text_field("body", stored=False, tokenizer_name="whitespace", index_option="freq")
    return builder.build()


class _Collection:
    """The two indexes of one collection."""

    def __init__(self, root: Path, dim: int) -> None:
        self.root = root
        self.dim = dim
        self.lock = ReadWriteLock()
        root.mkdir(parents=True, exist_ok=True)
        (root / "lexical").mkdir(exist_ok=True)
        self.schema = _schema()
        self.lexical = tantivy.Index(self.schema, path=str(root / "lexical"))
        self._writer: Any = None
        self.dense_path = root / "dense.usearch"
        self.dense = self._new_dense()
        if self.dense_path.exists():
            self.dense.load(str(self.dense_path))
        self.searcher = self.lexical.searcher()
        self.dirty = False

    def _new_dense(self) -> Index:
        return Index(
            ndim=self.dim,
            metric="cos",
            dtype="f16",
            connectivity=16,
            expansion_add=64,
            expansion_search=64,
        )

    def writer(self) -> Any:
        if self._writer is None:
            self._writer = self.lexical.writer(heap_size=64_000_000, num_threads=1)
        return self._writer

    def counts(self) -> tuple[int, int]:
        return len(self.dense), int(self.searcher.num_docs)

    def add(self, keys: Keys, vectors: Vector, texts: list[str]) -> None:
        ukeys = keys.astype(np.uint64)
        with self.lock.write():
            present = np.asarray(self.dense.contains(ukeys), dtype=bool).reshape(-1)
            if present.any():
                self.dense.remove(ukeys[present])
            self.dense.add(ukeys, vectors, threads=2)
        writer = self.writer()
        for key, text in zip(keys.tolist(), texts, strict=True):
            writer.delete_documents_by_term("key", key)
            writer.add_document(tantivy.Document(key=key, body=" ".join(terms(text))))
        self.dirty = True

    def delete(self, keys: Keys) -> None:
        ukeys = keys.astype(np.uint64)
        with self.lock.write():
            self.dense.remove(ukeys)
        writer = self.writer()
        for key in keys.tolist():
            writer.delete_documents_by_term("key", key)
        self.dirty = True

    def commit(self) -> None:
        if self._writer is not None:
            self._writer.commit()
            self.lexical.reload()
            self.searcher = self.lexical.searcher()

    def save(self) -> None:
        tmp = self.dense_path.with_suffix(".tmp")
        with self.lock.read():
            self.dense.save(str(tmp))
        os.replace(tmp, self.dense_path)
        self.dirty = False

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.wait_merging_threads()
            self._writer = None

    def search_dense(self, vector: Vector, k: int, allowed: Keys | None) -> Hits:
        with self.lock.read():
            size = len(self.dense)
            if size == 0:
                return []
            if allowed is not None and len(allowed) <= EXACT_BELOW:
                return self._exact(vector, k, allowed)
            fetch = min(size, k if allowed is None else k * 10)
            matches = self.dense.search(vector, fetch)
            keys = np.asarray(matches.keys, dtype=np.int64)
            scores = 1.0 - np.asarray(matches.distances, dtype=np.float32)
            if allowed is not None:
                keep = np.isin(keys, allowed)
                keys, scores = keys[keep], scores[keep]
                if len(keys) < min(k, len(allowed)):
                    return self._exact(vector, k, allowed)
            return list(zip(keys[:k].tolist(), scores[:k].tolist(), strict=True))

    def _exact(self, vector: Vector, k: int, allowed: Keys) -> Hits:
        ukeys = allowed.astype(np.uint64)
        present = np.asarray(self.dense.contains(ukeys), dtype=bool).reshape(-1)
        ukeys = ukeys[present]
        if not len(ukeys):
            return []
        got: Any = self.dense.get(ukeys, dtype="f32")
        rows = list(got) if isinstance(got, tuple) else [got]
        matrix = np.vstack(rows).astype(np.float32).reshape(len(ukeys), -1)
        norms = np.linalg.norm(matrix, axis=1) * (float(np.linalg.norm(vector)) or 1.0)
        scores = (matrix @ vector) / np.maximum(norms, 1e-12)
        top = np.argsort(-scores)[:k]
        return [(int(ukeys[i]), float(scores[i])) for i in top]

    def search_lexical(self, words: list[str], k: int, allowed: Keys | None) -> Hits:
        unique = list(dict.fromkeys(words))
        if not unique:
            return []
        searcher = self.searcher
        text_query = tantivy.Query.boolean_query(
            [
                (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "body", w))
                for w in unique
            ]
        )
        fetch = k
        query = text_query
        if allowed is not None:
            if len(allowed) <= TERM_SET_BELOW:
                key_filter = tantivy.Query.const_score_query(
                    tantivy.Query.term_set_query(self.schema, "key", allowed.tolist()), 0.0
                )
                query = tantivy.Query.boolean_query(
                    [(tantivy.Occur.Must, text_query), (tantivy.Occur.Must, key_filter)]
                )
            else:
                fetch = k * 10
        result = searcher.search(query, fetch, count=False)
        if not result.hits:
            return []
        keys = searcher.fast_field_values("key", [addr for _, addr in result.hits])
        hits: Hits = [
            (int(key), float(score))
            for (score, _), key in zip(result.hits, keys, strict=True)
            if key is not None
        ]
        if allowed is not None and len(allowed) > TERM_SET_BELOW:
            allowed_set = set(allowed.tolist())
            hits = [h for h in hits if h[0] in allowed_set]
        return hits[:k]


class EmbeddedBackend(SearchBackend):
    name = "embedded"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._state_path = root / "state.json"
        self._collections: dict[int, _Collection] = {}
        self._open_lock = threading.Lock()
        self._applied = 0
        self._durable = 0
        self._dim: int | None = None
        self._store: MetaStore | None = None
        self._last_checkpoint = time.monotonic()

    def open(self, store: MetaStore) -> None:
        self._store = store
        if self._state_path.exists():
            state = json.loads(self._state_path.read_text())
            self._applied = self._durable = int(state.get("seq", 0))
        dim = store.get_meta("dim")
        self._dim = int(dim) if dim else None
        replayed = self.sync(store)
        if replayed:
            log.info("replayed index log", extra={"entries": replayed})
            self.checkpoint(force=True)

    def applied_seq(self) -> int:
        return self._applied

    def _collection(self, collection_id: int, *, create: bool) -> _Collection | None:
        found = self._collections.get(collection_id)
        if found is not None:
            return found
        with self._open_lock:
            found = self._collections.get(collection_id)
            if found is not None:
                return found
            root = self.root / f"c{collection_id}"
            if not root.exists() and not create and not self._has_chunks(collection_id):
                return None  # (files missing but chunks stored: rebuilt by _verify below)
            if self._dim is None:
                assert self._store is not None
                dim = self._store.get_meta("dim")
                if dim is None:
                    return None
                self._dim = int(dim)
            found = _Collection(root, self._dim)
            self._verify(collection_id, found)
            self._collections[collection_id] = found
            return found

    def _has_chunks(self, collection_id: int) -> bool:
        return self._store is not None and self._store.has_chunks(collection_id)

    def _verify(self, collection_id: int, coll: _Collection) -> None:
        """Rebuild from the store if the files disagree with it (lost or stale files)."""
        store = self._store
        if store is None or store.log_entries(self._applied, collection_id, limit=1):
            return  # changes are still to be applied: counts cannot agree yet
        keys = store.collection_keys(collection_id)
        dense_n, lexical_n = coll.counts()
        if dense_n == len(keys) and lexical_n == len(keys):
            return
        log.warning(
            "rebuilding collection index from the store",
            extra={
                "collection_id": collection_id,
                "chunks": len(keys),
                "dense": dense_n,
                "lexical": lexical_n,
            },
        )
        coll.close()
        shutil.rmtree(coll.root, ignore_errors=True)
        fresh = _Collection(coll.root, coll.dim)
        for start in range(0, len(keys), 2000):
            found, vectors, texts = store.vectors_and_texts(keys[start : start + 2000])
            if len(found):
                fresh.add(found, vectors, texts)
        fresh.commit()
        fresh.save()
        coll.__dict__.update(fresh.__dict__)

    def apply(self, store: MetaStore, entries: list[LogEntry]) -> None:
        touched: dict[int, _Collection] = {}
        for entry in entries:
            if entry.op == "drop":
                self._drop(entry.collection_id)
                touched.pop(entry.collection_id, None)
                continue
            if entry.op == "add":
                found, vectors, texts = store.vectors_and_texts(entry.keys)
                if not len(found):
                    continue
                if self._dim is None:
                    self._dim = int(vectors.shape[1])
                coll = self._collection(entry.collection_id, create=True)
                assert coll is not None
                coll.add(found, vectors, texts)
            else:
                coll = self._collection(entry.collection_id, create=False)
                if coll is None:
                    continue
                coll.delete(entry.keys)
            touched[entry.collection_id] = coll
        for coll in touched.values():
            coll.commit()
        if entries:
            self._applied = entries[-1].seq

    def _drop(self, collection_id: int) -> None:
        with self._open_lock:
            coll = self._collections.pop(collection_id, None)
        if coll is not None:
            coll.close()
        shutil.rmtree(self.root / f"c{collection_id}", ignore_errors=True)

    def checkpoint(self, force: bool = False) -> None:
        if self._durable == self._applied and not force:
            return
        if not force and time.monotonic() - self._last_checkpoint < CHECKPOINT_EVERY_S:
            return
        for coll in list(self._collections.values()):
            if coll.dirty:
                coll.save()
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seq": self._applied}))
        os.replace(tmp, self._state_path)
        self._durable = self._applied
        self._last_checkpoint = time.monotonic()
        if self._store is not None:
            self._store.trim_log(self._durable)

    def search_dense(self, scope: Scope, vector: Vector, k: int) -> Hits:
        coll = self._collection(scope.ref.id, create=False)
        return [] if coll is None else coll.search_dense(vector, k, scope.allowed)

    def search_lexical(self, scope: Scope, terms: list[str], k: int) -> Hits:
        coll = self._collection(scope.ref.id, create=False)
        return [] if coll is None else coll.search_lexical(terms, k, scope.allowed)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.checkpoint(force=True)
        for coll in self._collections.values():
            coll.close()
        self._collections.clear()


def factory(settings: KnowledgeSettings, root: Path) -> EmbeddedBackend:
    """The ``embedded`` entry point of ``iatros.knowledge_backends``."""
    return EmbeddedBackend(root / "embedded")
