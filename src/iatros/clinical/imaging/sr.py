"""The accepted annotations as a DICOM Comprehensive SR (``/sr.dcm``), written with pydicom.

A simplified TID 1500-like tree: the root container "Imaging Measurement Report"
(DCM 126000) holds one "Finding" (DCM 121071) per accepted annotation, coded in a local
coding scheme (``99IATROS``, the seven finding types), with its region as a spatial
coordinate (``SCOORD``: POINT, POLYLINE for a polygon, a closed POLYLINE for a box)
SELECTED FROM the image it was drawn on, the tooth as "Finding site" (SNOMED 363698007)
in FDI notation (``ISO3950``), who proposed it (clinician, or an AI proposal accepted),
and the clinician's note. The SR names the patient only by the keyed hash, and refers to
the images by their de-identified UIDs (PNG/JPEG images get the same ``2.25.`` UIDs as in
the FHIR ImagingStudy). Checked by reading it back with pydicom; not run through a DICOM
validator (none is installed here).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from iatros.clinical.imaging.fhir import SECONDARY_CAPTURE, derived_uid, header_value
from iatros.clinical.imaging.report import LABELS

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning[:64]
    return code


def _item(kind: str, relationship: str, name: Any, **values: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = kind
    item.ConceptNameCodeSequence = [name]
    for key, value in values.items():
        setattr(item, key, value)
    return item


def _graphic(shape: str, points: list[list[float]]) -> tuple[str, list[float]]:
    if shape == "point":
        return "POINT", [float(points[0][0]), float(points[0][1])]
    if shape == "box":
        (x0, y0), (x1, y1) = points
        ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    else:
        ring = [(p[0], p[1]) for p in points] + [(points[0][0], points[0][1])]
    return "POLYLINE", [float(v) for xy in ring for v in xy]


def build_sr(material: dict[str, Any]) -> bytes:
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    study, details = material["study"], material["details"]
    sid = study["id"]
    refs: dict[str, tuple[str, str]] = {}
    study_uid = None
    for image in study["images"]:
        header = material["headers"].get(image["id"]) or {}
        study_uid = study_uid or header_value(header, "0020000D")
        refs[image["id"]] = (
            header_value(header, "00080016") or SECONDARY_CAPTURE,
            header_value(header, "00080018") or derived_uid(sid, "instance", image["id"]),
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(COMPREHENSIVE_SR)
    meta.MediaStorageSOPInstanceUID = UID(derived_uid(sid, "sr", study["signed_at"] or "draft"))
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("sr.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    now = datetime.now(UTC)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or derived_uid(sid, "study")
    ds.SeriesInstanceUID = derived_uid(sid, "sr-series")
    ds.Modality = "SR"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.PatientID = study["patient"][:64]
    ds.PatientName = ""
    ds.PatientIdentityRemoved = "YES"
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.CompletionFlag = "COMPLETE" if study["signed"] else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if study["signed"] else "UNVERIFIED"
    if study["signed"]:
        signer = details.get("signer") or {}
        observer = Dataset()
        observer.VerifyingObserverName = str(signer.get("name") or signer.get("key") or "")[:64]
        observer.VerificationDateTime = datetime.fromisoformat(details["signed_at"]).strftime(
            "%Y%m%d%H%M%S"
        )
        observer.VerifyingOrganization = material["practice"][:64]
        ds.VerifyingObserverSequence = [observer]
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code("126000", "DCM", "Imaging Measurement Report")]
    ds.ContinuityOfContent = "SEPARATE"
    evidence = Dataset()
    evidence.StudyInstanceUID = ds.StudyInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = derived_uid(sid, "evidence-series")
    series.ReferencedSOPSequence = []
    for sop_class, sop_instance in refs.values():
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        series.ReferencedSOPSequence.append(ref)
    evidence.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
    findings = []
    for ann in material["annotations"]:
        children = []
        graphic_type, data = _graphic(ann["shape"], ann["points"])
        scoord = _item("SCOORD", "INFERRED FROM", _code("111030", "DCM", "Image Region"),
                       GraphicType=graphic_type, GraphicData=data)  # fmt: skip
        sop_class, sop_instance = refs[ann["image_id"]]
        image_ref = Dataset()
        image_ref.ReferencedSOPClassUID = sop_class
        image_ref.ReferencedSOPInstanceUID = sop_instance
        image = _item("IMAGE", "SELECTED FROM", _code("260753009", "SCT", "Source"),
                      ReferencedSOPSequence=[image_ref])  # fmt: skip
        scoord.ContentSequence = [image]
        children.append(scoord)
        if ann.get("tooth"):
            tooth = str(ann["tooth"])
            children.append(_item("CODE", "HAS CONCEPT MOD",
                                  _code("363698007", "SCT", "Finding site"),
                                  ConceptCodeSequence=[_code(tooth, "ISO3950",
                                                             f"Tooth {tooth} (FDI)")]))  # fmt: skip
        source = ("AI proposal accepted by the clinician" if ann["source"] == "ai"
                  else "Marked by the clinician")  # fmt: skip
        children.append(
            _item(
                "TEXT",
                "HAS PROPERTIES",
                _code("121106", "DCM", "Comment"),
                TextValue=source + (f": {ann['note']}" if ann.get("note") else ""),
            )
        )
        finding = _item(
            "CODE", "CONTAINS", _code("121071", "DCM", "Finding"),
            ConceptCodeSequence=[_code(ann["finding"], "99IATROS",
                                       LABELS.get(ann["finding"], ann["finding"]))],
        )  # fmt: skip
        finding.ContentSequence = children
        findings.append(finding)
    if details.get("conclusion"):
        findings.append(_item("TEXT", "CONTAINS", _code("121077", "DCM", "Conclusion"),
                              TextValue=str(details["conclusion"])[:10240]))  # fmt: skip
    ds.ContentSequence = findings
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
