"""The Agents view in a real browser: the gallery applied with one click, the stored
templates, and a run's step timeline (waiting for approval, then completed); in French too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, wait_run
from tests.agents.test_runs import INPUT, script_checker
from tests.conftest import RunningServer
from tests.web.conftest import shot, sign_in


def test_gallery_templates_and_a_run_timeline(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path, new_page: Any
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    script_checker(upstream)
    page = new_page()
    sign_in(page, server)
    page.locator('#nav a[data-view="agents"]').click()
    page.locator("#agents-gallery").wait_for()
    page.locator('#agents-gallery tr[data-template="drug-interaction-check"] button').click()
    page.locator("#agents-note").wait_for()
    note = page.locator("#agents-note").inner_text()
    assert "drug-interaction-check applied as version 1" in note
    assert "v1" in page.locator("#agents-templates").inner_text()
    with server.http() as http:
        run = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": INPUT,
                                          "wait_s": 15}).json()  # fmt: skip
        assert run["status"] == "waiting"
        http.post(f"/v1/reviews/{run['waiting_review_id']}/decision",
                  json={"decision": "approved", "reviewer_name": "Pharm"})  # fmt: skip
        wait_run(http, run["id"], ("succeeded",))
    page.locator('#nav a[data-view="agents"]').click()
    page.locator(f'#agents-runs tr[data-run="{run["id"]}"] button').click()
    timeline = page.locator("#agents-timeline")
    timeline.wait_for()
    assert timeline.locator("li").count() == 2
    assert "succeeded" in page.locator(f'#agents-runs tr[data-run="{run["id"]}"]').inner_text()
    check = timeline.locator('li[data-step="check"]')
    assert "succeeded" in check.inner_text() and "tokens" in check.inner_text()
    assert "EUR" in check.locator(".step-cost").inner_text()  # cost per step
    assert " ms" in check.inner_text()
    totals = page.locator("#agents-run-totals").inner_text()
    assert "tokens" in totals and "EUR" in totals and "x LLM" in totals
    check.locator("summary").click()
    assert "dose_by_weight" in check.inner_text()  # the tool call, under input and output
    shot(page, "agents-run")
    page.locator("#lang-select").select_option("fr")
    page.locator('#nav a[data-view="agents"]').click()
    page.locator("#view-agents h2", has_text="Galerie").wait_for()
    assert "Exécutions" in page.locator("#view-agents").inner_text()
