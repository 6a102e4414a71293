"""What an uploaded file is, and whether it can be read: checked before anything is stored.

DICOM is read with ``pydicom``; the transfer syntaxes accepted are those whose pixel data
a decoder installed here can decode (:func:`supported_transfer_syntaxes`): with
``pylibjpeg``, ``pylibjpeg-libjpeg`` and ``pylibjpeg-openjpeg`` installed that is the
uncompressed ones (implicit/explicit little endian, explicit big endian, deflated), RLE
Lossless, JPEG baseline/extended/lossless, JPEG-LS and JPEG 2000 (including HTJ2K). The
others (MPEG, HEVC, JPIP references, multi-component JPEG 2000) are refused with a 415
that names the syntax. PNG and JPEG are read with Pillow.

Every file is decoded once here, in full, so a corrupt one is a 400 for the whole batch
and nothing is stored; the sizes come from the header first, so a decompression bomb is
refused before its pixels are decoded.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from iatros.errors import GatewayError, InvalidRequest

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from iatros.clinical.imaging.settings import ImagingSettings

Kind = Literal["dicom", "png", "jpeg"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class UnsupportedMedia(GatewayError):
    """A file we recognise but cannot decode here (a transfer syntax without a decoder)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


@dataclass(frozen=True, slots=True)
class Probe:
    """What validation learned about one file."""

    kind: Kind
    width: int
    height: int
    modality: str | None
    transfer_syntax: str | None


@cache
def supported_transfer_syntaxes() -> dict[str, str]:
    """UID → name of every transfer syntax whose pixel data can be decoded here."""
    import pydicom.uid as uids
    from pydicom.pixels.decoders.base import get_decoder

    found: dict[str, str] = {}
    for name in dir(uids):
        uid = getattr(uids, name)
        if not isinstance(uid, uids.UID) or not uid.is_transfer_syntax:
            continue
        try:
            if get_decoder(uid).is_available:
                found[str(uid)] = name
        except NotImplementedError:
            continue
    return found


def sniff(data: bytes) -> Kind | None:
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:3] == JPEG_MAGIC:
        return "jpeg"
    if data[128:132] == b"DICM":
        return "dicom"
    return None


def _check_size(width: int, height: int, settings: ImagingSettings, param: str) -> None:
    small, large = settings.min_side_px, settings.max_side_px
    if min(width, height) < small:
        raise InvalidRequest(
            f"The image is {width}x{height} pixels: a radiograph is at least {small} pixels "
            "on each side.", param=param, code="image_too_small",
        )  # fmt: skip
    if max(width, height) > large:
        raise InvalidRequest(
            f"The image is {width}x{height} pixels: at most {large} pixels on a side.",
            param=param, code="image_too_large",
        )  # fmt: skip
    if max(width, height) / min(width, height) > settings.max_aspect:
        raise InvalidRequest(
            f"The image is {width}x{height} pixels: radiographs are not more than "
            f"{settings.max_aspect:g} times longer than wide.", param=param,
            code="image_not_radiograph",
        )  # fmt: skip


def read_dicom(data: bytes) -> Dataset:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data), force=False)


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def probe_dicom(data: bytes, settings: ImagingSettings, param: str) -> Probe:
    from pydicom.errors import InvalidDicomError

    try:
        ds = read_dicom(data)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise InvalidRequest(
            f"The DICOM file could not be read: {type(exc).__name__}.", param=param,
            code="invalid_dicom",
        ) from None  # fmt: skip
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not syntax:
        raise InvalidRequest(
            "The DICOM file has no transfer syntax in its file meta information.",
            param=param, code="invalid_dicom",
        )  # fmt: skip
    supported = supported_transfer_syntaxes()
    if syntax not in supported:
        from pydicom.uid import UID

        name = UID(syntax).name
        raise UnsupportedMedia(
            f"DICOM transfer syntax {name} ({syntax}) is not supported. Supported: "
            f"{', '.join(sorted(supported.values()))}.", param=param,
            code="unsupported_transfer_syntax",
        )  # fmt: skip
    if "PixelData" not in ds:
        raise InvalidRequest(
            "The DICOM file holds no image (no Pixel Data).", param=param, code="invalid_dicom"
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not cols:
        raise InvalidRequest(
            "The DICOM file has no Rows/Columns.", param=param, code="invalid_dicom"
        )
    if (_int(ds, "NumberOfFrames") or 1) != 1:
        raise InvalidRequest(
            "Multi-frame DICOM images are not supported: send one radiograph per file.",
            param=param, code="unsupported_dicom",
        )  # fmt: skip
    if _int(ds, "SamplesPerPixel") not in (None, 1, 3) or _int(ds, "BitsAllocated") not in (
        8, 16,
    ):  # fmt: skip
        raise InvalidRequest(
            "Only 8- and 16-bit grey or RGB DICOM images are supported.", param=param,
            code="unsupported_dicom",
        )  # fmt: skip
    _check_size(cols, rows, settings, param)
    try:
        array = ds.pixel_array
    except Exception as exc:  # the decoders raise many types on corrupt data
        raise InvalidRequest(
            f"The DICOM pixel data could not be decoded ({type(exc).__name__}).",
            param=param, code="invalid_dicom",
        ) from None  # fmt: skip
    if array.shape[:2] != (rows, cols):
        raise InvalidRequest(
            "The DICOM pixel data does not match its Rows/Columns.", param=param,
            code="invalid_dicom",
        )  # fmt: skip
    modality = str(ds.get("Modality") or "") or None
    return Probe("dicom", cols, rows, modality[:16] if modality else None, syntax)


def probe_picture(data: bytes, kind: Kind, settings: ImagingSettings, param: str) -> Probe:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = img.format
            _check_size(width, height, settings, param)
            img.load()
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequest(
            f"The {kind.upper()} image could not be decoded ({type(exc).__name__}).",
            param=param, code="invalid_image",
        ) from None  # fmt: skip
    except Image.DecompressionBombError:
        raise InvalidRequest(
            "The image is too large to decode.", param=param, code="image_too_large"
        ) from None
    if fmt not in ("PNG", "JPEG"):
        raise UnsupportedMedia(f"Unsupported image format {fmt}.", param=param)
    return Probe(kind, width, height, None, None)


def probe(data: bytes, settings: ImagingSettings, param: str) -> Probe:
    """Validate one file fully (header, size, pixels); raise a 4xx naming ``param``."""
    if not data:
        raise InvalidRequest("The file is empty.", param=param, code="empty_file")
    kind = sniff(data)
    if kind is None:
        raise UnsupportedMedia(
            "The file is neither DICOM (Part 10, with the DICM preamble), PNG nor JPEG.",
            param=param, code="unsupported_media_type",
        )  # fmt: skip
    if kind == "dicom":
        return probe_dicom(data, settings, param)
    return probe_picture(data, kind, settings, param)


def describe_support() -> dict[str, Any]:
    """For the status endpoint: what uploads are accepted."""
    return {
        "formats": ["dicom", "png", "jpeg"],
        "dicom_transfer_syntaxes": [
            {"uid": uid, "name": name}
            for uid, name in sorted(supported_transfer_syntaxes().items())
        ],
    }
