"""The documentation site: built strictly, everything local, served at ``/help``.

The build runs once per session (``mkdocs build --strict`` into a temporary directory,
the generator hook included), and the tests read what it wrote.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import RunningServer, test_model_config

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = [sys.executable, "-m", "mkdocs"]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MKDOCS, "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = _build(ROOT / "mkdocs.yml", out)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def _page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


def test_nothing_is_loaded_from_outside_the_site(site: Path) -> None:
    outside = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 20
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for tag in re.finditer(r"<(script|img|link|iframe|source|video|audio)\b[^>]*>", html):
            for url in re.findall(r'\b(?:src|href)="([^"]*)"', tag.group(0)):
                assert not outside.match(url), f"{page}: {tag.group(0)}"
        assert "fonts.googleapis" not in html and "fonts.gstatic" not in html, page
    for css in site.rglob("*.css"):
        text = css.read_text(encoding="utf-8")
        assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", text), css
        assert "@import" not in text or not re.search(r"@import\s+url\(\s*['\"]?https?:", text)


def test_no_markdown_is_left_unrendered(site: Path) -> None:
    """A link inside raw HTML, say, stays Markdown text that no strict check sees."""
    for page in site.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        leftover = re.search(r"\]\([^)\s]+\.md(?:#[^)]*)?\)", html)
        assert leftover is None, f"{page}: {leftover.group(0) if leftover else ''}"
        # Docstrings are inlined without their note for the architecture test.
        assert "Why this module is long" not in html, page


def test_reference_pages_come_from_the_code(site: Path) -> None:
    from iatros.api.schemas import IatrosExtension
    from iatros.config import Settings

    config = _page(site, "reference/configuration")
    for name, field in Settings.model_fields.items():
        assert f"<code>{name}</code>" in config, name
        del field
    assert "IATROS_SERVER__PORT" in config and "reviews.webhook.secret" in config
    assert "<code>base_url</code>" in config  # the openai provider's options
    extension = _page(site, "reference/request-extension")
    assert all(f"<code>{name}</code>" in extension for name in IatrosExtension.model_fields)
    cli = _page(site, "reference/cli")
    assert "iatros keys rotate" in cli and "Usage: iatros audit verify" in cli
    api = _page(site, "reference/http-api")
    assert "POST /v1/chat/completions" in api and "GET /v1/reviews/mine" in api
    metrics = _page(site, "reference/metrics")
    assert "iatros_requests_total" in metrics and "iatros_cache_lookups_total" in metrics


def test_figures_are_read_from_the_committed_results(site: Path) -> None:
    latest = (ROOT / "bench" / "results" / "latest.md").read_text(encoding="utf-8")
    target = next(line for line in latest.splitlines() if line.startswith("- pass-through"))
    figure = re.search(r"\d+(?:\.\d+)?x", target)
    assert figure is not None
    performance = _page(site, "explanation/performance")
    assert figure.group(0) in performance
    assert "bench/results/latest.md" in performance
    guard = _page(site, "explanation/cache-guard")
    assert "What it compares" in guard  # the module's docstring
    assert "Why this module is long" not in guard


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@pytest.fixture()
def help_server(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    import iatros.web
    from iatros.api.app import create_app
    from iatros.config import load_settings

    monkeypatch.setattr(iatros.web, "HELP_DIR", site)
    settings = load_settings(overrides=test_model_config(tmp_path / "data"))
    running = RunningServer(settings, create_app(settings))
    try:
        yield running
    finally:
        running.stop()


def test_the_server_serves_the_site_at_help(help_server: RunningServer, site: Path) -> None:
    with httpx.Client(base_url=help_server.url, timeout=30) as client:
        page = client.get("/help/get-started/")
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]
        assert "Get started" in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        # Each inline script of the page is allowed by its hash, and nothing else is.
        scripts = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>(.*?)</script>", page.text, re.S)
        script_src = re.search(r"script-src ([^;]*)", csp)
        assert script_src is not None and "'unsafe-inline'" not in script_src.group(1)
        for attrs, body in scripts:
            if "application/json" not in attrs and body.strip():
                assert _csp_hash(body) in script_src.group(1)
        redirect = client.get("/help", follow_redirects=False)
        assert redirect.status_code in (301, 307, 308)
        asset = client.get("/help/search/search_index.json")
        assert asset.status_code == 200 and asset.headers["x-frame-options"] == "DENY"
        assert client.get("/help/no-such-page/").status_code == 404


def test_without_a_built_site_help_is_not_served(
    tmp_path: Path, server_factory: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import iatros.web

    monkeypatch.setattr(iatros.web, "HELP_DIR", tmp_path / "not-built")
    running = server_factory(test_model_config(tmp_path / "data2"))
    assert httpx.get(running.url + "/help/").status_code == 404


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    """The site's own settings (``INHERIT``), a page with a broken link: the build fails."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: {docs}\nhooks: []\nnav:\n  - index.md\n"
    )
    done = _build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "missing.md" in done.stdout + done.stderr


def test_the_site_works_in_a_browser_under_its_csp(
    help_server: RunningServer, site: Path
) -> None:
    """Chromium loads /help: no CSP violation, no request off the server, search works."""
    from tests.web.conftest import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh (apt: chromium)")
    from playwright.sync_api import sync_playwright

    origin = help_server.url
    outside: list[str] = []
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on(
                "request",
                lambda r: None
                if r.url.startswith((origin, "data:", "blob:"))
                else outside.append(r.url),
            )
            page.on(
                "console",
                lambda m: problems.append(m.text)
                if m.type == "error" or "Content Security Policy" in m.text
                else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(origin + "/help/get-started/")
            page.wait_for_selector("h1#get-started")
            # Search: the theme's worker loads the index from the site and answers.
            page.locator("label.md-search__icon, .md-search__input").first.click()
            # Typed key by key: the theme searches as keys are released.
            page.locator("input.md-search__input").press_sequentially("rotate", delay=50)
            page.wait_for_selector(".md-search-result__item", timeout=30_000)
            page.keyboard.press("Escape")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "help-get-started.png"))
        finally:
            browser.close()
    assert outside == []
    assert problems == []


def test_the_web_app_links_to_the_help(help_server: RunningServer) -> None:
    """The app's header has a Help link, before and after sign-in, to the site in the
    interface's language (French readers land on the French *Get started*)."""
    from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh (apt: chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(service_workers="block")
            context.set_default_timeout(20_000)
            app = context.new_page()
            app.goto(help_server.url + "/")
            link = app.locator("#help-link")
            link.wait_for(state="visible")
            assert link.inner_text() == "Help" and link.get_attribute("href") == "/help/"
            with context.expect_page() as opened:
                link.click()
            site = opened.value
            site.wait_for_selector("h1#iatros")
            assert site.url == help_server.url + "/help/"
            app.locator("#lang-select").select_option("fr")
            assert link.inner_text() == "Aide"
            with context.expect_page() as opened:
                link.click()
            opened.value.wait_for_selector("h1#demarrer")
            assert opened.value.url.endswith("/help/fr/get-started/")
        finally:
            browser.close()
