"""The Scribe view in Debian's Chromium: record a synthesized consultation through a fake
microphone (MediaRecorder, level meter, timer) → transcript beside the draft note → click
a statement to see its lines → edit → sign → the PDF (looked at as an image) and the FHIR
document (validated by two libraries) downloaded; then an uploaded recording."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.conftest import speech_config
from tests.clinical.speech import needs_espeak, speak, transcode
from tests.conftest import RunningServer
from tests.web.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, DESKTOP, shot, sign_in

pytestmark = needs_espeak

REPLY = (
    "The patient has pain in the lower left tooth with cold drinks [1]. "
    "Ibuprofen 400 milligrams three times a day [2]. The patient plays golf."
)
SPOKEN = (
    "My lower left tooth hurts when I drink something cold. "
    "Take ibuprofen four hundred milligrams three times a day."
)


@pytest.fixture(scope="module")
def scribe_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("scribe-web")
    config = speech_config(data)
    config["providers"]["t"]["reply"] = REPLY
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "consultation.wav"
    path.write_bytes(speak(SPOKEN, speed=140))
    return path


@pytest.fixture()
def mic_page(playwright_browser: Any, speech_wav: Path) -> Iterator[Any]:
    """A page whose microphone plays the synthesized consultation (Chromium's fake device)."""
    browser = playwright_browser.browser_type.launch(
        executable_path=CHROMIUM,
        args=[
            *CHROMIUM_ARGS,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_wav}%noloop",
            "--autoplay-policy=no-user-gesture-required",
        ],
    )
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True, service_workers="block")
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    with contextlib.suppress(Exception):
        context.close()
    browser.close()
    assert not errors, errors


def open_scribe(page: Any, server: RunningServer) -> None:
    sign_in(page, server)
    page.locator("#nav a[data-view=scribe]").click()
    page.locator("#view-scribe").wait_for(state="visible")


def test_record_draft_edit_sign_and_download(
    scribe_web: RunningServer, mic_page: Any, tmp_path: Path
) -> None:
    page = mic_page
    open_scribe(page, scribe_web)
    page.locator("#scribe-template").select_option("dental")
    page.locator("#scribe-clinician").fill("Dr Ada Molar")
    page.locator("#scribe-patient-id").fill("p-77")
    page.locator("#scribe-record").click()
    page.locator("#scribe-record[data-recording='1']").wait_for()
    page.locator("#scribe-level[data-active='1']").wait_for(timeout=10_000)  # the meter moves
    deadline = time.time() + 20
    while page.locator("#scribe-timer").inner_text() < "00:08":  # the speech lasts ~7 s
        assert time.time() < deadline, "the timer does not run"
        time.sleep(0.25)
    shot(page, "scribe-recording")
    page.locator("#scribe-record").click()
    page.locator("#scribe-result").wait_for(state="visible", timeout=120_000)

    transcript = page.locator("#scribe-transcript").inner_text().lower()
    assert "ibuprofen" in transcript and "cold" in transcript
    assert "draft" in page.locator("#scribe-state").inner_text().lower()
    first = page.locator("#scribe-note .stmt").first
    first.click()
    highlighted = page.locator("#scribe-transcript li.hl")
    assert highlighted.count() >= 1
    assert "cold" in highlighted.first.inner_text().lower()
    assert page.locator("#scribe-note li.unsupported").count() >= 1  # "plays golf"
    shot(page, "scribe-draft")

    page.locator("#scribe-edit").click()
    editor = page.locator("#scribe-note .sec-edit[data-section='advice']")
    editor.fill("Avoid very cold drinks for a week.")
    page.locator("#scribe-save").click()
    page.locator("#scribe-note section[data-section='advice'] .stmt",
                 has_text="Avoid very cold drinks").wait_for()  # fmt: skip

    page.locator("#scribe-sign").click()
    page.locator("#scribe-state[data-status='signed']").wait_for()
    assert page.locator("#scribe-sign").is_hidden() and page.locator("#scribe-edit").is_hidden()
    assert page.locator("#scribe-amend").is_visible()

    with page.expect_download() as pdf_download:
        page.locator("#scribe-pdf").click()
    pdf = tmp_path / "note.pdf"
    pdf_download.value.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    with page.expect_download() as fhir_download:
        page.locator("#scribe-fhir").click()
    fhir_path = tmp_path / "note.fhir.json"
    fhir_download.value.save_as(fhir_path)
    bundle = json.loads(fhir_path.read_text())
    from fhir.resources.R4B.bundle import Bundle
    from fhirclient.models.bundle import Bundle as ClientBundle

    Bundle.model_validate(bundle)
    ClientBundle(bundle, strict=True)
    composition = bundle["entry"][0]["resource"]
    assert composition["status"] == "final" and composition["attester"][0]["mode"] == "legal"
    shot(page, "scribe-signed")
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "70", "-f", "1", "-l", "1", str(pdf),
                        str(ARTIFACTS / "scribe-pdf-page")], check=True)  # fmt: skip
        assert list(ARTIFACTS.glob("scribe-pdf-page*.png"))


def test_upload_a_recording_and_a_bad_file(
    scribe_web: RunningServer, mic_page: Any, speech_wav: Path, tmp_path: Path
) -> None:
    page = mic_page
    open_scribe(page, scribe_web)
    m4a = tmp_path / "visit.m4a"
    m4a.write_bytes(transcode(speech_wav.read_bytes(), "ipod", "aac"))
    bad = tmp_path / "visit.mp3"
    bad.write_bytes(b"ID3\x04\x00\x00" + b"\x13" * 400)
    page.locator("#scribe-file").set_input_files(str(bad))
    page.locator("#scribe-status[data-kind='error']").wait_for(timeout=30_000)
    assert "decoded" in page.locator("#scribe-status").inner_text()
    page.locator("#scribe-file").set_input_files(str(m4a))
    page.locator("#scribe-result").wait_for(state="visible", timeout=120_000)
    assert "ibuprofen" in page.locator("#scribe-transcript").inner_text().lower()


@pytest.fixture(scope="module")
def chunked_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Every recording goes through the background job, in 10-second chunks."""
    config = speech_config(tmp_path_factory.mktemp("scribe-chunked"))
    config["providers"]["t"]["reply"] = REPLY
    config["scribe"] = {"background_after_s": 0, "chunk_s": 10, "chunk_search_s": 2}
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    server.wait_ready()
    yield server
    server.stop()


def test_a_long_recording_shows_its_progress(
    chunked_web: RunningServer, mic_page: Any, tmp_path: Path
) -> None:
    from tests.clinical.speech import dialogue_wav

    page = mic_page
    open_scribe(page, chunked_web)
    audio, _ = dialogue_wav([
        ("patient", "My lower left tooth hurts when I drink something cold."),
        ("doctor", "How long has this been going on, and does it wake you at night?"),
        ("patient", "About a week now, and yes, sometimes it wakes me up."),
        ("doctor", "Take ibuprofen four hundred milligrams three times a day."),
        ("doctor", "We will look at it with an x-ray and probably do a filling next week."),
    ])  # fmt: skip
    path = tmp_path / "long-visit.wav"
    path.write_bytes(audio)
    page.locator("#scribe-file").set_input_files(str(path))
    bar = page.locator("#scribe-progress[aria-valuenow]")
    bar.wait_for(state="visible", timeout=30_000)
    assert bar.get_attribute("aria-valuemin") == "0" and bar.get_attribute("aria-valuemax") == "100"
    assert "chunk" in (bar.get_attribute("aria-valuetext") or "")
    assert "chunk" in page.locator("#scribe-status").inner_text()
    shot(page, "scribe-transcribing")
    page.locator("#scribe-result").wait_for(state="visible", timeout=120_000)
    assert page.locator("#scribe-progress").is_hidden()
    assert "ibuprofen" in page.locator("#scribe-transcript").inner_text().lower()
    assert "draft" in page.locator("#scribe-state").inner_text().lower()
