"""Long recordings in chunks: cut on silences, decoded a window at a time, stitched back.

A 45-minute consultation is 43 million samples (173 MB as float32) once decoded; the
chunked path never holds more than one chunk of them. :func:`chunks` decodes the file
frame by frame (:func:`~iatros.clinical.speech.audio.stream_pcm`) and cuts it near every
``chunk_s`` seconds, at the longest pause that Silero VAD finds within ``search_s``
seconds of the nominal boundary (a hard cut at the boundary when there is no pause).
Each chunk reaches ``overlap_s`` past its cuts on both sides so a word the cut went
through is heard whole by one of them; :func:`stitch` then keeps each segment from the
chunk whose side of the cut holds its middle and removes the words repeated at a seam.

The cuts depend only on the audio, and the number of chunks only on its duration
(:func:`chunk_count`), so progress is exact and a rerun cuts the same chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from iatros.clinical.speech.audio import stream_pcm
from iatros.providers.transcription import SAMPLE_RATE, Segment, Word


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    chunk_s: float = 120.0
    """Nominal chunk length."""
    overlap_s: float = 1.0
    """Audio shared by neighbouring chunks on each side of a cut."""
    search_s: float = 8.0
    """How far from the nominal boundary a pause is looked for (less than ``chunk_s``/2)."""


@dataclass(slots=True)
class Chunk:
    index: int
    """0-based."""
    samples: npt.NDArray[np.float32]
    start_s: float
    """Absolute time of ``samples[0]``: segment times are shifted by it."""
    keep_from_s: float
    keep_to_s: float
    """The cuts around this chunk: it owns the segments whose middle lies between them."""


def chunk_count(duration_s: float, plan: ChunkPlan) -> int:
    """How many chunks :func:`chunks` cuts from ``duration_s`` seconds of audio."""
    total = round(duration_s * SAMPLE_RATE)
    size, search = round(plan.chunk_s * SAMPLE_RATE), round(plan.search_s * SAMPLE_RATE)
    return max(0, (total - search) // size) + 1 if total >= size + search else 1


def _cut(window: npt.NDArray[np.float32], target: int) -> int:
    """The index in ``window`` to cut at: the middle of its longest pause, else ``target``."""
    if float(np.max(np.abs(window))) < 1e-4:
        return target  # digital silence: anywhere is a pause
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(window, VadOptions(min_silence_duration_ms=200))
    edges = [0, *[x for s in spans for x in (s["start"], s["end"])], window.size]
    gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
    best = max(gaps, key=lambda g: (g[1] - g[0], -abs((g[0] + g[1]) // 2 - target)))
    if best[1] - best[0] < SAMPLE_RATE // 10:
        return target
    return int(best[0] + best[1]) // 2


def chunks(data: bytes, container: str, max_duration_s: float, plan: ChunkPlan) -> Iterator[Chunk]:
    """Decode ``data`` and yield its chunks in order (see the module docstring)."""
    size = round(plan.chunk_s * SAMPLE_RATE)
    search = round(plan.search_s * SAMPLE_RATE)
    overlap = round(plan.overlap_s * SAMPLE_RATE)
    pieces: list[npt.NDArray[Any]] = []
    buf_start = 0  # absolute index of the first sample held in ``pieces``
    held = 0
    prev_cut = 0
    index = 0

    def window(start: int, end: int) -> npt.NDArray[np.float32]:
        joined = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        pieces[:] = [joined]
        return (joined[start - buf_start : end - buf_start].astype(np.float32) / 32768.0).astype(
            np.float32
        )

    for piece in stream_pcm(data, container, max_duration_s, "scribe.max_duration_s"):
        pieces.append(piece)
        held += piece.size
        target = (index + 1) * size
        while buf_start + held >= target + search:
            region = window(target - search, target + search)
            cut = target - search + _cut(region, search)
            begin = max(prev_cut - overlap, 0)
            yield Chunk(index, window(begin, cut + overlap), begin / SAMPLE_RATE,
                        prev_cut / SAMPLE_RATE, cut / SAMPLE_RATE)  # fmt: skip
            drop = cut - overlap - buf_start
            pieces[:] = [pieces[0][drop:]]
            buf_start += drop
            held -= drop
            prev_cut = cut
            index += 1
            target = (index + 1) * size
    if held == 0 and index == 0:
        return
    begin = max(prev_cut - overlap, 0)
    end = buf_start + held
    yield Chunk(index, window(begin, end), begin / SAMPLE_RATE, prev_cut / SAMPLE_RATE,
                float("inf"))  # fmt: skip


def _words(text: str) -> list[str]:
    return [w for w in (re.sub(r"[^\w']", "", t.lower()) for t in text.split()) if w]


def _shift(segment: Segment, offset: float) -> Segment:
    segment.start = round(segment.start + offset, 3)
    segment.end = round(segment.end + offset, 3)
    segment.words = [
        Word(w.word, round(w.start + offset, 3), round(w.end + offset, 3), w.probability)
        for w in segment.words
    ]
    return segment


def stitch(kept: list[Segment], chunk: Chunk, found: list[Segment], overlap_s: float) -> None:
    """Add the segments ``found`` in ``chunk`` (times relative to it) to ``kept``.

    Times become absolute; a segment whose middle lies outside the chunk's own span
    belongs to the neighbour and is left out; and when the cut went through speech, the
    words that both sides heard (the last words of the previous segment, repeated at the
    start of this one) are said once.
    """
    own = []
    for seg in found:
        _shift(seg, chunk.start_s)
        middle = (seg.start + seg.end) / 2
        if chunk.keep_from_s <= middle < chunk.keep_to_s:
            own.append(seg)
    if own and kept and chunk.index > 0:
        before, first = kept[-1], own[0]
        seam = chunk.keep_from_s
        if before.end > seam - overlap_s and first.start < seam + overlap_s:
            tail, head = _words(before.text), _words(first.text)
            repeated = next(
                (k for k in range(min(len(tail), len(head), 8), 0, -1) if tail[-k:] == head[:k]),
                0,
            )
            if repeated:
                words = first.text.split()
                first.text = (" " if first.text.startswith(" ") else "") + " ".join(
                    words[repeated:]
                )
                first.words = first.words[repeated:]
                first.flags.append("seam_deduplicated")
                if not first.text.strip():
                    own.pop(0)
    for seg in own:
        seg.id = len(kept)
        kept.append(seg)
