"""Documents on a phone (#25): no sideways scroll at 375 px, every control reachable, file
names readable (cards instead of a table on narrow screens)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.conftest import RunningServer
from tests.web.conftest import PHONE, shot, sign_in, wait_until


def test_documents_fit_a_phone(web_server: RunningServer, new_page: Callable[..., Any]) -> None:
    collection = "phone-" + uuid.uuid4().hex[:8]
    long_name = "post-operative-instructions-after-wisdom-tooth-extraction-2026.md"
    with web_server.http() as http:
        resp = http.post(
            f"/v1/knowledge/collections/{collection}/documents",
            files=[("files", (long_name, b"# Aftercare\n\nBite on the gauze.", "text/markdown"))],
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()["job_id"]
        wait_until(
            lambda: http.get(f"/v1/knowledge/jobs/{job}").json().get("state") == "done",
            timeout=30,
        )
    page = new_page(viewport=PHONE)
    sign_in(page, web_server)
    page.goto(web_server.url + "/#/documents")
    page.locator("#view-documents").wait_for(state="visible")
    page.locator("#collection-list .collection", has_text=collection).click()
    row = page.locator("#doc-rows tr", has_text=long_name[:20])
    row.wait_for()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    for selector in ("#dropzone", "#file-input-label, label[for=file-input]"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    delete = row.locator("button[aria-label^='Delete']")
    box = delete.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], box
    name_box = row.locator("td, th").first.bounding_box()
    assert name_box is not None and name_box["width"] > 150, name_box  # not a letter per line
    shot(page, "documents-phone", full_page=True)


def test_a_new_collection_survives_a_reload_and_can_be_deleted(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    name = "forms-" + uuid.uuid4().hex[:8]
    page = new_page()
    sign_in(page, web_server)
    page.goto(web_server.url + "/#/documents")
    page.locator("#collection-name").fill(name)
    page.locator("#collection-form button[type=submit]").click()
    page.locator("#docs-collection-title", has_text=name).wait_for()
    page.reload()
    entry = page.locator("#collection-list .collection", has_text=name)
    entry.wait_for()  # on the server now, not only in the page that created it
    entry.click()
    page.locator("#collection-delete").click()
    confirm = page.locator("#collection-actions .confirm-text")
    assert confirm.inner_text() == f"Delete “{name}” and its 0 documents?"
    assert page.evaluate("document.activeElement.textContent") == "Delete"
    page.keyboard.press("Enter")
    entry.wait_for(state="detached")
    with web_server.http() as http:
        names = [c["name"] for c in http.get("/v1/knowledge/collections").json()["data"]]
    assert name not in names


def test_a_platform_admin_picks_the_practice_whose_documents_to_manage(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    from tests.web.conftest import create_key

    practice = "practice-" + uuid.uuid4().hex[:6]
    clinician = create_key(web_server, tenant=practice, role="clinician")
    name = "leaflets-" + uuid.uuid4().hex[:6]
    page = new_page()
    sign_in(page, web_server)
    page.goto(web_server.url + "/#/documents")
    picker = page.locator("#docs-tenant")
    picker.wait_for()
    wait_until(lambda: practice in page.locator("#docs-tenant option").all_inner_texts())
    picker.select_option(practice)
    page.locator("#collection-name").fill(name)
    page.locator("#collection-form button[type=submit]").click()
    page.locator("#docs-collection-title", has_text=name).wait_for()
    page.locator("#file-input").set_input_files(
        [{"name": "hours.md", "mimeType": "text/markdown", "buffer": b"# Hours\n\nOpen 8 to 6."}]
    )
    row = page.locator("#upload-list .upload", has_text="hours.md")
    wait_until(lambda: row.get_attribute("data-state") in ("done", "error"), timeout=60)
    assert row.get_attribute("data-state") == "done", row.inner_text()
    with web_server.http(clinician["key"]) as http:  # the practice's clinicians see it
        docs = http.get(f"/v1/knowledge/collections/{name}/documents")
        assert docs.status_code == 200, docs.text
        assert [d["name"] for d in docs.json()["data"]] == ["hours.md"]
    with web_server.http() as http:  # and the admin's own tenant does not hold it
        own = [c["name"] for c in http.get("/v1/knowledge/collections").json()["data"]]
    assert name not in own
    page2 = new_page()
    sign_in(page2, web_server, clinician["key"])
    page2.goto(web_server.url + "/#/documents")
    page2.locator("#collection-list .collection", has_text=name).wait_for()
    assert page2.locator("#docs-tenant-field").is_hidden()
