"""deploy/prometheus and deploy/grafana: checked by Debian's promtool and amtool, a real
Prometheus scraping a running Iatros and evaluating the rules, and every dashboard query's
metrics present in Iatros's /metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, free_port, upstream_config

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
_METRIC = re.compile(r"\biatros_[a-z0-9_]+")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is missing (scripts/install-prometheus.sh installs it)")
        pytest.skip(f"{name} is missing: run scripts/install-prometheus.sh")
    return found


def _run(*args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _tool("promtool")
    assert "SUCCESS: 13 rules found" in _run(promtool, "check", "rules", "iatros-rules.yml")
    assert "SUCCESS" in _run(promtool, "test", "rules", "iatros-rules.test.yml")
    _run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in _run(_tool("amtool"), "check-config", "alertmanager.yml")


def _exposed(server: RunningServer) -> set[str]:
    text = httpx.get(server.url + "/metrics").text
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def _known(name: str, exposed: set[str]) -> bool:
    if name in exposed:
        return True
    return any(name.endswith(s) and name[: -len(s)] in exposed for s in _SUFFIXES)


def _dashboards() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]


def test_dashboards_are_well_formed_and_query_only_metrics_iatros_exposes(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream))
    exposed = _exposed(server)
    dashboards = _dashboards()
    assert {d["uid"] for d in dashboards} == {"iatros-ops", "iatros-cost", "iatros-safety"}
    used: set[str] = set()
    for dashboard in dashboards:
        assert dashboard["title"].startswith("Iatros") and dashboard["schemaVersion"] >= 30
        names = [v["name"] for v in dashboard["templating"]["list"]]
        assert "datasource" in names
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)) and ids
        for panel in dashboard["panels"]:
            assert panel["type"] in ("timeseries", "stat")
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                metrics = _METRIC.findall(target["expr"])
                assert metrics, target["expr"]
                used.update(metrics)
    rules = yaml.safe_load((PROMETHEUS / "iatros-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used.update(_METRIC.findall(rule["expr"]))
    missing = sorted(m for m in used if not _known(m, exposed))
    assert missing == [], f"queried but not in /metrics: {missing}"
    for provisioning in (GRAFANA / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(provisioning.read_text())["apiVersion"] == 1


def test_a_real_prometheus_scrapes_iatros_and_evaluates_the_rules(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, tmp_path: Path
) -> None:
    prometheus = _tool("prometheus")
    server = server_factory(upstream_config(upstream))
    with server.http() as client:
        for n in range(5):
            answer = client.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": f"q{n}"}]},
            )
            assert answer.status_code == 200
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS / "iatros-rules.yml")],
        "scrape_configs": [
            {
                "job_name": "iatros",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 45
        value = None
        rules: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                query = httpx.get(f"{api}/query", params={"query": "sum(iatros_requests_total)"})
                result = query.json()["data"]["result"]
                value = float(result[0]["value"][1]) if result else None
                groups = httpx.get(f"{api}/rules").json()["data"]["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
            except (httpx.HTTPError, KeyError, ValueError):
                continue
            if value is not None and rules and all(r["health"] != "unknown" for r in rules):
                break
        assert value is not None and value >= 5, value
        assert len(rules) == 13
        assert [r["name"] for r in rules if r["health"] != "ok"] == []
        targets = httpx.get(f"{api}/targets").json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
        # a rule's expression over the scraped series: the breaker gauge is there (closed)
        state = httpx.get(f"{api}/query", params={"query": "iatros_deployment_state"}).json()
        deployments = {r["metric"]["deployment"] for r in state["data"]["result"]}
        assert {"fake-gpt", "fake-azure-gpt"} <= deployments
    finally:
        process.terminate()
        process.wait(20)


def test_feedback_is_counted_by_route_and_rating(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    """The clinical-safety dashboard's and IatrosThumbsDownRateHigh's metric."""
    server = server_factory(upstream_config(upstream))
    with server.http() as client:
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "assistant", "messages": [{"role": "user", "content": "rate me"}]},
        )
        request_id = answer.headers["x-iatros-request-id"]
        for rating in ("up", "down"):  # a changed rating counts again
            rated = client.post("/v1/feedback", json={"request_id": request_id, "rating": rating})
            assert rated.status_code == 201, rated.text
        unknown = client.post("/v1/feedback", json={"request_id": "req_nope", "rating": "up"})
        assert unknown.status_code == 404
        text = client.get("/metrics").text
    assert 'iatros_feedback_total{rating="up",route="assistant"} 1.0' in text or (
        'iatros_feedback_total{route="assistant",rating="up"} 1.0' in text
    )
    assert 'iatros_feedback_total{route="assistant",rating="down"} 1.0' in text or (
        'iatros_feedback_total{rating="down",route="assistant"} 1.0' in text
    )
    assert text.count("iatros_feedback_total{") == 2  # nothing for the unknown request
