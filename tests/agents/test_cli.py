"""``iatros agents schema`` and ``iatros agents apply DIR`` (in-process, idempotent)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from iatros.agents.store import AgentStore
from iatros.cli_agents import agents_app
from iatros.store.db import Database, database_url
from tests.agents.helpers import GALLERY


def test_schema_prints_the_published_schema() -> None:
    result = CliRunner().invoke(agents_app, ["schema"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output)["$id"].endswith("/agent.json")


def test_apply_a_directory_twice_changes_nothing_the_second_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(data), "providers": {"t": {"type": "test"}},
        "deployments": {"t-chat": {"provider": "t", "model": "m"},
                        "t-embed": {"provider": "t", "model": "e", "kind": "embedding"}},
        "embeddings": {"default_model": "t-embed"},
        "models": {"assistant": {"deployments": ["t-chat"]}},
        "agents": {"default_tools": ["review_ask", "dose_by_weight", "dental_red_flags"]},
    }))  # fmt: skip
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in ("dental-triage.yaml", "practice-faq.yaml"):
        shutil.copy(str(GALLERY.joinpath(name)), folder / name)
    runner = CliRunner()
    first = runner.invoke(agents_app, ["apply", str(folder), "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert "workflow dental-phone-triage v1 created" in first.output
    assert "agent practice-faq v1 created" in first.output
    again = runner.invoke(agents_app, ["apply", str(folder), "--config", str(config)])
    assert again.exit_code == 0 and again.output.count("unchanged") == 2, again.output
    (folder / "practice-faq.yaml").write_text(
        (folder / "practice-faq.yaml").read_text().replace("temperature: 0", "temperature: 0.2")
    )
    third = runner.invoke(agents_app, ["apply", str(folder), "--config", str(config)])
    assert "agent practice-faq v2 created" in third.output, third.output
    (folder / "broken.yaml").write_text("kind: agent\nname: b\nmodel: assistant\n")
    bad = runner.invoke(agents_app, ["apply", str(folder), "--config", str(config)])
    assert bad.exit_code == 1
    assert "broken.yaml:1: instructions: Field required" in bad.output.replace("\n", "")
    db = Database(database_url(None, data))
    try:
        rows = asyncio.run(AgentStore(db).templates("default"))
    finally:
        db.close()
    assert {(r["name"], r["version"]) for r in rows} == {("dental-phone-triage", 1),
                                                         ("practice-faq", 2)}  # fmt: skip
