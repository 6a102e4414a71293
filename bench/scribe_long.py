"""Long recordings: peak memory and wall time of the scribe's chunked background job.

    .venv/bin/python bench/scribe_long.py                  # 10 min job + 45 min cutting
    .venv/bin/python bench/scribe_long.py --job-minutes 45 # the whole 45 minutes (slow)

**Audio.** ACI-Bench valid dialogues (read in place) spoken by espeak-ng, doctor and
patient in two voices with pauses between turns, one after the other until the wanted
length: a 22.05 kHz mono 16-bit WAV (45 minutes are 119 MB), built once per length into
the system's temporary directory.

**Measured**, each in a fresh Python process, its resident memory sampled every 0.2 s
from ``/proc/self/status`` (and ``ru_maxrss``):

- ``job``: the real path of ``POST /v1/scribe/encounters`` for a long recording —
  :meth:`ScribeService.create` stores the encounter sealed and queues ``scribe.transcribe``
  on the in-process queue, whose worker decodes chunk by chunk, cuts on pauses, runs
  Whisper tiny.en on each chunk, stitches, and drafts the note with the local model.
  Wall time from the upload to the draft, peak memory, and memory once the models are
  loaded (the baseline the recording adds to).
- ``cut``: the same decoding and cutting on a longer file without Whisper, to show that
  memory stays flat with length (Whisper's own memory does not depend on the length: one
  chunk at a time).
- ``decode_whole``: what decoding the whole file at once (the short-recording path) costs,
  for comparison.

Writes ``bench/results/scribe-long.{json,md}``. Minutes of CPU: not part of CI.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

from scribe_bench import VOICES, dialogues, speak, turns  # noqa: E402

RESULTS = BENCH / "results"
RATE = 22050


def synthesize(minutes: float) -> Path:
    """The dialogues spoken until ``minutes`` of audio, cached as a WAV file."""
    path = Path(tempfile.gettempdir()) / f"iatros-scribe-long-{minutes:g}min.wav"
    if path.is_file():
        return path
    want = int(minutes * 60 * RATE)
    pause = np.zeros(int(0.5 * RATE), dtype=np.int16)
    pieces: list[np.ndarray] = []
    have = 0
    rows = dialogues()
    i = 0
    while have < want:
        for speaker, text in turns(rows[i % len(rows)]["dialogue"], None):
            voice, speed = VOICES[speaker]
            wav = subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text],
                check=True, capture_output=True, timeout=120,
            ).stdout  # fmt: skip
            with wave.open(io.BytesIO(wav)) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
            pieces += [pcm, pause]
            have += pcm.size + pause.size
            if have >= want:
                break
        i += 1
    audio = np.concatenate(pieces)[:want]
    partial = path.with_suffix(".partial")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(audio.tobytes())
    partial.rename(path)
    return path


class RssSampler:
    """Resident memory of this process, sampled on a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            time.sleep(self.every_s)

    def __enter__(self) -> RssSampler:
        self.peak_mb = self.now_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure_job(path: Path, chunk_s: float) -> dict[str, Any]:
    from iatros.auth import Principal
    from iatros.config import load_settings
    from iatros.services import Services

    os.environ["IATROS_DATA_DIR"] = str(ROOT / "data")  # the packaged models are kept there
    data_dir = Path(tempfile.mkdtemp(prefix="scribe-long-"))
    settings = load_settings(overrides={
        "data_dir": str(data_dir), "cache": {"enabled": False},
        "jobs": {"backend": "memory", "workers": 1},
        "scribe": {"background_after_s": 0, "chunk_s": chunk_s},
    })  # fmt: skip
    services = Services.build(settings, run_jobs=False)
    await services.start()
    await services.jobs.start(1)
    principal = Principal(tenant="bench", key_id="bench", role="admin")
    # load both models first: the baseline is the process with its models, before the audio
    from iatros.gateway.context import RequestContext

    warm = speak([("doctor", "Good morning, what brings you in today?")])
    await services.transcriber.transcribe(
        RequestContext(principal=principal, endpoint="audio"), warm, "warm.wav", language="en"
    )
    await services.scribe.create(principal, text="[doctor] how are you?\n[patient] fine.")
    baseline = RssSampler.now_mb()
    try:
        with RssSampler() as rss:
            started = time.perf_counter()
            audio = await asyncio.to_thread(path.read_bytes)
            view = await services.scribe.create(
                principal, audio=audio, filename=path.name, language="en", template="soap"
            )
            del audio
            queued_s = time.perf_counter() - started
            by_chunk: dict[int, float] = {}
            while True:
                view = await services.scribe.get(principal, view.id)
                done = int((view.transcript.get("job") or {}).get("chunks_done") or 0)
                by_chunk[done] = max(by_chunk.get(done, 0.0), RssSampler.now_mb())
                if view.status != "transcribing":
                    break
                await asyncio.sleep(1.0)
            wall = time.perf_counter() - started
    finally:
        await services.close()
    lines = view.transcript.get("lines", [])
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    return {
        "status": view.status,
        "error": (view.transcript.get("job") or {}).get("error"),
        "audio_s": view.transcript.get("duration_s"),
        "file_mb": round(size / 1e6, 1),
        "chunk_s": chunk_s,
        "chunks": (view.transcript.get("job") or {}).get("chunks_total"),
        "lines": len(lines),
        "last_line_end_s": lines[-1]["end"] if lines else None,
        "answered_202_after_s": round(queued_s, 2),
        "wall_s": round(wall, 1),
        "real_time_factor": round(wall / float(view.transcript.get("duration_s") or 1), 4),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(rss.peak_mb, 1),
        "rss_added_mb": round(rss.peak_mb - baseline, 1),
        "ru_maxrss_mb": round(maxrss_mb(), 1),
        "rss_mb_by_chunks_done": {str(k): round(v, 1) for k, v in sorted(by_chunk.items())},
    }


def measure_cut(path: Path, chunk_s: float) -> dict[str, Any]:
    from iatros.clinical.speech.audio import probe
    from iatros.clinical.speech.chunking import ChunkPlan, chunks

    data = path.read_bytes()
    from faster_whisper.vad import get_vad_model

    get_vad_model()
    baseline = RssSampler.now_mb()
    with RssSampler() as rss:
        started = time.perf_counter()
        container, duration = probe(data, 4 * 3600, 10**9)
        probed = time.perf_counter() - started
        count = 0
        largest = 0
        for chunk in chunks(data, container, 4 * 3600, ChunkPlan(chunk_s, 1.0, 8.0)):
            count += 1
            largest = max(largest, chunk.samples.size)
        wall = time.perf_counter() - started
    return {
        "audio_s": round(duration, 1),
        "file_mb": round(len(data) / 1e6, 1),
        "chunks": count,
        "largest_chunk_s": round(largest / 16000, 1),
        "probe_s": round(probed, 1),
        "probe_and_cut_s": round(wall, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(rss.peak_mb, 1),
        "rss_added_mb": round(rss.peak_mb - baseline, 1),
        "whole_recording_as_float32_mb": round(duration * 16000 * 4 / 1e6, 1),
    }


def measure_decode_whole(path: Path) -> dict[str, Any]:
    from iatros.clinical.speech.audio import decode

    data = path.read_bytes()
    baseline = RssSampler.now_mb()
    with RssSampler() as rss:
        started = time.perf_counter()
        decoded = decode(data, 4 * 3600, 10**9)
        wall = time.perf_counter() - started
    return {
        "audio_s": round(decoded.duration_s, 1),
        "decode_s": round(wall, 1),
        "rss_baseline_mb": round(baseline, 1),
        "rss_peak_mb": round(rss.peak_mb, 1),
        "rss_added_mb": round(rss.peak_mb - baseline, 1),
    }


def child(args: argparse.Namespace) -> None:
    path = synthesize(args.minutes)
    if args.child == "job":
        found = asyncio.run(measure_job(path, args.chunk_s))
    elif args.child == "cut":
        found = measure_cut(path, args.chunk_s)
    else:
        found = measure_decode_whole(path)
    print("RESULT " + json.dumps(found), flush=True)


def run_child(kind: str, minutes: float, chunk_s: float) -> dict[str, Any]:
    synthesize(minutes)
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--minutes", str(minutes),
         "--chunk-s", str(chunk_s)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    found: dict[str, Any] = json.loads(line[len("RESULT ") :])
    found["minutes"] = minutes
    print(kind, minutes, found, flush=True)
    return found


def markdown(r: dict[str, Any]) -> str:
    job, cut, whole = r["job"], r["cut"], r["decode_whole"]
    scale = r["cut_minutes"] / r["job_minutes"]
    lines = [
        f"# Scribe: long recordings ({r['date'][:10]})",
        "",
        f"Written by `bench/scribe_long.py`; espeak-ng dialogues from the ACI-Bench valid split "
        f"(synthetic speech), 22.05 kHz WAV. {r['machine']['cpus']} CPUs, shared with other "
        "work while this ran: wall times are upper bounds.",
        "",
        f"**Background job, {r['job_minutes']:g} minutes** (upload → 202 → chunks → draft "
        f"note; Whisper tiny.en, {job['chunk_s']:g}-s chunks, local Gemma 3 270M for the "
        f"note): {job['status']}, {job['chunks']} chunks, {job['lines']} transcript lines, "
        f"202 after {job['answered_202_after_s']} s, draft after {job['wall_s']} s "
        f"(real-time factor {job['real_time_factor']}). Memory: {job['rss_baseline_mb']} MB "
        f"with the models loaded, peak {job['rss_peak_mb']} MB (+{job['rss_added_mb']} MB for "
        f"a {job['file_mb']} MB file).",
        "",
        f"**Decoding and cutting {r['cut_minutes']:g} minutes** ({cut['file_mb']} MB WAV; the "
        f"job's path without Whisper): {cut['chunks']} chunks (largest "
        f"{cut['largest_chunk_s']} s) in {cut['probe_and_cut_s']} s; memory +"
        f"{cut['rss_added_mb']} MB over {cut['rss_baseline_mb']} MB (a baseline that already "
        "holds the file and the VAD model), while the whole recording "
        f"decoded at once would be {cut['whole_recording_as_float32_mb']} MB of float32 "
        f"samples — decoding it whole (the short-recording path) took +{whole['rss_added_mb']} "
        "MB.",
        "",
    ]
    if scale > 1:
        lines += [
            f"**{r['cut_minutes']:g} minutes, extrapolated, not measured end to end:** "
            "Whisper and the note draft see one chunk at a time, so the job's memory is the "
            f"{r['job_minutes']:g}-minute peak plus the larger file held (about "
            f"{cut['file_mb'] - job['file_mb']:.0f} MB "
            f"more, twice while it is sealed/opened), and its transcription time scales with the "
            f"audio: about {job['wall_s'] * scale / 60:.0f} minutes on this machine "
            f"({scale:g} x {job['wall_s']} s).",
            "",
        ]
    steps = ", ".join(f"{k}: {v}" for k, v in job["rss_mb_by_chunks_done"].items())
    lines += [f"Resident memory (MB) by chunks done, during the job: {steps}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job-minutes", type=float, default=10)
    parser.add_argument("--cut-minutes", type=float, default=45)
    parser.add_argument("--chunk-s", type=float, default=120)
    parser.add_argument("--child", choices=["job", "cut", "decode_whole"])
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "note": "2-core VM shared with other work while this ran",
        },
        "job_minutes": args.job_minutes,
        "cut_minutes": args.cut_minutes,
        "cut": run_child("cut", args.cut_minutes, args.chunk_s),
        "decode_whole": run_child("decode_whole", args.cut_minutes, args.chunk_s),
        "job": run_child("job", args.job_minutes, args.chunk_s),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scribe-long.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "scribe-long.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
