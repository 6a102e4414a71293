"""Check and decode uploaded audio: every bad file gets its own precise error.

Decoding uses PyAV (FFmpeg's libraries, the decoder faster-whisper itself uses), so WAV,
MP3, M4A/AAC, OGG/Opus, WebM/Opus (what a browser's MediaRecorder makes) and FLAC all
work. The container is recognised from its first bytes before FFmpeg sees it: anything
else is refused as unsupported instead of being probed by every demuxer FFmpeg has.
Decoding stops as soon as the audio is longer than allowed, so a small file that claims
hours of audio cannot make the server decode them.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from iatros.errors import InvalidRequest, PayloadTooLarge
from iatros.providers.transcription import SAMPLE_RATE

FORMATS = "WAV, MP3, M4A/AAC, OGG/Opus, WebM, FLAC"


class AudioError(InvalidRequest):
    """A 400 about the uploaded file (``param`` is ``file``)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message, param="file", code=code)


@dataclass(slots=True)
class DecodedAudio:
    samples: npt.NDArray[np.float32]
    duration_s: float
    container: str


def sniff(data: bytes) -> str | None:
    """The container named by the file's first bytes, or None if it is not audio we take."""
    head = data[:64]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        # MPEG audio frame sync (MP3) or ADTS AAC (0xFFF1/0xFFF9)
        return "aac" if head[1] & 0xF6 == 0xF0 else "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"fLaC":
        return "flac"
    return None


def decode(data: bytes, max_duration_s: float, max_bytes: int) -> DecodedAudio:
    """Decode to 16 kHz mono float32, or raise the error that says what is wrong."""
    container = check_file(data, max_bytes)
    chunks = list(stream_pcm(data, container, max_duration_s))
    total = sum(c.size for c in chunks)
    if total == 0:
        raise AudioError(f"The {container} file holds no audio samples.", "corrupt_audio")
    samples = (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)
    duration = samples.size / SAMPLE_RATE
    if duration > max_duration_s:
        raise _too_long(duration, max_duration_s)
    return DecodedAudio(samples, duration, container)


def check_file(data: bytes, max_bytes: int) -> str:
    """The container of a non-empty file within ``max_bytes``, or the precise error."""
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"The audio file is {len(data)} bytes; the limit is {max_bytes}.",
            param="file",
            code="audio_too_large",
        )
    if not data:
        raise AudioError("The audio file is empty.", "empty_audio")
    container = sniff(data)
    if container is None:
        raise AudioError(
            f"The file is not in a supported audio format ({FORMATS}).",
            "unsupported_audio_format",
        )
    return container


def stream_pcm(
    data: bytes,
    container: str,
    max_duration_s: float,
    setting: str = "transcription.max_duration_s",
) -> Iterator[npt.NDArray[Any]]:
    """The audio as 16 kHz mono int16 pieces, one decoded frame at a time.

    Nothing but the current frame is held, so a caller that keeps only a window of the
    pieces (the chunked transcription of long recordings) needs memory for that window,
    not for the whole recording. Stops with ``audio_too_long`` as soon as the audio
    passes ``max_duration_s``.
    """
    import av

    max_samples = int(max_duration_s * SAMPLE_RATE)
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as box:
            if not box.streams.audio:
                raise AudioError("The file holds no audio stream.", "no_audio_stream")
            stream = box.streams.audio[0]
            declared = (
                float(stream.duration * stream.time_base)
                if stream.duration is not None and stream.time_base is not None
                else None
            )
            if declared is not None and declared > max_duration_s + 1:
                raise _too_long(declared, max_duration_s, setting)
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in box.decode(stream):
                for out in resampler.resample(frame):
                    array = out.to_ndarray().reshape(-1)
                    total += array.size
                    yield array
                if total > max_samples + SAMPLE_RATE:
                    raise _too_long(total / SAMPLE_RATE, max_duration_s, setting)
            for out in resampler.resample(None):
                array = out.to_ndarray().reshape(-1)
                total += array.size
                yield array
    except AudioError:
        raise
    except (av.error.FFmpegError, ValueError, IndexError, OSError) as exc:
        raise AudioError(
            f"The {container} file could not be decoded (corrupt or truncated): {exc}",
            "corrupt_audio",
        ) from None


def probe(
    data: bytes, max_duration_s: float, max_bytes: int, setting: str = "scribe.max_duration_s"
) -> tuple[str, float]:
    """The container and exact duration, decoding the whole file but keeping nothing.

    What an upload is checked with before it is queued for a background transcription:
    a corrupt, empty, unsupported or too long file is refused at once (4xx), not when a
    worker reaches it.
    """
    container = check_file(data, max_bytes)
    total = sum(piece.size for piece in stream_pcm(data, container, max_duration_s, setting))
    if total == 0:
        raise AudioError(f"The {container} file holds no audio samples.", "corrupt_audio")
    duration = total / SAMPLE_RATE
    if duration > max_duration_s:
        raise _too_long(duration, max_duration_s, setting)
    return container, duration


def _too_long(
    seconds: float, limit: float, setting: str = "transcription.max_duration_s"
) -> AudioError:
    return AudioError(
        f"The recording lasts {seconds:.0f} s; the limit is {limit:.0f} s ({setting}).",
        "audio_too_long",
    )


def speech_seconds(samples: npt.NDArray[np.float32]) -> float:
    """Seconds of speech that Silero VAD (shipped in faster-whisper's wheel) finds."""
    if samples.size == 0 or float(np.max(np.abs(samples))) < 1e-4:
        return 0.0  # digital silence: no need to ask the model
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(samples, VadOptions(min_silence_duration_ms=500))
    return float(sum(s["end"] - s["start"] for s in spans)) / SAMPLE_RATE
