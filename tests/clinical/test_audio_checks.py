"""Audio sniffing and decoding (PyAV) without a model."""

from __future__ import annotations

import pytest

from iatros.clinical.speech.audio import AudioError, decode, sniff
from iatros.errors import PayloadTooLarge
from tests.clinical.speech import needs_espeak, silence_wav, speak, transcode


def test_sniff_recognises_containers_by_their_first_bytes() -> None:
    assert sniff(silence_wav(0.1)) == "wav"
    assert sniff(b"ID3\x04" + b"\x00" * 20) == "mp3"
    assert sniff(b"\x00\x00\x00\x20ftypM4A ") == "mp4"
    assert sniff(b"OggS\x00\x02") == "ogg"
    assert sniff(b"\x1a\x45\xdf\xa3\x9f") == "webm"
    assert sniff(b"<html>") is None
    assert sniff(b"\x89PNG\r\n") is None


@needs_espeak
@pytest.mark.parametrize(("container", "codec"), [("webm", "libopus"), ("mp3", "mp3")])
def test_decoded_to_16khz_mono(container: str, codec: str) -> None:
    wav = speak("Open wide, please.")
    reference = decode(wav, 60, 10**8)
    audio = decode(transcode(wav, container, codec), 60, 10**8)
    assert audio.samples.dtype.name == "float32" and audio.samples.ndim == 1
    assert abs(audio.duration_s - reference.duration_s) < 0.15


def test_limits_are_checked_before_and_while_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(silence_wav(2), 60, 1000)
    with pytest.raises(AudioError) as err:
        decode(silence_wav(5), 2, 10**8)
    assert err.value.code == "audio_too_long"
    # A WAV header that promises more than the file holds still decodes what is there.
    truncated = silence_wav(3)[:20000]
    assert decode(truncated, 60, 10**8).duration_s < 1
