"""Pixels: the stored grey values, their display parameters, and 8-bit renditions.

A radiograph is kept as its stored values (``uint16``/``int16`` for most DICOM, ``uint8``
for PNG/JPEG) plus what the DICOM says about showing them: the modality rescale (slope,
intercept), the default window (Window Center/Width, or the VOI LUT sequence), and
MONOCHROME1 (bright = low values, shown inverted). Renditions apply these server-side,
so the browser only ever receives 8-bit PNGs and the 16-bit data never leaves the box.

The linear window is the one of DICOM PS3.3 C.11.2.1.2.1; a VOI LUT sequence is applied
by pydicom's ``apply_voi_lut`` for the default rendition (a custom window is then linear).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

Array = npt.NDArray[Any]


@dataclass(slots=True)
class Display:
    """How to turn stored values into display values (kept, sealed, with the pixels)."""

    slope: float = 1.0
    intercept: float = 0.0
    center: float | None = None
    width: float | None = None
    monochrome1: bool = False
    voi_lut: bool = False
    """The default window is the dataset's VOI LUT (the preview holds it)."""
    pixel_spacing_mm: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "center": self.center,
            "width": self.width,
            "monochrome1": self.monochrome1,
            "voi_lut": self.voi_lut,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Display:
        spacing = d.get("pixel_spacing_mm")
        return cls(
            float(d["slope"]), float(d["intercept"]), d.get("center"), d.get("width"),
            bool(d["monochrome1"]), bool(d.get("voi_lut")),
            (float(spacing[0]), float(spacing[1])) if spacing else None,
        )  # fmt: skip


def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seq = list(value) if not isinstance(value, (str, bytes, int, float)) else [value]
        return float(seq[0]) if seq else None
    except (TypeError, ValueError, IndexError):
        return None


def _grey(array: Array) -> Array:
    """RGB (a PNG/JPEG or an RGB DICOM) to one grey channel (ITU-R BT.601 luma)."""
    if array.ndim == 3:
        rgb = array[..., :3].astype(np.float32)
        array = (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    return array


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                row, col = float(value[0]), float(value[1])
                if 0 < row < 10 and 0 < col < 10:
                    return (row, col)
        except (TypeError, ValueError):
            continue
    return None


def from_dicom(ds: Dataset) -> tuple[Array, Display, Array | None]:
    """Stored values, display parameters, and the VOI-LUT rendition when the DICOM has one."""
    array = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if array.ndim == 3:  # RGB / YBR: pydicom gives RGB
        array = _grey(array)
        photometric = "MONOCHROME2"
    display = Display(
        slope=_first(ds.get("RescaleSlope")) or 1.0,
        intercept=_first(ds.get("RescaleIntercept")) or 0.0,
        center=_first(ds.get("WindowCenter")),
        width=_first(ds.get("WindowWidth")),
        monochrome1=photometric == "MONOCHROME1",
        pixel_spacing_mm=_spacing(ds),
    )
    voi: Array | None = None
    if (display.center is None or not display.width) and "VOILUTSequence" in ds:
        from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

        shown = apply_voi_lut(apply_modality_lut(array, ds), ds).astype(np.float64)
        low, high = float(shown.min()), float(shown.max())
        voi = ((shown - low) * (255.0 / max(high - low, 1e-9))).round().astype(np.uint8)
        if display.monochrome1:
            voi = 255 - voi
        display.voi_lut = True
    if display.center is None or not display.width or display.width < 1:
        values = modality(array, display)
        low, high = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        display.center = float((low + high) / 2)
        display.width = float(max(high - low, 1.0))
    return array, display, voi


def from_picture(data: bytes) -> tuple[Array, Display]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(img).astype(np.uint16 if img.mode.startswith("I;16") else np.int32)
            low, high = float(array.min()), float(array.max())
            return array, Display(center=(low + high) / 2, width=max(high - low, 1.0))
        array = np.asarray(img.convert("RGB") if img.mode not in ("L",) else img)
    return _grey(array), Display(center=127.5, width=256.0)


def modality(array: Array, display: Display) -> Array:
    if display.slope == 1.0 and display.intercept == 0.0:
        return array.astype(np.float32)
    return array.astype(np.float32) * np.float32(display.slope) + np.float32(display.intercept)


def window(values: Array, center: float, width: float) -> Array:
    """DICOM linear VOI function to 0..255 (PS3.3 C.11.2.1.2.1)."""
    width = max(float(width), 1.0)
    low = center - 0.5 - (width - 1) / 2
    scaled = (values - np.float32(low)) * np.float32(255.0 / max(width - 1, 1.0))
    out: Array = np.clip(scaled, 0, 255).round().astype(np.uint8)
    return out


def render(
    array: Array, display: Display, *, center: float | None = None, width: float | None = None,
    invert: bool = False, voi: Array | None = None,
) -> Array:  # fmt: skip
    """8-bit display values; no window given = the DICOM's default."""
    if center is None and width is None and voi is not None:
        shown = voi
    else:
        shown = window(
            modality(array, display),
            display.center if center is None else center,
            display.width if width is None else width,
        ) if display.center is not None and display.width is not None else array  # fmt: skip
        if display.monochrome1:
            shown = 255 - shown
    if invert:
        shown = 255 - shown
    return np.ascontiguousarray(shown, dtype=np.uint8)


def png(u8: Array, max_side: int | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(u8)
    if max_side is not None and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "PNG", compress_level=3)
    return out.getvalue()


def pack(array: Array) -> bytes:
    """Stored values as bytes (npy in zlib, fast level): what is sealed at rest."""
    out = io.BytesIO()
    np.save(out, np.ascontiguousarray(array), allow_pickle=False)
    return zlib.compress(out.getvalue(), 1)


def unpack(blob: bytes) -> Array:
    loaded: Array = np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
    return loaded
