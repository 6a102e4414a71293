"""*Get started*, followed literally to its last step, in a browser.

The page's examples run first (install aside: the server is the suite's), exactly as
``test_examples`` runs them; then Chromium does what step 6 says: sign in with the key of
step 3, find the document in *Documents*, choose its collection in the chat, ask the
question the page quotes, and see the answer with the document as its source.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs.runner import page_session, shell_variable

DOCS = Path(__file__).resolve().parents[2] / "docs"

GUIDES = [
    # page, interface language, collection and document the page uses
    ("get-started.md", "en", "practice", "hours.md"),
    ("fr/get-started.md", "fr", "cabinet", "horaires.md"),
]


@pytest.mark.parametrize(("page", "lang", "collection", "document"), GUIDES)
def test_a_newcomer_reaches_a_grounded_answer_in_the_web_app(
    page: str, lang: str, collection: str, document: str, tmp_path: Path
) -> None:
    from tests.web.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh (apt: chromium)")
    from playwright.sync_api import sync_playwright

    text = (DOCS / page).read_text(encoding="utf-8")
    step6 = text[text.index("## 6.") :]
    # The question step 6 tells the reader to ask, in italics.
    question = re.search(r"\*([^*]+\?)\*", step6)
    assert question is not None, "step 6 quotes no question"
    assert f"`{collection}`" in step6 and f"`{document}`" in step6

    with page_session(text, page, tmp_path / "work") as (server, ran):
        assert ran >= 8
        key = shell_variable(tmp_path / "work", "IATROS_API_KEY")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(service_workers="block")
                context.set_default_timeout(20_000)
                tab = context.new_page()
                errors: list[str] = []
                tab.on("pageerror", lambda exc: errors.append(str(exc)))
                tab.add_init_script(f"localStorage.setItem('iatros.lang', '{lang}')")
                tab.goto(server.url + "/")
                tab.locator("#signin-key").fill(key)
                tab.locator("#signin-form button[type=submit]").click()
                tab.locator("#identity").wait_for(state="visible")
                # 1. Documents: the collection is there with the document.
                tab.locator("#nav a[data-view=documents]").click()
                tab.locator("#collection-list .collection", has_text=collection).click()
                tab.locator("#doc-rows tr", has_text=document).wait_for()
                # 2. Chat: the collection chosen, the page's question asked.
                tab.locator("#nav a[data-view=chat]").click()
                tab.locator("#collection-field").wait_for(state="visible")
                tab.locator("#collection-select").select_option(collection)
                tab.locator("#prompt").fill(question.group(1))
                tab.keyboard.press("Enter")
                answer = tab.locator(".msg-assistant").last
                answer.locator("xpath=self::*[@data-status='done']").wait_for(timeout=30_000)
                sources = answer.locator(".sources")
                assert sources.is_visible()
                assert document in sources.locator(".source-doc").first.inner_text()
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(ARTIFACTS / f"get-started-{lang}.png"))
                assert errors == []
            finally:
                browser.close()
