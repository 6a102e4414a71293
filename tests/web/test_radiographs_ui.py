"""The Radiographs view in Debian's Chromium, against a real server and a fake vision model
(a real HTTP server on loopback, :mod:`iatros.testing.fake_vision`).

The issue's "done when" in a browser: a generated DICOM with text burned into its pixels is
uploaded → its header and pixels are de-identified → two teeth are annotated (one with the
mouse, one with the keyboard only) → the AI analysis runs → one AI finding is accepted and
one rejected → the study is signed → the PDF report (rendered to an image) and the FHIR
Bundle hold exactly the accepted findings. Also: the viewer's controls, precise errors in
the interface's language, a 375 px phone with touch (no horizontal scroll, pinch zoom),
the view without a vision model, and axe-core.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from iatros.testing.fake_vision import FakeVision
from iatros.testing.radiographs import dicom_bytes, radiograph
from tests.conftest import RunningServer
from tests.web.conftest import ARTIFACTS, PHONE, shot, sign_in, wait_until, web_config

pytest.importorskip("pydicom")

WIDTH, HEIGHT = 1200, 800
# Two saturated rectangles: the fake vision model reports each as a finding (left to
# right: caries on 16, periapical lesion on 36), with the rectangle as its box.
MARKERS = [(250, 388, 40, 22), (820, 390, 36, 20)]  # between the rows of "teeth"
AI_ACCEPTED, AI_REJECTED = 16, 36


def generated_dicom(seed: int = 3) -> bytes:
    """A 12-bit intraoral-like DICOM with a name and a date burned into its pixels."""
    synthetic = radiograph(WIDTH, HEIGHT, texts=2, seed=seed, size=30)
    values = synthetic.values
    for x, y, w, h in MARKERS:
        values[y : y + h, x : x + w] = synthetic.max_value
    return dicom_bytes(values, pixel_spacing=(0.1, 0.1), window=(2048.0, 4096.0))


@pytest.fixture(scope="module")
def fake_vision() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


def _server(data: Path, config: dict[str, Any]) -> RunningServer:
    settings = load_settings(overrides={"data_dir": str(data), **config})
    server = RunningServer(settings, create_app(settings))
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def rad_server(
    fake_upstream: FakeUpstream, fake_vision: FakeVision, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server whose logical model ``radiology`` has a vision deployment (the fake)."""
    config = web_config(fake_upstream)
    config["providers"]["v"] = {"type": "openai", "base_url": fake_vision.base_url, "api_key": "v"}
    config["deployments"]["vision-a"] = {"provider": "v", "model": "vision-a", "vision": True}
    config["models"]["radiology"] = {"deployments": ["vision-a"]}
    server = _server(tmp_path_factory.mktemp("rad-web"), config)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_server(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server without any vision model (the default: none ships offline)."""
    server = _server(tmp_path_factory.mktemp("rad-plain"), web_config(fake_upstream))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def calm_vision(fake_vision: FakeVision) -> FakeVision:
    fake_vision.reset()
    return fake_vision


def open_view(page: Any, server: RunningServer, lang: str = "en") -> None:
    sign_in(page, server, lang=lang)
    page.locator("#nav a[data-view=radiographs]").click()
    page.locator("#view-radiographs").wait_for(state="visible")


def upload_in_ui(page: Any, patient: str, files: list[Path]) -> None:
    page.locator("#rad-patient").fill(patient)
    page.locator("#rad-files").set_input_files([str(f) for f in files])


def api_annotations(server: RunningServer, image_id: str) -> list[dict[str, Any]]:
    with server.http() as http:
        resp = http.get(f"/v1/radiographs/images/{image_id}/annotations")
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def study_via_api(
    server: RunningServer, patient: str, data: bytes, name: str = "pano.dcm"
) -> dict[str, Any]:
    """Upload through the API (for the tests that are about something else) and wait."""
    with server.http() as http:
        resp = http.post(
            "/v1/radiographs/studies",
            files={"files": (name, data, "application/octet-stream")},
            data={"patient_id": patient, "description": "Bitewings"},
        )
        assert resp.status_code == 202, resp.text
        study = resp.json()

        def ready() -> bool:
            nonlocal study
            study = http.get(f"/v1/radiographs/studies/{study['id']}").json()
            return all(i["status"] != "processing" for i in study["images"])

        wait_until(ready, timeout=60)
    assert study["images"][0]["status"] == "ready", study
    return dict(study)


def drop_files(page: Any, selector: str, files: list[tuple[str, bytes]]) -> None:
    """Drag and drop files onto ``selector`` (a DataTransfer built in the page)."""
    payload = [{"name": n, "b64": base64.b64encode(d).decode()} for n, d in files]
    page.evaluate(
        """([selector, files]) => {
          const dt = new DataTransfer();
          for (const f of files) {
            const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], f.name));
          }
          const zone = document.querySelector(selector);
          for (const type of ["dragenter", "dragover", "drop"]) {
            const init = { dataTransfer: dt, bubbles: true, cancelable: true };
            zone.dispatchEvent(new DragEvent(type, init));
          }
        }""",
        [selector, payload],
    )


def canvas_colour_pixels(page: Any, rgb_test: str) -> int:
    """How many canvas pixels pass a colour test (a JS expression over r, g, b)."""
    return int(
        page.evaluate(
            f"""() => {{
              const c = document.querySelector('#rad-canvas');
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4) {{
                const r = d[i], g = d[i + 1], b = d[i + 2];
                if ({rgb_test}) n++;
              }}
              return n;
            }}"""
        )
    )


AI_PINK = "r > 230 && g < 100 && b > 180"  # the AI layer's colour (#ff3fd0)
ORANGE = "r > 230 && g > 110 && g < 160 && b < 40"  # a clinician's caries (#ff8a00)


def view_transform(page: Any) -> tuple[float, float, float]:
    scale, tx, ty = (
        float(v) for v in page.locator("#rad-canvas").get_attribute("data-view").split()
    )
    return scale, tx, ty


def canvas_point(page: Any, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of the image point (x, y) under the viewer's current transform."""
    page.locator("#rad-canvas").scroll_into_view_if_needed()
    box = page.locator("#rad-canvas").bounding_box()
    scale, tx, ty = view_transform(page)
    return box["x"] + tx + x * scale, box["y"] + ty + y * scale


def no_horizontal_scroll(page: Any) -> bool:
    return bool(
        page.evaluate(
            "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )


def axe_serious(page: Any, axe_source: str, name: str) -> list[Any]:
    page.add_script_tag(content=axe_source)
    result = page.evaluate(
        # The view only: the header and navigation are test_app_ui's axe test.
        """() => axe.run('#view-radiographs', {
             runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
             resultTypes: ['violations'],
           })"""
    )
    (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(result["violations"], indent=1))
    assert len(result["passes"]) > 10  # the view was really examined
    return [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def pdf_page_image(pdf: Path, out: Path) -> Any:
    from PIL import Image

    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is missing: apt install poppler-utils")
    subprocess.run(
        ["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(pdf), str(out)],
        check=True,
        timeout=60,
    )
    return Image.open(out.with_suffix(".png")).convert("RGB")


def test_upload_annotate_ai_sign_then_report_and_fhir(
    rad_server: RunningServer,
    fake_vision: FakeVision,
    new_page: Callable[..., Any],
    axe_source: str,
    tmp_path: Path,
) -> None:
    page = new_page(accept_downloads=True, bypass_csp=True)
    open_view(page, rad_server)
    dicom = tmp_path / "intraoral.dcm"
    dicom.write_bytes(generated_dicom())

    # -- upload with the file picker; per-image progress until ready ----------------------
    page.locator("#rad-description").fill("Bitewings, right side")
    upload_in_ui(page, "pat-4711", [dicom])
    page.locator("#rad-uploads li[data-status=ready]").wait_for(timeout=60_000)
    page.locator("#rad-canvas[data-rendered]").wait_for()
    assert "Bitewings" in page.locator("#rad-study-title").inner_text()
    assert page.locator("#rad-studies li").count() == 1

    # -- de-identified: the header lost the patient's name, the burned-in text is masked ----
    with rad_server.http() as http:
        listed = http.get("/v1/radiographs/studies", params={"patient_id": "pat-4711"}).json()
    (study,) = listed["data"]
    image = study["images"][0]
    deid = image["deidentified"]
    assert int(page.locator("#rad-deid").get_attribute("data-masked")) >= 1
    assert re.search(
        r"\d+ regions? of burned-in text masked", page.locator("#rad-deid").inner_text()
    )
    assert deid["burned_in_text"]["regions_masked"]
    header_text = json.dumps(deid) + json.dumps(study)
    assert "DOE" not in header_text and "MRN-778899" not in header_text
    assert image["pixel_spacing_mm"] == [0.1, 0.1]
    assert "0.1 \u00d7 0.1 mm" in page.locator("#rad-scale").inner_text()
    shot(page, "radiographs-uploaded")

    # -- the viewer: zoom (buttons, wheel), window/level from the server, invert, measure ----
    before = page.locator("#rad-zoom-level").inner_text()
    page.locator("#rad-zoom-in").click()
    assert page.locator("#rad-zoom-level").inner_text() != before
    page.mouse.move(*canvas_point(page, WIDTH / 2, HEIGHT / 2))
    zoomed = page.locator("#rad-zoom-level").inner_text()
    page.mouse.wheel(0, 400)
    wait_until(lambda: page.locator("#rad-zoom-level").inner_text() != zoomed)
    # pan: arrows on the focused image, then a drag with the Move tool
    _, tx, ty = view_transform(page)
    page.locator("#rad-canvas").focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    _, tx2, ty2 = view_transform(page)
    assert tx2 < tx and ty2 < ty  # the image moves so that more of its right/bottom shows
    x0, y0 = canvas_point(page, WIDTH / 2, HEIGHT / 2)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 40, y0 + 25, steps=4)
    page.mouse.up()
    _, tx3, ty3 = view_transform(page)
    assert abs(tx3 - tx2 - 40) < 2 and abs(ty3 - ty2 - 25) < 2
    with page.expect_request(re.compile(r"render\.png\?center=\d+&width=\d+")) as windowed:
        page.locator("#rad-ww").focus()
        for _ in range(5):
            page.keyboard.press("ArrowLeft")
    assert "/render.png?" in windowed.value.url
    with page.expect_request(re.compile(r"render\.png\?.*invert=1")):
        page.locator("#rad-invert").click()
    assert page.locator("#rad-invert").get_attribute("aria-pressed") == "true"
    page.locator("#rad-reset").click()
    page.locator("#rad-canvas[data-rendered$='render.png']").wait_for()
    assert page.locator("#rad-ww").input_value() == "4096"
    # Shift + drag in the Move tool: window/level by the mouse (the server renders it)
    x0, y0 = canvas_point(page, 600, 400)
    with page.expect_request(re.compile(r"render\.png\?center=\d+&width=\d+")):
        page.keyboard.down("Shift")
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 - 120, y0 + 60, steps=6)
        page.mouse.up()
        page.keyboard.up("Shift")
    assert int(page.locator("#rad-ww").input_value()) < 4096
    assert int(page.locator("#rad-wc").input_value()) > 2048
    page.locator("#rad-reset").click()
    page.locator("#rad-canvas[data-rendered$='render.png']").wait_for()
    page.locator("#rad-tool-measure").click()
    x0, y0 = canvas_point(page, 100, 100)
    x1, y1 = canvas_point(page, 400, 500)  # 300 x 400 px at 0.1 mm: 50 mm
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    assert re.search(r"Length: 50(\.0)? mm", page.locator("#rad-measure").inner_text())

    # -- tooth 46 with the mouse: a box; tooth 19 is refused before anything is sent --------
    page.locator("#rad-tool-box").click()
    x0, y0 = canvas_point(page, 520, 300)
    x1, y1 = canvas_point(page, 600, 380)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.locator("#rad-ann-form").wait_for(state="visible")
    page.locator("#rad-finding").select_option("caries")
    page.locator("#rad-tooth").fill("19")
    page.locator("#rad-form-save").click()
    error = page.locator("#rad-tooth-error")
    error.wait_for()
    assert "19 is not an FDI tooth number" in error.inner_text()
    assert page.locator("#rad-tooth").get_attribute("aria-invalid") == "true"
    assert api_annotations(rad_server, image["id"]) == []
    page.locator("#rad-tooth").fill("46")
    page.locator("#rad-note").fill("Distal caries under the old filling")
    page.locator("#rad-form-save").click()
    page.locator("#rad-ann-list li[data-tooth='46']").wait_for()
    wait_until(lambda: canvas_colour_pixels(page, ORANGE) > 50)  # drawn in the caries colour

    # -- tooth 21 with the keyboard only: polygon tool, cross-hair, Space, Enter ------------
    page.locator("#rad-tool-polygon").focus()
    page.keyboard.press("Enter")
    assert page.locator("#rad-tool-polygon").get_attribute("aria-pressed") == "true"
    page.locator("#rad-canvas").focus()
    for keys in (["ArrowLeft"] * 3, ["Shift+ArrowUp"] * 2, ["Shift+ArrowRight"] * 2):
        for key in keys:
            page.keyboard.press(key)
        page.keyboard.press("Space")
    assert "Point 3 placed" in page.locator("#rad-hint").inner_text()
    page.keyboard.press("Enter")
    page.locator("#rad-ann-form").wait_for(state="visible")
    assert page.evaluate("document.activeElement.id") == "rad-finding"
    page.keyboard.press("End")  # "Other"
    page.keyboard.press("ArrowUp")  # "Bone loss"
    page.keyboard.press("ArrowUp")  # "Restoration"
    page.keyboard.press("Tab")
    page.keyboard.type("21")
    page.keyboard.press("Enter")
    page.locator("#rad-ann-list li[data-tooth='21']").wait_for()
    mine = {a["tooth"]: a for a in api_annotations(rad_server, image["id"])}
    assert mine[46]["shape"] == "box" and mine[46]["finding"] == "caries"
    assert mine[21]["shape"] == "polygon" and len(mine[21]["points"]) == 3
    assert mine[21]["finding"] == "restoration" and mine[21]["source"] == "clinician"
    assert page.evaluate("document.activeElement.id") == "rad-canvas"  # ready for the next
    # selecting: from the list (drawn in the selection colour) and by clicking the shape
    yellow = "r > 240 && g > 200 && b < 40"
    page.locator(f"#rad-ann-{mine[46]['id']}-title").click()
    assert page.locator("#rad-ann-list li.selected").get_attribute("data-tooth") == "46"
    wait_until(lambda: canvas_colour_pixels(page, yellow) > 50)
    page.locator(f"#rad-ann-{mine[46]['id']}-title").click()  # again: unselected
    page.locator("#rad-tool-pan").click()
    page.mouse.click(*canvas_point(page, 580, 360))  # in 46 and in 21: the smaller, 46
    page.locator("#rad-ann-list li.selected[data-tooth='46']").wait_for()
    page.mouse.click(*canvas_point(page, 1100, 100))  # nothing there
    wait_until(lambda: page.locator("#rad-ann-list li.selected").count() == 0)
    page.locator("#rad-ann-list li[data-tooth='46'] [data-action=edit]").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "rad-finding"
    page.keyboard.press("Escape")  # closes the form, back to the annotation in the list
    assert page.locator("#rad-ann-form").is_hidden()
    assert page.evaluate("document.activeElement.id") == f"rad-ann-{mine[46]['id']}-title"

    # -- the AI second opinion: a separate, labelled layer --------------------------------
    assert canvas_colour_pixels(page, AI_PINK) == 0
    page.locator("#rad-analyse").click()
    page.locator("#rad-ann-list li.rad-ann-ai").nth(1).wait_for(timeout=30_000)
    assert fake_vision.served >= 1
    ai = page.locator("#rad-ann-list li.rad-ann-ai")
    assert ai.count() == 2
    assert "2 AI findings to review" in page.locator("#rad-ai-status").inner_text()
    first = page.locator(f"#rad-ann-list li.rad-ann-ai[data-tooth='{AI_ACCEPTED}']")
    assert "AI" in first.locator(".rad-ai-badge").inner_text()
    assert "confidence 82 %" in first.inner_text()
    wait_until(lambda: canvas_colour_pixels(page, AI_PINK) > 50)  # its own colour and badge
    shot(page, "radiographs-ai-layer")
    assert axe_serious(page, axe_source, "radiographs") == []

    first.locator("[data-action=accept]").focus()
    page.keyboard.press("Enter")  # by keyboard too
    accepted = page.locator(
        f"#rad-ann-list li.rad-ann-ai[data-tooth='{AI_ACCEPTED}'][data-status=accepted]"
    )
    accepted.wait_for()
    accepted.locator("[data-action=edit]").click()  # the clinician's words on an AI finding
    assert "Edit the AI finding" in page.locator("#rad-form-title").inner_text()
    assert page.locator("#rad-tooth").input_value() == str(AI_ACCEPTED)
    page.locator("#rad-note").fill("Confirmed clinically")
    page.locator("#rad-form-save").click()
    accepted.locator(".rad-note", has_text="Confirmed clinically").wait_for()
    page.locator(
        f"#rad-ann-list li.rad-ann-ai[data-tooth='{AI_REJECTED}'] [data-action=reject]"
    ).click()
    page.locator(
        f"#rad-ann-list li.rad-ann-ai[data-tooth='{AI_REJECTED}'][data-status=rejected]"
    ).wait_for()
    states = {
        (a["source"], a["tooth"]): a["status"] for a in api_annotations(rad_server, image["id"])
    }
    assert states == {
        ("clinician", 46): "accepted",
        ("clinician", 21): "accepted",
        ("ai", AI_ACCEPTED): "accepted",
        ("ai", AI_REJECTED): "rejected",
    }

    # -- sign: the study becomes read only ------------------------------------------------
    page.locator("#rad-sign-btn").click()
    assert page.locator("#rad-sign-error").inner_text() == "Write the conclusion before signing."
    page.locator("#rad-signer").fill("Dr Ada Molar")
    page.locator("#rad-conclusion").fill("Caries 46 and 16 to treat; restoration 21 sound.")
    page.locator("#rad-sign-btn").click()
    page.locator("#rad-study-state[data-status=signed]").wait_for()
    assert page.locator("#rad-tool-box").is_hidden() and page.locator("#rad-tool-point").is_hidden()
    assert page.locator("#rad-analyse").is_hidden()
    assert page.locator("#rad-ann-list [data-action]").count() == 0
    assert page.locator("#rad-tool-measure").is_visible()  # looking is still allowed
    with rad_server.http() as http:
        refused = http.patch(
            f"/v1/radiographs/annotations/{mine[46]['id']}",
            json={"version": mine[46]["version"], "tooth": 47},
        )
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "study_signed"
    shot(page, "radiographs-signed")

    # -- the PDF: page 1 as an image is not blank and shows the drawn annotations ----------
    with page.expect_download() as pdf_download:
        page.locator("#rad-pdf").click()
    pdf = tmp_path / "report.pdf"
    pdf_download.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    picture = np.asarray(pdf_page_image(pdf, ARTIFACTS / "radiographs-report-page1"))
    grey = picture.mean(axis=2)
    assert grey.std() > 10, "page 1 of the report is blank"
    assert (grey < 128).mean() > 0.01, "no radiograph on page 1"
    r, g, b = (picture[..., i].astype(int) for i in range(3))
    coloured = (np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)) > 120
    assert coloured.sum() > 30, "no annotation colours drawn on page 1"
    if shutil.which("pdftotext"):
        text = subprocess.run(
            ["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True
        ).stdout.lower()
        for tooth in ("46", "21", str(AI_ACCEPTED)):
            assert re.search(rf"\b{tooth}\b", text), tooth
        assert "periapical" not in text  # the rejected AI finding stays out
        assert "dr ada molar" in text and "confirmed clinically" in text

    # -- the FHIR Bundle: an Observation for each accepted finding, bodySite = the tooth ---
    with page.expect_download() as fhir_download:
        page.locator("#rad-fhir").click()
    fhir_path = tmp_path / "report.fhir.json"
    fhir_download.value.save_as(fhir_path)
    bundle = json.loads(fhir_path.read_text())
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    resources = [e["resource"] for e in bundle["entry"]]
    kinds = [r["resourceType"] for r in resources]
    assert "ImagingStudy" in kinds and "DiagnosticReport" in kinds
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    sites = [{c["code"] for c in o["bodySite"]["coding"]} for o in observations]
    assert all(len(codes) == 1 for codes in sites), sites  # one tooth, in one or two systems
    teeth = sorted(int(next(iter(codes))) for codes in sites)
    assert teeth == sorted([46, 21, AI_ACCEPTED])
    assert "periapical" not in json.dumps(observations).lower()


def test_phone_width_touch_tap_and_pinch(
    rad_server: RunningServer, new_page: Callable[..., Any], axe_source: str
) -> None:
    study = study_via_api(rad_server, "pat-phone", generated_dicom(seed=5))
    page = new_page(viewport=PHONE, has_touch=True, is_mobile=True, bypass_csp=True)
    open_view(page, rad_server)
    assert no_horizontal_scroll(page)
    page.locator("#rad-patient").fill("pat-phone")
    page.locator("#rad-patient-form button[type=submit]").tap()
    page.locator(f"#rad-studies li[data-study='{study['id']}'] button").tap()
    page.locator("#rad-canvas[data-rendered]").wait_for()
    assert no_horizontal_scroll(page)
    shot(page, "radiographs-phone", full_page=True)

    # two fingers apart: a pinch zooms in around them
    before = view_transform(page)[0]
    page.locator("#rad-canvas").scroll_into_view_if_needed()
    box = page.locator("#rad-canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)  # real touch input: Playwright has one finger

    def touch(kind: str, spread: float) -> None:
        points = [] if kind == "touchEnd" else [
            {"x": cx - spread, "y": cy, "id": 1}, {"x": cx + spread, "y": cy, "id": 2}
        ]  # fmt: skip
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 20)
    for spread in range(30, 90, 10):
        touch("touchMove", spread)
    touch("touchEnd", 0)
    wait_until(lambda: view_transform(page)[0] > before * 3)

    # a tap with the point tool places a point; the form fits the phone
    page.locator("#rad-fit").tap()
    page.locator("#rad-tool-point").tap()
    x, y = canvas_point(page, 600, 400)
    page.touchscreen.tap(x, y)
    page.locator("#rad-ann-form").wait_for(state="visible")
    assert no_horizontal_scroll(page)
    page.locator("#rad-tooth").fill("85")
    page.locator("#rad-form-save").tap()
    item = page.locator("#rad-ann-list li[data-tooth='85']")
    item.wait_for()
    assert no_horizontal_scroll(page)
    (point,) = api_annotations(rad_server, study["images"][0]["id"])
    assert point["shape"] == "point" and abs(point["points"][0][0] - 600) < 6

    # redraw it elsewhere (Edit, then Redraw), then delete it (a second tap confirms)
    item.locator("[data-action=edit]").tap()
    page.locator("#rad-form-redraw").tap()
    page.touchscreen.tap(*canvas_point(page, 300, 200))
    wait_until(
        lambda: (
            abs(api_annotations(rad_server, study["images"][0]["id"])[0]["points"][0][0] - 300) < 6
        )
    )
    item.locator("[data-action=delete]").tap()
    item.locator("[data-action=confirm_delete]").tap()
    page.locator("#rad-ann-list .rad-ann-empty").wait_for()
    assert api_annotations(rad_server, study["images"][0]["id"]) == []
    assert axe_serious(page, axe_source, "radiographs-phone") == []


def test_without_a_vision_model_the_view_says_how_to_configure_one_in_french(
    plain_server: RunningServer, new_page: Callable[..., Any], tmp_path: Path
) -> None:
    page = new_page()
    open_view(page, plain_server, lang="fr")
    assert page.locator("#rad-title").inner_text() == "Radiographies"

    # a corrupt DICOM: refused with a precise message in French, nothing stored
    corrupt = tmp_path / "abime.dcm"
    good = generated_dicom(seed=7)
    corrupt.write_bytes(good[: len(good) // 3])
    upload_in_ui(page, "pat-fr", [corrupt])
    status = page.locator("#rad-upload-status[data-kind=error]")
    status.wait_for(timeout=30_000)
    assert status.inner_text().startswith("abime.dcm : le fichier DICOM est endommagé")
    assert "rien n'a été enregistré" in page.locator("#rad-uploads").inner_text()
    with plain_server.http() as http:
        listed = http.get("/v1/radiographs/studies", params={"patient_id": "pat-fr"}).json()
    assert listed["data"] == []

    # a batch dropped on the drop zone: a PNG (no pixel spacing) and a DICOM, one study
    from iatros.testing.radiographs import picture_bytes

    synthetic = radiograph(WIDTH, HEIGHT, texts=0, seed=8)
    drop_files(page, "#rad-drop", [("pano.png", picture_bytes(synthetic.values)), ("b.dcm", good)])
    page.locator("#rad-uploads li[data-status=ready]").nth(1).wait_for(timeout=60_000)
    assert page.locator("#rad-uploads li[data-status=ready]").count() == 2
    assert "Déposé et anonymisé" in page.locator("#rad-upload-status").inner_text()
    page.locator("#rad-canvas[data-rendered]").wait_for()
    assert page.locator("#rad-thumbs li").count() == 2
    assert (
        page.locator("#rad-thumbs li img").first.get_attribute("src").startswith("data:image/png")
    )
    # no vision model, so no button but the way to configure one
    notice = page.locator("#rad-ai-none")
    notice.wait_for()
    assert "Aucun modèle de vision" in notice.inner_text()
    assert "vision: true" in notice.inner_text()
    assert page.locator("#rad-analyse").count() == 1 and page.locator("#rad-analyse").is_hidden()
    # no pixel spacing, said plainly; lengths in pixels
    assert "pas en millimètres" in page.locator("#rad-scale").inner_text()
    page.locator("#rad-canvas").focus()
    page.keyboard.press("m")
    page.keyboard.press("Space")
    for _ in range(4):
        page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Space")
    assert re.search(r"Longueur : \d+ px \(pixels", page.locator("#rad-measure").inner_text())
    shot(page, "radiographs-no-vision-fr")

    # switching the language relabels what the view built (list, notices, measurements)
    page.locator("#lang-select").select_option("en")
    assert "No vision model is configured" in notice.inner_text()
    assert "To review" in page.locator("#rad-studies").inner_text()
    assert "2 images" in page.locator("#rad-studies").inner_text()
    assert "not millimetres" in page.locator("#rad-scale").inner_text()
    assert page.locator("#rad-tool-measure").inner_text() == "Measure"


def test_an_unreadable_ai_answer_is_shown_as_raw_text_and_adds_nothing(
    rad_server: RunningServer, fake_vision: FakeVision, new_page: Callable[..., Any]
) -> None:
    study = study_via_api(rad_server, "pat-raw", generated_dicom(seed=9))
    fake_vision.reset(invalid="always")  # prose instead of JSON, also after the retry
    page = new_page()
    open_view(page, rad_server)
    page.locator("#rad-patient").fill("pat-raw")
    page.keyboard.press("Enter")
    page.locator(f"#rad-studies li[data-study='{study['id']}'] button").click()
    page.locator("#rad-canvas[data-rendered]").wait_for()
    page.locator("#rad-analyse").click()
    page.locator("#rad-ai-status[data-kind=error]").wait_for(timeout=30_000)
    assert "could not be read as findings" in page.locator("#rad-ai-status").inner_text()
    raw = page.locator("#rad-ai-raw")
    assert raw.is_visible()
    raw.locator("summary").click()
    assert "cavity on the upper right first molar" in page.locator("#rad-ai-raw-text").inner_text()
    assert page.locator("#rad-ann-list li.rad-ann-ai").count() == 0
    assert api_annotations(rad_server, study["images"][0]["id"]) == []
    assert fake_vision.served == 2  # asked once more after the first unreadable answer


def test_the_browser_checks_tooth_numbers_like_the_server(
    rad_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    from iatros.clinical.imaging.findings import valid_tooth

    page = new_page()
    page.goto(rad_server.url + "/")
    accepted = page.evaluate(
        """async () => {
          const { validTooth } = await import('/static/js/radiographs.js');
          return [...Array(100).keys()].filter((n) => validTooth(n));
        }"""
    )
    assert accepted == [n for n in range(100) if valid_tooth(n)]
    assert len(accepted) == 4 * 8 + 4 * 5
