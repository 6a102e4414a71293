"""The bundled web app under the origin guard, in the anonymous loopback mode (`make run`).

Every request the app makes without a key must pass the guard: chat (a same-origin JSON
POST streamed back), uploads (multipart from XMLHttpRequest), deletes. Chromium sends
``Origin`` and ``Sec-Fetch-Site: same-origin`` on these; the guard must accept them, on
127.0.0.1 and on localhost alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config
from tests.test_origin_guard import serve
from tests.web.conftest import wait_until
from tests.web.test_chat_ui import ask, done


@pytest.fixture()
def open_server(fake_upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningServer]:
    config = upstream_config(fake_upstream)
    del config["admin_key"]
    settings = load_settings(overrides={"data_dir": str(tmp_path / "data"), **config})
    server = serve(settings)
    server.wait_ready()
    yield server
    server.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_app_works_without_a_key_through_the_guard(
    open_server: RunningServer, new_page: Callable[..., Any], fake_upstream: FakeUpstream, host: str
) -> None:
    fake_upstream.behaviour.answer = "Ibuprofen is an anti-inflammatory."
    page = new_page()
    refused: list[str] = []
    page.on("response", lambda r: refused.append(r.url) if r.status in (403, 415) else None)
    page.goto(f"http://{host}:{open_server.port}/")
    page.locator("#identity").wait_for(state="visible")  # anonymous: no sign-in screen
    answer = ask(page, "What is ibuprofen?")
    done(answer)
    assert "anti-inflammatory" in answer.inner_text()

    page.locator("#nav a[data-view=documents]").click()
    page.locator("#collection-name").fill("protocols")
    page.locator("#collection-form button[type=submit]").click()
    page.locator("#docs-collection-title", has_text="protocols").wait_for()  # created
    page.locator("#file-input").set_input_files(
        [{"name": "hours.md", "mimeType": "text/markdown", "buffer": b"# Hours\n\nOpen 8-18."}]
    )
    upload = page.locator("#upload-list .upload", has_text="hours.md")
    wait_until(lambda: upload.get_attribute("data-state") in ("done", "error"), timeout=30)
    assert upload.get_attribute("data-state") == "done", upload.inner_text()
    assert refused == []
