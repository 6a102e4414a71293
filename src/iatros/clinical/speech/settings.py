"""The ``transcription`` section of the settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TranscriptionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    languages: dict[str, list[str]] = Field(default_factory=dict)
    """Deployments to try per language (ISO-639-1; ``"*"`` for any other or undetected),
    first to last: the later ones are fallbacks. Empty: built from the ``kind:
    transcription`` deployments, English-only models (``*.en``) first for ``en``."""
    aliases: list[str] = Field(default_factory=lambda: ["whisper-1", "default"])
    """Model names that mean "route by language" (``whisper-1`` is what OpenAI clients send)."""
    max_file_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    """Largest upload (OpenAI's limit is 25 MB)."""
    max_duration_s: float = Field(1800.0, gt=0)
    """Longest recording transcribed in one request."""
    speech_check: bool = True
    """Refuse audio in which Silero VAD finds no speech (Whisper would invent some)."""
    min_speech_s: float = Field(0.3, ge=0)
    low_confidence_logprob: float = -1.0
    """Segments whose average token log-probability is below this are marked, not hidden."""
