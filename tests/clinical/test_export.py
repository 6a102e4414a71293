"""Exports: the FHIR R4 document validated by two libraries, the PDF looked at as an image."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as ClientBundle
from PIL import Image
from pypdf import PdfReader

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.conftest import speech_config
from tests.clinical.test_scribe_api import REPLY, _create
from tests.conftest import RunningServer


@pytest.fixture(scope="module")
def export_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("export-data")
    config = speech_config(data, scribe={"practice_name": "Cabinet Dentaire du Lac"})
    config["providers"]["t"]["reply"] = REPLY
    settings = load_settings(overrides=config)
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_fhir_document_bundle(export_server: RunningServer) -> None:
    with export_server.http() as http:
        eid = _create(http).json()["id"]
        draft = http.get(f"/v1/scribe/encounters/{eid}/fhir")
        assert draft.status_code == 200
        assert draft.headers["content-type"] == "application/fhir+json"
        assert _resources(draft.json(), "Composition")[0]["status"] == "preliminary"
        http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
        bundle = http.get(f"/v1/scribe/encounters/{eid}/fhir").json()

    # Two independent model libraries accept it: fhir.resources (R4B) and fhirclient (R4).
    R4BBundle.model_validate(bundle)
    ClientBundle(bundle, strict=True)

    assert bundle["type"] == "document"
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Composition" and first["status"] == "final"
    assert first["type"]["coding"][0] == {
        "system": "http://loinc.org", "code": "34109-9", "display": "Note"
    }  # fmt: skip
    assert first["attester"][0]["mode"] == "legal"
    codes = [s["code"]["coding"][0]["code"] for s in first["section"]]
    assert codes[:3] == ["10154-3", "10164-2", "29545-1"] and "10160-0" in codes
    # Every reference resolves inside the document.
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str):
                refs.append(node["reference"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(bundle)
    assert refs and set(refs) <= full_urls

    med = _resources(bundle, "MedicationStatement")[0]
    assert med["medicationCodeableConcept"]["text"] == "ibuprofen"
    dose = med["dosage"][0]["doseAndRate"][0]["doseQuantity"]
    assert dose == {"value": 400.0, "unit": "mg", "system": "http://unitsofmeasure.org",
                    "code": "mg"}  # fmt: skip
    assert med["dosage"][0]["route"]["text"] == "oral"
    allergy = _resources(bundle, "AllergyIntolerance")[0]
    assert allergy["code"]["text"] == "penicillin"
    bp = _resources(bundle, "Observation")[0]
    assert bp["code"]["coding"][0]["code"] == "85354-9"
    assert [c["valueQuantity"]["value"] for c in bp["component"]] == [130, 85]
    patient = _resources(bundle, "Patient")[0]
    assert patient["birthDate"] == "1980-02-29" and patient["name"][0]["text"] == "Jane Roe"
    custodian = _resources(bundle, "Organization")[0]
    assert custodian["name"] == "Cabinet Dentaire du Lac"
    attachment = _resources(bundle, "DocumentReference")[0]["content"][0]["attachment"]
    pdf = base64.b64decode(attachment["data"])
    assert pdf.startswith(b"%PDF") and attachment["size"] == len(pdf)


def test_pdf_has_the_note_and_its_signature(export_server: RunningServer, tmp_path: Path) -> None:
    with export_server.http() as http:
        eid = _create(http).json()["id"]
        draft = http.get(f"/v1/scribe/encounters/{eid}/pdf")
        assert draft.status_code == 200 and draft.headers["content-type"] == "application/pdf"
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(draft.content)).pages)
        assert "DRAFT" in text and "Cabinet Dentaire du Lac" in text
        http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
        signed = http.get(f"/v1/scribe/encounters/{eid}/pdf").content
        other = http.get("/v1/scribe/encounters/enc_ffffffffffffffffffffffff/pdf")
        assert other.status_code == 404
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(signed)).pages)
    assert "DRAFT" not in text
    expected = ["Jane Roe", "Dr Ada Molar", "Chief complaint", "ibuprofen, 400 mg, oral"]
    expected += ["penicillin", "36", "not found in the", "Electronically signed by"]
    for item in expected:
        assert item in text, item
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is missing: scripts/install-speech.sh installs it")
    (tmp_path / "note.pdf").write_bytes(signed)
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1",
                    str(tmp_path / "note.pdf"), str(tmp_path / "page")], check=True)  # fmt: skip
    page = Image.open(next(tmp_path.glob("page*.png"))).convert("L")
    assert page.width < page.height  # A4 portrait
    dark = sum(1 for px in page.getdata() if px < 128)
    assert dark > 0.005 * page.width * page.height  # text was drawn, not a blank page
    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts" / "scribe"
    artifacts.mkdir(parents=True, exist_ok=True)
    page.save(artifacts / "note-page1.png")
