"""The note as an HL7 FHIR R4 document Bundle, built and validated with ``fhir.resources``.

``Bundle.type = document``: the Composition first (LOINC-coded document type and sections,
each section's narrative, ``final`` once signed with a legal attester), then what it
refers to — Patient, Practitioner, the practice (Organization, the custodian), Encounter,
a MedicationStatement per medication, an AllergyIntolerance per allergy, an Observation
per vital sign (LOINC codes, UCUM units) — and a DocumentReference carrying the PDF.
Entries are linked by ``urn:uuid`` full URLs, as a document bundle must be to stand alone.
The whole bundle is validated by ``fhir.resources``' R4B models before it leaves;
the tests validate it again with ``fhirclient``'s R4 models.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from iatros.clinical.scribe.settings import ScribeSettings

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
VITALS = {
    "heart_rate": ("8867-4", "Heart rate"),
    "temperature": ("8310-5", "Body temperature"),
    "oxygen_saturation": ("2708-6", "Oxygen saturation in Arterial blood"),
    "respiratory_rate": ("9279-1", "Respiratory rate"),
    "weight": ("29463-7", "Body weight"),
}
UCUM_UNITS = {"mg": "mg", "mcg": "ug", "g": "g", "mL": "mL", "units": "[iU]"}


def _instant(value: str) -> str:
    """FHIR instants need a time zone; the store's times are UTC."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="seconds")


def _uid(enc_id: str, kind: str, n: int = 0) -> str:
    """Stable ids per encounter and resource: exporting twice gives the same bundle ids."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"iatros:{enc_id}:{kind}:{n}"))


def _ref(uid: str) -> dict[str, str]:
    return {"reference": f"urn:uuid:{uid}"}


def _narrative(items: list[str]) -> dict[str, str]:
    body = "".join(f"<li>{escape(i)}</li>" for i in items) or "<li>—</li>"
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{body}'
            "</ul></div>"}  # fmt: skip


def build_bundle(enc: dict[str, Any], practice: str, pdf: bytes | None) -> dict[str, Any]:
    """The FHIR document as JSON (validated by ``fhir.resources`` R4B)."""
    from fhir.resources.R4B.bundle import Bundle

    eid = enc["id"]
    signed = enc["status"] == "signed"
    note = enc["note"]
    structured = note.get("structured") or {}
    patient = enc.get("patient") or {}
    clinician = enc.get("clinician") or {}
    signature = note.get("signature") or {}
    created = _instant(enc["created_at"])
    ids = {k: _uid(eid, k) for k in ("composition", "patient", "practitioner", "org",
                                     "encounter", "docref")}  # fmt: skip
    subject = _ref(ids["patient"])
    status_obs = "final" if signed else "preliminary"
    entries: list[dict[str, Any]] = []

    pat: dict[str, Any] = {"resourceType": "Patient", "id": ids["patient"]}
    if patient.get("id"):
        pat["identifier"] = [{"system": "urn:iatros:patient", "value": patient["id"]}]
    if patient.get("name"):
        pat["name"] = [{"text": patient["name"]}]
    if patient.get("birth_date"):
        pat["birthDate"] = patient["birth_date"]
    if patient.get("gender"):
        pat["gender"] = patient["gender"]
    practitioner_name = signature.get("name") or clinician.get("name") or "Unknown clinician"
    prac = {"resourceType": "Practitioner", "id": ids["practitioner"],
            "name": [{"text": practitioner_name}]}  # fmt: skip
    org = {"resourceType": "Organization", "id": ids["org"], "name": practice}
    encounter = {
        "resourceType": "Encounter",
        "id": ids["encounter"],
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "subject": subject,
        "participant": [{"individual": _ref(ids["practitioner"])}],
        "period": {"start": created},
        "serviceProvider": _ref(ids["org"]),
    }

    meds: list[dict[str, Any]] = []
    allergies: list[dict[str, Any]] = []
    observations: list[dict[str, Any]] = []
    for i, m in enumerate(structured.get("medications", [])):
        dosage: dict[str, Any] = {"text": ", ".join(
            str(x) for x in (m.get("dose") and f"{m['dose']['value']:g} {m['dose']['unit']}",
                             m.get("route"), m.get("frequency")) if x) or m["name"]}  # fmt: skip
        if m.get("route"):
            dosage["route"] = {"text": m["route"]}
        if m.get("frequency"):
            dosage["timing"] = {"code": {"text": m["frequency"]}}
        if m.get("dose"):
            unit = m["dose"]["unit"]
            quantity: dict[str, Any] = {"value": m["dose"]["value"], "unit": unit}
            if unit in UCUM_UNITS:
                quantity |= {"system": UCUM, "code": UCUM_UNITS[unit]}
            dosage["doseAndRate"] = [{"doseQuantity": quantity}]
        meds.append({"resourceType": "MedicationStatement", "id": _uid(eid, "med", i),
                     "status": "active", "medicationCodeableConcept": {"text": m["name"]},
                     "subject": subject, "context": _ref(ids["encounter"]),
                     "dateAsserted": created, "dosage": [dosage]})  # fmt: skip
    for i, a in enumerate(structured.get("allergies", [])):
        code = (
            {"coding": [{"system": "http://snomed.info/sct", "code": "716186003",
                         "display": "No known allergy"}], "text": "No known allergy"}
            if a["substance"] == "none known" else {"text": a["substance"]}
        )  # fmt: skip
        allergies.append({
            "resourceType": "AllergyIntolerance", "id": _uid(eid, "allergy", i),
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active"}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                "code": "confirmed" if signed else "unconfirmed"}]},
            "code": code, "patient": subject, "encounter": _ref(ids["encounter"]),
            "recordedDate": created,
        })  # fmt: skip
    category = [{"coding": [{
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "vital-signs", "display": "Vital Signs"}]}]  # fmt: skip
    for i, v in enumerate(structured.get("vitals", [])):
        obs: dict[str, Any] = {"resourceType": "Observation", "id": _uid(eid, "vital", i),
                               "status": status_obs, "category": category, "subject": subject,
                               "encounter": _ref(ids["encounter"]),
                               "effectiveDateTime": created}  # fmt: skip
        if v["name"] == "blood_pressure" and isinstance(v["value"], dict):
            obs["code"] = {"coding": [{"system": LOINC, "code": "85354-9",
                                       "display": "Blood pressure panel"}]}  # fmt: skip
            obs["component"] = [
                {"code": {"coding": [{"system": LOINC, "code": code, "display": label}]},
                 "valueQuantity": {"value": v["value"][key], "unit": "mmHg", "system": UCUM,
                                   "code": "mm[Hg]"}}
                for key, code, label in (("systolic", "8480-6", "Systolic blood pressure"),
                                         ("diastolic", "8462-4", "Diastolic blood pressure"))
            ]  # fmt: skip
        elif v["name"] in VITALS and isinstance(v["value"], int | float):
            loinc_code, label = VITALS[v["name"]]
            obs["code"] = {"coding": [{"system": LOINC, "code": loinc_code, "display": label}]}
            obs["valueQuantity"] = {"value": v["value"], "unit": v["unit"], "system": UCUM,
                                    "code": v["unit"]}  # fmt: skip
        else:
            continue
        observations.append(obs)

    related: dict[str, list[dict[str, Any]]] = {
        "meds": meds, "allergies": allergies, "vitals": observations
    }  # fmt: skip
    sections = []
    for section in note["sections"]:
        items = [s["text"] for s in section["statements"]]
        entry: dict[str, Any] = {
            "title": section["title"],
            "code": {"coding": [{"system": LOINC, **_section_code(section)}]},
            "text": _narrative(items),
        }
        if not items:
            entry["emptyReason"] = {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "unavailable"}]}  # fmt: skip
        sections.append(entry)
    for key, title, section_code in (("meds", "Medications", "10160-0"),
                             ("allergies", "Allergies", "48765-2"),
                             ("vitals", "Vital signs", "8716-3")):  # fmt: skip
        if related[key]:
            sections.append({
                "title": title,
                "code": {"coding": [{"system": LOINC, "code": section_code}]},
                "text": _narrative([_describe(r) for r in related[key]]),
                "entry": [_ref(r["id"]) for r in related[key]],
            })  # fmt: skip

    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": ids["composition"],
        "identifier": {"system": "urn:iatros:encounter", "value": f"{eid}/v{enc['version']}"},
        "status": "final" if signed else "preliminary",
        "type": {"coding": [{"system": LOINC, **_document_code(enc["template"])}]},
        "subject": subject,
        "encounter": _ref(ids["encounter"]),
        "date": _instant(signature.get("signed_at") or enc["updated_at"]),
        "author": [_ref(ids["practitioner"])],
        "title": note.get("title") or enc["template"],
        "custodian": _ref(ids["org"]),
        "section": sections,
    }  # fmt: skip
    if signed:
        composition["attester"] = [{"mode": "legal", "time": _instant(signature["signed_at"]),
                                    "party": _ref(ids["practitioner"])}]  # fmt: skip
    resources = [composition, pat, prac, org, encounter, *meds, *allergies, *observations]
    if pdf is not None:
        resources.append({
            "resourceType": "DocumentReference", "id": ids["docref"],
            "status": "current", "docStatus": "final" if signed else "preliminary",
            "type": composition["type"], "subject": subject,
            "date": composition["date"], "author": [_ref(ids["practitioner"])],
            "custodian": _ref(ids["org"]),
            "content": [{"attachment": {
                "contentType": "application/pdf", "language": enc.get("language") or "en",
                "data": base64.b64encode(pdf).decode(), "size": len(pdf),
                "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode(),
                "title": f"{composition['title']} ({eid} v{enc['version']})",
                "creation": composition["date"]}}],
            "context": {"encounter": [_ref(ids["encounter"])]},
        })  # fmt: skip
    for resource in resources:
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    bundle = {
        "resourceType": "Bundle",
        "id": _uid(eid, f"bundle-v{enc['version']}"),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{_uid(eid, 'doc')}"},
        "type": "document",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "entry": entries,
    }
    validated = Bundle.model_validate(bundle)  # raises on anything R4B does not allow
    result: dict[str, Any] = validated.model_dump(mode="json", exclude_none=True)
    return result


def _document_code(template_id: str) -> dict[str, str]:
    from iatros.clinical.scribe.templates import templates

    found = templates().get(template_id)
    if found is None:
        return {"code": "11506-3", "display": "Progress note"}
    return {"code": found.loinc.code, "display": found.loinc.display}


def _section_code(section: dict[str, Any]) -> dict[str, str]:
    from iatros.clinical.scribe.templates import templates

    for template in templates().values():
        found = template.section(section["id"])
        if found is not None:
            return {"code": found.loinc.code, "display": found.loinc.display}
    return {"code": "51855-5", "display": "Patient Note"}


def _describe(resource: dict[str, Any]) -> str:
    kind = resource["resourceType"]
    if kind == "MedicationStatement":
        return f"{resource['medicationCodeableConcept']['text']}: {resource['dosage'][0]['text']}"
    if kind == "AllergyIntolerance":
        return str(resource["code"]["text"])
    if "component" in resource:
        sys_, dia = (c["valueQuantity"]["value"] for c in resource["component"])
        return f"Blood pressure {sys_}/{dia} mmHg"
    q = resource["valueQuantity"]
    return f"{resource['code']['coding'][0]['display']}: {q['value']} {q['unit']}"


async def send_bundle(settings: ScribeSettings, bundle: dict[str, Any]) -> dict[str, Any]:
    """POST a document Bundle to ``<fhir_url>/Bundle``; the server's answer, or a 502."""
    import httpx

    from iatros.errors import UpstreamError

    assert settings.fhir_url is not None
    headers = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
    if settings.fhir_token is not None:
        headers["authorization"] = f"Bearer {settings.fhir_token.get_secret_value()}"
    url = settings.fhir_url.rstrip("/") + "/Bundle"
    try:
        async with httpx.AsyncClient(timeout=settings.fhir_timeout_s) as client:
            resp = await client.post(url, content=orjson.dumps(bundle), headers=headers)
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"The FHIR server is unreachable: {exc}", code="fhir_server_unreachable"
        ) from None
    if resp.status_code >= 300:
        detail = resp.text[:300]
        try:
            issues = resp.json().get("issue") or []
            detail = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in issues) or detail
        except (ValueError, AttributeError):
            pass
        raise UpstreamError(
            f"The FHIR server refused the document ({resp.status_code}): {detail}",
            retryable=False,
            upstream_status=resp.status_code,
            code="fhir_server_refused",
        )
    body: dict[str, Any] = {}
    try:
        parsed = resp.json()
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    return {
        "status": resp.status_code,
        "location": resp.headers.get("location"),
        "id": body.get("id"),
    }
