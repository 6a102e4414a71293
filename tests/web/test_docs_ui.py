"""The API docs page in a real browser: Swagger UI from this server only, under a strict CSP.

Chromium loads ``/docs``; the test fails if any request leaves the server's origin, if
the browser reports a Content-Security-Policy violation, or if the operations do not
render (Swagger UI 5 works without inline script or eval).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from iatros.api.app import create_app
from iatros.api.docs import DOCS_CSP
from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config
from tests.web.conftest import shot


def docs_app(settings: Any) -> Any:
    app = create_app(settings)
    assert app.docs_url is None and app.redoc_url is None  # FastAPI's CDN pages are off
    return app


@pytest.fixture(scope="module")
def docs_server(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    data: Path = tmp_path_factory.mktemp("docs-data")
    settings = load_settings(overrides={"data_dir": str(data), **upstream_config(fake_upstream)})
    running = RunningServer(settings, docs_app(settings))
    yield running
    running.stop()


def test_docs_page_headers_and_assets(docs_server: RunningServer) -> None:
    with httpx.Client(base_url=docs_server.url) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == DOCS_CSP
        assert "script-src 'self';" in DOCS_CSP and "unsafe" not in DOCS_CSP
        assert "<script>" not in page.text  # no inline script: only src= files
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        for name, kind in (
            ("swagger-ui-bundle.js", "javascript"),
            ("swagger-ui.css", "css"),
            ("init.js", "javascript"),
        ):
            asset = http.get(f"/docs/assets/{name}")
            assert asset.status_code == 200 and kind in asset.headers["content-type"], name
            assert asset.headers["x-content-type-options"] == "nosniff"
        missing = http.get("/docs/assets/..%2F..%2Fpyproject.toml")
        assert missing.status_code == 404 and "error" in missing.json()
        assert http.get("/redoc").status_code == 404  # the CDN-loading ReDoc page is gone


def test_swagger_ui_renders_from_this_origin_only(
    docs_server: RunningServer, new_page: Callable[..., Any]
) -> None:
    page = new_page()
    foreign: list[str] = []
    violations: list[str] = []
    origin = urlsplit(docs_server.url).netloc
    page.on(
        "request",
        lambda req: (
            foreign.append(req.url)
            if urlsplit(req.url).scheme in ("http", "https") and urlsplit(req.url).netloc != origin
            else None
        ),
    )
    page.on(
        "console",
        lambda msg: (
            violations.append(msg.text)
            if "Content Security Policy" in msg.text or "Refused to" in msg.text
            else None
        ),
    )
    page.goto(docs_server.url + "/docs")
    page.locator(".opblock-summary-path", has_text="/v1/chat/completions").first.wait_for()
    assert page.locator(".opblock").count() > 10
    # Opening an operation renders schemas and examples (highlighted code): still no
    # violation.
    page.locator(".opblock-summary", has_text="/v1/chat/completions").first.click()
    page.locator(".opblock-body .model-example").first.wait_for()
    shot(page, "docs")
    assert foreign == [], foreign
    assert violations == [], violations
