"""Test audio: speech synthesized with espeak-ng (Debian), converted with PyAV.

``scripts/install-speech.sh`` (run by ``make install``) installs espeak-ng; where it is
missing and cannot be installed, the tests that need speech skip and say why.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import av
import numpy as np
import pytest

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(
    ESPEAK is None, reason="espeak-ng is not installed (scripts/install-speech.sh installs it)"
)


def speak(text: str, voice: str = "en-us", speed: int = 150) -> bytes:
    """``text`` spoken by espeak-ng, as a WAV file (22.05 kHz mono)."""
    assert ESPEAK is not None
    out = subprocess.run(
        [ESPEAK, "-v", voice, "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
        timeout=120,
    ).stdout
    return out


def silence_wav(seconds: float, rate: int = 16000, noise: float = 0.0) -> bytes:
    samples = np.zeros(int(seconds * rate), dtype=np.float32)
    if noise:
        samples += np.random.default_rng(7).normal(0, noise, samples.size).astype(np.float32)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def transcode(wav: bytes, container: str, codec: str, rate: int = 48000) -> bytes:
    """Re-encode a WAV file (``mp3``/``mp3``, ``ipod``/``aac``, ``ogg``/``libopus``,
    ``webm``/``libopus``) with PyAV, as a browser or a phone would have recorded it."""
    out = io.BytesIO()
    with av.open(io.BytesIO(wav)) as src, av.open(out, "w", format=container) as dst:
        stream = dst.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(
            format=stream.codec_context.codec.audio_formats[0].name, layout="mono", rate=rate
        )
        for frame in src.decode(audio=0):
            frame.pts = None
            for piece in resampler.resample(frame):
                for packet in stream.encode(piece):
                    dst.mux(packet)
        for piece in resampler.resample(None):
            for packet in stream.encode(piece):
                dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
    return out.getvalue()


def dialogue_wav(turns: list[tuple[str, str]], pause_s: float = 0.6) -> tuple[bytes, list[float]]:
    """A dialogue spoken by two espeak voices (``doctor``/``patient``) with pauses between
    turns, as one 22.05 kHz WAV, and the time at which each turn starts."""
    voices = {"doctor": ("en-us", 165), "patient": ("en-gb", 150)}
    rate = 22050
    pieces: list[np.ndarray] = []
    starts: list[float] = []
    at = 0
    pause = np.zeros(int(pause_s * rate), dtype=np.int16)
    for who, text in turns:
        with wave.open(io.BytesIO(speak(text, *voices[who]))) as w:
            assert w.getframerate() == rate
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        starts.append(at / rate)
        pieces += [pcm, pause]
        at += pcm.size + pause.size
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate(pieces).tobytes())
    return buf.getvalue(), starts
