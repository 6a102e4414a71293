"""The request explorer and the alerts view in a real browser (Chromium via Playwright).

Here, not in tests/observability, so that it shares tests/web's one Playwright instance
(two sync Playwright instances in one process refuse to run)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config
from tests.observability.test_incident import _traffic, _wait
from tests.web.conftest import shot, sign_in


def test_a_request_is_followed_in_the_explorer_and_an_incident_shows_in_alerts(
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
    new_page: Callable[..., Any],
) -> None:
    config = upstream_config(
        upstream,
        tracing={"enabled": True},
        alerts={"enabled": True, "interval_s": 0.5, "warmup_samples": 6, "group_wait_s": 1.0},
    )
    config["models"] = {"assistant": {"deployments": ["fake-gpt"]}}
    server = server_factory(config)
    with server.http() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": "Hello?"}]},
        )
    request_id = answer.headers["x-iatros-request-id"]
    page = new_page()
    sign_in(page, server)
    page.goto(server.url + "/#/requests")
    row = page.locator(f"#req-table tr[data-request-id='{request_id}']")
    row.wait_for()
    row.click()
    page.locator("#req-detail .waterfall").wait_for()
    spans = page.locator("#req-detail .wf-row").all_inner_texts()
    assert any("chat assistant" in s for s in spans) and any("chat gpt-fake" in s for s in spans)
    assert "Hello?" not in page.locator("#req-detail").inner_text()  # log_content is off
    shot(page, "request-explorer", full_page=True)

    stop = threading.Event()
    statuses: list[int] = []
    traffic = threading.Thread(target=_traffic, args=(server.url, stop, statuses), daemon=True)
    traffic.start()
    try:
        monitor = server.app.state.services.monitor
        assert _wait(lambda: monitor.evaluations >= 8, 30)
        upstream.behaviour.fail_ratio = 0.5
        upstream.behaviour.fail_status = 500

        assert _wait(lambda: bool(monitor.alerting.active), 30)
        page.goto(server.url + "/#/alerts")
        cell = page.locator("#view-alerts tr[data-alert='deployment_failing']")
        cell.wait_for()
        assert "critical" in cell.inner_text() and "deployment:fake-gpt" in cell.inner_text()
        shot(page, "alerts", full_page=True)
    finally:
        upstream.behaviour.fail_status = None
        upstream.behaviour.fail_ratio = 0.0
        stop.set()
        traffic.join(10)
