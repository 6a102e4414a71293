"""Regenerate and edit-and-resend (#25): the last answer can be asked for again (afresh, not
from the cache), and a question can be edited and sent again, dropping what followed it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer
from tests.web.conftest import sign_in
from tests.web.test_chat_ui import ask, done, unique


def _user_texts(page: Any) -> list[str]:
    return [t.strip() for t in page.locator(".msg-user .user-text").all_inner_texts()]


def test_regenerate_asks_afresh_and_replaces_the_answer(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    question = unique("Which toothpaste for a six-year-old?")
    fake_upstream.behaviour.answer = "First answer."
    page = new_page()
    sign_in(page, web_server)
    done(ask(page, question))
    fake_upstream.behaviour.answer = "Second answer."
    page.locator(".msg-assistant").last.locator(".msg-regenerate").click()
    answer = page.locator(".msg-assistant").last
    answer.locator("xpath=self::*[@data-status='done']").wait_for(timeout=15_000)
    wait_text = answer.locator(".md").inner_text()
    assert "Second answer." in wait_text  # not the cached first answer
    assert page.locator(".msg-assistant").count() == 1
    assert _user_texts(page) == [question]
    # Only the last answer offers it.
    done(ask(page, unique("And for an adult?")))
    assert page.locator(".msg-regenerate").count() == 1
    assert page.locator(".msg-assistant").first.locator(".msg-regenerate").count() == 0


def test_edit_a_question_and_send_it_again(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.answer = "An answer."
    page = new_page()
    sign_in(page, web_server)
    first = unique("Dose of amoxicilin for a child?")
    done(ask(page, first))
    done(ask(page, unique("And for an adult?")))
    fake_upstream.requests.clear()
    page.locator(".msg-user").first.locator(".msg-edit").click()
    area = page.locator(".msg-user .edit-form textarea")
    assert area.input_value() == first
    page.keyboard.press("Escape")  # cancel keeps everything
    area.wait_for(state="detached")
    assert len(_user_texts(page)) == 2
    page.locator(".msg-user").first.locator(".msg-edit").click()
    corrected = unique("Dose of amoxicillin for a child of 20 kg?")
    area.fill(corrected)
    area.press("Enter")
    done(page.locator(".msg-assistant").last)
    assert _user_texts(page) == [corrected]  # the later exchange went with the old question
    sent = [r.body for r in fake_upstream.requests if r.path.endswith("/chat/completions")]
    assert sent and [m["content"] for m in sent[-1]["messages"]] == [corrected]
