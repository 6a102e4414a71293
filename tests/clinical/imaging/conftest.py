"""A server with the in-process test chat model and the fake vision model on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from iatros.testing.fake_vision import FakeVision
from tests.conftest import ADMIN_KEY, RunningServer, test_model_config


@pytest.fixture(scope="module")
def fake_vision() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


def radiograph_config(data_dir: Path, vision: FakeVision | None, **extra: Any) -> dict[str, Any]:
    config = test_model_config(data_dir)
    config["admin_key"] = ADMIN_KEY
    config["cache"] = {"enabled": False}
    if vision is not None:
        config["providers"]["v"] = {"type": "openai", "base_url": vision.base_url, "api_key": "k"}
        config["deployments"]["vision-a"] = {"provider": "v", "model": "vision-a", "vision": True}
        config["models"]["radiology"] = {"deployments": ["vision-a"]}
    config.update(extra)
    return config


@pytest.fixture(scope="module")
def radiograph_server(
    tmp_path_factory: pytest.TempPathFactory, fake_vision: FakeVision
) -> Iterator[RunningServer]:
    data = tmp_path_factory.mktemp("radiographs")
    config = radiograph_config(
        data,
        fake_vision,
        imaging={"max_upload_bytes": 32 * 1024 * 1024, "max_file_bytes": 24 * 1024 * 1024},
    )
    settings = load_settings(overrides=config)
    running = RunningServer(settings, create_app(settings))
    yield running
    running.stop()


def wait_ready(http: httpx.Client, study_id: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.time() + timeout_s
    while True:
        study: dict[str, Any] = http.get(f"/v1/radiographs/studies/{study_id}").json()
        if study["status"] != "processing":
            return study
        if time.time() > deadline:
            raise AssertionError(f"study still processing: {study}")
        time.sleep(0.05)
