"""The clinical safety loop in a real browser: trust signals on answers, escalations passed
to a reviewer, the Reviews view, the reviewer's answer arriving in the asker's conversation,
the saved answer given to the next asker, and the Feedback view.

The server is real (uvicorn, SQLite, the knowledge base with the test embeddings); models
are the in-process ``test`` provider with fixed replies, one route per behaviour (a right
answer, a wrong number withheld, a wrong number flagged), as in tests/test_reviews.py.
Clinicians and reviewers use separate browser contexts, as separate people would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iatros.config import load_settings
from tests.conftest import ADMIN_KEY, RunningServer
from tests.web.conftest import ARTIFACTS, PHONE, create_key, shot, sign_in, wait_until

DOC = (
    "Fluoride toothpaste. Adults should brush twice daily with a toothpaste containing "
    "1350-1500 ppm fluoride. Children under 3 years should use a smear of toothpaste "
    "containing at least 1000 ppm fluoride. Amoxicillin must not be given to patients "
    "allergic to penicillin.\n"
)
QUESTION = "What fluoride toothpaste concentration should adults brush with twice daily?"
WRONG = "Adults should use a toothpaste with 500-1280 ppm fluoride [1]."
RIGHT = "Adults should brush twice daily with 1350-1500 ppm fluoride toothpaste [1]."
TENANT = "practice-ui"
SLA_S = 1.5


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose routes answer from the "handbook" collection, the handbook ingested."""
    data = tmp_path_factory.mktemp("reviews-ui")
    config = {
        "data_dir": str(data),
        "admin_key": ADMIN_KEY,
        "providers": {
            "right": {"type": "test", "reply": RIGHT, "chunk_words": 2},
            "wrong": {"type": "test", "reply": WRONG, "chunk_words": 2},
            "emb": {"type": "test"},
        },
        "deployments": {
            "right-d": {"provider": "right", "model": "r"},
            "wrong-d": {"provider": "wrong", "model": "w"},
            "t-embed": {"provider": "emb", "model": "e", "kind": "embedding"},
        },
        "models": {
            "right": {"deployments": ["right-d"], "knowledge": "handbook"},
            "wrong": {"deployments": ["wrong-d"], "knowledge": "handbook"},
            "wrong-flag": {
                "deployments": ["wrong-d"],
                "knowledge": "handbook",
                "verification": "flag",
            },
        },
        "embeddings": {"default_model": "t-embed"},
        "reviews": {"sla_hours": SLA_S / 3600},  # items are overdue within the test
    }
    from iatros.api.app import create_app

    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    clinician = create_key(server, tenant=TENANT, role="clinician")["key"]
    with server.http(clinician) as http:
        r = http.post(
            "/v1/knowledge/collections/handbook/documents",
            files={"files": ("fluoride.md", DOC.encode(), "text/markdown")},
        )
        assert r.status_code in (200, 201, 202), r.text
        job = r.json().get("job_id") or r.json().get("id")
        for _ in range(400):
            state = http.get(f"/v1/knowledge/jobs/{job}").json()
            if state.get("state") in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state.get("state") == "done", state
    yield server
    server.stop()


def keys(server: RunningServer) -> tuple[str, str]:
    """A clinician's key and a reviewer's (a clinician key given the reviewer capability)."""
    clinician = create_key(server, tenant=TENANT, role="clinician")["key"]
    reviewer = create_key(server, tenant=TENANT, role="clinician", capabilities=["reviewer"])
    return clinician, reviewer["key"]


def ask(page: Any, model: str, question: str) -> Any:
    page.locator("#model-select").select_option(model)
    page.locator("#prompt").fill(question)
    page.keyboard.press("Enter")
    answer = page.locator(".msg-assistant").last
    answer.locator("xpath=self::*[@data-status='done']").wait_for(timeout=30_000)
    return answer


def open_reviews(page: Any) -> None:
    page.locator("#nav a[data-view=reviews]").click()
    page.locator("#view-reviews").wait_for(state="visible")


def open_item(page: Any, question: str) -> Any:
    item = page.locator("#rev-list .rev-item", has_text=question)
    item.wait_for()
    item.locator("button").click()
    detail = page.locator("#rev-detail")
    detail.locator("#rev-detail-title", has_text=question).wait_for()
    return detail


def axe_serious(page: Any, axe_source: str, name: str) -> list[Any]:
    page.add_script_tag(content=axe_source)
    result = page.evaluate(
        """() => axe.run(document, {
             runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] },
             resultTypes: ['violations'],
           })"""
    )
    (ARTIFACTS / f"axe-{name}.json").write_text(json.dumps(result["violations"], indent=1))
    return [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:5])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_an_escalation_is_answered_by_a_reviewer_and_reaches_the_next_asker(
    clinic: RunningServer, new_page: Callable[..., Any], axe_source: str
) -> None:
    """The issue's "done when": out-of-scope question → reviewer → same conversation →
    saved to the knowledge base → the next clinician gets the reviewed answer."""
    clinician_key, reviewer_key = keys(clinic)
    question = "Which football club won the championship in 1998?"
    answer_text = "This is outside what the practice answers: ask at the front desk."

    clinician = new_page(bypass_csp=True)  # axe is injected as an inline script
    sign_in(clinician, clinic, clinician_key)
    assert not clinician.locator("#nav a[data-view=reviews]").is_visible()
    answer = ask(clinician, "right", question)
    asked = time.time()
    assert "Passed to a reviewer" in answer.locator(".review-state").inner_text()
    assert answer.locator(".escalate").is_visible()
    assert not answer.locator(".sources").is_visible()  # irrelevant passages are not shown
    shot(clinician, "review-asked")

    reviewer = new_page(bypass_csp=True)
    sign_in(reviewer, clinic, reviewer_key)
    badge = reviewer.locator("#rev-badge")
    badge.wait_for()
    assert int(badge.get_attribute("data-count") or 0) >= 1
    assert "waiting for a reviewer" in badge.inner_text()
    time.sleep(max(0.0, SLA_S + 0.5 - (time.time() - asked)))  # past its due time
    open_reviews(reviewer)
    row = reviewer.locator("#rev-list .rev-item", has_text=question)
    row.wait_for()
    assert "No source" in row.inner_text() and "Open" in row.inner_text()
    assert "overdue" in row.locator(".rev-overdue").inner_text()
    detail = open_item(reviewer, question)
    assert reviewer.evaluate("document.activeElement.id") == "rev-detail-title"
    assert "Candidate sources" in detail.inner_text()
    assert "overdue" in detail.locator(".rev-facts").inner_text()
    assert "handbook" in detail.locator(".rev-facts").inner_text()
    assert question in detail.locator(".rev-excerpt").inner_text()
    detail.locator("#rev-claim").click()
    wait_until(lambda: "Claimed by you" in detail.locator("#rev-claim").inner_text())
    detail.locator("#rev-answer").fill(answer_text)
    detail.locator("#rev-name").fill("Dr Martin")
    detail.locator("label[for=rev-save]").click()  # the label toggles the box
    assert detail.locator("#rev-save").is_checked()
    detail.locator("#rev-send").click()
    detail.locator(".rev-saved").wait_for()
    assert answer_text in detail.locator(".rev-answer").inner_text()
    assert "Answered" in detail.locator(".rev-facts").inner_text()
    assert "null" not in detail.inner_text() and "undefined" not in detail.inner_text()
    shot(reviewer, "review-answered")
    assert axe_serious(reviewer, axe_source, "reviews") == []
    assert "#/reviews/rev_" in reviewer.url  # the item's own address: a reload reopens it
    reviewer.reload()
    reviewer.locator("#rev-detail .rev-answer", has_text=answer_text).wait_for()
    reviewer.locator("#lang-select").select_option("fr")
    assert reviewer.locator("#rev-title").inner_text() == "Relectures"
    assert "Répondue" in reviewer.locator("#rev-detail .rev-facts").inner_text()
    assert "Aucune source" in reviewer.locator("#rev-detail .rev-facts").inner_text()
    reviewer.locator("#lang-select").select_option("en")

    # The answer arrives in the clinician's same conversation (polled every 5 s).
    arrived = clinician.locator(".msg-reviewer")
    arrived.wait_for(timeout=20_000)
    assert answer_text in arrived.inner_text()
    assert "Answered by Dr Martin" in arrived.inner_text()
    assert clinician.locator("#conv-list .conv-item").count() == 1
    assert clinician.locator("#messages .msg").count() == 3
    first = clinician.locator(".msg-assistant").first
    assert "A reviewer answered" in first.locator(".review-state").inner_text()
    shot(clinician, "review-arrived")
    assert axe_serious(clinician, axe_source, "chat-reviewed") == []
    clinician.reload()  # kept with the conversation
    clinician.locator("#identity").wait_for(state="visible")
    clinician.locator(".msg-reviewer", has_text=answer_text).wait_for()

    # The next clinician asking the same question gets the reviewed answer, reviewer as source.
    other_key, _ = keys(clinic)
    other = new_page()
    sign_in(other, clinic, other_key)
    again = ask(other, "right", question)
    assert again.locator(".md").inner_text().startswith(answer_text)
    trust = again.locator(".trust")
    assert trust.get_attribute("data-trust") == "reviewed"
    assert "reviewed answer: Dr Martin" in trust.inner_text()
    assert "reviewed-" in again.locator(".sources .source-doc").first.inner_text()
    assert again.locator(".review-state").count() == 0
    shot(other, "review-reused")


def test_trust_signals_and_a_thumbs_down_sent_to_a_reviewer(
    clinic: RunningServer, new_page: Callable[..., Any], axe_source: str
) -> None:
    clinician_key, reviewer_key = keys(clinic)
    page = new_page()
    sign_in(page, clinic, clinician_key)

    withheld = ask(page, "wrong", QUESTION)
    assert withheld.locator(".trust").get_attribute("data-trust") == "withheld"
    assert "withheld: passed to a reviewer" in withheld.locator(".trust").inner_text()
    details = withheld.locator(".unsupported-detail").all_inner_texts()
    assert set(details) == {"500", "1280"}
    said = withheld.locator(".unsupported").inner_text()
    assert "checked against source [1]" in said or "not found in the sources" in said
    assert "1280" not in withheld.locator(".md").inner_text()
    assert "Passed to a reviewer" in withheld.locator(".review-state").inner_text()
    assert "retrieval match" in withheld.locator(".badge-match").inner_text()

    flagged = ask(page, "wrong-flag", QUESTION)
    assert flagged.locator(".trust").get_attribute("data-trust") == "flagged"
    assert "unverified details flagged" in flagged.locator(".trust").inner_text()
    assert set(flagged.locator(".unsupported-detail").all_inner_texts()) == {"500", "1280"}
    assert flagged.locator(".review-state").count() == 0

    right = ask(page, "right", QUESTION)
    assert right.locator(".trust").inner_text().strip() == "verified against the sources"
    assert right.locator(".unsupported").count() == 0
    assert right.locator(".ask-human").is_visible()
    right.locator(".feedback-down").click()
    right.locator(".feedback-comment textarea").fill("Too vague for a patient leaflet")
    right.locator(".feedback-comment button[type=submit]").click()
    send = right.locator(".send-reviewer")
    send.wait_for()
    assert send.inner_text() == "Send to a reviewer"
    send.click()
    right.locator(".review-state").wait_for()
    assert "Passed to a reviewer" in right.locator(".review-state").inner_text()
    assert right.locator(".send-reviewer, .ask-human").count() == 0
    shot(page, "trust-signals", full_page=True)

    reviewer = new_page()
    sign_in(reviewer, clinic, reviewer_key)
    open_reviews(reviewer)
    reviewer.locator("#rev-reason").select_option("feedback")
    items = reviewer.locator("#rev-list .rev-item")
    wait_until(lambda: items.count() == 1)  # the filtered list has replaced the queue
    assert "Thumbs down" in items.inner_text() and QUESTION in items.inner_text()
    detail = open_item(reviewer, QUESTION)
    assert RIGHT in detail.locator(".rev-draft").inner_text()
    # Asked on a route grounded in "handbook": the answer can be saved there.
    assert "handbook" in detail.locator(".rev-facts").inner_text()
    assert detail.locator("#rev-save").is_enabled()
    # A withheld answer's item shows the draft and what the check found unsupported.
    with clinic.http(clinician_key) as http:
        body = {"model": "wrong", "messages": [{"role": "user", "content": QUESTION}]}
        withheld_id = http.post("/v1/chat/completions", json=body).json()["iatros"]["review"]["id"]
    reviewer.locator("#rev-reason").select_option("unsupported_detail")
    item = reviewer.locator(f"#rev-list .rev-item[data-id={withheld_id}]")
    item.wait_for()
    assert "Unsupported detail" in item.inner_text()
    item.locator("button").click()
    detail = reviewer.locator("#rev-detail")
    verification = detail.locator(".rev-section", has_text="Verification")
    assert "withheld" in verification.inner_text()
    assert {"500", "1280"} <= set(verification.locator(".detail-bad strong").all_inner_texts())
    assert WRONG in detail.locator(".rev-draft").inner_text()

    # Feedback reaches admins, with the request it rated.
    admin = new_page(bypass_csp=True)
    sign_in(admin, clinic, ADMIN_KEY)
    admin.locator("#nav a[data-view=feedback]").click()
    row = admin.locator("#fb-rows tr", has_text="Too vague for a patient leaflet")
    row.wait_for()
    assert row.get_attribute("data-rating") == "down"
    assert "verified" in row.locator(".fb-grounding").inner_text()
    assert "right" in row.inner_text()
    assert int(admin.locator("[data-kpi=down] .kpi-value").inner_text()) >= 1
    assert axe_serious(admin, axe_source, "feedback") == []
    admin.locator("#fb-rating").select_option("up")
    wait_until(lambda: admin.locator("#fb-rows tr", has_text="Too vague").count() == 0)
    shot(admin, "feedback")
    admin.locator("#nav a[data-view=dashboard]").click()
    escalated = admin.locator("[data-kpi=escalated] .kpi-value")
    escalated.wait_for()
    assert int(escalated.inner_text()) >= 1  # the withheld answer at least
    assert int(admin.locator("[data-kpi=feedback] .kpi-value").inner_text()) >= 1


def test_a_closed_item_says_so_and_the_queue_fits_a_phone(
    clinic: RunningServer, new_page: Callable[..., Any], axe_source: str
) -> None:
    clinician_key, reviewer_key = keys(clinic)
    question = "Who painted the ceiling of the Sistine Chapel between 1508 and 1512?"
    with clinic.http(clinician_key) as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "right", "messages": [{"role": "user", "content": question}]},
        )
        assert r.status_code == 200 and r.json()["iatros"]["escalate"] is True
        review_id = r.json()["iatros"]["review"]["id"]

    phone = new_page(viewport=PHONE, is_mobile=True, has_touch=True, bypass_csp=True)

    def fits() -> bool:
        return bool(phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))

    sign_in(phone, clinic, reviewer_key)
    open_reviews(phone)
    detail = open_item(phone, question)
    assert fits()
    box = detail.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    shot(phone, "phone-reviews", full_page=True)
    detail.locator(".rev-dismiss summary").tap()  # the dismiss form open too
    assert fits()
    assert axe_serious(phone, axe_source, "reviews-open-item") == []

    # Someone else answers meanwhile: sending now is refused (409), said plainly, and the
    # item shown as it is now.
    with clinic.http(ADMIN_KEY) as http:
        done = http.post(f"/v1/reviews/{review_id}/answer", json={"answer": "Michelangelo."})
        assert done.status_code == 200, done.text
    detail.locator("#rev-answer").fill("Raphael")
    detail.locator("#rev-send").tap()
    error = detail.locator("#rev-error")
    error.wait_for()
    assert "already closed" in error.inner_text()
    assert error.get_attribute("role") == "alert"
    assert "Michelangelo." in detail.locator(".rev-answer").inner_text()
    assert detail.locator("#rev-send").count() == 0
    assert "null" not in detail.inner_text()
    assert fits()
    shot(phone, "phone-review-closed", full_page=True)

    # An empty answer is refused before anything is sent.
    with clinic.http(clinician_key) as http:
        http.post("/v1/reviews", json={"question": "Can I call a human about this?"})
    phone.locator("#rev-filters button[type=submit]").tap()
    detail = open_item(phone, "Can I call a human about this?")
    detail.locator("#rev-send").tap()
    assert detail.locator("#rev-answer").get_attribute("aria-invalid") == "true"
    assert "Write an answer first" in detail.locator("#rev-error").inner_text()
    # Not asked against a collection: nothing to save the answer to.
    assert detail.locator("#rev-save").is_disabled()
