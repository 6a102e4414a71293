"""The README's picture of the web app, made by a browser test rather than by hand.

A practice's document is uploaded, a question is asked in the chat with that collection,
and the answer shows its verification and its source: the screen the README shows. It
runs as a test every time (the picture goes to the artifacts); with
``IATROS_TEST_README_SCREENSHOT=1`` it also rewrites ``docs/assets/web-app.png``, the
picture committed for the README (``tests/test_readme.py`` checks it is there and used).
The model is the in-process ``test`` provider with a fixed, correct answer: the picture
shows the app, not a model's quality.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_KEY, RunningServer, test_model_config
from tests.web.conftest import shot, sign_in

PICTURE = Path(__file__).resolve().parents[2] / "docs" / "assets" / "web-app.png"
DOCUMENT = (
    b"# Fluoride toothpaste\n\n"
    b"Adults should use a toothpaste containing 1350 to 1500 ppm fluoride, twice a day.\n"
)
ANSWER = "Adults should use a toothpaste containing 1350 to 1500 ppm fluoride, twice a day [1]."
QUESTION = "Which fluoride toothpaste should adults use?"


def _upload(server: RunningServer) -> None:
    with server.http(ADMIN_KEY) as http:
        upload = http.post(
            "/v1/knowledge/collections/clinic-docs/documents",
            files={"files": ("fluoride.md", DOCUMENT)},
        )
        assert upload.status_code == 202, upload.text
        for _ in range(200):
            job = http.get(f"/v1/knowledge/jobs/{upload.json()['job_id']}").json()
            if job["state"] in ("done", "failed"):
                assert job["state"] == "done", job
                return
            time.sleep(0.05)
    raise AssertionError("the upload did not finish")


def test_the_readme_picture_shows_a_verified_grounded_answer(
    server_factory: Callable[..., RunningServer], tmp_path: Path, new_page: Callable[..., Any]
) -> None:
    config = test_model_config(tmp_path / "data")
    config["admin_key"] = ADMIN_KEY
    config["providers"]["t"] = {"type": "test", "reply": ANSWER}
    config["knowledge"] = {"min_score": 0.3}  # the test embedder's scores run low
    server = server_factory(config)
    _upload(server)
    page = new_page(viewport={"width": 1280, "height": 720})
    sign_in(page, server)
    page.locator("#nav a[data-view=chat]").click()
    page.locator("#collection-field").wait_for(state="visible")
    page.locator("#collection-select").select_option("clinic-docs")
    page.locator("#prompt").fill(QUESTION)
    page.keyboard.press("Enter")
    answer = page.locator(".msg-assistant").last
    answer.locator("xpath=self::*[@data-status='done']").wait_for(timeout=30_000)
    assert answer.locator(".trust").get_attribute("data-trust") == "verified"
    assert "fluoride.md" in answer.locator(".sources .source-doc").first.inner_text()
    page.locator("#prompt").blur()
    shot(page, "readme-web-app")
    if os.environ.get("IATROS_TEST_README_SCREENSHOT") == "1":
        page.screenshot(path=str(PICTURE))
