"""The ``imaging`` section of the settings: upload limits and what counts as a radiograph."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ImagingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """One file (DICOM, PNG or JPEG). A 3000x1500 16-bit panoramic is about 9 MB."""
    max_upload_bytes: int = Field(128 * 1024 * 1024, ge=1024)
    """A whole upload request (all files of a batch): counted while it streams in, so a
    larger body is refused before it is read, also without a Content-Length."""
    max_files: int = Field(20, ge=1, le=200)
    min_side_px: int = Field(256, ge=16)
    """Smaller images are no radiographs a clinician can read (icons, thumbnails)."""
    max_side_px: int = Field(10_000, ge=256)
    max_aspect: float = Field(4.0, ge=1.0)
    """Panoramics are about 2:1, intraoral images about 4:3; a 10:1 strip is no radiograph."""
    thumbnail_px: int = Field(256, ge=32, le=1024)
    mask_burned_in_text: bool = True
    """Detect text burned into the pixels (:mod:`iatros.clinical.imaging.burnedin`) and
    black it out before the pixels are stored."""
