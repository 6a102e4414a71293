"""Radiographs over HTTP, end to end: upload a generated DICOM with burned-in text →
header and pixels de-identified → annotate two teeth → AI analysis by the fake vision
model → accept one proposal, reject the other → sign → the PDF and the FHIR Bundle hold
exactly the accepted findings. Then isolation, audit, sealing and the refusals."""

from __future__ import annotations

import io
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle as R4BBundle
from fhirclient.models.bundle import Bundle as ClientBundle
from PIL import Image
from pypdf import PdfReader

from iatros.testing.radiographs import anatomy, burn_text, dicom_bytes, picture_bytes
from tests.clinical.imaging.conftest import wait_ready
from tests.conftest import RunningServer

MARKERS = [(300, 420, 40, 30), (900, 440, 36, 28)]  # white boxes the fake model reports


def _dicom_with_text_and_markers() -> tuple[bytes, np.ndarray]:
    values = anatomy(1400, 800, seed=4)
    ink = burn_text(values, "DOE^JANE  MRN-778899", 20, 20, 28)
    for x, y, w, h in MARKERS:
        values[y : y + h, x : x + w] = 4095
    return dicom_bytes(values), ink


def _upload(http: httpx.Client, files: list[tuple[str, bytes]], patient: str = "p-4711",
            **fields: str) -> httpx.Response:  # fmt: skip
    return http.post(
        "/v1/radiographs/studies",
        data={"patient_id": patient, **fields},
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
    )


def _audit(http: httpx.Client, target: str, action: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _ in range(50):
        rows = [r for r in http.get("/admin/audit", params={"limit": 1000}).json()["data"]
                if r["target"] == target and r["action"] == action]  # fmt: skip
        if rows:
            return rows
        time.sleep(0.1)
    return rows


def test_the_whole_path(radiograph_server: RunningServer) -> None:
    data, ink = _dicom_with_text_and_markers()
    with radiograph_server.http() as http:
        status = http.get("/v1/radiographs/status").json()
        assert status["vision_models"] == ["radiology"] and "vision: true" in status["configure"]
        resp = _upload(http, [("pano.dcm", data)], description="Panoramic, annual check")
        assert resp.status_code == 202, resp.text
        created = resp.json()
        assert created["patient"].startswith("patient_") and "4711" not in created["patient"]
        study = wait_ready(http, created["id"])
        assert study["status"] == "ready"
        [image] = study["images"]
        assert (image["kind"], image["width"], image["height"], image["status"]) == (
            "dicom", 1400, 800, "ready",
        )  # fmt: skip
        assert image["progress"] == 1.0 and image["pixel_spacing_mm"] == [0.1, 0.1]
        assert image["window"] == {"center": 2048.0, "width": 4096.0}
        deid = image["deidentified"]
        assert deid["profile"] == "iatros-basic-1" and "PatientName" in deid["removed"]
        assert set(deid["identifier_hashes"]) >= {"PatientID", "PatientName"}
        assert len(deid["burned_in_text"]["regions_masked"]) == 1
        assert "778899" not in str(study)
        iid = image["id"]

        # renditions: the text is gone from the pixels, the markers stay
        render = http.get(f"/v1/radiographs/images/{iid}/render.png")
        assert render.headers["content-type"] == "image/png"
        shown = np.asarray(Image.open(io.BytesIO(render.content)))
        assert shown.shape == (800, 1400) and shown[ink].max() < 30
        x, y, w, h = MARKERS[0]
        assert shown[y : y + h, x : x + w].min() == 255
        inverted = np.asarray(Image.open(io.BytesIO(
            http.get(f"/v1/radiographs/images/{iid}/render.png?invert=1").content)))  # fmt: skip
        assert np.array_equal(inverted, 255 - shown)
        url = f"/v1/radiographs/images/{iid}/render.png?center=1200&width=400"
        narrow = np.asarray(Image.open(io.BytesIO(http.get(url).content)))
        assert not np.array_equal(narrow, shown)
        thumb = Image.open(
            io.BytesIO(http.get(f"/v1/radiographs/images/{iid}/thumbnail.png").content)
        )
        assert max(thumb.size) == 256

        # the clinician marks two teeth
        made = []
        for tooth, finding, points in ((46, "caries", [[500, 300], [560, 360]]),
                                       (21, "restoration", [[700, 380]])):  # fmt: skip
            resp = http.post(f"/v1/radiographs/images/{iid}/annotations", json={
                "shape": "box" if len(points) == 2 else "point", "points": points,
                "finding": finding, "tooth": tooth, "note": "seen on the panoramic"})  # fmt: skip
            assert resp.status_code == 201, resp.text
            made.append(resp.json())
        assert made[0]["source"] == "clinician" and made[0]["status"] == "accepted"
        assert made[0]["version"] == 1 and made[0]["author"]

        # the AI proposes two findings (the fake model reads the white markers)
        resp = http.post(f"/v1/radiographs/images/{iid}/analyse", json={"language": "en"})
        assert resp.status_code == 200, resp.text
        analysis = resp.json()
        assert analysis["analysis"]["parsed"] and analysis["analysis"]["model"] == "vision-a"
        proposals = analysis["annotations"]
        assert [(a["finding"], a["tooth"], a["source"], a["status"]) for a in proposals] == [
            ("caries", 16, "ai", "proposed"),
            ("periapical_lesion", 36, "ai", "proposed"),
        ]
        assert proposals[0]["points"] == [[300.0, 420.0], [340.0, 450.0]]
        assert proposals[0]["confidence"] == 0.82 and proposals[0]["explanation"]

        accept, reject = proposals
        stale = http.patch(f"/v1/radiographs/annotations/{accept['id']}",
                           json={"version": 2, "status": "accepted"})  # fmt: skip
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "version_mismatch"
        ok = http.patch(f"/v1/radiographs/annotations/{accept['id']}",
                        json={"version": 1, "status": "accepted", "note": "confirmed"})  # fmt: skip
        assert ok.status_code == 200 and ok.json()["version"] == 2
        assert ok.json()["status"] == "accepted" and ok.json()["source"] == "ai"
        assert (
            http.patch(
                f"/v1/radiographs/annotations/{reject['id']}",
                json={"version": 1, "status": "rejected"},
            ).status_code
            == 200
        )
        listed = http.get(f"/v1/radiographs/images/{iid}/annotations").json()["data"]
        assert len(listed) == 4

        # sign; then everything is read-only
        signed = http.post(f"/v1/radiographs/studies/{study['id']}/sign",
                           json={"conclusion": "Caries 46 and 16; restoration 21.",
                                 "name": "Dr Ada Molar"})  # fmt: skip
        assert signed.status_code == 200 and signed.json()["signed"]
        again = http.post(f"/v1/radiographs/studies/{study['id']}/sign", json={"conclusion": "x"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "study_signed"
        for resp in (
            http.post(f"/v1/radiographs/images/{iid}/annotations", json={
                "shape": "point", "points": [[1, 1]], "finding": "other"}),
            http.patch(f"/v1/radiographs/annotations/{made[0]['id']}",
                       json={"version": 1, "tooth": 47}),
            http.delete(f"/v1/radiographs/annotations/{made[0]['id']}"),
            http.post(f"/v1/radiographs/images/{iid}/analyse"),
        ):  # fmt: skip
            assert resp.status_code == 409 and resp.json()["error"]["code"] == "study_signed"

        # the report: exactly the accepted findings
        pdf = http.get(f"/v1/radiographs/studies/{study['id']}/report.pdf")
        assert pdf.headers["content-type"] == "application/pdf"
        reader = PdfReader(io.BytesIO(pdf.content))
        text = " ".join(page.extract_text() for page in reader.pages)
        assert "Caries" in text and "Restoration" in text and "Dr Ada Molar" in text
        assert "Periapical lesion" not in text  # the rejected proposal
        assert "AI, accepted by clinician" in text and "Caries 46 and 16" in text
        assert "DOE" not in text and "4711" not in text
        assert sum(len(page.images) for page in reader.pages) == 1
        drawn = np.asarray(Image.open(io.BytesIO(reader.pages[0].images[0].data)).convert("RGB"))
        orange = (drawn[..., 0] > 200) & (drawn[..., 1] > 60) & (drawn[..., 1] < 120) & (
            drawn[..., 2] < 60)  # fmt: skip
        assert orange.sum() > 50  # the first annotation's colour is drawn

        bundle = http.get(f"/v1/radiographs/studies/{study['id']}/fhir").json()
        R4BBundle.model_validate(bundle)
        ClientBundle(bundle, strict=True)
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds.count("ImagingStudy") == 1 and kinds.count("DiagnosticReport") == 1
        observations = [e["resource"] for e in bundle["entry"]
                        if e["resource"]["resourceType"] == "Observation"]  # fmt: skip
        teeth = sorted(int(o["bodySite"]["coding"][0]["code"]) for o in observations)
        assert teeth == [16, 21, 46]
        report = next(e["resource"] for e in bundle["entry"]
                      if e["resource"]["resourceType"] == "DiagnosticReport")  # fmt: skip
        assert report["status"] == "final" and len(report["result"]) == 3
        imaging = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "ImagingStudy")  # fmt: skip
        assert imaging["series"][0]["instance"][0]["uid"].startswith("2.25.")

        sr = http.get(f"/v1/radiographs/studies/{study['id']}/sr.dcm")
        assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
        assert b"DOE" not in sr.content and b"4711" not in sr.content
        report_sr = pydicom.dcmread(io.BytesIO(sr.content))
        assert report_sr.Modality == "SR" and report_sr.VerificationFlag == "VERIFIED"
        found = [item for item in report_sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == "121071"]  # fmt: skip
        assert sorted(item.ConceptCodeSequence[0].CodeValue for item in found) == [
            "caries",
            "caries",
            "restoration",
        ]
        sites = sorted(int(child.ConceptCodeSequence[0].CodeValue) for item in found
                       for child in item.ContentSequence if child.ValueType == "CODE")  # fmt: skip
        assert sites == [16, 21, 46]
        region = found[0].ContentSequence[0]
        assert region.ValueType == "SCOORD"
        uid = imaging["series"][0]["instance"][0]["uid"]
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uid

        # audited with the patient as a keyed hash; sealed at rest
        for action in ("radiographs.study.create", "radiographs.study.sign",
                       "radiographs.export.pdf"):  # fmt: skip
            [row, *_] = _audit(http, study["id"], action)
            assert row["details"]["patient"] == created["patient"]
        assert _audit(http, iid, "radiographs.image.analyse")
        db = Path(radiograph_server.settings.data_dir) / "iatros.db"
        with sqlite3.connect(db) as conn:
            blobs = [b for row in conn.execute(
                "SELECT details FROM radiograph_studies UNION ALL SELECT meta FROM "
                "radiograph_images UNION ALL SELECT content FROM radiograph_annotations")
                for b in row]  # fmt: skip
        assert blobs and all(b"p-4711" not in b and b"Panoramic" not in b and b"caries" not in b
                             for b in blobs)  # fmt: skip
        by_patient = http.get("/v1/radiographs/studies", params={"patient_id": "p-4711"}).json()
        assert [s["id"] for s in by_patient["data"]] == [study["id"]]
        assert (
            http.get("/v1/radiographs/studies", params={"patient_id": "p-9"}).json()["data"] == []
        )


def test_batch_of_png_and_jpeg(radiograph_server: RunningServer) -> None:
    values = anatomy(900, 700, seed=8)
    files = [("a.png", picture_bytes(values)), ("b.jpg", picture_bytes(values, "JPEG")),
             ("c.dcm", dicom_bytes(values, transfer_syntax="1.2.840.10008.1.2.5"))]  # fmt: skip
    with radiograph_server.http() as http:
        resp = _upload(http, files, patient="p-batch")
        assert resp.status_code == 202, resp.text
        study = wait_ready(http, resp.json()["id"])
        assert [(i["kind"], i["status"]) for i in study["images"]] == [
            ("png", "ready"),
            ("jpeg", "ready"),
            ("dicom", "ready"),
        ]
        assert study["images"][0]["deidentified"]["profile"] == "pixels-only"
        assert study["images"][0]["pixel_spacing_mm"] is None


def test_another_tenants_study_is_not_found(radiograph_server: RunningServer) -> None:
    with radiograph_server.http() as admin:
        study = wait_ready(admin, _upload(admin, [("x.png", picture_bytes(anatomy(600, 500)))])
                           .json()["id"])  # fmt: skip
        iid = study["images"][0]["id"]
        ann = admin.post(f"/v1/radiographs/images/{iid}/annotations", json={
            "shape": "point", "points": [[10, 10]], "finding": "other"}).json()  # fmt: skip
        key = admin.post("/admin/keys", json={"tenant": "clinic-b", "role": "clinician"})
        other = key.json()["key"]
    sid = study["id"]
    with radiograph_server.http(other) as http:
        for resp in (
            http.get(f"/v1/radiographs/studies/{sid}"),
            http.get(f"/v1/radiographs/images/{iid}/thumbnail.png"),
            http.get(f"/v1/radiographs/images/{iid}/render.png?center=10&width=20"),
            http.get(f"/v1/radiographs/images/{iid}/annotations"),
            http.post(f"/v1/radiographs/images/{iid}/annotations", json={
                "shape": "point", "points": [[1, 1]], "finding": "other"}),
            http.patch(f"/v1/radiographs/annotations/{ann['id']}",
                       json={"version": 1, "status": "rejected"}),
            http.delete(f"/v1/radiographs/annotations/{ann['id']}"),
            http.post(f"/v1/radiographs/images/{iid}/analyse"),
            http.post(f"/v1/radiographs/studies/{sid}/sign", json={"conclusion": "x"}),
            http.get(f"/v1/radiographs/studies/{sid}/report.pdf"),
            http.get(f"/v1/radiographs/studies/{sid}/fhir"),
        ):  # fmt: skip
            assert resp.status_code == 404, resp.text
            assert resp.json()["error"]["code"] in (
                "study_not_found",
                "image_not_found",
                "annotation_not_found",
            )
        assert http.get("/v1/radiographs/studies").json()["data"] == []
    with radiograph_server.http() as admin:
        after = admin.get(f"/v1/radiographs/images/{iid}/annotations").json()["data"]
        assert [(a["id"], a["version"], a["status"]) for a in after] == [(ann["id"], 1, "accepted")]
        assert not admin.get(f"/v1/radiographs/studies/{sid}").json()["signed"]


def _count(http: httpx.Client) -> int:
    return len(http.get("/v1/radiographs/studies").json()["data"])


def test_bad_uploads_store_nothing(radiograph_server: RunningServer) -> None:
    good = dicom_bytes(anatomy(600, 400))
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(good))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.PixelData = encapsulate([b"\0\0\0\1" + b"\0" * 60])
    mpeg = io.BytesIO()
    ds.save_as(mpeg)
    cases: list[tuple[list[tuple[str, bytes]], dict[str, str], int, str, str]] = [
        ([("a.dcm", good), ("b.dcm", good[:-4000])], {}, 400, "files.1", "invalid_dicom"),
        ([("a.dcm", b"\0" * 128 + b"DICM" + b"\1" * 300)], {}, 400, "files.0", "invalid_dicom"),
        ([("a.dcm", mpeg.getvalue())], {}, 415, "files.0", "unsupported_transfer_syntax"),
        ([("a.png", picture_bytes(anatomy(200, 150)))], {}, 400, "files.0", "image_too_small"),
        ([("a.txt", b"hello")], {}, 415, "files.0", "unsupported_media_type"),
        ([("a.dcm", good)], {"patient_id": "p\x00-1"}, 400, "patient_id", "invalid_request"),
        ([("a.dcm", good)], {"patient_id": ""}, 400, "patient_id", "invalid_request"),
        ([("a.dcm", good)], {"description": "left\x00right"}, 400, "description",
         "invalid_request"),
        ([("a.dcm", good)], {"colour": "blue"}, 400, "colour", "invalid_request"),
    ]  # fmt: skip
    with radiograph_server.http() as http:
        before = _count(http)
        for files, fields, status, param, code in cases:
            patient = fields.pop("patient_id", "p-bad")
            resp = _upload(http, files, patient=patient, **fields)
            assert resp.status_code == status, (param, resp.text)
            error = resp.json()["error"]
            assert (error["param"], error["code"]) == (param, code), error
        assert _count(http) == before
        no_files = http.post("/v1/radiographs/studies", data={"patient_id": "p"})
        assert no_files.status_code == 400
        assert http.post("/v1/radiographs/studies", json={"patient_id": "p"}).status_code == 400
        assert _count(http) == before
    bad = _upload(radiograph_server.http(), [("a.dcm", mpeg.getvalue())])
    assert "MPEG" in bad.json()["error"]["message"]


def test_a_200_mb_upload_is_refused_while_it_streams(radiograph_server: RunningServer) -> None:
    import select
    import socket

    total = 200 * 1024 * 1024
    with radiograph_server.http() as http:
        before = _count(http)
        key = http.headers["authorization"].split()[1]
    boundary = "xyzBOUNDARY"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"patient_id\"\r\n\r\np\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"big.dcm\"\r\nContent-Type: application/dicom\r\n\r\n"
            ).encode()  # fmt: skip
    for declare in (True, False):
        sock = socket.create_connection(("127.0.0.1", radiograph_server.port))
        sock.settimeout(10)
        headers = (f"POST /v1/radiographs/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Authorization: Bearer {key}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\n")  # fmt: skip
        headers += f"Content-Length: {total}\r\n" if declare else "Transfer-Encoding: chunked\r\n"
        sock.sendall((headers + "\r\n").encode())
        sent = 0
        chunk = b"\0" * (1024 * 1024)
        try:
            first = head if declare else b"%x\r\n%s\r\n" % (len(head), head)
            sock.sendall(first)
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered: stop sending
                body = chunk if declare else b"%x\r\n%s\r\n" % (len(chunk), chunk)
                sock.sendall(body)
                sent += len(chunk)
        except OSError:
            pass  # the server stopped reading and closed: what we want
        reply = b""
        try:
            while b"\r\n\r\n" not in reply:
                part = sock.recv(65536)
                if not part:
                    break
                reply += part
        except OSError:
            pass
        sock.close()
        assert reply.startswith(b"HTTP/1.1 413"), (declare, reply[:200])
        assert b"upload_too_large" in reply or declare
        assert sent < 100 * 1024 * 1024, sent  # refused long before 200 MB were sent
    with radiograph_server.http() as http:
        assert _count(http) == before


def test_bad_annotations(radiograph_server: RunningServer) -> None:
    with radiograph_server.http() as http:
        study = wait_ready(http, _upload(http, [("x.png", picture_bytes(anatomy(800, 600)))])
                           .json()["id"])  # fmt: skip
        iid = study["images"][0]["id"]
        base = {"shape": "box", "points": [[10, 10], [50, 60]], "finding": "caries", "tooth": 36}
        cases = [
            ({"tooth": 19}, "tooth", "invalid_tooth"),
            ({"tooth": 59}, "tooth", "invalid_tooth"),
            ({"tooth": 90}, "tooth", "invalid_tooth"),
            ({"points": [[10, 10], [801, 60]]}, "points.1", "point_outside_image"),
            ({"points": [[-1, 10], [50, 60]]}, "points.0", "point_outside_image"),
            ({"points": [[10, 10]]}, "points", "invalid_points"),
            ({"points": [[10, 10], [10, 60]]}, "points", "invalid_points"),
            ({"shape": "polygon", "points": [[1, 1], [2, 2]]}, "points", "invalid_points"),
            ({"finding": "fracture"}, "finding", "invalid_request"),
            ({"shape": "circle"}, "shape", "invalid_request"),
            ({"note": "a\x00b"}, "note", "invalid_request"),
            ({"points": [[1, 2, 3], [4, 5]]}, "points.0", "invalid_request"),
        ]
        for change, param, code in cases:
            resp = http.post(f"/v1/radiographs/images/{iid}/annotations", json={**base, **change})
            assert resp.status_code == 400, (change, resp.text)
            error = resp.json()["error"]
            assert (error["param"], error["code"]) == (param, code), (change, error)
        assert http.get(f"/v1/radiographs/images/{iid}/annotations").json()["data"] == []
        made = http.post(f"/v1/radiographs/images/{iid}/annotations", json=base).json()
        for change, param in (({"tooth": 19}, "tooth"), ({"points": [[0, 0], [900, 5]]},
                              "points.1"), ({"status": "maybe"}, "status")):  # fmt: skip
            resp = http.patch(f"/v1/radiographs/annotations/{made['id']}",
                              json={"version": 1, **change})  # fmt: skip
            assert resp.status_code == 400 and resp.json()["error"]["param"] == param
        clear = http.patch(f"/v1/radiographs/annotations/{made['id']}",
                           json={"version": 1, "tooth": None, "shape_ignored": 1})  # fmt: skip
        assert clear.status_code == 400  # unknown field
        [kept] = http.get(f"/v1/radiographs/images/{iid}/annotations").json()["data"]
        assert (kept["tooth"], kept["version"]) == (36, 1)
        assert (
            http.patch(
                f"/v1/radiographs/annotations/{made['id']}", json={"version": 1, "tooth": None}
            ).json()["tooth"]
            is None
        )
        assert http.delete(f"/v1/radiographs/annotations/{made['id']}").status_code == 204
        gone = http.delete(f"/v1/radiographs/annotations/{made['id']}")
        assert gone.status_code == 404
        bad_ids = http.get("/v1/radiographs/studies/not-an-id")
        assert bad_ids.status_code == 400


def test_without_a_vision_model_analysis_says_how_to_configure_one(
    server_factory: Any, tmp_path: Path
) -> None:
    from tests.clinical.imaging.conftest import radiograph_config

    server = server_factory(radiograph_config(tmp_path / "d", None))
    with server.http() as http:
        status = http.get("/v1/radiographs/status").json()
        assert status["vision_models"] == [] and "vision: true" in status["configure"]
        assert any(s["name"] == "JPEG2000Lossless" for s in status["dicom_transfer_syntaxes"])
        study = wait_ready(http, _upload(http, [("x.png", picture_bytes(anatomy(600, 500)))])
                           .json()["id"])  # fmt: skip
        resp = http.post(f"/v1/radiographs/images/{study['images'][0]['id']}/analyse")
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "no_vision_model"
        assert "vision: true" in resp.json()["error"]["message"]


@pytest.mark.parametrize("field", ["center", "width"])
def test_render_parameters_are_checked(radiograph_server: RunningServer, field: str) -> None:
    with radiograph_server.http() as http:
        resp = http.get(f"/v1/radiographs/images/ri_{'0' * 24}/render.png",
                        params={field: "abc"})  # fmt: skip
        assert resp.status_code == 400 and resp.json()["error"]["param"] == field


def test_processing_runs_on_the_shared_redis_queue(tmp_path: Path) -> None:
    """With Redis the processing job is a Redis Streams job that any instance or ``iatros
    worker`` may run; the files travel sealed and leave nothing behind in Redis."""
    import uuid

    import redis

    from iatros.api.app import create_app
    from iatros.config import load_settings
    from tests.clinical.imaging.conftest import radiograph_config

    url, prefix = "redis://127.0.0.1:6379/0", f"test:radiographs:{uuid.uuid4().hex[:10]}:"
    config = radiograph_config(tmp_path / "data", None)
    config.update(redis_url=url, secret_key="s" * 40, jobs={"prefix": prefix, "poll_s": 0.2})
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    client = redis.Redis.from_url(url)
    seen: list[bytes] = []
    try:
        assert server.app.state.services.jobs.kind == "redis"
        values = anatomy(900, 700, seed=2)
        data = dicom_bytes(values, patient={"PatientName": "ZEBULON^QUUX", "PatientID": "Q-1"})
        with server.http() as http:
            resp = _upload(http, [("a.dcm", data), ("b.png", picture_bytes(values))])
            assert resp.status_code == 202, resp.text
            for key in client.scan_iter(match=prefix + "*", count=1000):  # while it is queued
                if client.type(key) == b"hash":
                    seen.extend(v for v in client.hgetall(key).values())
            study = wait_ready(http, resp.json()["id"])
        assert [i["status"] for i in study["images"]] == ["ready", "ready"]
        assert any(len(value) > len(data) for value in seen)  # the sealed file was there
        assert all(b"ZEBULON^QUUX" not in value for value in seen)
    finally:
        server.stop()
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_cli_drives_the_server(radiograph_server: RunningServer, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from iatros.cli import app
    from tests.conftest import ADMIN_KEY

    runner = CliRunner()
    remote = ["--url", radiograph_server.url, "--key", ADMIN_KEY]
    scan = tmp_path / "pano.dcm"
    scan.write_bytes(dicom_bytes(anatomy(900, 600, seed=9)))
    made = runner.invoke(app, ["radiographs", "upload", str(scan), "--patient-id", "p-cli",
                               "--wait", "--json", *remote])  # fmt: skip
    assert made.exit_code == 0, made.output
    start = made.stdout.index('{\n  "id"')
    study = json.JSONDecoder().raw_decode(made.stdout[start:])[0]
    assert study["status"] == "ready"
    shown = runner.invoke(app, ["radiographs", "show", study["id"], *remote])
    assert study["images"][0]["id"] in shown.output and "900x600" in shown.output
    listed = runner.invoke(app, ["radiographs", "list", "--patient-id", "p-cli", *remote])
    assert study["id"] in listed.output
    pdf = tmp_path / "report.pdf"
    exported = runner.invoke(app, ["radiographs", "export", study["id"], "-o", str(pdf), *remote])
    assert exported.exit_code == 0 and pdf.read_bytes().startswith(b"%PDF")
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"not an image")
    refused = runner.invoke(app, ["radiographs", "upload", str(bad), "--patient-id", "p", *remote])
    assert refused.exit_code == 1 and "unsupported_media_type" in refused.output


def test_on_sqlite_and_postgresql(db_url: str, server_factory: Any, tmp_path: Path) -> None:
    """The store's blobs, deferred columns and tenant filter on both databases."""
    from tests.clinical.imaging.conftest import radiograph_config

    server = server_factory({**radiograph_config(tmp_path / "d", None), "database_url": db_url})
    values = anatomy(1000, 700, seed=12)
    with server.http() as http:
        resp = _upload(http, [("a.dcm", dicom_bytes(values)), ("b.png", picture_bytes(values))])
        assert resp.status_code == 202, resp.text
        study = wait_ready(http, resp.json()["id"])
        assert [i["status"] for i in study["images"]] == ["ready", "ready"]
        iid = study["images"][0]["id"]
        made = http.post(f"/v1/radiographs/images/{iid}/annotations", json={
            "shape": "polygon", "points": [[10, 10], [90, 15], [50, 80]], "finding": "bone_loss",
            "tooth": 85, "note": "é ü ✓"}).json()  # fmt: skip
        edited = http.patch(f"/v1/radiographs/annotations/{made['id']}",
                            json={"version": 1, "tooth": 84})  # fmt: skip
        assert edited.json()["tooth"] == 84 and edited.json()["version"] == 2
        shown = Image.open(
            io.BytesIO(
                http.get(f"/v1/radiographs/images/{iid}/render.png?center=1500&width=1000").content
            )
        )
        assert shown.size == (1000, 700)
        assert (
            http.post(
                f"/v1/radiographs/studies/{study['id']}/sign",
                json={"conclusion": "Bone loss at 84."},
            ).status_code
            == 200
        )
        bundle = http.get(f"/v1/radiographs/studies/{study['id']}/fhir").json()
        sites = [e["resource"]["bodySite"]["coding"][0]["code"] for e in bundle["entry"]
                 if e["resource"]["resourceType"] == "Observation"]  # fmt: skip
        assert sites == ["84"]
        key = http.post("/admin/keys", json={"tenant": "clinic-z", "role": "clinician"}).json()
    with server.http(key["key"]) as other:
        assert other.get(f"/v1/radiographs/studies/{study['id']}").status_code == 404


def test_a_study_whose_job_was_lost_fails_instead_of_processing_forever(
    radiograph_server: RunningServer,
) -> None:
    """The in-process queue loses its jobs in a restart: the study then says so."""
    with radiograph_server.http() as http:
        study = wait_ready(http, _upload(http, [("x.png", picture_bytes(anatomy(600, 500)))])
                           .json()["id"])  # fmt: skip
        db = Path(radiograph_server.settings.data_dir) / "iatros.db"
        with sqlite3.connect(db) as conn:  # as a restart mid-processing leaves it
            conn.execute("UPDATE radiograph_studies SET status = 'processing', job_id = "
                         "'job_00000000000000000000' WHERE id = ?", (study["id"],))  # fmt: skip
            conn.execute("UPDATE radiograph_images SET status = 'processing', progress = 0.3 "
                         "WHERE study_id = ?", (study["id"],))  # fmt: skip
        after = http.get(f"/v1/radiographs/studies/{study['id']}").json()
        assert after["status"] == "failed"
        [image] = after["images"]
        assert image["status"] == "failed" and "upload the file again" in image["error"]
