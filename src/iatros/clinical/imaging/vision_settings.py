"""Settings of the AI second opinion on radiographs (``radiograph_analysis:``).

Kept apart from :mod:`.findings` so that ``config.py`` can import them without importing
the chat service (which imports the configuration).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RadiographAnalysisSettings(BaseModel):
    """Which model reads radiographs, and how much it may answer.

    No vision model ships offline: ``model`` names a logical model (``models.<name>``)
    whose deployments declare ``vision: true``. Unset, the first such model is used;
    with none configured the analysis is refused with ``no_vision_model``.
    """

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    """The logical model (or vision deployment) asked for findings; None: the first one
    that can take images."""
    max_tokens: int = Field(1500, ge=64, le=16384)
    """Room for the findings JSON (a panoramic can hold a dozen findings)."""
    temperature: float = Field(0.0, ge=0, le=2)
    """Findings should not change from one click to the next."""
