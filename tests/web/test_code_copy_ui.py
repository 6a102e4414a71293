"""Code blocks in answers (#25): each has its own copy button that copies the code alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer
from tests.web.conftest import sign_in
from tests.web.test_chat_ui import ask, done, unique

ANSWER = (
    "Run this query:\n\n```sql\nSELECT name FROM patients WHERE id = 42;\n```\n\nThen export it."
)


def test_a_code_block_copies_only_its_code(
    web_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream
) -> None:
    fake_upstream.behaviour.answer = ANSWER
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, web_server)
    answer = ask(page, unique("How do I list a patient's name?"))
    done(answer)
    button = answer.locator(".code-block button[aria-label='Copy the code']")
    assert button.count() == 1
    button.focus()
    page.keyboard.press("Enter")
    page.locator(".toast", has_text="Code copied.").wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "SELECT name FROM patients WHERE id = 42;"
