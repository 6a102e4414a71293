"""One uploaded file → de-identified, masked, rendered pixels (the background job's work).

Runs in a worker thread: decode → DICOM header de-identification (:mod:`.deid`) →
burned-in text detection on the default rendition and masking of the stored values
(:mod:`.burnedin`) → default rendition and thumbnail (:mod:`.pixels`). The caller seals
and stores the result; the original file is never stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from iatros.clinical.imaging import burnedin, pixels
from iatros.clinical.imaging.deid import deidentify, header_json
from iatros.clinical.imaging.formats import read_dicom, sniff
from iatros.clinical.imaging.settings import ImagingSettings


@dataclass(slots=True)
class Processed:
    meta: dict[str, Any]
    pixels: bytes
    preview: bytes
    thumbnail: bytes


def process(data: bytes, secret: bytes, settings: ImagingSettings,
            step: Callable[[float], None] | None = None) -> Processed:  # fmt: skip
    """The whole pipeline for one file (validated before: :func:`.formats.probe`)."""
    report = step or (lambda _: None)
    kind = sniff(data)
    voi = None
    header: dict[str, Any] | None = None
    if kind == "dicom":
        ds = read_dicom(data)
        array, display, voi = pixels.from_dicom(ds)
        deid = deidentify(ds, secret)
        header = header_json(ds)
        del ds
    else:
        array, display = pixels.from_picture(data)
        deid = {"profile": "pixels-only", "removed": ["all metadata (EXIF, text chunks)"],
                "retained": [], "uids_remapped": [], "identifier_hashes": {}}  # fmt: skip
    report(0.35)
    shown = pixels.render(array, display, voi=voi)
    boxes = burnedin.detect(shown) if settings.mask_burned_in_text else []
    if boxes:
        dark = float(array.max() if display.monochrome1 else array.min())
        array = burnedin.mask(array, boxes, dark)
        shown = burnedin.mask(shown, boxes, 0)  # the rendition's darkest value
    deid["burned_in_text"] = {
        "method": "bright-glyph-lines" if settings.mask_burned_in_text else "off",
        "regions_masked": [list(b) for b in boxes],
    }
    report(0.6)
    preview = pixels.png(shown)
    thumbnail = pixels.png(shown, settings.thumbnail_px)
    meta = {
        "display": display.as_dict(),
        "deidentified": deid,
        "header": header,
        "dtype": str(array.dtype),
    }
    report(0.85)
    return Processed(meta, pixels.pack(np.asarray(array)), preview, thumbnail)
