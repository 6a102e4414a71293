"""Upload errors in the user's language (#25): the knowledge base names the kind of failure
(`code` + `params` beside its English `error`), and the Documents view says it in French
("Erreur : empty file" stayed in English before)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.conftest import RunningServer
from tests.web.conftest import sign_in, wait_until

FILES = [
    ({"name": "vide.txt", "mimeType": "text/plain", "buffer": b""}, "Le fichier est vide."),
    (
        {"name": "faux.pdf", "mimeType": "application/pdf", "buffer": b"pas un pdf"},
        "Ce fichier PDF est illisible : il est endommagé ou mal nommé.",
    ),
]


def test_the_api_names_the_kind_of_failure(web_server: RunningServer) -> None:
    collection = "codes-" + uuid.uuid4().hex[:8]
    with web_server.http() as http:
        resp = http.post(
            f"/v1/knowledge/collections/{collection}/documents",
            files=[("files", ("vide.txt", b"", "text/plain"))],
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]

        def finished() -> bool:
            state = http.get(f"/v1/knowledge/jobs/{job_id}").json().get("state")
            return state in ("done", "failed")

        wait_until(finished, timeout=30)
        job = http.get(f"/v1/knowledge/jobs/{job_id}").json()
    reports = [r for r in [*(job.get("files") or []), *(job.get("results") or [])]
               if isinstance(r, dict)]
    report = next(r for r in reports if r.get("filename") == "vide.txt")
    assert report["error"] == "empty file" and report["code"] == "empty_file", report


def test_upload_errors_are_said_in_french(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    sign_in(page, web_server, lang="fr")
    page.locator("#nav a[data-view=documents]").click()
    name = "erreurs-" + uuid.uuid4().hex[:8]
    page.locator("#collection-name").fill(name)
    page.locator("#collection-form button[type=submit]").click()
    page.locator("#docs-collection-title", has_text=name).wait_for()  # created
    page.locator("#file-input").set_input_files([f for f, _ in FILES])
    for file, expected in FILES:
        row = page.locator("#upload-list .upload", has_text=file["name"])
        wait_until(lambda row=row: row.get_attribute("data-state") in ("error", "done"), timeout=60)
        assert row.get_attribute("data-state") == "error", row.inner_text()
        text = row.inner_text()
        assert expected in text, text
        assert "empty file" not in text and "corrupt" not in text
