"""Ingestion without HTTP: what files are accepted, the header profile, window/level,
burned-in text masking. Every DICOM here is generated with pydicom (no test data download)."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate

from iatros.clinical.imaging import burnedin, pixels
from iatros.clinical.imaging.deid import deidentify, header_json
from iatros.clinical.imaging.formats import UnsupportedMedia, probe, supported_transfer_syntaxes
from iatros.clinical.imaging.ingest import process
from iatros.clinical.imaging.settings import ImagingSettings
from iatros.errors import InvalidRequest
from iatros.testing.radiographs import anatomy, dicom_bytes, picture_bytes, radiograph

SETTINGS = ImagingSettings()
SECRET = b"k" * 32


@pytest.mark.parametrize(
    "syntax",
    [
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.5",  # RLE lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    ],
)
def test_supported_transfer_syntaxes_decode_to_the_same_pixels(syntax: str) -> None:
    values = anatomy(600, 400, seed=3)
    data = dicom_bytes(values, transfer_syntax=syntax)
    found = probe(data, SETTINGS, "files.0")
    assert (found.kind, found.width, found.height, found.transfer_syntax) == (
        "dicom", 600, 400, syntax,
    )  # fmt: skip
    assert np.array_equal(pydicom.dcmread(io.BytesIO(data)).pixel_array, values)


def test_the_decoders_that_are_installed_are_the_ones_accepted() -> None:
    supported = supported_transfer_syntaxes()
    for uid in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201"):  # fmt: skip
        assert uid in supported
    assert "1.2.840.10008.1.2.4.100" not in supported  # MPEG2: no decoder


def test_unsupported_transfer_syntax_is_a_415_naming_it() -> None:
    data = dicom_bytes(anatomy(600, 400))
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\0\0\1\xb3" + b"\0" * 96])
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(UnsupportedMedia) as err:
        probe(out.getvalue(), SETTINGS, "files.0")
    assert err.value.status == 415 and err.value.code == "unsupported_transfer_syntax"
    assert "MPEG2" in err.value.message and "1.2.840.10008.1.2.4.100" in err.value.message
    assert err.value.param == "files.0"


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        (lambda d: d[:1000], "invalid_dicom"),  # truncated in the header or pixels
        (lambda d: d[:-5000], "invalid_dicom"),  # pixel data cut short
        (lambda d: d[:132] + b"\xff" * 200, "invalid_dicom"),  # garbage after the preamble
    ],
)
def test_corrupt_dicom_is_a_400(mangle: object, code: str) -> None:
    data = dicom_bytes(anatomy(600, 400))
    with pytest.raises(InvalidRequest) as err:
        probe(mangle(data), SETTINGS, "files.2")  # type: ignore[operator]
    assert err.value.code == code and err.value.param == "files.2"


def test_pictures_must_be_radiograph_sized() -> None:
    tiny = picture_bytes(anatomy(120, 90))
    with pytest.raises(InvalidRequest) as err:
        probe(tiny, SETTINGS, "files.0")
    assert err.value.code == "image_too_small"
    strip = picture_bytes(anatomy(2000, 300))
    with pytest.raises(InvalidRequest) as err:
        probe(strip, SETTINGS, "files.0")
    assert err.value.code == "image_not_radiograph"
    with pytest.raises(UnsupportedMedia):
        probe(b"GIF89a" + b"\0" * 500, SETTINGS, "files.0")
    good = picture_bytes(anatomy(800, 600), "JPEG")
    assert probe(good, SETTINGS, "files.0").kind == "jpeg"
    broken = picture_bytes(anatomy(800, 600))[:3000]
    with pytest.raises(InvalidRequest) as err:
        probe(broken, SETTINGS, "files.0")
    assert err.value.code == "invalid_image"


def test_header_profile_keeps_display_attributes_and_drops_identity() -> None:
    data = dicom_bytes(anatomy(600, 400), patient={
        "PatientName": "DOE^JANE", "PatientID": "MRN-778899", "PatientBirthDate": "19800229",
        "OtherPatientIDs": "SSN-123", "PatientAddress": "1 rue de la Paix"})  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(data))
    original_study = str(ds.StudyInstanceUID)
    report = deidentify(ds, SECRET)
    dumped = json.dumps(header_json(ds)) + str(ds.file_meta)
    for secret in ("DOE", "JANE", "MRN-778899", "19800229", "SSN-123", "Paix", "Clinique",
                   "MOLAR", "TECH", "PANO-2", "ACC-5521", "20240312", "vendor note",
                   original_study):  # fmt: skip
        assert secret not in dumped, secret
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.StudyInstanceUID.startswith("2.25.") and ds.StudyInstanceUID != original_study
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.Rows, ds.Columns, float(ds.WindowCenter), list(ds.PixelSpacing)) == (
        400, 600, 2048.0, [0.1, 0.1],
    )  # fmt: skip
    assert {"PatientName", "PatientID", "InstitutionName", "StudyDate"} <= set(report["removed"])
    hashes = report["identifier_hashes"]
    assert set(hashes) >= {"PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"}
    assert all(v.startswith("h_") and "778899" not in v for v in hashes.values())
    # keyed: the same original under the same key links; another key does not
    again = pydicom.dcmread(io.BytesIO(data))
    assert deidentify(again, SECRET)["identifier_hashes"]["PatientID"] == hashes["PatientID"]
    assert again.StudyInstanceUID == ds.StudyInstanceUID
    other = pydicom.dcmread(io.BytesIO(data))
    assert deidentify(other, b"x" * 32)["identifier_hashes"]["PatientID"] != hashes["PatientID"]


def test_window_level_rescale_and_monochrome1() -> None:
    values = np.tile(np.arange(0, 4096, 4, dtype=np.uint16), (300, 1))[:, :1000]
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(values, window=(1000.0, 501.0), extra={
        "RescaleSlope": 2, "RescaleIntercept": -1000})))  # fmt: skip
    array, display, voi = pixels.from_dicom(ds)
    assert voi is None and (display.slope, display.intercept) == (2.0, -1000.0)
    shown = pixels.render(array, display)
    # value v displays as 2v - 1000; the window 750..1250 maps to 0..255
    assert shown[0, 875 // 4 - 1] == 0 and shown[0, 1125 // 4 + 1] == 255
    assert 120 <= shown[0, 1000 // 4] <= 135
    inverted = pixels.render(array, display, invert=True)
    assert np.array_equal(inverted, 255 - shown)
    wide = pixels.render(array, display, center=3000, width=6000)
    assert 0 < wide[0, 500] < 255
    ds1 = pydicom.dcmread(io.BytesIO(dicom_bytes(values, photometric="MONOCHROME1",
                                                  window=(1000.0, 501.0))))  # fmt: skip
    array1, display1, _ = pixels.from_dicom(ds1)
    assert display1.monochrome1
    shown1 = pixels.render(array1, display1)
    assert shown1[0, 0] == 255 and shown1[0, -1] == 0  # low values bright


def test_voi_lut_sequence_is_the_default_rendition() -> None:
    from pydicom.dataset import Dataset

    values = anatomy(600, 400)
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = [min(65535, i * 40) for i in range(4096)]  # saturates at 1638
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(values, window=None)))
    ds.VOILUTSequence = [lut]
    _, display, voi = pixels.from_dicom(ds)
    assert voi is not None and display.voi_lut
    assert voi[values >= 1700].min() == 255


def test_burned_in_text_is_found_and_masked_in_the_stored_pixels() -> None:
    made = radiograph(1200, 900, texts=3, seed=11)
    data = dicom_bytes(made.values)
    result = process(data, SECRET, SETTINGS)
    regions = result.meta["deidentified"]["burned_in_text"]["regions_masked"]
    assert len(regions) >= 3
    stored = pixels.unpack(result.pixels)
    for text, ink in made.texts:
        assert (stored[ink] == stored.min()).all(), f"{text!r} is still in the pixels"
    preview = np.asarray(Image.open(io.BytesIO(result.preview)))
    assert preview.shape == (900, 1200)
    clean = process(dicom_bytes(radiograph(1200, 900, texts=0, seed=11).values), SECRET, SETTINGS)
    assert clean.meta["deidentified"]["burned_in_text"]["regions_masked"] == []
    assert "MRN-778899" not in json.dumps(result.meta)


def test_masking_can_be_switched_off() -> None:
    made = radiograph(1200, 900, texts=2, seed=5)
    result = process(picture_bytes(made.values), SECRET, ImagingSettings(mask_burned_in_text=False))
    assert result.meta["deidentified"]["burned_in_text"]["regions_masked"] == []
    assert burnedin.detect(pixels.render(made.values, pixels.Display(center=2048, width=4096)))


def test_16_bit_png_and_signed_dicom_keep_their_depth() -> None:
    values = anatomy(700, 500, seed=6)
    out = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(out, "PNG")
    result = process(out.getvalue(), SECRET, SETTINGS)
    stored = pixels.unpack(result.pixels)
    assert stored.dtype == np.uint16 and stored.max() > 255  # not squeezed to 8 bits
    window = result.meta["display"]
    assert window["width"] > 255
    signed = (values.astype(np.int32) - 2048).astype(np.int16)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(anatomy(700, 500), window=(0.0, 4000.0))))
    ds.PixelRepresentation = 1
    ds.PixelData = signed.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    result = process(buf.getvalue(), SECRET, SETTINGS)
    stored = pixels.unpack(result.pixels)
    assert stored.dtype == np.int16 and stored.min() < 0
    preview = np.asarray(Image.open(io.BytesIO(result.preview)))
    assert 0 < preview.mean() < 255
