"""What Whisper makes up, and how it is caught.

Whisper was trained on subtitles: on silence, noise or music it writes what subtitles
say there ("Thank you for watching", "Sous-titres réalisés par la communauté
d'Amara.org"), and once decoding slips it can loop on one word or phrase. Three checks,
after the VAD that already keeps most silence away from the model:

- **known phrases**: a segment that is nothing but one of them is dropped (reported in
  ``dropped`` with its reason, never silently);
- **repetition loops**: a word or phrase of up to 6 words repeated more than
  ``MAX_REPEATS`` times in a row is cut to one occurrence (flag
  ``repetition_collapsed``); a segment identical to the two before it is dropped;
- **low confidence**: a segment whose average token log-probability is low, whose
  compression ratio is high (a loop the checks above missed), or which the model thought
  was probably not speech, is kept and flagged ``low_confidence`` so a person checks it.
"""

from __future__ import annotations

import re
import unicodedata

from iatros.providers.transcription import Segment, TranscriptResult

MAX_REPEATS = 3
KNOWN_PHRASES = (
    "thank you for watching",
    "thanks for watching",
    "thank you so much for watching",
    "please subscribe",
    "subscribe to my channel",
    "like and subscribe",
    "see you in the next video",
    "subtitles by the amara.org community",
    "transcribed by",
    "you",
    "bye",
    "merci d'avoir regardé",
    "merci d'avoir regardé cette vidéo",
    "sous-titres réalisés par la communauté d'amara.org",
    "sous-titrage st' 501",
    "sous-titrage société radio-canada",
    "abonnez-vous",
    "n'oubliez pas de vous abonner",
)


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    return re.sub(r"[\s.!?,;:…\-\"«»()]+", " ", text).strip()


_KNOWN = frozenset(_norm(p) for p in KNOWN_PHRASES)


def collapse_loops(text: str, max_repeats: int = MAX_REPEATS) -> tuple[str, bool]:
    """Cut runs of a word or phrase (1-6 words) repeated more than ``max_repeats`` times."""
    words = text.split()
    changed = False
    for n in range(1, 7):
        i = 0
        out: list[str] = []
        while i < len(words):
            gram = [_norm(w) for w in words[i : i + n]]
            run = 1
            while (
                i + (run + 1) * n <= len(words)
                and [_norm(w) for w in words[i + run * n : i + (run + 1) * n]] == gram
            ):
                run += 1
            if run > max_repeats and len(gram) == n:
                out.extend(words[i : i + n])
                i += run * n
                changed = True
            else:
                out.append(words[i])
                i += 1
        words = out
    return (" ".join(words), changed)


def filter_segments(result: TranscriptResult, low_logprob: float = -1.0) -> TranscriptResult:
    """Drop invented segments, collapse loops, flag doubtful ones (returns ``result``)."""
    kept: list[Segment] = []
    for seg in result.segments:
        norm = _norm(seg.text)
        if not norm:
            continue
        if norm in _KNOWN and (
            seg.no_speech_prob > 0.2 or seg.avg_logprob < -0.5 or len(result.segments) == 1
        ):
            result.dropped.append({"start": seg.start, "end": seg.end, "text": seg.text,
                                   "reason": "known_hallucination"})  # fmt: skip
            continue
        if len(kept) >= 2 and all(_norm(k.text) == norm for k in kept[-2:]):
            result.dropped.append(
                {"start": seg.start, "end": seg.end, "text": seg.text, "reason": "repeated_segment"}
            )
            continue
        text, looped = collapse_loops(seg.text)
        if looped:
            seg.text = (" " if seg.text.startswith(" ") else "") + text
            seg.flags.append("repetition_collapsed")
        if (
            seg.avg_logprob < low_logprob
            or seg.compression_ratio > 2.4
            or (seg.no_speech_prob > 0.6 and seg.avg_logprob < -0.5)
        ):
            seg.flags.append("low_confidence")
        seg.id = len(kept)
        kept.append(seg)
    result.segments = kept
    return result
