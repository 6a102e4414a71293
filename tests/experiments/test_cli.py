"""``iatros releases`` and ``iatros experiments`` in-process, on a configured database."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from iatros.cli import app


def test_release_and_experiment_lifecycle_from_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "providers": {"t": {"type": "test"}},
        "deployments": {"a": {"provider": "t", "model": "test-chat"},
                        "b": {"provider": "t", "model": "test-chat"}},
        "models": {"assistant": {"deployments": ["a", "b"]}},
        "embeddings": {"default_model": None},
    }))  # fmt: skip
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, "--config", str(config)])
        assert result.exit_code == code, result.output
        return result.stdout.strip()

    blue = run("releases", "create", "--route", "assistant", "--deployments", "a")
    green = run("releases", "create", "--route", "assistant", "--deployments", "b,a",
                "--note", "try b first", "--system-prompt", "Be brief.", "--temperature", "0.2")
    shown = run("releases", "show", green)
    assert '"deployments"' in shown and '"system_prompt": "Be brief."' in shown
    run("releases", "promote", blue)
    run("releases", "promote", green, "--reason", "canary passed")
    listed = run("releases", "list", "--json")
    assert f'"id":"{green}"' in listed and '"state":"active"' in listed
    run("releases", "rollback", "assistant")
    lines = run("releases", "list", "--json").splitlines()
    assert '"state":"active"' in next(line for line in lines if f'"id":"{blue}"' in line)
    err = runner.invoke(app, ["releases", "create", "--route", "assistant", "--deployments",
                              "nope", "--config", str(config)])
    assert err.exit_code == 1 and "deployment_not_found" not in err.output  # message, not code
    assert "param: spec.deployments.0" in err.output

    bad = runner.invoke(app, ["experiments", "create", "--route", "assistant", "--primary",
                              "error_rate", "--variant", f"A={blue}:50", "--variant",
                              f"B={green}:40", "--config", str(config)])
    assert bad.exit_code == 1 and "sum to 90" in bad.output
    exp = run("experiments", "create", "--route", "assistant", "--primary", "error_rate",
              "--guardrail", "latency_ms", "--variant", f"A={blue}:50", "--variant",
              f"B={green}:50")
    run("experiments", "start", exp)
    report = run("experiments", "analysis", exp)
    assert "decision: continue" in report
    run("experiments", "stop", exp)
    stopped = runner.invoke(app, ["experiments", "promote", exp, "--config", str(config)])
    assert stopped.exit_code == 1 and "409" in stopped.output

    rollout = run("rollouts", "start", "--route", "assistant", "--candidate", green,
                  "--steps", "20,100", "--interval", "60")
    assert rollout in run("rollouts", "list")
    run("rollouts", "pause", rollout)
    run("rollouts", "abort", rollout)
    assert '"status": "aborted"' in run("rollouts", "show", rollout)
    again = runner.invoke(app, ["rollouts", "resume", rollout, "--config", str(config)])
    assert again.exit_code == 1 and "409" in again.output
