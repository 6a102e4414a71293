"""Long recordings: cut on pauses, transcribed in chunks by a background job with progress.

The chunker and the stitching are checked on their own (exact chunk counts, cuts in
pauses, words heard twice at a seam said once); the job end to end over HTTP with the
real tiny.en model on two minutes of espeak dialogue cut into 20-second chunks; a chunk
that fails, a cancellation and bad files with a slow or failing upstream (the fake
OpenAI-compatible whisper server) so those tests take seconds.
"""

from __future__ import annotations

import io
import itertools
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jiwer
import numpy as np
import pytest

from iatros.api.app import create_app
from iatros.clinical.speech.audio import decode
from iatros.clinical.speech.chunking import Chunk, ChunkPlan, chunk_count, chunks, stitch
from iatros.config import load_settings
from iatros.providers.transcription import SAMPLE_RATE, Segment
from tests.clinical.conftest import speech_config
from tests.clinical.fake_whisper import FakeWhisper
from tests.clinical.speech import dialogue_wav, needs_espeak, silence_wav
from tests.conftest import ADMIN_KEY, RunningServer

TURNS = [
    ("doctor", "Good morning. What brings you in today?"),
    ("patient", "I have had a sharp pain in my lower back for about two weeks now."),
    ("doctor", "Did it start after an injury, or did it come on slowly?"),
    ("patient", "It started after I lifted a heavy box at work on a Monday."),
    ("doctor", "Does the pain go down into your legs, or stay in the back?"),
    ("patient", "Mostly in the back, but sometimes it goes down my right leg."),
    ("doctor", "Any numbness, tingling, or weakness in that leg?"),
    ("patient", "A little tingling in the evening, no weakness that I noticed."),
    ("doctor", "Have you taken anything for the pain so far?"),
    ("patient", "I took ibuprofen four hundred milligrams twice a day, it helps a bit."),
    ("doctor", "Any problems with your bladder or bowels since this started?"),
    ("patient", "No, nothing like that."),
    ("doctor", "Alright. Let me examine your back and check the reflexes in your legs."),
    ("doctor", "Your reflexes are normal and the straight leg raise is positive on the right."),
    ("doctor", "This looks like a lumbar strain with some irritation of the sciatic nerve."),
    ("patient", "Will I need an MRI scan?"),
    ("doctor", "Not now. We will start physiotherapy twice a week for four weeks."),
    ("doctor", "Keep taking ibuprofen with food, and stay as active as you comfortably can."),
    ("patient", "Should I stop going to the gym?"),
    ("doctor", "Avoid heavy lifting for now, but walking and gentle stretching are good."),
    ("patient", "Okay, that sounds reasonable."),
    ("doctor", "If the leg becomes weak or numb, come back straight away."),
    ("patient", "I will. Thank you, doctor."),
    ("doctor", "You are welcome. We will see you again in four weeks."),
]


def _wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# --- the chunker ------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [5.0, 29.0, 30.0, 33.9, 34.0, 61.0, 95.5])
def test_chunk_count_is_exact(seconds: float) -> None:
    plan = ChunkPlan(chunk_s=30.0, overlap_s=1.0, search_s=4.0)
    rng = np.random.default_rng(1)
    audio = _wav(rng.normal(0, 0.01, int(seconds * SAMPLE_RATE)).astype(np.float32))
    got = list(chunks(audio, "wav", 3600, plan))
    assert len(got) == chunk_count(seconds, plan)
    # the chunks cover the recording: each owns the span between its cuts, no gap
    assert got[0].keep_from_s == 0 and got[-1].keep_to_s == float("inf")
    for a, b in itertools.pairwise(got):
        assert a.keep_to_s == b.keep_from_s
        assert b.start_s == pytest.approx(b.keep_from_s - 1.0)  # the overlap
    decoded = decode(audio, 3600, 10**9).samples
    last = got[-1]
    np.testing.assert_allclose(last.samples[-100:], decoded[-100:], atol=1e-4)
    assert max(c.samples.size for c in got) <= (30 + 4 + 2) * SAMPLE_RATE


@needs_espeak
def test_cuts_fall_in_pauses() -> None:
    audio, _ = dialogue_wav(TURNS[:8], pause_s=0.7)
    samples = decode(audio, 3600, 10**9).samples
    plan = ChunkPlan(chunk_s=12.0, overlap_s=0.5, search_s=4.0)
    got = list(chunks(audio, "wav", 3600, plan))
    assert len(got) >= 3
    for chunk in got[1:]:
        cut = round(chunk.keep_from_s * SAMPLE_RATE)
        around = samples[cut - 800 : cut + 800]  # 0.1 s each side
        assert float(np.sqrt(np.mean(around**2))) < 0.002, chunk.keep_from_s


def _seg(start: float, end: float, text: str) -> Segment:
    return Segment(id=0, start=start, end=end, text=text)


def test_stitch_keeps_each_segment_once_with_absolute_times() -> None:
    left = Chunk(0, np.zeros(1, np.float32), 0.0, 0.0, 30.0)
    right = Chunk(1, np.zeros(1, np.float32), 29.0, 30.0, float("inf"))
    kept: list[Segment] = []
    stitch(kept, left, [_seg(0.5, 10.0, " a first sentence."),
                        _seg(27.0, 30.6, " the pain started on monday")], 1.0)  # fmt: skip
    # the right chunk heard the end of the same words and a segment the left one owns
    stitch(kept, right, [_seg(0.0, 0.8, " monday"), _seg(0.9, 4.0, " monday morning at work."),
                         _seg(5.0, 8.0, " it is worse at night.")], 1.0)  # fmt: skip
    assert [s.text.strip() for s in kept] == [
        "a first sentence.",
        "the pain started on monday",
        "morning at work.",
        "it is worse at night.",
    ]
    assert [s.id for s in kept] == [0, 1, 2, 3]
    assert kept[2].start == pytest.approx(29.9) and kept[3].end == pytest.approx(37.0)
    assert "seam_deduplicated" in kept[2].flags


def test_stitch_leaves_a_repeated_word_away_from_the_seam() -> None:
    left = Chunk(0, np.zeros(1, np.float32), 0.0, 0.0, 30.0)
    right = Chunk(1, np.zeros(1, np.float32), 29.0, 30.0, float("inf"))
    kept: list[Segment] = []
    stitch(kept, left, [_seg(10.0, 20.0, " no")], 1.0)
    stitch(kept, right, [_seg(3.0, 5.0, " no, not at all.")], 1.0)
    assert [s.text.strip() for s in kept] == ["no", "no, not at all."]


# --- the job over HTTP -------------------------------------------------------------------


def _server(data: Path, **scribe: Any) -> RunningServer:
    config = speech_config(data)
    config["providers"]["t"]["reply"] = "The patient reports low back pain for two weeks [2]."
    config["scribe"] = {"background_after_s": 0, "chunk_s": 20, "chunk_search_s": 4,
                        "chunk_overlap_s": 1, **scribe}  # fmt: skip
    config["jobs"] = {"backend": "memory", "workers": 1}
    settings = load_settings(overrides=config)
    return RunningServer(settings, create_app(settings))


@pytest.fixture(scope="module")
def long_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = _server(tmp_path_factory.mktemp("long-audio"))
    yield server
    server.stop()


def _post(server: RunningServer, audio: bytes, key: str | None = ADMIN_KEY) -> httpx.Response:
    with server.http(key) as http:
        return http.post(
            "/v1/scribe/encounters",
            files={"file": ("visit.wav", audio, "audio/wav")},
            data={"template": "soap", "language": "en", "patient_id": "p-77"},
        )


def _poll(server: RunningServer, eid: str, seen: list[float], limit_s: float = 240) -> Any:
    deadline = time.time() + limit_s
    with server.http() as http:
        while True:
            body = http.get(f"/v1/scribe/encounters/{eid}").json()
            seen.append(body["progress"])
            if body["status"] != "transcribing" or time.time() > deadline:
                return body
            time.sleep(0.25)


@needs_espeak
def test_long_recording_is_transcribed_by_a_job_with_progress(
    long_server: RunningServer,
) -> None:
    audio, starts = dialogue_wav(TURNS)
    duration = starts[-1] + 4
    assert duration > 90  # several chunks of 20 s
    resp = _post(long_server, audio)
    assert resp.status_code == 202, resp.text
    enc = resp.json()
    assert enc["status"] == "transcribing" and enc["transcript"]["lines"] == []
    assert 0.0 <= enc["progress"] < 1.0
    total = enc["job"]["chunks_total"]
    assert total == chunk_count(enc["transcript"]["duration_s"], ChunkPlan(20, 1, 4)) >= 4
    with long_server.http() as http:  # a note that does not exist yet cannot be signed
        early = http.post(f"/v1/scribe/encounters/{enc['id']}/sign", json={"name": "Dr A"})
    assert early.status_code == 409 and early.json()["error"]["code"] == "note_not_ready"
    seen: list[float] = []
    done = _poll(long_server, enc["id"], seen)
    assert done["status"] == "draft", done.get("job")
    assert done["progress"] == 1.0 and done["job"]["chunks_done"] == total
    assert seen == sorted(seen) and any(0 < p < 1 for p in seen), seen
    lines = done["transcript"]["lines"]
    assert done["transcript"]["chunks"] == total
    # timestamps are absolute: increasing, reaching the end of the recording
    assert all(a["start"] <= b["start"] for a, b in itertools.pairwise(lines))
    assert lines[-1]["end"] > duration - 10
    said = " ".join(line["text"] for line in lines)
    reference = " ".join(text for _, text in TURNS)
    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                          jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                          jiwer.ReduceToListOfListOfWords()])  # fmt: skip
    error = jiwer.wer(reference, said, reference_transform=norm, hypothesis_transform=norm)
    assert error < 0.3, (error, said)
    assert done["note"]["sections"] and done["note"]["coverage"]["statements"] > 0
    assert any(m["name"] == "ibuprofen" for m in done["note"]["structured"]["medications"])
    with long_server.http() as http:
        job = http.get(f"/admin/jobs/{done['job']['id']}")
        other = http.post(f"/v1/scribe/encounters/{enc['id']}/cancel")
    assert job.status_code == 200 and job.json()["state"] == "done", job.text
    assert other.status_code == 409 and other.json()["error"]["code"] == "not_transcribing"


def test_bad_long_files_are_refused_before_queueing(long_server: RunningServer) -> None:
    with long_server.http() as http:
        before = len(http.get("/v1/scribe/encounters").json()["data"])
    corrupt = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40
    for audio, code in ((corrupt, "corrupt_audio"), (b"%PDF-1.4 x", "unsupported_audio_format"),
                        (b"", "empty_audio")):  # fmt: skip
        resp = _post(long_server, audio)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == code and resp.json()["error"]["param"] == "file"
    with long_server.http() as http:
        assert len(http.get("/v1/scribe/encounters").json()["data"]) == before


def test_a_long_silence_fails_its_job_with_no_speech(long_server: RunningServer) -> None:
    """Speech is looked for chunk by chunk (not before the 202): none at all fails the job."""
    resp = _post(long_server, silence_wav(50.0))
    assert resp.status_code == 202, resp.text
    enc = _poll(long_server, resp.json()["id"], [], limit_s=60)
    assert enc["status"] == "failed" and enc["job"]["error"]["code"] == "no_speech"
    assert enc["job"]["error"]["message"].startswith("No speech was found in the 50.0 s")
    assert enc["transcript"]["lines"] == []


def test_too_long_for_the_scribe(tmp_path: Path) -> None:
    server = _server(tmp_path, max_duration_s=30)
    try:
        resp = _post(server, silence_wav(45.0))
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == "audio_too_long" and "scribe.max_duration_s" in error["message"]
    finally:
        server.stop()


@pytest.fixture()
def upstream_long(tmp_path: Path, fake_whisper: FakeWhisper) -> Iterator[RunningServer]:
    """Chunks go to the fake upstream only (no local fallback): its failures are the job's."""
    fake_whisper.received.clear()
    config = speech_config(tmp_path)
    config["providers"]["cloud"] = {"type": "openai", "timeout_s": 5,
                                    "base_url": fake_whisper.base_url,  # type: ignore[attr-defined]
                                    "api_key": fake_whisper.key}  # fmt: skip
    config["deployments"]["cloud-whisper"] = {
        "provider": "cloud", "model": "whisper-1", "kind": "transcription",
    }  # fmt: skip
    config["transcription"] = {"languages": {"en": ["cloud-whisper"]}}
    config["scribe"] = {"background_after_s": 0, "chunk_s": 20, "chunk_search_s": 4}
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    yield server
    server.stop()
    fake_whisper.fail_after = None
    fake_whisper.fail_status = None
    fake_whisper.delay_s = 0.0


@needs_espeak
def test_a_failed_chunk_fails_the_job_with_a_precise_message(
    upstream_long: RunningServer, fake_whisper: FakeWhisper
) -> None:
    audio, _ = dialogue_wav(TURNS[:12])
    fake_whisper.fail_after, fake_whisper.fail_status = 1, 500
    resp = _post(upstream_long, audio)
    assert resp.status_code == 202, resp.text
    enc = _poll(upstream_long, resp.json()["id"], [], limit_s=60)
    assert enc["status"] == "failed"
    message = enc["job"]["error"]["message"]
    assert message.startswith("Chunk 2 of "), message
    assert "00:1" in message and "could not be transcribed" in message  # its time span
    assert enc["transcript"]["lines"] == [] and enc["note"]["sections"] == []  # nothing half
    with upstream_long.http() as http:
        job = http.get(f"/admin/jobs/{enc['job']['id']}").json()
        edit = http.put(f"/v1/scribe/encounters/{enc['id']}/note",
                        json={"sections": [{"id": "subjective", "statements": []}]})  # fmt: skip
        exports = [
            http.get(f"/v1/scribe/encounters/{enc['id']}/{kind}") for kind in ("pdf", "fhir")
        ]
    assert job["state"] == "dead" and job["error"] == message
    for refused in (edit, *exports):
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "note_not_ready"


@needs_espeak
def test_cancel_a_transcription(upstream_long: RunningServer, fake_whisper: FakeWhisper) -> None:
    audio, _ = dialogue_wav(TURNS[:12])
    fake_whisper.delay_s = 1.5
    resp = _post(upstream_long, audio)
    assert resp.status_code == 202, resp.text
    eid = resp.json()["id"]
    with upstream_long.http() as admin:
        other = admin.post("/admin/keys", json={"tenant": "clinic-b", "role": "clinician"})
    with upstream_long.http(other.json()["key"]) as mallory:
        refused = mallory.post(f"/v1/scribe/encounters/{eid}/cancel")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "encounter_not_found"
    with upstream_long.http() as http:
        cancelled = http.post(f"/v1/scribe/encounters/{eid}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        job_id = cancelled.json()["job"]["id"]
        deadline = time.time() + 20
        while http.get(f"/admin/jobs/{job_id}").json()["state"] not in ("cancelled", "done"):
            assert time.time() < deadline
            time.sleep(0.2)
        assert http.get(f"/admin/jobs/{job_id}").json()["state"] == "cancelled"
        time.sleep(2)  # the chunk in flight finishes: nothing is written over the cancellation
        after = http.get(f"/v1/scribe/encounters/{eid}").json()
    assert after["status"] == "cancelled" and after["transcript"]["lines"] == []
    assert len(fake_whisper.received) < resp.json()["job"]["chunks_total"]


@needs_espeak
def test_cli_waits_for_the_job_and_reports_a_failure(
    upstream_long: RunningServer, fake_whisper: FakeWhisper, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from iatros.cli import app

    audio, _ = dialogue_wav(TURNS[:12])
    recording = tmp_path / "visit.wav"
    recording.write_bytes(audio)
    remote = ["--url", upstream_long.url, "--key", ADMIN_KEY]
    runner = CliRunner()
    made = runner.invoke(
        app, ["scribe", "new", "--audio", str(recording), "--language", "en", *remote]
    )
    assert made.exit_code == 0, made.output
    assert "transcribing enc_" in made.output and " draft" in made.output
    assert "linked statements" in made.output
    fake_whisper.fail_after, fake_whisper.fail_status = len(fake_whisper.received) + 1, 503
    failed = runner.invoke(
        app, ["scribe", "new", "--audio", str(recording), "--language", "en", *remote]
    )
    assert failed.exit_code == 1
    assert "failed: Chunk 2 of" in failed.output and "could not be transcribed" in failed.output


@needs_espeak
def test_the_job_runs_on_the_shared_redis_queue(tmp_path: Path, fake_whisper: FakeWhisper) -> None:
    """With Redis the job is a Redis Streams job (any instance or ``iatros worker`` may run
    it); progress, completion and cancellation behave the same."""
    import uuid

    import redis

    url, prefix = "redis://127.0.0.1:6379/0", f"test:scribe:{uuid.uuid4().hex[:10]}:"
    fake_whisper.received.clear()
    config = speech_config(tmp_path)
    config["providers"]["cloud"] = {"type": "openai", "timeout_s": 5,
                                    "base_url": fake_whisper.base_url,  # type: ignore[attr-defined]
                                    "api_key": fake_whisper.key}  # fmt: skip
    config["deployments"]["cloud-whisper"] = {
        "provider": "cloud", "model": "whisper-1", "kind": "transcription",
    }  # fmt: skip
    config["transcription"] = {"languages": {"en": ["cloud-whisper"]}}
    config["scribe"] = {"background_after_s": 0, "chunk_s": 20, "chunk_search_s": 4}
    config.update(redis_url=url, secret_key="s" * 40, jobs={"prefix": prefix, "poll_s": 0.2})
    settings = load_settings(overrides=config)
    server = RunningServer(settings, create_app(settings))
    audio, _ = dialogue_wav(TURNS[:12])
    try:
        assert server.app.state.services.jobs.kind == "redis"
        resp = _post(server, audio)
        assert resp.status_code == 202, resp.text
        done = _poll(server, resp.json()["id"], [], limit_s=60)
        assert done["status"] == "draft" and done["progress"] == 1.0
        assert len(done["transcript"]["lines"]) == done["job"]["chunks_total"] >= 3
        assert done["transcript"]["lines"][1]["start"] > 15  # absolute times
        fake_whisper.delay_s = 1.5
        second = _post(server, audio).json()
        with server.http() as http:
            cancelled = http.post(f"/v1/scribe/encounters/{second['id']}/cancel")
            assert cancelled.json()["status"] == "cancelled", cancelled.text
            deadline = time.time() + 20
            while http.get(f"/admin/jobs/{second['job']['id']}").json()["state"] != "cancelled":
                assert time.time() < deadline
                time.sleep(0.2)
            time.sleep(2)
            after = http.get(f"/v1/scribe/encounters/{second['id']}").json()
        assert after["status"] == "cancelled" and after["transcript"]["lines"] == []
    finally:
        fake_whisper.delay_s = 0.0
        server.stop()
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
