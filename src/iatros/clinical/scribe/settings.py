"""The ``scribe`` section of the settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class ScribeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "assistant"
    """The logical model (or deployment) that drafts notes, through the chat service."""
    default_template: str = "soap"
    audio_retention: Literal["until_signed", "keep"] = "until_signed"
    """Delete the recording when the note is signed (default), or keep it (sealed)."""
    max_prompt_chars: int = Field(3500, ge=500)
    """Transcript characters shown to the model per section: the lines that match the
    section's cues first. 3,500 fits the local model's 2,048-token window."""
    max_section_tokens: int = Field(160, ge=16, le=4096)
    practice_name: str = "Iatros practice"
    """The header of the PDF and the FHIR document's custodian."""
    fhir_url: str | None = Field(None, pattern=r"^https?://")
    """A FHIR R4 server's base URL: ``POST /v1/scribe/encounters/{id}/fhir/send`` posts the
    signed note's document Bundle to ``<fhir_url>/Bundle``."""
    fhir_token: SecretStr | None = None
    """Sent as ``Authorization: Bearer`` to the FHIR server."""
    fhir_timeout_s: float = Field(20.0, gt=0)
    background_after_s: float = Field(300.0, ge=0)
    """A recording longer than this (or larger than ``transcription.max_file_bytes``, or
    longer than ``transcription.max_duration_s``) is transcribed in chunks by a background
    job: ``POST /v1/scribe/encounters`` answers 202 with the encounter ``transcribing`` and
    its progress. 0: every recording goes through the job."""
    max_duration_s: float = Field(3 * 3600.0, gt=0)
    """Longest recording an encounter takes (the chunked path)."""
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    """Largest recording an encounter takes (45 minutes of 16 kHz WAV are 86 MB)."""
    chunk_s: float = Field(120.0, ge=10.0)
    """Nominal length of a chunk; cuts move to the longest pause within ``chunk_search_s``."""
    chunk_overlap_s: float = Field(1.0, ge=0.0, le=5.0)
    chunk_search_s: float = Field(8.0, ge=0.5)
    speaker_model: bool = False
    """Ask the model (``scribe.model``) who said the lines of a recording's transcript that
    the speaker heuristics leave open. Off by default: on the ACI-Bench valid split the
    local 270M model is right on 66 % of those lines, barely above always answering the
    commoner speaker (63 %), where the heuristics' own labels are right 87 % of the time
    (``bench/results/scribe-speakers.md``); an open line beats a wrong label."""
    speaker_model_max_lines: int = Field(300, ge=0)
    """At most this many lines are sent to the model (one short request each)."""
    stale_after_s: float = Field(900.0, gt=0)
    """A transcribing encounter whose job has not reported for this long (a running job
    reports at every chunk) is looked into: queued again if the queue lost its job (a
    restart of the in-process queue), else left to the queue (clinical/scribe/recovery.py)."""
    recovery_interval_s: float = Field(60.0, ge=0)
    """How often to look for such encounters (also once at start-up); 0: never."""

    @model_validator(mode="after")
    def _search_fits(self) -> ScribeSettings:
        if self.chunk_search_s * 2 >= self.chunk_s:
            raise ValueError("scribe.chunk_search_s must be less than half of scribe.chunk_s")
        return self
