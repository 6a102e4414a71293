"""Pop-up messages (#25): they can be closed, do not follow the user to another view, and
do not cover the header's controls, at desktop and phone widths."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningServer
from tests.web.conftest import PHONE, sign_in

DESKTOP = {"width": 1280, "height": 800}


def _announce(page: Any, text: str, kind: str = "error") -> Any:
    page.evaluate(
        "([text, kind]) => import('/static/js/dom.js').then((m) => m.announce(text, kind))",
        [text, kind],
    )
    toast = page.locator(".toast", has_text=text)
    toast.wait_for()
    return toast


def _overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_toast_closes_stays_on_its_view_and_leaves_the_header_free(
    web_server: RunningServer, new_page: Callable[..., Any], viewport: dict[str, int]
) -> None:
    page = new_page(viewport=viewport)
    sign_in(page, web_server)
    toast = _announce(page, "Upload failed: empty file")
    assert toast.get_attribute("role") == "alert"
    box = toast.bounding_box()
    assert box is not None
    for control in ("header", "#prompt", "#send", "#model-select"):
        other = page.locator(control).first.bounding_box()
        assert other is not None and not _overlaps(box, other), control

    close = toast.get_by_role("button", name="Dismiss this message")
    close.click()
    toast.wait_for(state="detached")

    _announce(page, "Saved.", "info")
    page.keyboard.press("Escape")
    page.locator(".toast", has_text="Saved.").wait_for(state="detached")

    stale = _announce(page, "About the documents view")
    page.goto(web_server.url + "/#/documents")
    page.locator("#view-documents").wait_for(state="visible")
    stale.wait_for(state="detached")


def test_the_close_button_is_labelled_in_french(
    web_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    sign_in(page, web_server, lang="fr")
    toast = _announce(page, "Erreur")
    assert toast.get_by_role("button", name="Fermer ce message").is_visible()
