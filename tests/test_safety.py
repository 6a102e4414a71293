"""The safety step's stream gate and answer rewriting, without a server.

What matters: a stream never lets an unsupported sentence through (withhold), marks it
(flag), releases supported text as it comes, and ends with the verification.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from iatros.auth import Principal
from iatros.gateway.context import RequestContext
from iatros.gateway.grounding import Grounding
from iatros.gateway.safety import SafetyStep, _complete_sentences
from iatros.gateway.verification import Policy
from iatros.providers.base import StreamDelta

PASSAGE = (
    "Adults should brush twice daily with a toothpaste containing 1350-1500 ppm fluoride. "
    "Do not rinse the mouth for 24 hours after an extraction."
)


def _grounding(question: str = "Which toothpaste for adults?") -> Grounding:
    return Grounding(
        collection="handbook",
        version="v1",
        question=question,
        sources=[{"index": 1, "document": "guide.md"}],
        candidates=[],
        passages=[PASSAGE],
        retrieval_match=0.9,
        escalate=False,
        refusal="",
        messages=[],
    )


class _Queue:
    def __init__(self) -> None:
        self.raised: list[dict[str, Any]] = []

    async def escalate(
        self,
        ctx: Any,
        grounding: Any,
        reason: str,
        messages: Any,
        *,
        draft: str | None = None,
        conversation_id: str | None = None,
    ) -> Any:
        self.raised.append({"reason": reason, "draft": draft, "conversation": conversation_id})
        return {"id": "rev_1", "status": "open", "reason": reason}


async def _model(text: str, words: int = 1) -> AsyncIterator[StreamDelta]:
    parts = text.split(" ")
    for i in range(0, len(parts), words):
        yield StreamDelta({"content": (" " if i else "") + " ".join(parts[i : i + words])})
    yield StreamDelta({}, finish_reason="stop")


def _run(answer: str, policy: Policy) -> tuple[list[StreamDelta], _Queue, RequestContext]:
    queue = _Queue()
    step = SafetyStep(queue, policy)
    ctx = RequestContext(principal=Principal("t", "k", "clinician"), endpoint="chat")

    async def collect() -> list[StreamDelta]:
        gate = step.gate(ctx, _grounding(), policy, _model(answer), [], "conv-1")
        return [d async for d in gate]

    return asyncio.run(collect()), queue, ctx


def _text(deltas: list[StreamDelta]) -> str:
    return "".join(d.delta.get("content", "") for d in deltas)


def test_supported_sentences_flow_and_the_end_carries_the_verification() -> None:
    answer = "Brush twice daily [1]. Use 1350-1500 ppm fluoride toothpaste [1]."
    deltas, queue, ctx = _run(answer, "withhold")
    assert _text(deltas) == answer
    assert len([d for d in deltas if d.delta.get("content")]) == 2  # sentence by sentence
    last = deltas[-1]
    assert last.finish_reason == "stop" and last.extension is not None
    assert last.extension["verification"]["status"] == "supported"
    assert queue.raised == [] and ctx.grounding == "supported"


def test_withhold_stops_at_the_first_unsupported_sentence() -> None:
    answer = "Brush twice daily [1]. Use 800 ppm toothpaste [1]. Then rinse well."
    deltas, queue, ctx = _run(answer, "withhold")
    text = _text(deltas)
    assert text.startswith("Brush twice daily [1].")
    assert "800 ppm" not in text and "Then rinse" not in text
    assert "1350-1500 ppm" in text  # the closest source, quoted
    assert deltas[-1].extension["verification"]["action"] == "withheld"  # type: ignore[index]
    assert deltas[-1].extension["review"]["id"] == "rev_1"  # type: ignore[index]
    assert queue.raised[0]["reason"] == "unsupported_detail"
    assert "800 ppm" in queue.raised[0]["draft"] and queue.raised[0]["conversation"] == "conv-1"
    assert ctx.grounding == "withheld"


def test_flag_marks_the_sentence_and_goes_on() -> None:
    answer = "Rinse the mouth after 2 hours. Brush twice daily [1]."
    deltas, queue, ctx = _run(answer, "flag")
    text = _text(deltas)
    assert "Rinse the mouth after 2 hours. ⚠ [unverified: 2 hour, negation]" in text
    assert text.rstrip().endswith("Brush twice daily [1].")
    assert deltas[-1].extension["verification"]["action"] == "flagged"  # type: ignore[index]
    assert queue.raised == [] and ctx.grounding == "flagged"


def test_a_dropped_negation_is_caught_in_a_stream() -> None:
    deltas, _, _ = _run("Rinse the mouth for 24 hours after an extraction.", "withhold")
    assert "Rinse the mouth for 24 hours" not in _text(deltas).split("“")[0]
    unsupported = deltas[-1].extension["verification"]["unsupported"]  # type: ignore[index]
    assert [d["kind"] for d in unsupported] == ["negation"]


def test_list_numbers_are_not_details() -> None:
    answer = "Advice:\n1. Brush twice daily [1].\n2. Do not rinse for 24 hours [1]."
    deltas, queue, _ = _run(answer, "withhold")
    assert _text(deltas) == answer and queue.raised == []


def test_french_answer_withheld_in_french() -> None:
    step = SafetyStep(None, "withhold")
    grounding = _grounding("Quel dentifrice pour les adultes ?")
    text, result = step.verify(grounding, "Un dentifrice à 1000 ppm de fluor [1].", "withhold")
    assert result.action == "withheld"
    assert text.startswith("Je n'ai pas pu vérifier un détail")
    assert "1000" not in text.split("“")[0]


def test_sentences_are_released_only_when_complete() -> None:
    assert _complete_sentences("Take 400 mg. Then", final=False) == ("Take 400 mg. ", "Then")
    assert _complete_sentences("Take 0.5", final=False) == ("", "Take 0.5")
    assert _complete_sentences("Take 0.5 g", final=True) == ("Take 0.5 g", "")
