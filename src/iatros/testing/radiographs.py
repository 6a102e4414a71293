"""Synthetic radiographs for tests and benchmarks: no patient image ever enters the repo.

A radiograph-like picture (dark background, a band of bright "teeth", a few saturated
"restorations", sensor noise), optionally with text burned in where scanners put it, as
a 16-bit DICOM (``pydicom``, any transfer syntax it can encode) or as PNG/JPEG. Also
records where the text ink is, so detection can be measured
(``bench/burnedin_eval.py``).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
Array = npt.NDArray[Any]


@dataclass(slots=True)
class Synthetic:
    values: Array
    """Stored values (uint16)."""
    max_value: int
    texts: list[tuple[str, Array]] = field(default_factory=list)
    """Each burned-in text and its ink mask (bool, image-sized)."""


def anatomy(width: int, height: int, max_value: int = 4095, seed: int = 0) -> Array:
    """Grey values that look enough like a dental radiograph for the pipeline."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.12 + 0.1 * (yy / height) + 0.05 * np.sin(xx / width * 3.1)
    cy = height / 2
    band = np.exp(-(((yy - cy) / (height * 0.22)) ** 2)) * 0.3
    img = base + band
    n = max(4, width // 110)
    for i in range(n):  # two rows of "teeth"
        x = (i + 0.5) * width / n
        for dy in (-0.12, 0.12):
            y = cy + dy * height
            rx, ry = width / n * 0.38, height * 0.1
            img += 0.3 * (((xx - x) / rx) ** 2 + ((yy - y) / ry) ** 2 < 1)
    for _ in range(max(1, n // 5)):  # metal restorations: saturated blobs
        x = rng.uniform(0.2, 0.8) * width
        y = cy + rng.choice([-0.12, 0.12]) * height
        r = rng.uniform(0.015, 0.04) * width
        img[((xx - x) / r) ** 2 + ((yy - y) / (r * 0.7)) ** 2 < 1] = 1.0
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    out: Array = (np.clip(img, 0, 1) * max_value).astype(np.uint16)
    return out


def burn_text(values: Array, text: str, x: int, y: int, size: int, level: float = 1.0,
              bold: bool = False, max_value: int = 4095) -> Array:  # fmt: skip
    """Draw ``text`` into ``values`` in place; return its ink mask."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = values.shape
    layer = Image.new("L", (w, h), 0)
    font = ImageFont.truetype(FONT_BOLD if bold else FONT, size)
    ImageDraw.Draw(layer).text((x, y), text, fill=255, font=font)
    alpha = np.asarray(layer).astype(np.float32) / 255.0
    ink = level * max_value
    values[:] = (values * (1 - alpha) + ink * alpha).astype(values.dtype)
    mask: Array = alpha > 0.5
    return mask


NAMES = ["DOE^JANE", "Martin Dupont", "ROE^RICHARD^A", "Lefebvre, Claire", "Smith J."]


def sample_texts(rng: random.Random) -> list[str]:
    born = date(1940 + rng.randrange(70), 1 + rng.randrange(12), 1 + rng.randrange(28))
    return [
        rng.choice(NAMES),
        f"ID {rng.randrange(10**5, 10**7)}",
        f"DOB {born.isoformat()}",
        f"{rng.randrange(1, 28):02d}/{rng.randrange(1, 12):02d}/2024 {rng.randrange(24):02d}:"
        f"{rng.randrange(60):02d}",
        "Clinique du Parc - Dr Molar",
    ]


def radiograph(width: int = 1200, height: int = 900, *, texts: int = 2, seed: int = 0,
               max_value: int = 4095, size: int | None = None) -> Synthetic:  # fmt: skip
    """A synthetic radiograph with ``texts`` lines burned in (corners and edges first)."""
    rng = random.Random(seed)
    values = anatomy(width, height, max_value, seed)
    out = Synthetic(values, max_value)
    choices = sample_texts(rng)
    used: list[tuple[int, int, int, int]] = []
    for n in range(texts):
        s = size or rng.randrange(14, 44)
        text = choices[n % len(choices)]
        for _ in range(50):
            tw = int(len(text) * s * 0.62)
            spots = [(10, 10 + n * (s + 8)), (width - tw - 10, 10 + n * (s + 8)),
                     (10, height - (n + 1) * (s + 12)),
                     (rng.randrange(10, max(11, width - tw - 10)),
                      rng.randrange(10, max(11, height - s - 10)))]  # fmt: skip
            x, y = spots[rng.randrange(len(spots))]
            box = (x, y, x + tw, y + s + 6)
            if all(box[2] < u[0] or box[0] > u[2] or box[3] < u[1] or box[1] > u[3] for u in used):
                break
        used.append(box)
        level = rng.uniform(0.9, 1.0)
        mask = burn_text(values, text, x, y, s, level, rng.random() < 0.3, max_value)
        out.texts.append((text, mask))
    return out


def dicom_bytes(values: Array, *, transfer_syntax: str | None = None,
                photometric: str = "MONOCHROME2", bits_stored: int = 12,
                window: tuple[float, float] | None = (2048.0, 4096.0),
                pixel_spacing: tuple[float, float] | None = (0.1, 0.1),
                patient: dict[str, str] | None = None, modality: str = "PX",
                extra: dict[str, Any] | None = None) -> bytes:  # fmt: skip
    """A DICOM Part 10 file (Digital X-Ray / intraoral class) around ``values``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    patient = patient or {"PatientName": "DOE^JANE", "PatientID": "MRN-778899",
                          "PatientBirthDate": "19800229"}  # fmt: skip
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    for key, value in patient.items():
        setattr(ds, key, value)
    ds.PatientSex = "F"
    ds.StudyDate = "20240312"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-5521"
    ds.InstitutionName = "Clinique du Parc"
    ds.ReferringPhysicianName = "MOLAR^ADA"
    ds.OperatorsName = "TECH^TOM"
    ds.StationName = "PANO-2"
    ds.add_new(0x00091010, "LO", "private vendor note: Jane Doe")
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(values, dtype=np.uint16).tobytes()
    if transfer_syntax is not None and transfer_syntax != ExplicitVRLittleEndian:
        uid = UID(transfer_syntax)
        if uid.is_compressed:
            ds.compress(uid)
        else:
            ds.file_meta.TransferSyntaxUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def picture_bytes(values: Array, fmt: str = "PNG", max_value: int = 4095) -> bytes:
    from PIL import Image

    u8 = (values.astype(np.float32) * (255.0 / max_value)).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(u8).save(out, fmt)
    return out.getvalue()
