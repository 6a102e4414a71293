"""The ``scribe`` section of the settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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
