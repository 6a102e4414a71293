"""What the parts of the knowledge base share: settings, store, index, threads, one lock.

Ingestion, retrieval and the job runner are separate modules, but they must agree on
one store, one search backend, one thread pool for blocking work and one write lock
(writes are serialised; searches run beside them). They hold this object rather than
copies, so replacing ``settings`` or ``chunker`` on the facade (the benchmarks do)
reaches all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from iatros.knowledge.backends.base import SearchBackend
from iatros.knowledge.chunking import Chunker
from iatros.knowledge.settings import KnowledgeSettings
from iatros.knowledge.store import MetaStore
from iatros.knowledge.types import FileReport, KnowledgeError

log = logging.getLogger("iatros.knowledge")

T = TypeVar("T")
EmbedFn = Callable[[list[str]], Awaitable[list[list[float]]]]


@dataclass(slots=True)
class Context:
    settings: KnowledgeSettings
    root: Path
    embed: EmbedFn
    chunker: Chunker
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="knowledge")
    )
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opened_store: MetaStore | None = None
    opened_backend: SearchBackend | None = None
    dim: int | None = None

    @property
    def store(self) -> MetaStore:
        if self.opened_store is None:
            raise RuntimeError("KnowledgeBase.start() has not been called")
        return self.opened_store

    @property
    def backend(self) -> SearchBackend:
        if self.opened_backend is None:
            raise RuntimeError("KnowledgeBase.start() has not been called")
        return self.opened_backend

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` on the knowledge thread pool, never on the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(fn, *args, **kwargs))

    async def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Unit vectors for ``texts``, asked for in batches of ``embed_batch``."""
        parts: list[npt.NDArray[np.float32]] = []
        batch = self.settings.embed_batch
        for start in range(0, len(texts), batch):
            chunk = texts[start : start + batch]
            vectors = await self.embed(chunk)
            array = np.asarray(vectors, dtype=np.float32)
            if array.ndim != 2 or array.shape[0] != len(chunk) or not array.shape[1]:
                raise KnowledgeError("the embedding function returned a wrong number of vectors")
            parts.append(array)
        matrix = np.vstack(parts)
        if not np.isfinite(matrix).all():
            raise KnowledgeError("the embedding function returned non-finite values")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)

    def sync_backend(self, reports: Sequence[FileReport] = ()) -> None:
        """Replay the store's index log into the backend (blocking; under the write lock).

        A failure is not lost: the store has the change, and the next write or start
        replays it; the files concerned get a warning saying so.
        """
        try:
            self.backend.sync(self.store)
            self.backend.checkpoint(False)
        except Exception as exc:
            log.exception("search index update failed; it will be retried")
            for report in reports:
                if report.status in ("indexed", "replaced"):
                    report.warnings.append(f"search index update deferred: {exc}")
