"""A radiograph study as an HL7 FHIR R4 ``collection`` Bundle (``fhir.resources`` R4B).

Patient (identified only by the keyed hash), ImagingStudy (series and instances with the
de-identified DICOM UIDs; PNG/JPEG get ``2.25.`` UIDs derived from their ids and the
Secondary Capture SOP class), DiagnosticReport (LOINC 18748-4 "Diagnostic imaging
study", the conclusion, ``final`` once signed) and one Observation per **accepted**
finding: its code (a local code system for the seven finding types, plus SNOMED CT
80967001 "Dental caries" for caries), ``bodySite`` the tooth in FDI notation (ISO 3950;
permanent teeth also in HL7's ``ex-tooth`` system), derived from the ImagingStudy, and
a note saying whether it came from the clinician or from an accepted AI proposal.
Validated by the R4B models before it leaves; the tests validate it with ``fhirclient``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from iatros.clinical.imaging.report import LABELS

FINDING_SYSTEM = "urn:iatros:radiograph-finding"
FDI_SYSTEM = "urn:iso:std:iso:3950"
EX_TOOTH = "http://terminology.hl7.org/CodeSystem/ex-tooth"
SNOMED = {"caries": ("80967001", "Dental caries")}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _uid(study_id: str, kind: str, n: int | str = 0) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iatros:{study_id}:{kind}:{n}"))


def derived_uid(study_id: str, kind: str, n: int | str = 0) -> str:
    return "2.25." + str(uuid.UUID(_uid(study_id, kind, n)).int)


def _instant(value: str) -> str:
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def header_value(header: dict[str, Any], tag: str) -> str | None:
    value = (header.get(tag) or {}).get("Value")
    return str(value[0]) if value else None


def _tooth(tooth: int) -> dict[str, Any]:
    coding = [{"system": FDI_SYSTEM, "code": str(tooth), "display": f"Tooth {tooth} (FDI)"}]
    if tooth // 10 <= 4:
        coding.append({"system": EX_TOOTH, "code": str(tooth)})
    return {"coding": coding, "text": f"Tooth {tooth} (FDI)"}


def build_bundle(material: dict[str, Any]) -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle

    study, details = material["study"], material["details"]
    sid = study["id"]
    signed = bool(study["signed"])
    ids = {k: _uid(sid, k) for k in ("patient", "imaging", "report", "org")}
    subject = {"reference": f"urn:uuid:{ids['patient']}"}
    started = _instant(study["created_at"])
    patient = {
        "resourceType": "Patient", "id": ids["patient"],
        "identifier": [{"system": "urn:iatros:patient-ref", "value": study["patient"]}],
    }  # fmt: skip
    series: list[dict[str, Any]] = []
    study_uid: str | None = None
    for n, image in enumerate(study["images"], start=1):
        if image["status"] != "ready":
            continue
        header = material["headers"].get(image["id"]) or {}
        study_uid = study_uid or header_value(header, "0020000D")
        modality = image.get("modality") or ("OT" if image["kind"] != "dicom" else "DX")
        instance = header_value(header, "00080018") or derived_uid(sid, "instance", image["id"])
        sop_class = header_value(header, "00080016") or SECONDARY_CAPTURE
        series.append({
            "uid": header_value(header, "0020000E") or derived_uid(sid, "series", image["id"]),
            "number": n,
            "modality": {"system": DCM, "code": modality[:16]},
            "numberOfInstances": 1,
            "instance": [{
                "uid": instance,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:" + sop_class},
                "number": 1,
            }],
        })  # fmt: skip
    imaging: dict[str, Any] = {
        "resourceType": "ImagingStudy", "id": ids["imaging"], "status": "available",
        "subject": subject, "started": started,
        "identifier": [{"system": "urn:dicom:uid",
                        "value": "urn:oid:" + (study_uid or derived_uid(sid, "study"))}],
        "numberOfSeries": len(series), "numberOfInstances": len(series),
    }  # fmt: skip
    if series:
        imaging["series"] = series
    if details.get("description"):
        imaging["description"] = str(details["description"])[:1000]
    observations = []
    status = "final" if signed else "preliminary"
    for ann in material["annotations"]:
        coding = [{"system": FINDING_SYSTEM, "code": ann["finding"],
                   "display": LABELS.get(ann["finding"], ann["finding"])}]  # fmt: skip
        if ann["finding"] in SNOMED:
            code, display = SNOMED[ann["finding"]]
            coding.append({"system": "http://snomed.info/sct", "code": code, "display": display})
        note = ("AI-proposed finding"
                + (f" (confidence {ann['confidence']:.2f})" if ann.get("confidence") else "")
                + ", accepted by the clinician" if ann["source"] == "ai"
                else "Finding marked by the clinician")  # fmt: skip
        if ann.get("note"):
            note += f": {ann['note']}"
        obs: dict[str, Any] = {
            "resourceType": "Observation", "id": _uid(sid, "finding", ann["id"]),
            "status": status,
            "category": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "imaging", "display": "Imaging"}]}],
            "code": {"coding": coding, "text": LABELS.get(ann["finding"], ann["finding"])},
            "subject": subject, "effectiveDateTime": started,
            "derivedFrom": [{"reference": f"urn:uuid:{ids['imaging']}"}],
            "note": [{"text": note}],
            "identifier": [{"system": "urn:iatros:radiograph-annotation", "value": ann["id"]}],
        }  # fmt: skip
        if ann.get("tooth"):
            obs["bodySite"] = _tooth(int(ann["tooth"]))
        observations.append(obs)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "id": ids["report"], "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                  "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "18748-4",
                             "display": "Diagnostic imaging study"}],
                 "text": "Dental radiograph report"},
        "subject": subject, "effectiveDateTime": started,
        "issued": _instant(study["signed_at"] or study["updated_at"]),
        "imagingStudy": [{"reference": f"urn:uuid:{ids['imaging']}"}],
        "result": [{"reference": f"urn:uuid:{o['id']}"} for o in observations],
    }  # fmt: skip
    if not report["result"]:
        del report["result"]
    if details.get("conclusion"):
        report["conclusion"] = str(details["conclusion"])
    resources = [report, imaging, *observations, patient]
    bundle = {
        "resourceType": "Bundle", "id": _uid(sid, "bundle", "signed" if signed else "draft"),
        "type": "collection", "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }  # fmt: skip
    validated = Bundle.model_validate(bundle)
    result: dict[str, Any] = validated.model_dump(mode="json", exclude_none=True)
    return result
