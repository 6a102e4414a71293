"""Grounded answers: a short prompt with numbered sources, citations, and when to refuse.

The prompt is deliberately short and plain (one instruction paragraph, then ``[n]``
sources) because it must also work with the small local base model, which sees it as
the brief of a transcript; long rule lists only confuse such models. When no passage is
relevant enough, the caller should not ask the model at all: :func:`should_escalate`
says so, and :func:`no_answer_text` is the reply (English or French, following the
question), so the assistant never invents an answer without sources.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from iatros.knowledge.text import is_french, snippet
from iatros.knowledge.types import Passage

NO_ANSWER_TEXT = (
    "I don't know: the documents available to me do not answer this question. "
    "It has been passed on for a human to review."
)
NO_ANSWER_TEXT_FR = (
    "Je ne sais pas : les documents dont je dispose ne répondent pas à cette question. "
    "Elle a été transmise pour être examinée par une personne."
)

# confidence() is a logistic fit of "the question is answerable from the collection"
# on the best passage's relevance, fitted on PubMedQA (bench/knowledge_bench.py
# calibrate); CONFIDENCE_MIDPOINT is where the fit crosses 0.5.
CONFIDENCE_SLOPE = 28.4
CONFIDENCE_MIDPOINT = 0.579

_CITATION = re.compile(r"\[(\d{1,3})\]")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    """The text of the last user message (what retrieval should search for)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def no_answer_text(question: str) -> str:
    """The refusal in the question's language (French or English)."""
    return NO_ANSWER_TEXT_FR if is_french(question) else NO_ANSWER_TEXT


def _source_header(n: int, passage: Passage) -> str:
    where = f", page {passage.page}" if passage.page is not None else ""
    return f"[{n}] {passage.document}{where}"


def passage_bodies(
    passages: Sequence[Passage], question: str, *, max_chars: int = 3000
) -> list[str]:
    """The text of each passage as the model sees it (what its answer is checked against).

    ``max_chars`` bounds the sources' text (about 750 tokens by default, so the prompt
    fits a 2,048-token local model); longer passages are cut to their best sentences.
    """
    budget = max(200, max_chars // max(1, len(passages)))
    bodies = []
    for passage in passages:
        body = " ".join(passage.text.split())
        if len(body) > budget:
            body = snippet(body, question, budget)
        bodies.append(body)
    return bodies


def build_grounded_messages(
    messages: Sequence[dict[str, Any]],
    passages: Sequence[Passage],
    *,
    max_chars: int = 3000,
    bodies: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``messages`` preceded by a system message carrying the numbered sources
    (``bodies``: the passages' texts from :func:`passage_bodies`, computed if absent)."""
    question = last_user_text(messages)
    refusal = no_answer_text(question)
    if bodies is None:
        bodies = passage_bodies(passages, question, max_chars=max_chars)
    blocks = [
        f"{_source_header(n, passage)}: {body}"
        for n, (passage, body) in enumerate(zip(passages, bodies, strict=True), 1)
    ]
    instructions = (
        "Answer the question using only the numbered sources below, in the language of "
        "the question. Cite the source of each fact as [1], [2], ... "
        f'If the sources do not contain the answer, reply only: "{refusal}"'
    )
    system = instructions + "\n\nSources:\n" + "\n".join(blocks)
    return [{"role": "system", "content": system}, *messages]


def confidence(passages: Sequence[Passage]) -> float:
    """Estimated probability, in [0, 1], that the passages answer the question."""
    if not passages:
        return 0.0
    best = max(p.score for p in passages)
    return round(1.0 / (1.0 + math.exp(-CONFIDENCE_SLOPE * (best - CONFIDENCE_MIDPOINT))), 4)


def should_escalate(passages: Sequence[Passage], min_score: float) -> bool:
    """True when no passage is relevant enough to answer from (answer NO_ANSWER_TEXT)."""
    return not passages or max(p.score for p in passages) < min_score


def sources_payload(passages: Sequence[Passage]) -> list[dict[str, Any]]:
    """The ``sources`` of a grounded response, numbered as in the prompt."""
    return [
        {
            "index": n,
            "document": p.document,
            "document_id": p.document_id,
            "page": p.page,
            "section": p.section,
            "chunk_id": p.chunk_id,
            "snippet": p.snippet,
            "score": p.score,
        }
        for n, p in enumerate(passages, 1)
    ]


def cited_sources(answer: str, count: int) -> list[int]:
    """The source numbers an answer cites (in order, valid ones only)."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(answer):
        n = int(match.group(1))
        if 1 <= n <= count:
            seen[n] = None
    return list(seen)
