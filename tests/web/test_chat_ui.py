"""The chat in a real browser: streaming, stop, conversations, cache, feedback, hostile text."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select

from iatros.store.feedback import Feedback
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer
from tests.web.conftest import create_key, shot, sign_in, stats, wait_until

LONG_ANSWER = " ".join(f"word{i}" for i in range(60))


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex.translate(str.maketrans('0123456789', 'ghijklmnop'))}"


def ask(page: Any, text: str) -> Any:
    """Type a message and send it with Enter; returns the new answer's locator."""
    before = page.locator(".msg-assistant").count()
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")
    answer = page.locator(".msg-assistant").nth(before)
    answer.wait_for()
    return answer


def done(answer: Any, status: str = "done") -> None:
    answer.locator(f"xpath=self::*[@data-status='{status}']").wait_for(timeout=15_000)


def in_flight(server: RunningServer) -> float:
    text = httpx.get(server.url + "/metrics").text
    match = re.search(r'iatros_requests_in_flight\{endpoint="chat"\} ([0-9.]+)', text)
    return float(match.group(1)) if match else 0.0


def test_tokens_stream_in_and_the_answer_says_who_answered(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.token_delay_ms = 60
    fake_upstream.behaviour.answer = (
        "Ibuprofen is a **non-steroidal** anti-inflammatory drug "
        + ("used for pain and fever. " * 3).strip()
    )
    page = new_page()
    sign_in(page, web_server)
    assert page.locator("#who-tenant").inner_text() == "default"
    assert page.locator("#who-role").inner_text() == "administrator"
    # The key lives in this tab's session only.
    assert page.evaluate("sessionStorage.getItem('iatros.key')") == ADMIN_KEY
    assert ADMIN_KEY not in page.evaluate("JSON.stringify(localStorage)")

    answer = ask(page, unique("What is ibuprofen?"))
    body = answer.locator(".md")
    wait_until(lambda: len(body.inner_text()) > 10)
    first = body.inner_text()
    assert answer.get_attribute("data-status") == "streaming"
    assert page.locator("#stop").is_visible()
    shot(page, "chat-streaming")
    wait_until(lambda: len(body.inner_text()) > len(first) + 10)
    assert answer.get_attribute("data-status") == "streaming"  # still arriving, in pieces
    done(answer)
    assert body.locator("strong").inner_text() == "non-steroidal"
    assert body.inner_text().endswith("used for pain and fever.")
    assert answer.locator(".badge-model").inner_text() == "fake-gpt"
    answer.locator(".route summary").click()
    assert "pick=fake-gpt" in answer.locator(".route code").inner_text()
    assert "first words in" in answer.locator(".msg-meta").inner_text()
    assert not page.locator("#stop").is_visible()
    shot(page, "chat-answer")


def test_stop_cancels_the_generation_on_the_server(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    key = create_key(web_server, tenant="stop-clinic", role="clinician")
    fake_upstream.behaviour.token_delay_ms = 100
    fake_upstream.behaviour.answer = LONG_ANSWER
    page = new_page()
    sign_in(page, web_server, key["key"])
    answer = ask(page, unique("Tell me a long story"))
    wait_until(lambda: "word3" in answer.locator(".md").inner_text())
    page.locator("#stop").click()
    done(answer, "stopped")
    text = answer.locator(".md").inner_text()
    assert "word3" in text and "word59" not in text
    assert "Generation stopped" in answer.inner_text()
    shot(page, "chat-stopped")
    # The gateway saw the client go: the request is recorded as cancelled (499) at once,
    # long before the 6 s the upstream would have taken, and nothing is left in flight.
    admin = create_key(web_server, tenant="stop-clinic", role="admin")
    started = time.time()
    wait_until(lambda: stats(web_server, admin["key"])["totals"]["cancelled"] == 1, timeout=3)
    assert time.time() - started < 3
    wait_until(lambda: in_flight(web_server) == 0.0, timeout=3)
    # The partial answer is kept and the conversation can go on.
    fake_upstream.behaviour.token_delay_ms = 0
    fake_upstream.behaviour.answer = "Short answer."
    follow = ask(page, "Shorter, please")
    done(follow)
    assert follow.locator(".md").inner_text() == "Short answer."


def test_escape_stops_and_the_chat_works_from_the_keyboard(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.token_delay_ms = 100
    fake_upstream.behaviour.answer = LONG_ANSWER
    page = new_page()
    sign_in(page, web_server)
    prompt = page.locator("#prompt")
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type(unique("line two"))
    assert "\n" in prompt.input_value()
    page.keyboard.press("Enter")
    answer = page.locator(".msg-assistant").last
    wait_until(lambda: "word2" in answer.locator(".md").inner_text())
    page.keyboard.press("Escape")
    done(answer, "stopped")
    assert page.locator(".msg-user .user-text").last.inner_text().startswith("line one\nline two")
    # Every control can be reached with Tab and has a name and a visible focus ring.
    names = page.evaluate(
        """() => [...document.querySelectorAll('button, a[href], input, select, textarea')]
          .filter((el) => el.offsetParent !== null)
          .map((el) => {
            const labelled = el.labels && el.labels.length ? el.labels[0].innerText : '';
            const by = el.getAttribute('aria-labelledby');
            const byText = by ? by.split(' ')
              .map((id) => document.getElementById(id)?.innerText || '').join(' ') : '';
            return { tag: el.tagName, name: (el.getAttribute('aria-label') || labelled || byText
                     || el.innerText || el.title || '').trim() };
          })"""
    )
    assert names and all(item["name"] for item in names), [n for n in names if not n["name"]]
    page.locator("#conv-new").focus()
    page.keyboard.press("Tab")
    focused = page.evaluate(
        "() => { const el = document.activeElement;"
        " return [el.className, getComputedStyle(el).outlineStyle]; }"
    )
    assert focused[1] != "none", focused
    shot(page, "chat-keyboard")


def test_conversations_new_rename_continue_delete_and_survive_a_reload(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.answer = "Paracetamol is an analgesic."
    page = new_page()
    sign_in(page, web_server)
    first_question = unique("What is paracetamol?")
    done(ask(page, first_question))
    page.locator("#conv-new").click()
    assert page.locator(".chat-empty").is_visible()
    done(ask(page, unique("Second topic")))
    items = page.locator("#conv-list .conv-item")
    assert items.count() == 2

    # Rename the first conversation (now listed second) with the keyboard.
    first = items.nth(1)
    first.locator(".conv-rename-btn").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("Analgesics")
    page.keyboard.press("Enter")
    assert page.locator("#conv-list .conv-name", has_text="Analgesics").count() == 1

    page.reload()
    page.locator("#identity").wait_for(state="visible")  # still signed in: same tab
    # The list is drawn after the identity, once the stored conversations are read.
    wait_until(lambda: page.locator("#conv-list .conv-item").count() == 2)
    page.locator("#conv-list .conv-open", has_text="Analgesics").click()
    assert page.locator("#conv-current").inner_text() == "Analgesics"
    assert page.locator(".msg-user").first.inner_text().endswith(first_question)

    # Continuing sends the earlier turns too.
    fake_upstream.requests.clear()
    done(ask(page, "And the maximum daily dose?"))
    sent = fake_upstream.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == first_question
    assert sent[1]["content"] == "Paracetamol is an analgesic."
    shot(page, "chat-conversations")

    # Delete the other one (with a confirmation step).
    other = page.locator("#conv-list .conv-item", has_text="Second topic")
    other.locator(".conv-delete-btn").click()
    page.locator("#conv-list .conv-confirm .btn-danger").click()
    assert page.locator("#conv-list .conv-item").count() == 1
    page.reload()
    page.locator("#identity").wait_for(state="visible")
    wait_until(lambda: page.locator("#conv-list .conv-item").count() == 1)

    # Signing out forgets the key and every conversation this browser holds, also one
    # left by another user who closed the tab without signing out (a shared workstation).
    stored = "Object.keys(localStorage).filter((k) => k.startsWith('iatros.conversations.'))"
    assert len(page.evaluate(stored)) == 1
    page.evaluate("localStorage.setItem('iatros.conversations.other.key_x', '[]')")
    page.locator("#signout").click()
    page.locator("#signin-key").wait_for(state="visible")
    assert page.evaluate("sessionStorage.getItem('iatros.key')") is None
    assert page.evaluate(stored) == []
    assert "Analgesics" not in page.evaluate("JSON.stringify(localStorage)")
    sign_in(page, web_server)
    assert page.locator("#conv-list .conv-item").count() == 0
    assert page.evaluate(stored) == []


def test_cache_hits_are_marked_and_feedback_is_stored(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    key = create_key(web_server, tenant="fb-clinic", role="clinician")
    fake_upstream.behaviour.answer = "Amoxicillin is a penicillin antibiotic."
    page = new_page()
    sign_in(page, web_server, key["key"])
    question = unique("What is amoxicillin?")
    miss = ask(page, question)
    done(miss)
    assert miss.locator(".badge-cache").count() == 0
    page.locator("#conv-new").click()
    hit = ask(page, question)
    done(hit)
    assert hit.locator(".badge-cache").inner_text() == "from cache"
    assert hit.locator(".md").inner_text() == "Amoxicillin is a penicillin antibiotic."

    hit.locator(".feedback-up").click()
    wait_until(lambda: hit.locator(".feedback-up").get_attribute("aria-pressed") == "true")
    hit.locator(".feedback-down").click()
    comment = hit.locator(".feedback-comment textarea")
    comment.fill("Should mention allergies")
    hit.locator(".feedback-comment button[type=submit]").click()
    wait_until(lambda: hit.locator(".feedback-comment").count() == 0)
    assert hit.locator(".feedback-down").get_attribute("aria-pressed") == "true"
    request_id = hit.get_attribute("data-request-id")
    with web_server.app.state.governance.db.session("fb-clinic") as session:
        rows = session.scalars(select(Feedback)).all()
    assert [(r.request_id, r.rating, r.comment) for r in rows] == [
        (request_id, "down", "Should mention allergies")
    ]
    hit.locator("button[aria-label='Copy the answer']").click()
    page.locator(".toast", has_text="Answer copied.").wait_for()
    shot(page, "chat-cache-hit-feedback")


HOSTILE = (
    "Safe **bold** and [ok](https://example.org/safe).\n\n"
    "<script>window.__pwned=1</script>\n"
    '<img src=x onerror="window.__pwned=2">\n'
    "[x](javascript:alert(1)) [y](JAVASCRIPT:window.__pwned=3) [z](java\tscript:alert(1))\n"
    '<a href="javascript:window.__pwned=4">a</a> '
    '<iframe src="javascript:window.__pwned=5"></iframe>\n'
    "[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) ![i](javascript:alert(1))\n"
    '<svg onload="window.__pwned=6"></svg> [v](vbscript:msgbox) <style>body{display:none}</style>\n'
    "```\n<script>window.__pwned=7</script>\n```"
)


def test_hostile_model_output_is_rendered_inert(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.answer = HOSTILE
    # Without the page's Content-Security-Policy: the renderer alone must make it inert.
    page = new_page(bypass_csp=True)
    sign_in(page, web_server)
    answer = ask(page, unique("Show me something nasty"))
    done(answer)
    page.wait_for_timeout(200)
    assert page.evaluate("window.__pwned") is None
    md = answer.locator(".md")
    assert md.locator("script, img, iframe, svg, style, [onerror], [onload]").count() == 0
    hrefs = md.locator("a").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    assert hrefs == ["https://example.org/safe"]
    assert md.locator("a").get_attribute("rel") == "noopener noreferrer nofollow"
    text = md.inner_text()
    assert "<script>window.__pwned=1</script>" in text  # shown as text, literally
    assert '<img src=x onerror="window.__pwned=2">' in text
    assert md.locator("pre code").inner_text() == "<script>window.__pwned=7</script>"
    # Clicking the neutralised links does nothing either.
    for label in ("x", "y", "z"):
        md.get_by_text(label, exact=True).first.click()
    assert page.evaluate("window.__pwned") is None
    # The stored conversation renders as safely after a reload.
    page.reload()
    page.locator(".msg-assistant .md").first.wait_for()
    assert page.evaluate("window.__pwned") is None
    assert page.locator(".msg-assistant .md script").count() == 0
    shot(page, "chat-hostile-inert")


def test_markdown_renderer_keeps_only_safe_links(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    page.goto(web_server.url + "/")
    cases = {
        "js": "[a](javascript:alert(1))",
        "js-entity": "[a](javascript&#58;alert(1))",
        "js-space": "[a]( javascript:alert(1))",
        "js-newline": "[a](java\nscript:alert(1))",
        "data": "[a](data:text/html,<script>alert(1)</script>)",
        "relative": "[a](/admin/keys)",
        "proto-relative": "[a](//evil.example/x)",
        "autolink-js": "<javascript:alert(1)>",
        "html": "<b onmouseover=alert(1)>hi</b>",
        "nested": "[[b](javascript:x)](https://ok.example)",
        "img": "![alt](https://tracker.example/pixel.png)",
        "https": "[a](https://ok.example/path?q=1)",
        "mailto": "[a](mailto:doc@clinic.example)",
        "bare": "see https://ok.example/x.",
        "deep": "*" * 5000 + "x",
    }
    out = page.evaluate(
        """async (cases) => {
          const { renderMarkdown } = await import('/static/js/markdown.js');
          const result = {};
          for (const [name, text] of Object.entries(cases)) {
            const box = document.createElement('div');
            box.append(renderMarkdown(text));
            result[name] = {
              hrefs: [...box.querySelectorAll('a')].map((a) => a.getAttribute('href')),
              tags: [...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()),
              attrs: [...box.querySelectorAll('*')].flatMap((e) => e.getAttributeNames()),
              text: box.textContent,
            };
          }
          return result;
        }""",
        cases,
    )
    for name in (
        "js",
        "js-entity",
        "js-space",
        "js-newline",
        "data",
        "relative",
        "proto-relative",
        "autolink-js",
        "html",
        "img",
    ):
        assert out[name]["hrefs"] == [], name
    assert out["nested"]["hrefs"] == ["https://ok.example/"]
    assert out["https"]["hrefs"] == ["https://ok.example/path?q=1"]
    assert out["mailto"]["hrefs"] == ["mailto:doc@clinic.example"]
    assert out["bare"]["hrefs"] == ["https://ok.example/x"]
    assert out["html"]["text"] == "<b onmouseover=alert(1)>hi</b>"
    assert out["img"]["text"] == "alt"
    allowed_attrs = {"href", "target", "rel", "class", "data-lang", "start", "scope"}
    for name, result in out.items():
        assert set(result["attrs"]) <= allowed_attrs, (name, result["attrs"])
        assert not {"script", "img", "iframe", "style", "svg"} & set(result["tags"]), name
