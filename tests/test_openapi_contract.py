"""The OpenAPI document is the truth: schemathesis, every check, against a live server.

A real ``iatros serve`` on loopback (the in-process test model, so no upstream), the
schemathesis CLI with a fixed seed and a bounded number of examples per operation, and
the checks in ``tests/contract/schemathesis.toml`` (all of them). A longer fuzz run with
a server restart afterwards is ``bench/fuzz_api.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import free_port, test_model_config, wait_until_ready

CONFIG = Path(__file__).parent / "contract" / "schemathesis.toml"
ADMIN = "sk-contract-admin-0123456789abcdef0123"
EXAMPLES = 25
SEED = 20261204


def server_config(data_dir: Path) -> dict[str, Any]:
    """Every capability switched on, on the in-process test model (and Whisper tiny.en for
    speech: it loads only if a request ever holds decodable speech)."""
    config = {**test_model_config(data_dir), "admin_key": ADMIN}
    config["providers"]["whisper"] = {"type": "whisper"}
    config["deployments"]["whisper-tiny-en"] = {
        "provider": "whisper",
        "model": "tiny.en",
        "kind": "transcription",
    }
    config["alerts"] = {"enabled": True}  # silences exist only while alerts are on
    return config


def run_schemathesis(
    url: str, examples: int, seed: int, report: Path, extra: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    return subprocess.run(
        [
            str(schemathesis),
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {ADMIN}",
            "--max-examples",
            str(examples),
            "--seed",
            str(seed),
            "--workers",
            "1",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--no-color",
            "--report",
            "junit",
            "--report-junit-path",
            str(report),
            *(extra or []),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )


def test_every_operation_keeps_its_documented_contract(tmp_path: Path) -> None:
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump(server_config(tmp_path / "data")))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
        stdout=(tmp_path / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("IATROS_")},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, server, timeout_s=120)
        result = run_schemathesis(url, EXAMPLES, SEED, tmp_path / "junit.xml")
        assert server.poll() is None, "the server died during the run"
    finally:
        server.terminate()
        server.wait(30)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
