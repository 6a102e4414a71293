"""The Experiments view in a real browser: an A/B test's report (arms, lift, always-valid
intervals, the sample-ratio check, the decision), rollouts and releases; in French too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iatros.config import load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config
from tests.web.conftest import create_key, shot, sign_in


@pytest.fixture(scope="module")
def lab(fake_upstream: FakeUpstream,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("experiments-ui")
    config = upstream_config(fake_upstream, experiments={"refresh_s": 0.2,
                                                           "analysis_interval_s": 0.5})
    settings = load_settings(overrides={"data_dir": str(data), **config})
    from iatros.api.app import create_app

    running = RunningServer(settings, create_app(settings))
    with running.http() as http:
        ids = [http.post("/admin/releases", json={"route": "assistant", "note": note, "spec": {
            "deployments": deps}}).json()["id"]
            for deps, note in ((["fake-gpt"], "blue"), (["fake-azure-gpt"], "green"))]
        exp = http.post("/admin/experiments", json={
            "route": "assistant", "name": "azure-vs-openai", "unit": "user",
            "primary_metric": "error_rate", "guardrails": ["latency_ms"],
            "variants": [{"name": "A", "release_id": ids[0], "share": 50},
                         {"name": "B", "release_id": ids[1], "share": 50}]}).json()
        http.post(f"/admin/experiments/{exp['id']}/start")
        for i in range(30):
            http.post("/v1/chat/completions", json={
                "model": "assistant", "user": f"u{i}",
                "messages": [{"role": "user", "content": "hello"}]})
    yield running
    running.stop()


def test_the_report_of_an_experiment(lab: RunningServer, new_page: Callable[..., Any],
                                     fake_upstream: FakeUpstream) -> None:
    fake_upstream.reset(delay_ms=0)
    page = new_page()
    sign_in(page, lab)
    page.locator('#nav a[data-view="experiments"]').click()
    page.locator("#exp-list").wait_for()
    page.locator("#exp-list button").click()
    page.locator("#exp-decision").wait_for()
    assert page.locator('#exp-analysis tr[data-variant="B"][data-metric="error_rate"]').count() == 1
    assert "Keep collecting data" in page.locator("#exp-decision").inner_text()
    assert "Sample ratio as configured" in page.locator("#exp-srm").inner_text()
    assert page.locator("#release-list tbody tr").count() == 2
    # The analysis loop keeps the primary metric's interval over time (every 0.5 s here).
    for _ in range(100):
        page.locator("#exp-list button").click()
        page.locator("#exp-decision").wait_for()
        if page.locator("#exp-history tbody tr").count():
            break
        time.sleep(0.1)
    assert page.locator('#exp-history tbody tr').count() >= 1
    shot(page, "experiments")
    page.locator("#lang-select").select_option("fr")
    page.locator("#exp-list").wait_for()
    page.locator("#exp-list button").click()
    page.locator("#exp-decision").wait_for()
    assert "Continuer la collecte" in page.locator("#exp-decision").inner_text()
    assert page.locator('#nav a[data-view="experiments"]').inner_text() == "Expériences"


def test_the_view_is_for_platform_admins_only(
    lab: RunningServer, new_page: Callable[..., Any]
) -> None:
    for role in ("clinician", "admin"):  # a tenant's admin too: routes serve every tenant
        key = create_key(lab, role=role, tenant="clinic-ui")["key"]
        page = new_page()
        sign_in(page, lab, key=key)
        assert page.locator('#nav a[data-view="experiments"]').is_hidden()
