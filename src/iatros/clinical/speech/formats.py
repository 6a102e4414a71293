"""The response formats of OpenAI's transcription API: json, text, srt, vtt, verbose_json."""

from __future__ import annotations

from typing import Any, Literal

from iatros.providers.transcription import TranscriptResult

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
LANGUAGE_NAMES = {
    "en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian",
    "pt": "portuguese", "nl": "dutch",
}  # fmt: skip


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(result: TranscriptResult) -> str:
    blocks = [
        f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(result.segments, 1)
    ]
    return "\n".join(blocks)


def vtt(result: TranscriptResult) -> str:
    blocks = [
        f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in result.segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def verbose(result: TranscriptResult, words: bool, segments: bool = True) -> dict[str, Any]:
    """OpenAI's verbose_json, plus an ``iatros`` object (flags, dropped segments)."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(result.language, result.language),
        "duration": round(result.duration_s, 3),
        "text": result.text,
    }
    if segments:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": round(s.avg_logprob, 4),
                "compression_ratio": round(s.compression_ratio, 4),
                "no_speech_prob": round(s.no_speech_prob, 4),
            }
            for s in result.segments
        ]
    if words:
        body["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in result.segments
            for w in s.words
        ]
    body["iatros"] = {
        "language_code": result.language,
        "low_confidence_segments": [s.id for s in result.segments if s.low_confidence],
        "flags": {str(s.id): s.flags for s in result.segments if s.flags},
        "dropped": result.dropped,
    }
    return body
