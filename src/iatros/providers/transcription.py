"""The transcription seam: what a speech-to-text adapter implements, and the data it returns.

A transcription provider is a :class:`~iatros.providers.base.Provider` with one more
operation, :meth:`TranscriptionProvider.transcribe`, so it is configured, started, probed
and breaker-guarded like every other provider. Two implement it: the local faster-whisper
models (``transcription_local``) and any OpenAI-compatible ``/audio/transcriptions``
endpoint (``transcription_openai``: OpenAI, vLLM, a whisper.cpp server).

The caller (:class:`iatros.clinical.speech.transcriber.Transcriber`) has already decoded
and checked the audio: a provider gets the original bytes (to forward upstream) and the
16 kHz mono samples (to run a local model on), never a file it has to validate again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iatros.errors import InvalidRequest
from iatros.providers.base import Provider

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from iatros.config import DeploymentConfig

SAMPLE_RATE = 16000


@dataclass(slots=True)
class TranscribeCall:
    """One transcription request as a provider sees it (already validated)."""

    audio: bytes
    """The uploaded file as it came (forwarded to upstream APIs)."""
    filename: str
    samples: npt.NDArray[np.float32]
    """The audio decoded to 16 kHz mono float32 (run by local models)."""
    duration_s: float
    language: str | None = None
    """ISO-639-1 code, or None to detect it."""
    prompt: str | None = None
    word_timestamps: bool = False


@dataclass(slots=True)
class Word:
    word: str
    start: float
    end: float
    probability: float | None = None


@dataclass(slots=True)
class Segment:
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 1.0
    temperature: float = 0.0
    tokens: list[int] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    """What the hallucination filter noticed (``low_confidence``, ``repetition_collapsed``)."""
    speaker: str | None = None

    @property
    def low_confidence(self) -> bool:
        return "low_confidence" in self.flags


@dataclass(slots=True)
class TranscriptResult:
    segments: list[Segment]
    language: str
    """ISO-639-1 code of the language spoken (detected or given)."""
    duration_s: float
    language_probability: float | None = None
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """Segments the hallucination filter removed, with the reason (not in ``text``)."""

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class TranscriptionProvider(Provider):
    """A provider that turns speech into text."""

    async def transcribe(
        self, deployment: DeploymentConfig, call: TranscribeCall
    ) -> TranscriptResult:
        """Subclasses that transcribe override this; the others refuse as chat does."""
        raise InvalidRequest(
            f"provider {self.name!r} does not transcribe audio", code="unsupported"
        )
