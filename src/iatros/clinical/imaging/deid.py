"""DICOM header de-identification: profile ``iatros-basic-1``, applied before storage.

In the spirit of DICOM PS3.15 Annex E's Basic Application Level Confidentiality Profile,
but by **keeping** instead of removing: only the attributes listed in :data:`RETAIN` (what
displaying and measuring the image needs, and nothing that names a person, place, device
or moment) survive; everything else is dropped — patient name, ids, birth date, sex, age,
address, every date and time, institution, department, station, every physician and
operator name, accession number, study id, descriptions and comments, private tags,
overlays and curves (60xx/50xx groups: overlays can carry burned-in text too). A tag not
foreseen by the profile is therefore dropped, not leaked. Instance UIDs (study, series,
SOP instance, frame of reference) are replaced by new ``2.25.`` UIDs derived with an HMAC,
so the same original UID always maps to the same new one (images of one study stay
together) without revealing it. The original identifiers (patient id and name, birth
date, accession number, study UID, other patient ids) are kept only as keyed hashes
(HMAC-SHA256 with a key derived from ``IATROS_SECRET_KEY``), stored sealed with the
image and linked to the study's patient: a record system holding the originals can
match them; nobody reading the store can recover them. Patient Identity Removed is set
to YES and De-identification Method names this profile.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

PROFILE = "iatros-basic-1"
METHOD = "iatros-basic-1: retain list, UIDs remapped (PS3.15 E)"
"""De-identification Method (LO: at most 64 characters)."""

RETAIN = frozenset({
    # image pixel module and display
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
    "PixelAspectRatio", "RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "VOILUTSequence", "PresentationLUTShape",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    # geometry (measurement in mm)
    "PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing",
    "PixelSpacingCalibrationType", "EstimatedRadiographicMagnificationFactor",
    # what the image is
    "SOPClassUID", "Modality", "ImageType", "PresentationIntentType", "BodyPartExamined",
    "ImageLaterality", "Laterality", "PositionerType", "PatientOrientation",
    "AnatomicRegionSequence", "PrimaryAnatomicStructureSequence", "ViewPosition",
    # technique
    "KVP", "ExposureTime", "XRayTubeCurrent", "Exposure", "ExposureInuAs",
    "DetectorType", "SpecificCharacterSet",
})  # fmt: skip
"""Attributes kept (technical, non-identifying); everything else goes."""

REMAP_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
HASHED = ("PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs",
          "AccessionNumber", "StudyInstanceUID", "StudyID", "InstitutionName")  # fmt: skip
"""Originals kept as keyed hashes (to link with a record system that holds them)."""


def keyed_hash(secret: bytes, keyword: str, value: str) -> str:
    digest = hmac.new(secret, f"dicom:{keyword}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"h_{digest[:32]}"


def new_uid(secret: bytes, value: str) -> str:
    """A ``2.25.`` UID (ISO/IEC 9834-8 UUID-derived form) from an HMAC of the original."""
    digest = hmac.new(secret, f"dicom-uid:{value}".encode(), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def deidentify(ds: Dataset, secret: bytes) -> dict[str, Any]:
    """Rewrite ``ds`` in place; return the report (what was removed, hashes, new UIDs)."""
    hashes: dict[str, str] = {}
    for keyword in HASHED:
        value = ds.get(keyword)
        if value is not None and str(value).strip():
            hashes[keyword] = keyed_hash(secret, keyword, str(value).strip())
    uids = {k: str(ds.get(k)) for k in REMAP_UIDS if ds.get(k)}
    removed: list[str] = []
    for elem in list(ds):
        if elem.keyword == "PixelData":
            continue
        if elem.keyword not in RETAIN or elem.tag.is_private:
            removed.append(elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})")
            del ds[elem.tag]
    for keyword, original in uids.items():
        setattr(ds, keyword, new_uid(secret, original))
    if "SOPInstanceUID" not in ds:
        ds.SOPInstanceUID = new_uid(secret, "generated")
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for elem in list(meta):  # implementation names, source AE titles
            if elem.keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                                "ReceivingApplicationEntityTitle", "PrivateInformation",
                                "PrivateInformationCreatorUID"):  # fmt: skip
                del meta[elem.tag]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    return {
        "profile": PROFILE,
        "removed": sorted(set(removed) - set(uids)),
        "retained": sorted(e.keyword for e in ds if e.keyword and e.keyword != "PixelData"),
        "uids_remapped": sorted(uids),
        "identifier_hashes": hashes,
    }


def header_json(ds: Dataset) -> dict[str, Any]:
    """The de-identified header as DICOM JSON (PS3.18 F), without the pixels."""
    from pydicom.dataset import Dataset as DatasetClass

    copy = DatasetClass()
    for elem in ds:
        if elem.keyword != "PixelData" and elem.VR not in ("OB", "OW", "UN"):
            copy.add(elem)
    out: dict[str, Any] = copy.to_json_dict()
    return out
