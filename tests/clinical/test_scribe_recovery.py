"""A transcription a restart interrupted is queued again, not left ``transcribing`` for
ever (the in-process queue loses its jobs with the process); after too many interruptions
it fails with a message that says what to do. A job that is still running is left alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.conftest import cloud_whisper_config, speech_config
from tests.clinical.fake_whisper import FakeWhisper
from tests.clinical.speech import dialogue_wav, needs_espeak
from tests.clinical.test_long_audio import TURNS, _poll, _post
from tests.conftest import RunningServer


def _upstream_server(tmp_path: Path, fake_whisper: FakeWhisper, **scribe: Any) -> RunningServer:
    config = cloud_whisper_config(tmp_path, fake_whisper)
    config["scribe"] = {"background_after_s": 0, "chunk_s": 20, "chunk_search_s": 4, **scribe}
    config["jobs"] = {"backend": "memory", "workers": 1}
    settings = load_settings(overrides=config)
    return RunningServer(settings, create_app(settings))


@pytest.fixture()
def whisper(fake_whisper: FakeWhisper) -> Iterator[FakeWhisper]:
    fake_whisper.received.clear()
    yield fake_whisper
    fake_whisper.fail_after = None
    fake_whisper.fail_status = None
    fake_whisper.delay_s = 0.0


def _interrupted(tmp_path: Path, whisper: FakeWhisper) -> tuple[str, int]:
    """Start a slow transcription, then stop the server in the middle of it."""
    whisper.delay_s = 1.0
    first = _upstream_server(tmp_path, whisper, stale_after_s=0.5, recovery_interval_s=0.2)
    audio, _ = dialogue_wav(TURNS[:12])
    resp = _post(first, audio)
    assert resp.status_code == 202, resp.text
    eid, total = resp.json()["id"], resp.json()["job"]["chunks_total"]
    # Longer than stale_after_s: the sweep runs meanwhile and must leave a running job be.
    time.sleep(1.5)
    with first.http() as http:
        running = http.get(f"/v1/scribe/encounters/{eid}").json()
    assert running["status"] == "transcribing" and not running["job"].get("resumed")
    first.stop()  # the in-process queue, and the job in it, are gone
    return eid, total


@needs_espeak
def test_an_interrupted_transcription_is_queued_again_after_a_restart(
    tmp_path: Path, whisper: FakeWhisper
) -> None:
    eid, total = _interrupted(tmp_path, whisper)
    whisper.delay_s = 0.0
    second = _upstream_server(tmp_path, whisper, stale_after_s=0.5, recovery_interval_s=0.2)
    try:
        second.wait_ready()
        done = _poll(second, eid, [], limit_s=60)
        assert done["status"] == "draft", done.get("job")
        assert done["job"]["resumed"] == 1 and done["job"]["chunks_done"] == total
        assert done["transcript"]["lines"] and done["note"]["sections"]
        assert "resume" not in done["transcript"]  # what the job needs is not shown
    finally:
        second.stop()


@needs_espeak
def test_too_many_interruptions_fail_the_encounter_with_what_to_do(
    tmp_path: Path, whisper: FakeWhisper
) -> None:
    eid, _ = _interrupted(tmp_path, whisper)
    # As if it had been queued again three times already.
    settings = load_settings(overrides=speech_config(tmp_path))
    app = create_app(settings)
    pending = app.state.services.scribe.pending
    with pending.store.db.session("default") as session:
        tenant = pending.store.row(session, eid).tenant_id
    assert pending.job_update(tenant, eid, resumed=3) == "transcribing"
    app.state.services.governance.db.engine.dispose()
    second = _upstream_server(tmp_path, whisper, stale_after_s=0.5, recovery_interval_s=0.2)
    try:
        second.wait_ready()
        failed = _poll(second, eid, [], limit_s=30)
        assert failed["status"] == "failed"
        assert failed["job"]["error"]["code"] == "interrupted"
        assert "upload the recording again" in failed["job"]["error"]["message"]
    finally:
        second.stop()
