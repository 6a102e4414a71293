"""A broken tool plugin is isolated: reported as skipped with the reason, never a crash;
``GET /v1/plugins`` and ``iatros plugins list`` show it beside the loaded ones."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from iatros.cli import app
from iatros.plugins import reset_report
from iatros.testing.fake_upstream import FakeUpstream
from iatros.tools import load_tools
from tests.agents.helpers import agent_config
from tests.conftest import RunningServer


@pytest.fixture()
def broken_plugin(tmp_path: Path) -> Iterator[None]:
    """A third-party distribution registering two tools: one that cannot import, one fine."""
    site = tmp_path / "site"
    (site / "clinic_tools-0.3.1.dist-info").mkdir(parents=True)
    (site / "clinic_tools-0.3.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: clinic-tools\nVersion: 0.3.1\n"
    )
    (site / "clinic_tools-0.3.1.dist-info" / "entry_points.txt").write_text(
        "[iatros.tools]\nbroken = clinic_tools_missing_module:Tool\n"
        "tooth_chart = clinic_tools:ToothChart\n"
    )
    (site / "clinic_tools.py").write_text(
        "class ToothChart:\n"
        "    name = 'tooth_chart'\n"
        "    description = 'FDI tooth names'\n"
        "    parameters = {'type': 'object', 'properties': {}}\n"
        "    async def __call__(self, arguments, context):\n"
        "        raise NotImplementedError\n"
    )
    sys.path.insert(0, str(site))
    reset_report()
    try:
        yield
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("clinic_tools", None)
        reset_report()


def test_a_broken_tool_plugin_is_skipped_and_listed(
    broken_plugin: None, upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    tools = load_tools()
    assert "tooth_chart" in tools and "broken" not in tools and "dose_by_weight" in tools
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))  # starts
    with server.http() as http:
        rows = http.get("/v1/plugins").json()["data"]
    by_name = {(r["group"], r["name"]): r for r in rows}
    broken = by_name[("iatros.tools", "broken")]
    assert broken["state"] == "skipped" and broken["distribution"] == "clinic-tools"
    assert broken["version"] == "0.3.1"
    assert broken["error"].startswith("ModuleNotFoundError: No module named")
    assert by_name[("iatros.tools", "tooth_chart")]["state"] == "loaded"
    assert by_name[("iatros.tools", "dose_by_weight")]["distribution"] == "iatros"
    result = CliRunner().invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    listed = [row for row in lines if "state" in row]  # (log lines go by too)
    assert {"broken": "skipped", "tooth_chart": "loaded"}.items() <= {
        r["name"]: r["state"] for r in listed if r["group"] == "iatros.tools"
    }.items()
