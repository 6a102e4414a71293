"""The ``iatros`` command, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, free_port, wait_until_ready


def iatros(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iatros", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_chat_streams_from_a_running_server(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    result = iatros("chat", "When are you open?", "--url", gateway_server.url, "--key", ADMIN_KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == upstream.behaviour.answer


def test_chat_reports_server_errors(gateway_server: RunningServer, upstream: FakeUpstream) -> None:
    result = iatros("chat", "Hi", "--url", gateway_server.url, "--key", "sk-wrong")
    assert result.returncode == 1
    assert "error 401" in result.stderr and "Incorrect API key" in result.stderr
    result = iatros(
        "chat", "Hi", "--model", "nope", "--url", gateway_server.url, "--key", ADMIN_KEY
    )
    assert result.returncode == 1
    assert "error 404" in result.stderr
    upstream.behaviour.drop_after_chunks = 2
    result = iatros("chat", "Hi", "--url", gateway_server.url, "--key", ADMIN_KEY)
    assert result.returncode == 1
    assert "closed the stream before it completed" in result.stderr


def test_models_lists_configured_and_served_models(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    local = iatros("models")
    assert local.returncode == 0
    assert "assistant" in local.stdout and "gemma-3-270m" in local.stdout
    remote = iatros("models", "--url", gateway_server.url, "--key", ADMIN_KEY)
    assert remote.returncode == 0
    assert "fake-azure-gpt" in remote.stdout


def test_bad_config_exits_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server: {port: -1}\n")
    result = iatros("models", "--config", str(config))
    assert result.returncode == 2
    assert "server.port" in result.stderr
    result = iatros("serve", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.model
def test_chat_in_process_with_the_local_model(tmp_path: Path) -> None:
    from tests.conftest import _models_dir

    config = tmp_path / "local.yaml"
    config.write_text(
        "providers:\n"
        f"  local: {{type: local, models_dir: '{_models_dir()}'}}\n"
        "deployments:\n  gemma: {provider: local, model: gemma-3-270m, max_output_tokens: 24}\n"
        "models:\n  assistant: {deployments: [gemma]}\n"
        "embeddings: {}\n"
    )
    result = iatros("chat", "What is the capital of France?", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


@pytest.mark.model
def test_serve_runs_the_embedded_defaults(tmp_path: Path) -> None:
    """What ``make run`` does: the default config, local models, a working chat."""
    from tests.conftest import _models_dir

    port = free_port()
    env = {**os.environ, "IATROS_DATA_DIR": str(tmp_path / "data")}
    env.pop("IATROS_CONFIG", None)
    env.pop("IATROS_ADMIN_KEY", None)
    config = tmp_path / "defaults-with-cached-model.yaml"
    config.write_text(
        "providers:\n"
        f"  local: {{type: local, models_dir: '{_models_dir()}'}}\n"
        "  minilm: {type: sentence-transformers}\n"
        "  whisper: {type: whisper}\n"  # a file's providers: replace the defaults' whole
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, proc, timeout_s=90)
        resp = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": "assistant",
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 16,
            },
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert proc.returncode in (0, -15), output  # uvicorn re-raises SIGTERM after a clean shutdown
    assert '"msg":"iatros stopped"' in output
    # Privacy: the request log carries metadata only, never the prompt.
    assert '"msg":"request"' in output
    assert "Hello" not in output


@pytest.mark.model
def test_ingest_reports_per_file_and_continues(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hours.md").write_text("# Opening hours\n\nMonday to Friday, 8:30 to 18:00.\n")
    (docs / "fluoride.txt").write_text("Fluoride varnish is applied twice a year for children.")
    (docs / "broken.pdf").write_bytes(b"\x00\x01 not a pdf")
    env = {"IATROS_DATA_DIR": str(tmp_path / "data")}
    result = iatros(
        "ingest", str(docs), str(tmp_path / "missing.txt"), "--collection", "clinic", env=env
    )
    assert result.returncode == 1
    assert "files 4, indexed 2, chunks 2, skipped 0, errors 2" in result.stdout
    assert "broken.pdf: not a PDF file" in result.stderr
    assert "missing.txt: no such file" in result.stderr
    again = iatros("ingest", str(docs / "hours.md"), "--collection", "clinic", env=env)
    assert again.returncode == 0
    assert "skipped 1" in again.stdout  # unchanged: not indexed twice
