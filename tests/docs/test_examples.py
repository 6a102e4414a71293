"""Every shell command, Python program and configuration file in the docs runs here.

Each page with examples gets its own live server (``runner.live_server``) and working
directory; see :mod:`tests.docs.runner` for the rules (``<!-- skip: why -->`` is the only
way out, and it needs a reason).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.runner import extract, run_page, runnable
from tests.docs.test_get_started_ui import GUIDES
from tests.web.conftest import CHROMIUM

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def test_the_docs_have_examples_to_run() -> None:
    counted = sum(
        len(runnable(extract((DOCS / page).read_text(encoding="utf-8"), page)[0]))
        for page in PAGES
    )
    assert counted >= 20, f"only {counted} runnable examples in docs/"


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, tmp_path: Path) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks, _ = extract(text, page)
    if not runnable(blocks):
        pytest.skip("no example to run on this page")
    if page in {guide[0] for guide in GUIDES} and Path(CHROMIUM).exists():
        pytest.skip("run, then followed in the web app, by test_get_started_ui")
    assert run_page(text, page, tmp_path / "work") == len(runnable(blocks))
