"""Fixtures of the scribe tests: an Iatros server with the real local Whisper models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.fake_whisper import FakeWhisper
from tests.conftest import ADMIN_KEY, RunningServer, test_model_config


def whisper_models_dir() -> Path:
    """The assembled Whisper base model is kept across runs (its size is checked on use)."""
    path = Path(os.environ.get("IATROS_TEST_MODELS", Path.home() / ".cache" / "iatros-test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def speech_config(data_dir: Path, **extra: Any) -> dict[str, Any]:
    """The in-process test chat model plus the two packaged Whisper models."""
    config = test_model_config(data_dir)
    config["admin_key"] = ADMIN_KEY
    config["providers"]["whisper"] = {"type": "whisper", "models_dir": str(whisper_models_dir())}
    config["deployments"]["whisper-tiny-en"] = {
        "provider": "whisper",
        "model": "tiny.en",
        "kind": "transcription",
    }
    config["deployments"]["whisper-base"] = {
        "provider": "whisper",
        "model": "base",
        "kind": "transcription",
    }
    config["cache"] = {"enabled": False}
    config.update(extra)
    return config


def cloud_whisper_config(
    data_dir: Path, whisper: Any, languages: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    """Transcription by the fake OpenAI-compatible Whisper only (no local fallback), so its
    failures and delays are the transcriber's."""
    config = speech_config(data_dir)
    config["providers"]["cloud"] = {
        "type": "openai", "timeout_s": 5, "base_url": whisper.base_url, "api_key": whisper.key,
    }  # fmt: skip
    config["deployments"]["cloud-whisper"] = {
        "provider": "cloud", "model": "whisper-1", "kind": "transcription",
    }  # fmt: skip
    config["transcription"] = {"languages": languages or {"en": ["cloud-whisper"]}}
    return config


@pytest.fixture(scope="module")
def speech_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("speech-data")
    config = speech_config(data, transcription={"max_duration_s": 60})
    settings = load_settings(overrides=config)
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def fake_whisper() -> Iterator[FakeWhisper]:
    fake = FakeWhisper()
    fake.base_url = fake.start()  # type: ignore[attr-defined]
    yield fake
    fake.stop()
