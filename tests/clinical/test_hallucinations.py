"""The hallucination filter on Whisper's typical inventions (no model needed)."""

from __future__ import annotations

from iatros.clinical.speech.hallucinations import collapse_loops, filter_segments
from iatros.providers.transcription import Segment, TranscriptResult


def _result(*segments: Segment) -> TranscriptResult:
    return TranscriptResult(list(segments), "en", 30.0)


def test_loops_of_a_word_or_a_phrase_are_cut_to_one() -> None:
    assert collapse_loops("no no no no no no no pain") == ("no pain", True)
    text, changed = collapse_loops("take it twice a day, take it twice a day, take it twice a "
                                   "day, take it twice a day, take it twice a day.")  # fmt: skip
    assert changed and text.lower().count("take it") == 1
    # Ordinary repetition in speech stays.
    assert collapse_loops("no, no, no, it does not hurt") == ("no, no, no, it does not hurt", False)


def test_known_phrases_on_doubtful_segments_are_dropped_and_reported() -> None:
    result = filter_segments(
        _result(
            Segment(0, 0.0, 3.0, " The tooth hurts when I drink cold water.", avg_logprob=-0.2),
            Segment(1, 3.0, 6.0, " Thank you for watching!", no_speech_prob=0.7, avg_logprob=-0.9),
            Segment(
                2, 6.0, 8.0, " Sous-titres réalisés par la communauté d'Amara.org", avg_logprob=-0.8
            ),
        )
    )
    assert [s.text for s in result.segments] == [" The tooth hurts when I drink cold water."]
    assert [d["reason"] for d in result.dropped] == ["known_hallucination"] * 2
    assert result.text == "The tooth hurts when I drink cold water."


def test_a_segment_repeated_three_times_is_dropped() -> None:
    same = [Segment(i, i, i + 1, " I have a toothache.") for i in range(4)]
    result = filter_segments(_result(*same))
    assert len(result.segments) == 2
    assert [d["reason"] for d in result.dropped] == ["repeated_segment"] * 2


def test_low_confidence_is_marked_not_hidden() -> None:
    result = filter_segments(
        _result(
            Segment(0, 0, 2, " Amoxicillin 500 milligrams.", avg_logprob=-1.4),
            Segment(1, 2, 4, " Three times a day.", avg_logprob=-0.3),
            Segment(2, 4, 6, " la la la la la la la la", compression_ratio=3.1),
        )
    )
    assert [s.low_confidence for s in result.segments] == [True, False, True]
    assert "repetition_collapsed" in result.segments[2].flags
    assert "Amoxicillin" in result.text
