"""Transcribe a long recording chunk by chunk, reporting progress after each.

The scribe's background job (and ``iatros scribe new`` on a long file) calls
:func:`transcribe_chunked`: decoding and cutting run on a thread one chunk ahead of
nothing (a chunk is cut, transcribed, stitched and dropped before the next is decoded),
so memory stays at one chunk whatever the length. Every chunk goes through
:meth:`Transcriber.transcribe_samples` (routing, fallback, hallucination filter), and a
chunk that fails after every fallback fails the whole transcription with a message
naming the chunk and its time span: a transcript with a hole in it is never returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from iatros.clinical.speech.audio import AudioError, speech_seconds
from iatros.clinical.speech.chunking import Chunk, ChunkPlan, chunk_count, chunks, stitch
from iatros.clinical.speech.transcriber import Transcriber, Transcription
from iatros.errors import GatewayError
from iatros.gateway.context import RequestContext
from iatros.providers.transcription import SAMPLE_RATE, Segment, TranscriptResult

Progress = Callable[[int, int], Awaitable[None]]
"""Called with (chunks done, chunks in all) before the first chunk and after each."""


class ChunkFailed(GatewayError):
    """A chunk could not be transcribed: the error says which one and why."""

    def __init__(self, message: str, cause: GatewayError) -> None:
        super().__init__(message, code=cause.code, param=cause.param)
        self.status = cause.status
        self.type = cause.type


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60:d}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


def _next(it: Iterator[Chunk]) -> Chunk | None:
    return next(it, None)


async def transcribe_chunked(
    transcriber: Transcriber,
    ctx: RequestContext,
    data: bytes,
    *,
    container: str,
    duration_s: float,
    max_duration_s: float,
    language: str | None,
    plan: ChunkPlan,
    progress: Progress,
) -> Transcription:
    total = chunk_count(duration_s, plan)
    await progress(0, total)
    it = chunks(data, container, max_duration_s, plan)
    # One thread decodes and checks every chunk: spread over the default pool's threads,
    # each would grow its own malloc arena and the memory would not come back.
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scribe-chunks")
    try:
        return await _run(transcriber, ctx, it, loop, worker, total, duration_s, container,
                          language, plan, progress)  # fmt: skip
    finally:
        worker.shutdown(wait=False, cancel_futures=True)


async def _run(
    transcriber: Transcriber, ctx: RequestContext, it: Iterator[Chunk],
    loop: asyncio.AbstractEventLoop, worker: ThreadPoolExecutor, total: int,
    duration_s: float, container: str, language: str | None, plan: ChunkPlan,
    progress: Progress,
) -> Transcription:  # fmt: skip
    kept: list[Segment] = []
    dropped: list[dict[str, object]] = []
    detected = language
    deployment = ""
    done = 0
    while True:
        chunk = await loop.run_in_executor(worker, _next, it)
        if chunk is None:
            break
        end = chunk.start_s + chunk.samples.size / SAMPLE_RATE
        span = f"{_clock(chunk.start_s)} to {_clock(end)}"
        speech = await loop.run_in_executor(worker, speech_seconds, chunk.samples)
        if speech >= transcriber.settings.min_speech_s:
            try:
                result, deployment = await transcriber.transcribe_samples(
                    ctx, chunk.samples, language=detected, filename=f"chunk-{chunk.index}.wav"
                )
            except GatewayError as exc:
                raise ChunkFailed(
                    f"Chunk {chunk.index + 1} of {total} ({span}) could not be transcribed: "
                    f"{exc.message}",
                    exc,
                ) from None
            detected = detected or result.language
            stitch(kept, chunk, result.segments, plan.overlap_s)
            for item in result.dropped:
                a, b = item.get("start"), item.get("end")
                if isinstance(a, (int, float)) and isinstance(b, (int, float)):
                    item = {**item, "start": a + chunk.start_s, "end": b + chunk.start_s}
                dropped.append(item)
        done += 1
        await progress(done, total)
    if not kept:
        raise AudioError(
            f"No speech was found in the {duration_s:.1f} s of audio (silence or noise only).",
            "no_speech",
        )
    result = TranscriptResult(kept, detected or "en", duration_s, dropped=dropped)
    return Transcription(result, deployment, container)
