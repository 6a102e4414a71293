"""Audio sent without a language: with one language configured it goes to that language's
models (an English-only practice need not say "en" every time); with several and no "*"
route it is a 400 that names what is configured and how to send it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.conftest import cloud_whisper_config
from tests.clinical.fake_whisper import FakeWhisper
from tests.clinical.speech import needs_espeak, speak
from tests.conftest import RunningServer


def _server(tmp_path: Path, whisper: FakeWhisper, languages: dict[str, list[str]]) -> Any:
    config = cloud_whisper_config(tmp_path, whisper, languages)
    settings = load_settings(overrides=config)
    return RunningServer(settings, create_app(settings))


@pytest.fixture()
def servers(tmp_path: Path, fake_whisper: FakeWhisper) -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        server.stop()


@needs_espeak
def test_audio_without_a_language_goes_to_the_only_one_configured(
    tmp_path: Path, fake_whisper: FakeWhisper, servers: list[RunningServer]
) -> None:
    audio = speak("The patient has a toothache on the lower left side.")
    only_en = _server(tmp_path / "a", fake_whisper, {"en": ["cloud-whisper"]})
    servers.append(only_en)
    with only_en.http() as http:
        ok = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                       data={"model": "whisper-1"})  # fmt: skip
    assert ok.status_code == 200, ok.text
    assert "language=en (the only one configured)" in ok.headers["x-iatros-route"]

    two = _server(tmp_path / "b", fake_whisper, {"en": ["cloud-whisper"], "fr": ["cloud-whisper"]})
    servers.append(two)
    with two.http() as http:
        refused = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)},
                            data={"model": "whisper-1"})  # fmt: skip
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "unsupported_language" and error["param"] == "language"
    assert "audio without a language" in error["message"] and "en, fr" in error["message"]
