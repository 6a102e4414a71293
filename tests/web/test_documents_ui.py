"""Documents and answers with sources in a real browser.

The knowledge API's contract is exercised here in two ways: against the real API (a server
whose knowledge API does not answer fails those tests: it is always mounted), and against
the same contract served by Playwright's network interception, so the documents screen,
sources, citations and the "I don't know" state are tested in states the real API reaches
only slowly or rarely.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer
from tests.web.conftest import ARTIFACTS, shot, sign_in, wait_until

HOSTILE_DOC = '<img src=x onerror="window.__pwned=1">protocol.md'
HOSTILE_SNIPPET = (
    "Amoxicillin 50 mg/kg/day in two doses <script>window.__pwned=2</script> "
    "[details](javascript:window.__pwned=3) <b onmouseover=window.__pwned=4>bold</b>"
)


@dataclass
class FakeKnowledge:
    """The knowledge API contract, served from the test (see the module docstring)."""

    documents: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            "protocols": [
                {
                    "id": "doc-1",
                    "name": "dosage.pdf",
                    "pages": 3,
                    "chunks": 12,
                    "updated_at": "2025-01-15T10:00:00Z",
                },
            ]
        }
    )
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def handle(self, route: Any) -> None:
        request = route.request
        path = re.sub(r"^https?://[^/]+", "", request.url).split("?")[0]
        method = request.method
        if path == "/v1/me":
            response = route.fetch()
            if response.status != 200:
                route.fulfill(response=response)
                return
            body = response.json()
            body["features"]["knowledge"] = True
            route.fulfill(response=response, json=body)
            return
        if path == "/v1/knowledge/collections" and method == "POST":
            name = json.loads(request.post_data or "{}")["name"]
            created = name not in self.documents
            self.documents.setdefault(name, [])
            route.fulfill(status=201 if created else 200, json={"name": name, "documents": 0})
            return
        collection = re.fullmatch(r"/v1/knowledge/collections/([^/]+)", path)
        if collection and method == "DELETE":
            docs = self.documents.pop(collection.group(1), [])
            route.fulfill(json={"deleted": collection.group(1), "documents": len(docs)})
            return
        if path == "/v1/knowledge/collections" and method == "GET":
            data = [
                {"name": name, "documents": len(docs), "chunks": sum(d["chunks"] for d in docs)}
                for name, docs in self.documents.items()
            ]
            route.fulfill(json={"data": data})
            return
        match = re.fullmatch(r"/v1/knowledge/collections/([^/]+)/documents(?:/([^/]+))?", path)
        if match:
            name, doc_id = match.group(1), match.group(2)
            if method == "GET":
                route.fulfill(json={"data": self.documents.get(name, [])})
            elif method == "POST":
                raw = request.post_data_buffer or b""
                filename = re.search(rb'filename="([^"]*)"', raw)
                job_id = "job-" + uuid.uuid4().hex[:8]
                self.jobs[job_id] = {
                    "collection": name,
                    "filename": filename.group(1).decode() if filename else "?",
                    "polls": 0,
                }
                route.fulfill(status=202, json={"job_id": job_id})
            elif method == "DELETE":
                self.deleted.append(doc_id)
                self.documents[name] = [d for d in self.documents[name] if d["id"] != doc_id]
                route.fulfill(status=204, body="")
            return
        match = re.fullmatch(r"/v1/knowledge/jobs/([^/]+)", path)
        if match:
            job = self.jobs[match.group(1)]
            job["polls"] += 1
            name = job["filename"]
            if job["polls"] == 1:
                route.fulfill(
                    json={
                        "state": "running",
                        "files": [
                            {"filename": name, "state": "running", "chunks": 0, "error": None}
                        ],
                    }
                )
                return
            if name.endswith(".pdf"):
                report = {
                    "filename": name,
                    "state": "error",
                    "chunks": 0,
                    "error": "not a PDF file (no %PDF header): corrupt or misnamed",
                }
            else:
                report = {"filename": name, "state": "indexed", "chunks": 4, "error": None}
                self.documents.setdefault(job["collection"], []).append(
                    {
                        "id": "doc-" + uuid.uuid4().hex[:6],
                        "name": name,
                        "pages": None,
                        "chunks": 4,
                        "updated_at": 1767225600,
                    }
                )
            route.fulfill(json={"state": "done", "files": [report]})
            return
        if path == "/v1/chat/completions" and method == "POST":
            body = json.loads(request.post_data or "{}")
            self.chat_bodies.append(body)
            question = body["messages"][-1]["content"]
            last: dict[str, Any] = {}
            if "unknown" in question:
                extra = {
                    "sources": [],
                    "retrieval_match": 0.08,
                    "escalate": True,
                    "review": {"id": "rev_fake0001", "status": "open", "reason": "no_source"},
                }
                text = "I don't know: the documents available to me do not answer this question."
            else:
                extra = {
                    "sources": [
                        {
                            "n": 1,
                            "document": HOSTILE_DOC,
                            "page": 2,
                            "snippet": HOSTILE_SNIPPET,
                            "score": 0.82,
                        }
                    ],
                    "retrieval_match": 0.93,
                    "escalate": False,
                }
                text = "Give **50 mg/kg/day** in two doses [1]."
                detail = {"kind": "number", "detail": "50 mg/kg/day", "sentence": text,
                          "source": 1, "evidence": HOSTILE_SNIPPET}  # fmt: skip
                last = {"verification": {"status": "supported", "policy": "withhold",
                                         "action": "none", "supported": [detail],
                                         "unsupported": []}}  # fmt: skip
            route.fulfill(
                status=200,
                headers={
                    "content-type": "text/event-stream",
                    "x-iatros-request-id": "req_" + uuid.uuid4().hex[:24],
                    "x-iatros-model": "fake-gpt",
                    "x-iatros-route": "assistant; strategy=priority; pick=fake-gpt",
                    "x-iatros-cache": "miss",
                },
                body=sse(extra, text, last),
            )
            return
        route.fallback()


def sse(extra: dict[str, Any], text: str, last: dict[str, Any] | None = None) -> str:
    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> str:
        data = {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-gpt",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **more,
        }
        return "data: " + json.dumps(data) + "\n\n"

    pieces = [chunk({"role": "assistant", "content": ""}, iatros=extra)]
    pieces += [chunk({"content": word}) for word in re.split(r"(?<= )", text)]
    # The verification rides on the last chunk (the one with finish_reason), as the gateway's.
    pieces.append(chunk({}, "stop", **({"iatros": last} if last else {})))
    return "".join(pieces) + "data: [DONE]\n\n"


def open_documents(page: Any, server: RunningServer, knowledge: FakeKnowledge) -> None:
    page.route(re.compile(r".*/v1/.*"), knowledge.handle)
    sign_in(page, server)
    page.locator("#nav a[data-view=documents]").click()
    page.locator("#collection-list .collection").first.wait_for()


def test_documents_upload_progress_errors_and_delete(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    knowledge = FakeKnowledge()
    page = new_page(bypass_csp=True)
    open_documents(page, web_server, knowledge)
    assert page.locator("#collection-list .collection").inner_text().startswith("protocols")
    assert "1 document · 12 passages" in page.locator("#collection-list").inner_text()
    page.locator("#doc-rows tr", has_text="dosage.pdf").wait_for()

    page.locator("#file-input").set_input_files(
        [
            {"name": "good.md", "mimeType": "text/markdown", "buffer": b"# Dosage\n\nAmoxicillin."},
            {"name": "bad.pdf", "mimeType": "application/pdf", "buffer": b"not a pdf"},
            {"name": "virus.exe", "mimeType": "application/octet-stream", "buffer": b"MZ"},
        ]
    )
    uploads = page.locator("#upload-list .upload")
    wait_until(lambda: uploads.count() == 3)
    row = lambda name: page.locator("#upload-list .upload", has_text=name)  # noqa: E731
    assert row("virus.exe").get_attribute("data-state") == "error"
    assert "unsupported file type" in row("virus.exe").inner_text()
    wait_until(lambda: row("good.md").get_attribute("data-state") == "done", timeout=8)
    assert "Indexed: 4 passages" in row("good.md").inner_text()
    wait_until(lambda: row("bad.pdf").get_attribute("data-state") == "error", timeout=8)
    assert "not a PDF file" in row("bad.pdf").inner_text()
    assert row("good.md").locator("progress").get_attribute("aria-label") == "Progress of good.md"

    # Drag and drop works too; a file name is text, never markup.
    data_transfer = page.evaluate_handle(
        """(name) => { const dt = new DataTransfer();
             dt.items.add(new File(['Ibuprofen 400 mg'], name, { type: 'text/plain' }));
             return dt; }""",
        '<img src=x onerror="window.__pwned=5">.txt',
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": data_transfer})
    dropped = page.locator("#upload-list .upload").first
    wait_until(lambda: dropped.get_attribute("data-state") == "done", timeout=8)
    page.locator("#doc-rows tr", has_text="good.md").wait_for()
    assert page.locator("#doc-rows img, #upload-list img").count() == 0
    assert page.evaluate("window.__pwned") is None
    shot(page, "documents-uploads")

    good = page.locator("#doc-rows tr", has_text="good.md")
    good.locator("button[aria-label='Delete good.md']").click()
    good.locator(".btn-danger").click()
    wait_until(lambda: page.locator("#doc-rows tr", has_text="good.md").count() == 0)
    assert len(knowledge.deleted) == 1

    # A new collection is created on the server at once (it vanished on reload before).
    page.locator("#collection-name").fill("new-collection")
    page.locator("#collection-form button[type=submit]").click()
    wait_until(
        lambda: page.locator("#docs-collection-title").inner_text()
        == "Collection “new-collection”"
    )
    assert knowledge.documents["new-collection"] == []
    page.locator("#collection-name").fill("bad name!")
    page.locator("#collection-form button[type=submit]").click()
    assert page.locator("#collection-name").get_attribute("aria-invalid") == "true"


def test_answers_show_their_sources_and_the_escalation(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    knowledge = FakeKnowledge()
    page = new_page(bypass_csp=True)
    page.route(re.compile(r".*/v1/.*"), knowledge.handle)
    sign_in(page, web_server)
    page.locator("#collection-field").wait_for(state="visible")
    page.locator("#collection-select").select_option("protocols")
    page.locator("#prompt").fill("Amoxicillin dose for a 20 kg child?")
    page.keyboard.press("Enter")
    answer = page.locator(".msg-assistant").last
    answer.locator("xpath=self::*[@data-status='done']").wait_for()
    sent = knowledge.chat_bodies[-1]["iatros"]
    assert sent["knowledge"] == "protocols" and set(sent) == {"knowledge", "conversation_id"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", sent["conversation_id"])

    sources = answer.locator(".sources")
    assert sources.is_visible()
    assert sources.locator(".source-doc").inner_text() == HOSTILE_DOC
    assert sources.locator(".source-page").inner_text() == "page 2"
    assert sources.locator(".source-snippet").inner_text() == HOSTILE_SNIPPET
    assert "relevance 82%" in sources.inner_text()
    assert sources.locator("a, img, script, b").count() == 0
    meta = answer.locator(".msg-meta")
    assert "retrieval match 93%" in meta.inner_text()
    assert "not a measure of whether the answer is right" in (
        meta.locator(".badge-match").get_attribute("title") or ""
    )
    assert meta.locator(".trust").inner_text().strip() == "verified against the sources"
    # Sources sit beside the answer on a wide screen.
    main_box = answer.locator(".msg-main").bounding_box()
    side_box = sources.bounding_box()
    assert main_box and side_box and side_box["x"] > main_box["x"] + main_box["width"] - 1
    cite = answer.locator(".md .cite")
    assert cite.inner_text() == "1"
    cite.click()
    focused = page.evaluate("document.activeElement.id")
    assert focused.startswith("src-") and focused.endswith("-1")
    assert "highlight" in (sources.locator(".source").get_attribute("class") or "")
    shot(page, "chat-sources")

    page.locator("#prompt").fill("Something unknown to the documents?")
    page.keyboard.press("Enter")
    refusal = page.locator(".msg-assistant").last
    refusal.locator("xpath=self::*[@data-status='done']").wait_for()
    banner = refusal.locator(".escalate")
    assert banner.get_attribute("role") == "note"
    dont = "I don\N{RIGHT SINGLE QUOTATION MARK}t know"
    assert dont in banner.inner_text()
    assert "Passed to a reviewer" in refusal.locator(".review-state").inner_text()
    assert "retrieval match 8%" in refusal.locator(".msg-meta").inner_text()
    # The same conversation goes on under the same id (the reviewer's answer comes back to it).
    assert knowledge.chat_bodies[-1]["iatros"]["conversation_id"] == sent["conversation_id"]
    assert page.evaluate("window.__pwned") is None
    shot(page, "chat-escalation")
    page.locator("#lang-select").select_option("fr")
    assert "Je ne sais pas" in refusal.locator(".escalate").inner_text()
    assert page.locator(".msg-assistant").first.locator(".sources-title").inner_text() == "1 source"


def test_documents_screen_has_no_serious_accessibility_violations(
    web_server: RunningServer, new_page: Callable[..., Any], axe_source: str
) -> None:
    knowledge = FakeKnowledge()
    page = new_page(bypass_csp=True)
    open_documents(page, web_server, knowledge)
    page.locator("#doc-rows tr", has_text="dosage.pdf").wait_for()
    page.locator("#file-input").set_input_files(
        [
            {"name": "bad.pdf", "mimeType": "application/pdf", "buffer": b"x"},
        ]
    )
    page.locator("#upload-list .upload[data-state=error]").wait_for(timeout=8000)
    page.add_script_tag(content=axe_source)
    result = page.evaluate(
        "() => axe.run(document, { runOnly: { type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'] }, resultTypes: ['violations'] })"
    )
    (ARTIFACTS / "axe-documents.json").write_text(json.dumps(result["violations"], indent=1))
    serious = [v["id"] for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == []


# -- against the real knowledge API ----------------------------------------------------------


@pytest.fixture()
def real_knowledge(web_server: RunningServer) -> RunningServer:
    """The server, once its knowledge API has answered. Anything but a 200 fails the test:
    this used to be a skip ("not mounted yet"), which turned a 500 into a quiet pass."""
    with web_server.http() as http:
        resp = http.get("/v1/knowledge/collections")
    assert resp.status_code == 200, resp.text
    return web_server


def test_upload_a_document_and_ask_a_question_that_cites_it(
    real_knowledge: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    server = real_knowledge
    collection = "web-" + uuid.uuid4().hex[:8]
    fake_upstream.behaviour.answer = "Children take 50 mg/kg/day of amoxicillin [1]."
    page = new_page(bypass_csp=True)
    sign_in(page, server)
    page.locator("#nav a[data-view=documents]").click()
    page.locator("#collection-name").fill(collection)
    page.locator("#collection-form button[type=submit]").click()
    page.locator("#docs-collection-title", has_text=collection).wait_for()  # created
    document = (
        "# Paediatric amoxicillin\n\nFor children, amoxicillin is given at 50 mg/kg/day in two "
        "doses for acute otitis media. <script>window.__pwned=1</script>\n"
    )
    page.locator("#file-input").set_input_files(
        [
            {"name": "amoxicillin.md", "mimeType": "text/markdown", "buffer": document.encode()},
        ]
    )
    upload = page.locator("#upload-list .upload", has_text="amoxicillin.md")
    wait_until(lambda: upload.get_attribute("data-state") in ("done", "error"), timeout=60)
    assert upload.get_attribute("data-state") == "done", upload.inner_text()
    page.locator("#doc-rows tr", has_text="amoxicillin.md").wait_for()

    page.locator("#nav a[data-view=chat]").click()
    page.locator("#collection-select").select_option(collection)
    page.locator("#prompt").fill("What amoxicillin dose for children with otitis media?")
    page.keyboard.press("Enter")
    answer = page.locator(".msg-assistant").last
    answer.locator("xpath=self::*[@data-status='done']").wait_for(timeout=30_000)
    sources = answer.locator(".sources")
    assert sources.is_visible()
    assert "amoxicillin.md" in sources.locator(".source-doc").first.inner_text()
    assert "50 mg/kg/day" in sources.locator(".source-snippet").first.inner_text()
    assert page.evaluate("window.__pwned") is None
    shot(page, "chat-real-sources")
