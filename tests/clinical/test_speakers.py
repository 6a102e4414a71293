"""Speaker turns: the model votes on the lines the heuristics leave open, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from iatros.api.app import create_app
from iatros.clinical.scribe.speakers import EXAMPLES, messages, parse
from iatros.clinical.scribe.transcript import guess_speaker
from iatros.config import load_settings
from tests.clinical.conftest import speech_config
from tests.clinical.speech import dialogue_wav, needs_espeak
from tests.conftest import RunningServer

QUESTION = "Do you have any allergies to medicines?"
OPEN = "Penicillin gives me a rash all over."


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        (" Patient", "patient"),
        ("Doctor.", "clinician"),
        (" the dentist", "clinician"),
        ("PATIENT: yes", "patient"),
        (" I think", None),
        ("", None),
        ("x" * 60 + " doctor", None),  # a label far into rambling is not an answer
    ],
)
def test_parse_takes_the_first_label_or_none(answer: str, label: str | None) -> None:
    assert parse(answer) == label


def test_prompt_is_a_few_shot_exchange_ending_on_the_line() -> None:
    prompt = messages("What brings you in?", OPEN)
    assert prompt[0]["role"] == "system"
    assert len(prompt) == 2 + 2 * len(EXAMPLES)
    assert [m["role"] for m in prompt[1:3]] == ["user", "assistant"]
    assert prompt[-1] == {
        "role": "user",
        "content": f'After: "What brings you in?"\nLine: "{OPEN}"',
    }
    assert all(m["content"] in ("Doctor", "Patient") for m in prompt[2:-1:2])


def _create(server: RunningServer, audio: bytes) -> dict[str, object]:
    with server.http() as http:
        resp = http.post(
            "/v1/scribe/encounters",
            files={"file": ("visit.wav", audio, "audio/wav")},
            data={"template": "soap", "language": "en"},
        )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


@needs_espeak
def test_the_model_labels_only_the_open_lines(tmp_path: Path) -> None:
    assert guess_speaker(QUESTION) == "clinician" and guess_speaker(OPEN) is None
    audio, _ = dialogue_wav([("doctor", QUESTION), ("patient", OPEN)], pause_s=1.5)
    config = speech_config(tmp_path)
    # every vote says Patient: the question stays the clinician's (the heuristics were sure)
    config["providers"]["t"]["reply"] = "Patient"
    config["scribe"] = {"speaker_model": True}
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    try:
        lines = _create(server, audio)["transcript"]["lines"]  # type: ignore[index]
    finally:
        server.stop()
    # (Whisper does not always hear "penicillin" in espeak's voice: the lines go by order)
    assert len(lines) == 2, lines
    assert lines[0]["text"].lower().strip().startswith("do you have")
    assert guess_speaker(lines[1]["text"]) is None
    assert [line["speaker"] for line in lines] == ["clinician", "patient"]


@needs_espeak
def test_without_the_model_open_lines_stay_open(tmp_path: Path) -> None:
    audio, _ = dialogue_wav([("doctor", QUESTION), ("patient", OPEN)], pause_s=1.5)
    config = speech_config(tmp_path)
    config["providers"]["t"]["reply"] = "Doctor"  # a vote would make it the clinician's
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    try:
        lines = _create(server, audio)["transcript"]["lines"]  # type: ignore[index]
    finally:
        server.stop()
    assert len(lines) == 2 and guess_speaker(lines[1]["text"]) is None, lines
    assert [line["speaker"] for line in lines] == ["clinician", None]
