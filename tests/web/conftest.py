"""Fixtures for the web app tests: Debian's Chromium driven by Playwright, a real server.

The browser is the system's ``/usr/bin/chromium`` (``scripts/install-browser.sh`` installs
it); Playwright's own browser download is never used. Tests skip, saying why, when it is
missing. Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

CHROMIUM = os.environ.get("IATROS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
AXE_VERSION = "4.10.3"
AXE_CACHE = Path(
    os.environ.get("IATROS_TEST_AXE_DIR", Path.home() / ".cache" / "iatros-test" / "axe-core")
)
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 375, "height": 812}


def web_config(fake: FakeUpstream) -> dict[str, Any]:
    """The fake upstream behind a cache (so that hits and savings show) with prices."""
    config = upstream_config(fake, cache={"enabled": True})
    config["deployments"]["fake-gpt"]["price_per_1k_output"] = 2.0
    # Documents are embedded by the in-process test model (texts sharing words are near;
    # the fake upstream's vectors are random), whose cosines run lower than MiniLM's:
    # 0.40 for the documents test's question and passage, hence min_score 0.3.
    config["providers"]["words"] = {"type": "test"}
    config["deployments"]["words-embed"] = {"provider": "words", "model": "w", "kind": "embedding"}
    config["embeddings"] = {"default_model": "words-embed"}
    config["knowledge"] = {"min_score": 0.3}
    return config


@pytest.fixture(scope="session")
def playwright_browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install-browser.sh (apt: chromium)")
    # playwright is a dev dependency (pyproject.toml): missing, it is a broken install.
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def web_server(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One Iatros server per test module, in front of the shared fake upstream."""
    data = tmp_path_factory.mktemp("web-data")
    settings = load_settings(overrides={"data_dir": str(data), **web_config(fake_upstream)})
    from iatros.api.app import create_app

    running = RunningServer(settings, create_app(settings))
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def calm_upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.reset(delay_ms=0)
    return fake_upstream


@pytest.fixture()
def new_page(playwright_browser: Any) -> Iterator[Callable[..., Any]]:
    """Open pages in fresh contexts; fail the test on any uncaught page error."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(viewport: dict[str, int] | None = None, **options: Any) -> Any:
        options.setdefault("service_workers", "block")
        context = playwright_browser.new_context(viewport=viewport or DESKTOP, **options)
        context.set_default_timeout(10_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def shot(page: Any, name: str, full_page: bool = False) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def sign_in(page: Any, server: RunningServer, key: str = ADMIN_KEY, lang: str = "en") -> None:
    page.add_init_script(
        f"if (!localStorage.getItem('iatros.lang')) localStorage.setItem('iatros.lang', '{lang}')"
    )
    page.goto(server.url + "/")
    page.locator("#signin-key").fill(key)
    page.locator("#signin-form button[type=submit]").click()
    page.locator("#identity").wait_for(state="visible")


def create_key(server: RunningServer, **body: Any) -> dict[str, Any]:
    with server.http() as http:
        resp = http.post("/admin/keys", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's axe.min.js, fetched once with ``npm pack`` into a cache directory."""
    target = AXE_CACHE / AXE_VERSION / "axe.min.js"
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch axe-core for the accessibility check")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                subprocess.run(
                    [npm, "pack", f"axe-core@{AXE_VERSION}", "--silent", "--pack-destination", tmp],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
            except (subprocess.SubprocessError, OSError) as exc:
                pytest.skip(f"could not fetch axe-core {AXE_VERSION} with npm: {exc}")
            tarball = next(Path(tmp).glob("axe-core-*.tgz"))
            with tarfile.open(tarball) as archive:
                member = archive.extractfile("package/axe.min.js")
                assert member is not None
                data = member.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(target)
    return target.read_text()


def stats(server: RunningServer, api_key: str = ADMIN_KEY, **params: str) -> dict[str, Any]:
    with server.http(api_key) as http:
        resp = http.get("/admin/stats", params=params)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
